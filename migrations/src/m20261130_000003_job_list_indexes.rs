//! Indexes for the jobs list (`GET /api/jobs?status=…`), found missing by the
//! query-plan test at 1M jobs (`crates/job-events/tests/query_plans.rs`):
//!
//! - `(workspace_id, status, created_at, id)`: a workspace's jobs in one
//!   status, newest first, read in index order up to the limit (before, every
//!   job of the workspace in that status was read and sorted). Its first two
//!   columns serve what `idx_jobs_workspace_status` served (the live jobs of a
//!   workspace), so that index is dropped: every event updates its job's row,
//!   and each index of `jobs` costs every write.
//! - `(status, created_at, id)`: the same list over every workspace (a token
//!   for all workspaces), which otherwise reads the whole table.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    WorkspaceId,
    Status,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_workspace_status_created")
                    .table(Jobs::Table)
                    .col(Jobs::WorkspaceId)
                    .col(Jobs::Status)
                    .col(Jobs::CreatedAt)
                    .col(Jobs::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_status_created")
                    .table(Jobs::Table)
                    .col(Jobs::Status)
                    .col(Jobs::CreatedAt)
                    .col(Jobs::Id)
                    .to_owned(),
            )
            .await?;
        manager.drop_index(Index::drop().name("idx_jobs_workspace_status").table(Jobs::Table).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_workspace_status")
                    .table(Jobs::Table)
                    .col(Jobs::WorkspaceId)
                    .col(Jobs::Status)
                    .to_owned(),
            )
            .await?;
        manager.drop_index(Index::drop().name("idx_jobs_status_created").table(Jobs::Table).to_owned()).await?;
        manager.drop_index(Index::drop().name("idx_jobs_workspace_status_created").table(Jobs::Table).to_owned()).await
    }
}
