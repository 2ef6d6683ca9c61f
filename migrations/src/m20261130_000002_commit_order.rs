//! Commit order: each event records when, in the database's own terms, its
//! transaction committed relative to any read snapshot, so that a workspace
//! subscription can tell events before its snapshot from events after it
//! without holding a cursor for every job the workspace ever had.
//!
//! - `job_events.commit_order`: on PostgreSQL the writing transaction's id
//!   (`pg_current_xact_id()`, a 64-bit xid8), tested against a snapshot's
//!   `xmin:xmax:xip` list; on SQLite a counter taken by the single writer in
//!   each write transaction (`commit_counter`), tested with `<=`. Rows written
//!   before this migration have none and count as older than any snapshot.
//! - Indexes for the reads that replace the full scans: live (unfinished) jobs
//!   of a workspace, the jobs of a workspace changed after a snapshot, and
//!   finished jobs by completion time (retention).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum JobEvents {
    Table,
    WorkspaceId,
    CommitOrder,
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    WorkspaceId,
    Status,
    CompletedAt,
}

#[derive(DeriveIden)]
enum CommitCounter {
    Table,
    Id,
    Value,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(JobEvents::Table).add_column(big_integer_null(JobEvents::CommitOrder)).to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_job_events_workspace_commit_order")
                    .table(JobEvents::Table)
                    .col(JobEvents::WorkspaceId)
                    .col(JobEvents::CommitOrder)
                    .to_owned(),
            )
            .await?;
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
        manager
            .create_index(
                Index::create().name("idx_jobs_completed_at").table(Jobs::Table).col(Jobs::CompletedAt).to_owned(),
            )
            .await?;
        if manager.get_database_backend() == sea_orm::DatabaseBackend::Sqlite {
            manager
                .create_table(
                    Table::create()
                        .table(CommitCounter::Table)
                        .col(integer(CommitCounter::Id).primary_key())
                        .col(big_integer(CommitCounter::Value))
                        .to_owned(),
                )
                .await?;
            manager
                .exec_stmt(
                    Query::insert()
                        .into_table(CommitCounter::Table)
                        .columns([CommitCounter::Id, CommitCounter::Value])
                        .values_panic([1.into(), 0.into()])
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == sea_orm::DatabaseBackend::Sqlite {
            manager.drop_table(Table::drop().table(CommitCounter::Table).to_owned()).await?;
        }
        manager.drop_index(Index::drop().name("idx_jobs_completed_at").table(Jobs::Table).to_owned()).await?;
        manager.drop_index(Index::drop().name("idx_jobs_workspace_status").table(Jobs::Table).to_owned()).await?;
        manager
            .drop_index(Index::drop().name("idx_job_events_workspace_commit_order").table(JobEvents::Table).to_owned())
            .await?;
        manager.alter_table(Table::alter().table(JobEvents::Table).drop_column(JobEvents::CommitOrder).to_owned()).await
    }
}
