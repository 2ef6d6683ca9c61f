//! One committed event; rows are inserted once and never updated.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "job_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub job_id: Uuid,
    pub seq: i64,
    /// A [`jobstream_protocol::EventType`] name.
    pub event_type: String,
    pub workspace_id: String,
    pub step_id: Option<Uuid>,
    pub created_at: DateTimeUtc,
    /// The type-specific fields of the event, as they go on the wire.
    pub data: Json,
    /// When its transaction committed, relative to read snapshots: the
    /// PostgreSQL transaction id, or SQLite's commit counter. `None` for rows
    /// written before it was kept.
    pub commit_order: Option<i64>,
    /// On a `step.output` row, how many `\n` the step's output held before
    /// this chunk (its first byte is on line `line + 1`); `None` otherwise.
    pub line: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
