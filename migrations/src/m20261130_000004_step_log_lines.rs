//! Line numbers of a step's output, so that a reader can open line N of a
//! step of any size without reading what comes before it.
//!
//! - `job_steps.output_lines`: how many `\n` the step's `step.output` chunks
//!   hold so far (both streams, in `seq` order).
//! - `job_events.line`: on a `step.output` row, how many `\n` the step's
//!   output held before this chunk (so its first byte belongs to line
//!   `line + 1`); `NULL` on every other row.
//! - Index `(step_id, line, seq)`: a step's chunks in `seq` order (`line`
//!   never decreases along `seq`), and the chunk holding a line by one seek.
//!
//! Rows written before this migration are numbered by it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum JobEvents {
    Table,
    StepId,
    Line,
    Seq,
}

#[derive(DeriveIden)]
enum JobSteps {
    Table,
    OutputLines,
}

/// The number of `\n` in `text`, in SQL (byte lengths: `\n` is one byte).
fn newlines(backend: sea_orm::DatabaseBackend, text: &str) -> String {
    match backend {
        sea_orm::DatabaseBackend::Postgres => {
            format!("(octet_length({text}) - octet_length(replace({text}, E'\\n', '')))")
        }
        _ => format!("(length(CAST({text} AS BLOB)) - length(CAST(replace({text}, char(10), '') AS BLOB)))"),
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(JobSteps::Table)
                    .add_column(big_integer(JobSteps::OutputLines).default(0))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter().table(JobEvents::Table).add_column(big_integer_null(JobEvents::Line)).to_owned(),
            )
            .await?;
        let backend = manager.get_database_backend();
        let chunk = match backend {
            sea_orm::DatabaseBackend::Postgres => "(data->>'chunk')",
            _ => "json_extract(data, '$.chunk')",
        };
        let count = newlines(backend, chunk);
        let db = manager.get_connection();
        db.execute_unprepared(&format!(
            "UPDATE job_events SET line = numbered.line FROM (
                 SELECT id, COALESCE(SUM({count}) OVER (PARTITION BY step_id ORDER BY seq
                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS line
                 FROM job_events WHERE event_type = 'step.output' AND step_id IS NOT NULL
             ) AS numbered WHERE job_events.id = numbered.id"
        ))
        .await?;
        db.execute_unprepared(&format!(
            "UPDATE job_steps SET output_lines = COALESCE((SELECT SUM({count}) FROM job_events
                 WHERE job_events.step_id = job_steps.id AND job_events.event_type = 'step.output'), 0)"
        ))
        .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_job_events_step_line")
                    .table(JobEvents::Table)
                    .col(JobEvents::StepId)
                    .col(JobEvents::Line)
                    .col(JobEvents::Seq)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name("idx_job_events_step_line").table(JobEvents::Table).to_owned()).await?;
        manager.alter_table(Table::alter().table(JobEvents::Table).drop_column(JobEvents::Line).to_owned()).await?;
        manager.alter_table(Table::alter().table(JobSteps::Table).drop_column(JobSteps::OutputLines).to_owned()).await
    }
}
