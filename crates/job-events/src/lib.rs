//! jobstream-job-events: durable job events and their delivery.
//!
//! - [`EventStore`]: reads (snapshots, lists, replay pages) over sea-orm.
//! - [`log`]: a step's output read back in pages, and its numbered lines.
//! - [`JobEvents`]: the writer. Each write is one transaction that locks the job
//!   row, checks the rules, takes the next `seq`, inserts the event and updates
//!   the snapshot columns (on SQLite, writes that arrive together share one
//!   transaction, each in its own savepoint: group commit, run on a SQLite
//!   file by a thread of the writer's own); only after commit is the event
//!   handed to the [`EventSink`]. The typed emit helpers (`emit_job_created` …) build each
//!   payload in one place.
//!
//! Delivery (the hub that turns committed events into ordered streams per
//! subscriber) lives in `jobstream-delivery`, which reads through [`EventStore`]
//! and receives events as this crate's [`EventSink`].

pub mod db;
mod emit;
pub mod entity;
pub mod error;
pub mod log;
pub mod retention;
mod script;
pub mod sink;
mod sqlite_writer;
pub mod store;
mod tx;
pub mod writer;

pub use db::{backend_of, migrate, open, redact, OpenError};
pub use error::{ReadError, WriteError};
pub use log::{LineAssembler, LogChunk, LogCursor, LogLine, StepLogInfo};
pub use retention::{run_retention, Prune, PruneReport, RetentionStats};
pub use sea_orm::DbBackend;
pub use sink::{Committed, EventSink, NullSink};
pub use store::{EventPage, EventStore, JobQuery, WorkspaceSnapshot, MAX_PAGE_BYTES};
pub use writer::{Applied, JobEvents};
