//! What delivery reads from storage: the [`EventSource`] trait.
//!
//! The hub and the bus read through this trait only, so they can run on the
//! real [`EventStore`] (SQLite or PostgreSQL) or, in unit tests, on
//! [`crate::memory::MemorySource`]. Every method is a read of committed data;
//! the rule that makes gap repair sound is that every event below a committed
//! `seq` of a job is committed too (the writer assigns `seq` in one
//! transaction per write, CONTRACT §4).

use async_trait::async_trait;
use jobstream_job_events::{EventPage, EventStore, ReadError, WorkspaceSnapshot};
use jobstream_protocol::JobSnapshot;
use jobstream_rooms::Horizon;
use uuid::Uuid;

/// Read access to committed jobs and events, as delivery needs it.
#[async_trait]
pub trait EventSource: Send + Sync + std::fmt::Debug + 'static {
    /// A job's snapshot (with its steps), or `None` if it does not exist.
    async fn job(&self, id: Uuid) -> Result<Option<JobSnapshot>, ReadError>;

    /// A workspace's snapshot, the cursors of its unfinished jobs and the
    /// commit horizon, consistent with each other (see [`WorkspaceSnapshot`]).
    async fn workspace_snapshot(&self, workspace_id: &str) -> Result<WorkspaceSnapshot, ReadError>;

    /// A page of a job's events with `seq > since`, ascending by `seq`: at
    /// most `limit` events and about `max_bytes` (at least one event when
    /// there is one); `more` when events may follow (see
    /// [`EventStore::events_page`]).
    async fn events_page(&self, job_id: Uuid, since: i64, limit: u64, max_bytes: usize)
        -> Result<EventPage, ReadError>;

    /// The last `seq` of a job that `horizon` saw (0 if none).
    async fn last_seen_seq(&self, job_id: Uuid, horizon: &Horizon) -> Result<i64, ReadError>;

    /// The jobs of a workspace with an event that `horizon` may not have seen.
    async fn jobs_changed_since(&self, workspace_id: &str, horizon: &Horizon) -> Result<Vec<Uuid>, ReadError>;

    /// The `lastSeq` of each existing job among `jobs`.
    async fn last_seqs(&self, jobs: Vec<Uuid>) -> Result<Vec<(Uuid, i64)>, ReadError>;

    /// `(job, lastSeq)` of the jobs of these workspaces updated at or after `since`.
    async fn recently_updated(
        &self,
        workspaces: Vec<String>,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<(Uuid, i64)>, ReadError>;
}

#[async_trait]
impl EventSource for EventStore {
    async fn job(&self, id: Uuid) -> Result<Option<JobSnapshot>, ReadError> {
        EventStore::job(self, id).await
    }

    async fn workspace_snapshot(&self, workspace_id: &str) -> Result<WorkspaceSnapshot, ReadError> {
        EventStore::workspace_snapshot(self, workspace_id).await
    }

    async fn events_page(
        &self,
        job_id: Uuid,
        since: i64,
        limit: u64,
        max_bytes: usize,
    ) -> Result<EventPage, ReadError> {
        EventStore::events_page(self, job_id, since, limit, max_bytes).await
    }

    async fn last_seen_seq(&self, job_id: Uuid, horizon: &Horizon) -> Result<i64, ReadError> {
        EventStore::last_seen_seq(self, job_id, horizon).await
    }

    async fn jobs_changed_since(&self, workspace_id: &str, horizon: &Horizon) -> Result<Vec<Uuid>, ReadError> {
        EventStore::jobs_changed_since(self, workspace_id, horizon).await
    }

    async fn last_seqs(&self, jobs: Vec<Uuid>) -> Result<Vec<(Uuid, i64)>, ReadError> {
        EventStore::last_seqs(self, jobs).await
    }

    async fn recently_updated(
        &self,
        workspaces: Vec<String>,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<(Uuid, i64)>, ReadError> {
        EventStore::recently_updated(self, workspaces, since).await
    }
}
