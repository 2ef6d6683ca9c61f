//! An in-memory [`EventSource`] for unit tests of the hub: jobs, their events
//! and a commit counter, with the same ordering rules as the database (each
//! job's `seq` is gap-free; every append takes the next commit order).
//!
//! Only `job.progress` events are stored, which is all the delivery rules need:
//! they treat every event type alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use jobstream_job_events::{Committed, EventPage, ReadError, WorkspaceSnapshot};
use jobstream_protocol::{Event, EventBody, EventType, JobProgress, JobSnapshot, JobStatus, Timestamp};
use jobstream_rooms::Horizon;
use uuid::Uuid;

use crate::source::EventSource;

/// Jobs and events held in memory. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct MemorySource {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The last commit order taken.
    counter: i64,
    jobs: HashMap<Uuid, MemJob>,
}

#[derive(Debug)]
struct MemJob {
    snapshot: JobSnapshot,
    events: Vec<Arc<Committed>>,
}

impl MemorySource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a running job in `workspace_id` with no events yet.
    pub fn create_job(&self, workspace_id: &str) -> Uuid {
        let id = Uuid::now_v7();
        let now = Timestamp::now();
        let snapshot = JobSnapshot {
            id,
            workspace_id: workspace_id.to_owned(),
            job_type: "test".into(),
            status: JobStatus::Running,
            priority: 0,
            progress: 0,
            metadata: serde_json::Value::Null,
            result: None,
            error: None,
            created_at: now,
            updated_at: now,
            started_at: Some(now),
            completed_at: None,
            last_seq: 0,
            steps: None,
        };
        self.state().jobs.insert(id, MemJob { snapshot, events: Vec::new() });
        id
    }

    /// Marks a job finished (`completed`): workspace snapshots no longer hold a cursor for it.
    pub fn finish(&self, job_id: Uuid) {
        if let Some(job) = self.state().jobs.get_mut(&job_id) {
            job.snapshot.status = JobStatus::Completed;
        }
    }

    /// Commits the next event of a job (a `job.progress`) and returns it, as
    /// the writer would hand it to the hub. `None` if the job does not exist.
    pub fn append(&self, job_id: Uuid) -> Option<Arc<Committed>> {
        let mut state = self.state();
        state.counter += 1;
        let order = state.counter;
        let job = state.jobs.get_mut(&job_id)?;
        let seq = job.snapshot.last_seq + 1;
        let event = Event {
            event_id: Uuid::now_v7(),
            seq,
            event_type: EventType::JobProgress,
            job_id,
            workspace_id: job.snapshot.workspace_id.clone(),
            step_id: None,
            timestamp: Timestamp::now(),
            body: EventBody::JobProgress(JobProgress { progress: (seq % 101) as u8, message: None }),
        };
        let committed = Arc::new(Committed::new(event, Some(order)).ok()?);
        job.snapshot.last_seq = seq;
        job.events.push(committed.clone());
        Some(committed)
    }
}

#[async_trait]
impl EventSource for MemorySource {
    async fn job(&self, id: Uuid) -> Result<Option<JobSnapshot>, ReadError> {
        Ok(self.state().jobs.get(&id).map(|job| job.snapshot.clone()))
    }

    async fn workspace_snapshot(&self, workspace_id: &str) -> Result<WorkspaceSnapshot, ReadError> {
        let state = self.state();
        let in_workspace = || state.jobs.values().filter(|job| job.snapshot.workspace_id == workspace_id);
        let jobs = in_workspace().map(|job| job.snapshot.clone()).collect();
        let cursors = in_workspace()
            .filter(|job| !job.snapshot.status.is_terminal())
            .map(|job| (job.snapshot.id, job.snapshot.last_seq))
            .collect();
        Ok(WorkspaceSnapshot { jobs, cursors, horizon: Horizon::Counter(state.counter) })
    }

    async fn events_page(
        &self,
        job_id: Uuid,
        since: i64,
        limit: u64,
        max_bytes: usize,
    ) -> Result<EventPage, ReadError> {
        let state = self.state();
        let Some(job) = state.jobs.get(&job_id) else { return Ok(EventPage::default()) };
        let from = usize::try_from(since.max(0)).unwrap_or(usize::MAX);
        let limit = usize::try_from(limit.max(1)).unwrap_or(usize::MAX);
        let mut page = EventPage::default();
        let mut bytes = 0;
        for event in job.events.iter().skip(from) {
            if page.events.len() >= limit || bytes >= max_bytes {
                page.more = true;
                break;
            }
            bytes += event.json.get().len();
            page.events.push(event.clone());
        }
        Ok(page)
    }

    async fn last_seen_seq(&self, job_id: Uuid, horizon: &Horizon) -> Result<i64, ReadError> {
        let state = self.state();
        let seen = state.jobs.get(&job_id).and_then(|job| {
            job.events.iter().rev().find(|e| e.order.is_none_or(|o| horizon.saw(o))).map(|e| e.event.seq)
        });
        Ok(seen.unwrap_or(0))
    }

    async fn jobs_changed_since(&self, workspace_id: &str, horizon: &Horizon) -> Result<Vec<Uuid>, ReadError> {
        let bound = horizon.lower_bound();
        Ok(self
            .state()
            .jobs
            .values()
            .filter(|job| job.snapshot.workspace_id == workspace_id)
            .filter(|job| job.events.iter().any(|e| e.order.is_some_and(|o| o >= bound)))
            .map(|job| job.snapshot.id)
            .collect())
    }

    async fn last_seqs(&self, jobs: Vec<Uuid>) -> Result<Vec<(Uuid, i64)>, ReadError> {
        let state = self.state();
        Ok(jobs.into_iter().filter_map(|id| state.jobs.get(&id).map(|job| (id, job.snapshot.last_seq))).collect())
    }

    async fn recently_updated(
        &self,
        workspaces: Vec<String>,
        _since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<(Uuid, i64)>, ReadError> {
        let state = self.state();
        Ok(state
            .jobs
            .values()
            .filter(|job| workspaces.contains(&job.snapshot.workspace_id))
            .map(|job| (job.snapshot.id, job.snapshot.last_seq))
            .collect())
    }
}
