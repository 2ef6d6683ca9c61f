//! The ids of jobs deleted by retention, so that an id names one job forever.
//!
//! Subscribers, the client kit and SSE `Last-Event-ID` all remember positions
//! per job id. A new job under a deleted job's id would be read against the old
//! job's positions and lose its first events, so creating a job with an id in
//! `pruned_jobs` is refused (CONTRACT §7, "Retention"; docs/behaviour.md).
//!
//! - `pruned_jobs.id`: the deleted job's id (primary key, one seek per create).
//! - `pruned_jobs.pruned_at`: when it was deleted, for operators.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PrunedJobs {
    Table,
    Id,
    PrunedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PrunedJobs::Table)
                    .if_not_exists()
                    .col(uuid(PrunedJobs::Id).primary_key())
                    .col(timestamp_with_time_zone(PrunedJobs::PrunedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(PrunedJobs::Table).to_owned()).await
    }
}
