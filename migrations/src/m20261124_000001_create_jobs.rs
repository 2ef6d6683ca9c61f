//! Jobs, their steps, and their append-only events.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    WorkspaceId,
    JobType,
    Status,
    Priority,
    Progress,
    Metadata,
    Result,
    Error,
    CreatedAt,
    UpdatedAt,
    StartedAt,
    CompletedAt,
    LastSeq,
}

#[derive(DeriveIden)]
enum JobSteps {
    Table,
    Id,
    JobId,
    Position,
    Name,
    Phase,
    StepType,
    Status,
    StartedAt,
    CompletedAt,
    DurationMs,
    Error,
    TokensInput,
    TokensOutput,
}

#[derive(DeriveIden)]
enum JobEvents {
    Table,
    Id,
    JobId,
    Seq,
    EventType,
    WorkspaceId,
    StepId,
    CreatedAt,
    Data,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .col(uuid(Jobs::Id).primary_key())
                    .col(string_len(Jobs::WorkspaceId, 200))
                    .col(string_len(Jobs::JobType, 200))
                    .col(string_len(Jobs::Status, 16))
                    .col(integer(Jobs::Priority))
                    .col(small_integer(Jobs::Progress))
                    .col(json(Jobs::Metadata))
                    .col(json_null(Jobs::Result))
                    .col(text_null(Jobs::Error))
                    .col(timestamp_with_time_zone(Jobs::CreatedAt))
                    .col(timestamp_with_time_zone(Jobs::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Jobs::StartedAt))
                    .col(timestamp_with_time_zone_null(Jobs::CompletedAt))
                    .col(big_integer(Jobs::LastSeq))
                    .to_owned(),
            )
            .await?;
        // The workspace snapshot: most recently updated jobs first; also the list filters.
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_workspace_updated")
                    .table(Jobs::Table)
                    .col(Jobs::WorkspaceId)
                    .col(Jobs::UpdatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(JobSteps::Table)
                    .col(uuid(JobSteps::Id).primary_key())
                    .col(uuid(JobSteps::JobId))
                    .col(big_integer(JobSteps::Position))
                    .col(string_len(JobSteps::Name, 500))
                    .col(string_len(JobSteps::Phase, 16))
                    .col(string_len(JobSteps::StepType, 16))
                    .col(string_len(JobSteps::Status, 16))
                    .col(timestamp_with_time_zone_null(JobSteps::StartedAt))
                    .col(timestamp_with_time_zone_null(JobSteps::CompletedAt))
                    .col(big_integer_null(JobSteps::DurationMs))
                    .col(text_null(JobSteps::Error))
                    .col(big_integer_null(JobSteps::TokensInput))
                    .col(big_integer_null(JobSteps::TokensOutput))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_job_steps_job")
                            .from(JobSteps::Table, JobSteps::JobId)
                            .to(Jobs::Table, Jobs::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_job_steps_job_position")
                    .table(JobSteps::Table)
                    .col(JobSteps::JobId)
                    .col(JobSteps::Position)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(JobEvents::Table)
                    .col(uuid(JobEvents::Id).primary_key())
                    .col(uuid(JobEvents::JobId))
                    .col(big_integer(JobEvents::Seq))
                    .col(string_len(JobEvents::EventType, 32))
                    .col(string_len(JobEvents::WorkspaceId, 200))
                    .col(uuid_null(JobEvents::StepId))
                    .col(timestamp_with_time_zone(JobEvents::CreatedAt))
                    .col(json(JobEvents::Data))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_job_events_job")
                            .from(JobEvents::Table, JobEvents::JobId)
                            .to(Jobs::Table, Jobs::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // One event per (job, seq): the database itself refuses a duplicate or reused seq;
        // the same index serves replay (`job_id = ? AND seq > ? ORDER BY seq`).
        manager
            .create_index(
                Index::create()
                    .name("uq_job_events_job_seq")
                    .table(JobEvents::Table)
                    .col(JobEvents::JobId)
                    .col(JobEvents::Seq)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(JobEvents::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(JobSteps::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Jobs::Table).to_owned()).await
    }
}
