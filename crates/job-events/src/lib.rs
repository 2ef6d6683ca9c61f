//! jobstream-job-events: durable job events and their delivery.
//!
//! - [`EventStore`]: reads (snapshots, lists, replay pages) over sea-orm.
//! - [`log`]: a step's output read back in pages, and its numbered lines.
//! - [`JobEvents`]: the writer. Each write is one transaction that locks the job
//!   row, checks the rules, takes the next `seq`, inserts the event and updates
//!   the snapshot columns; only after commit is the event handed to the
//!   [`EventSink`]. The typed emit helpers (`emit_job_created` …) build each
//!   payload in one place.
//! - [`delivery`]: the per-node hub that turns committed events into ordered,
//!   gap-free, exactly-once streams for each subscriber, repairing any gap from
//!   the database. It knows outlets only through the [`delivery::Outlet`] trait,
//!   so this crate knows nothing of Socket.IO or HTTP.

pub mod db;
pub mod delivery;
mod emit;
pub mod entity;
pub mod error;
pub mod log;
pub mod retention;
pub mod sink;
pub mod store;
pub mod writer;

pub use db::{backend_of, migrate, open, redact, OpenError};
pub use error::{ReadError, WriteError};
pub use log::{LineAssembler, LogChunk, LogCursor, LogLine, StepLogInfo};
pub use retention::{run_retention, Prune, PruneReport, RetentionStats};
pub use sea_orm::DbBackend;
pub use sink::{Committed, EventSink, NullSink};
pub use store::{EventStore, JobQuery, WorkspaceSnapshot};
pub use writer::{Applied, JobEvents};
