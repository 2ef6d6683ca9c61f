//! Writes: job creation and event appends, each in one transaction that assigns `seq`
//! (on SQLite, concurrent writes share one transaction: see "Group commit" below).
//!
//! Under the lock of the job row (`SELECT … FOR UPDATE` on PostgreSQL; SQLite
//! has a single writer, which this process queues for), a write reads the job,
//! checks the status and step rules, takes `seq = last_seq + 1`, inserts the
//! event, updates the snapshot columns, and commits. Commits of one job are
//! therefore in `seq` order, and every event below a committed `seq` is
//! committed too — the property delivery relies on to fill a gap from the database.
//!
//! # Group commit (SQLite)
//!
//! SQLite has one writer and syncs once per commit, so writes that arrive
//! while a commit is under way queue up, and the next holder of the writer's
//! turn runs them all in one transaction with one sync (`docs/behaviour.md`,
//! "Group commit"). Each write runs inside its own `SAVEPOINT`: its rules
//! (`seq` per job, status transitions, all-or-nothing batches, `eventId`) are
//! checked against everything applied before it, and a refused write rolls
//! back to its savepoint alone (a group of one write runs in a transaction of
//! its own, without one). Every write is answered only after the group's
//! commit; a storage fault, in a write or in the commit, fails every write of
//! the group (503), after the same read-back by event id as a single commit.
//! Committed events reach the sink after the commit, write by write, in the
//! order the writes were applied (one commit order for the whole group).
//! PostgreSQL commits each write on its own: row locks let writers of
//! different jobs commit side by side.
//!
//! The rules run over a [`WriteTx`] (the `tx` module): on a SQLite file,
//! groups run on a thread of the writer's own with a synchronous connection
//! (`sqlite_writer`), where a statement costs no hand-over between threads;
//! on PostgreSQL and SQLite in memory, over sea-orm.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use jobstream_protocol::{
    BatchItem, CreateJob, CustomEvent, Event, EventBody, EventType, JobCreated, JobProgress, JobSnapshot, JobStatus,
    StatusChanged, StepFinished, StepOutput, StepProgress, StepSnapshot, StepStarted, StepStatus, Timestamp,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, IntoActiveModel, QueryFilter, SqlErr, TransactionTrait,
};
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::entity::{job_events, job_steps, jobs};
use crate::error::WriteError;
use crate::script::Script;
use crate::sink::{Committed, EventSink};
use crate::store::{job_snapshot, step_snapshot, EventStore};
use crate::tx::{commit_order, SeaTx, WriteTx, CHUNK as INSERT_CHUNK};

/// The writer. Cheap to clone; all clones share one sink and one SQLite write queue.
#[derive(Clone)]
pub struct JobEvents {
    store: EventStore,
    /// Where write transactions run: on SQLite a connection of their own
    /// ([`crate::db::writer_pool`]), on PostgreSQL the shared pool.
    write_db: DatabaseConnection,
    sink: Arc<dyn EventSink>,
    /// SQLite allows one writer at a time; queueing here avoids `database is locked`.
    write_queue: Option<Arc<Mutex<()>>>,
    /// SQLite: writes waiting for the next group commit.
    group: Option<Arc<GroupQueue>>,
    /// SQLite files: the thread that runs the groups (see `sqlite_writer`).
    thread: Option<Arc<WriterThread>>,
    retention: Arc<crate::retention::RetentionStats>,
}

/// The SQLite writer's thread, closed when the last writer goes.
struct WriterThread {
    queue: Arc<GroupQueue>,
    /// Where the thread reports its statements, once set.
    metric: Arc<std::sync::OnceLock<crate::sqlite_writer::MetricCallback>>,
    handle: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl WriterThread {
    /// Starts the thread over the SQLite file of `db`, if it is a file the
    /// writer can open (a database in memory is not).
    fn start(
        db: &DatabaseConnection,
        queue: &Arc<GroupQueue>,
        turn: &Arc<Mutex<()>>,
        sink: &Arc<dyn EventSink>,
    ) -> Option<Self> {
        let DatabaseConnection::SqlxSqlitePoolConnection(_) = db else { return None };
        let path = db.get_sqlite_connection_pool().connect_options().get_filename().to_path_buf();
        let conn = match crate::sqlite_writer::open(&path) {
            Ok(conn) => conn,
            Err(err) => {
                tracing::info!(error = %err, "SQLite writes go through the pool (not a file the writer can open)");
                return None;
            }
        };
        let metric = Arc::default();
        let tx = crate::sqlite_writer::SqliteTx::new(path, conn, Arc::clone(&metric));
        let runtime = tokio::runtime::Handle::try_current().ok();
        match crate::sqlite_writer::spawn(tx, queue.clone(), turn.clone(), sink.clone(), runtime) {
            Ok(handle) => Some(Self { queue: queue.clone(), metric, handle: std::sync::Mutex::new(Some(handle)) }),
            Err(err) => {
                tracing::warn!(error = %err, "the SQLite writer's thread could not start; writes go through the pool");
                None
            }
        }
    }

    /// Stops taking writes, and waits until those queued are answered and
    /// the connection is closed.
    async fn close(&self) {
        self.queue.close();
        let handle = self.handle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl std::fmt::Debug for JobEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobEvents").field("backend", &self.store.backend()).finish_non_exhaustive()
    }
}

/// One applied write: its committed event, and the step it created or finished.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The event, encoded.
    pub event: Arc<Committed>,
    /// The step after the write, for `step` and `step_complete` writes.
    pub step: Option<StepSnapshot>,
    /// The write repeated an earlier one (same `eventId`, same body): nothing
    /// was appended, and `event` is the one stored then.
    pub repeated: bool,
}

/// A write's check of the job's workspace (see [`JobEvents::write`]).
type MayWrite = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Where a write's answer goes once its group has committed.
type Reply = tokio::sync::oneshot::Sender<Result<Done, WriteError>>;

/// Requests and writes per group commit, at most (a write is never split).
const GROUP_ITEMS: usize = 4_000;

/// A write as it waits for its transaction.
pub(crate) enum Work {
    Create(CreateJob),
    Apply { items: Vec<(BatchItem, Option<Uuid>)>, may_write: MayWrite, name_items: bool },
}

impl Work {
    fn items(&self) -> usize {
        match self {
            Work::Create(_) => 1,
            Work::Apply { items, .. } => items.len().max(1),
        }
    }
}

/// A write applied inside a transaction that has not committed yet.
pub(crate) enum Staged {
    Created(Created),
    Applied(Vec<Event>, Vec<Outcome>),
}

impl Staged {
    /// The new events it appended.
    fn events(&self) -> &[Event] {
        match self {
            Staged::Created(Created::New(_, event)) => std::slice::from_ref(event),
            Staged::Created(Created::Existing(_)) => &[],
            Staged::Applied(events, _) => events,
        }
    }
}

/// What a job creation came to.
pub(crate) enum Created {
    /// The job existed (the same request repeated).
    Existing(Box<JobSnapshot>),
    /// A new job and its `job.created`.
    New(Box<JobSnapshot>, Box<Event>),
}

/// A write's answer.
pub(crate) enum Done {
    Created(Box<JobSnapshot>, bool),
    Applied(Vec<Applied>),
}

/// A write waiting in the group-commit queue with where its answer goes.
pub(crate) struct Pending {
    work: Work,
    reply: Reply,
}

/// SQLite's group-commit queue: writes that arrived while the writer's turn
/// was taken, run together by the next holder of the turn (the writer's
/// thread, or on a database in memory the next write's task).
#[derive(Default)]
pub(crate) struct GroupQueue {
    queue: std::sync::Mutex<Queued>,
    /// Signalled when a write arrives or the queue closes.
    ready: std::sync::Condvar,
}

#[derive(Default)]
struct Queued {
    writes: std::collections::VecDeque<Pending>,
    closed: bool,
}

impl GroupQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.lock().writes.len()
    }

    /// Queues a write; once the queue is closed (the writer shut down) it is
    /// answered unavailable instead.
    fn push(&self, pending: Pending) {
        let mut queue = self.lock();
        if queue.closed {
            drop(queue);
            let _ = pending.reply.send(Err(WriteError::Unavailable(DbErr::Custom("the writer is closed".into()))));
            return;
        }
        queue.writes.push_back(pending);
        drop(queue);
        self.ready.notify_one();
    }

    /// The next group: queued writes in arrival order, up to [`GROUP_ITEMS`]
    /// items (at least one write).
    pub(crate) fn take(&self) -> Vec<Pending> {
        let mut queue = self.lock();
        let mut group = Vec::new();
        let mut items = 0;
        while let Some(next) = queue.writes.front() {
            items += next.work.items();
            if !group.is_empty() && items > GROUP_ITEMS {
                break;
            }
            group.extend(queue.writes.pop_front());
        }
        group
    }

    /// Blocks until a write is queued: `false` once the queue is closed and
    /// empty (for the writer's thread).
    pub(crate) fn wait(&self) -> bool {
        let mut queue = self.lock();
        while queue.writes.is_empty() && !queue.closed {
            queue = self.ready.wait(queue).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        !queue.writes.is_empty()
    }

    /// Takes no more writes; those queued are still run.
    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

/// Answers every write in `replies` with `err` (the first with `err` itself,
/// the others with an error of the same kind: 503 for a storage fault).
fn fail_all(replies: impl Iterator<Item = Reply>, err: WriteError) {
    let mut err = Some(err);
    let mut copy = None;
    for reply in replies {
        let this = match err.take() {
            Some(first) => {
                copy = Some(matches!(first, WriteError::Unavailable(_)));
                first
            }
            None if copy == Some(true) => WriteError::Unavailable(DbErr::Custom("the group commit failed".into())),
            None => WriteError::Internal(DbErr::Custom("the group commit failed".into())),
        };
        let _ = reply.send(Err(this));
    }
}

/// What one item of a write came to.
pub(crate) enum Outcome {
    /// Appended; its event is the next new one.
    New(Option<StepSnapshot>),
    /// A repeat of a stored event.
    Repeat(Box<Event>, Option<i64>, Option<StepSnapshot>),
}

impl JobEvents {
    /// A writer over `db` that hands committed events to `sink`.
    pub fn new(db: DatabaseConnection, sink: Arc<dyn EventSink>) -> Self {
        let sqlite = db.get_database_backend() == DbBackend::Sqlite;
        let write_queue = sqlite.then(|| Arc::new(Mutex::new(())));
        let group: Option<Arc<GroupQueue>> = sqlite.then(Arc::default);
        let thread = match (&group, &write_queue) {
            (Some(group), Some(turn)) => WriterThread::start(&db, group, turn, &sink).map(Arc::new),
            _ => None,
        };
        let write_db = crate::db::writer_pool(&db);
        Self { store: EventStore::new(db), write_db, sink, write_queue, group, thread, retention: Arc::default() }
    }

    /// Whether SQLite's writes run on the writer's own thread (a SQLite
    /// file) rather than through the pool (PostgreSQL, SQLite in memory).
    #[doc(hidden)]
    pub fn has_writer_thread(&self) -> bool {
        self.thread.is_some()
    }

    /// This writer with SQLite's writes through the pool, as for a database
    /// in memory (for tests that compare the two).
    #[doc(hidden)]
    #[must_use]
    pub fn without_writer_thread(mut self) -> Self {
        if self.thread.take().is_some() {
            self.group = Some(Arc::default());
        }
        self
    }

    /// The read side.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Calls `callback` with every statement the writer and its store run
    /// (sea-orm's metric callback, on both of their connections, and on a
    /// SQLite file the writer thread's statements; that one is set once).
    pub fn set_metric_callback<F>(&mut self, callback: F)
    where
        F: Fn(&sea_orm::metric::Info<'_>) + Send + Sync + 'static,
    {
        let callback = Arc::new(callback);
        let shared = callback.clone();
        self.store.db.set_metric_callback(move |info| shared(info));
        if let Some(thread) = &self.thread {
            // Set once: a later callback is not seen by the writer's thread.
            let _ = thread.metric.set(callback.clone());
        }
        self.write_db.set_metric_callback(move |info| callback(info));
    }

    /// Closes SQLite's write connection, waiting for it (the last connection
    /// closed checkpoints the write-ahead log: close this one before the
    /// pool's). On PostgreSQL, where writes share the pool, nothing.
    pub async fn close(&self) -> Result<(), DbErr> {
        if let Some(thread) = &self.thread {
            thread.close().await;
        }
        match &self.write_db {
            DatabaseConnection::SqlxSqlitePoolConnection(_) => self.write_db.close_by_ref().await,
            _ => Ok(()),
        }
    }

    /// Where write transactions run (see [`crate::db::writer_pool`]).
    pub(crate) fn write_db(&self) -> &DatabaseConnection {
        &self.write_db
    }

    async fn begin(&self) -> Result<(Option<tokio::sync::OwnedMutexGuard<()>>, DatabaseTransaction), WriteError> {
        let guard = self.write_turn().await;
        let tx = self.write_db.begin().await?;
        Ok((guard, tx))
    }

    /// The one writer's turn on SQLite (`None` on PostgreSQL, where row locks order writers).
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.write_queue {
            Some(queue) => Some(queue.clone().lock_owned().await),
            None => None,
        }
    }

    /// A write transaction in the writer's turn, for maintenance (retention).
    /// On SQLite its first statement takes the write lock (see
    /// [`commit_order`]), so that another process holding it (a server, while
    /// `jobstream prune` runs) is waited for as `busy_timeout` allows, rather
    /// than refused at once when a read in the transaction would have to be
    /// upgraded to a write.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<(Option<tokio::sync::OwnedMutexGuard<()>>, DatabaseTransaction), WriteError> {
        let (guard, tx) = self.begin().await?;
        if self.store.backend() == DbBackend::Sqlite {
            if let Err(err) = commit_order(&tx, DbBackend::Sqlite).await {
                return Err(rollback(tx, err).await);
            }
        }
        Ok((guard, tx))
    }

    /// Writes waiting for the next group commit (SQLite; always 0 on PostgreSQL).
    pub fn queued_writes(&self) -> usize {
        self.group.as_ref().map_or(0, |group| group.len())
    }

    /// Holds the writer's turn (SQLite; `None` on PostgreSQL) until the guard
    /// is dropped: writes queue behind it and then run as one group. For tests
    /// of group commit.
    #[doc(hidden)]
    pub async fn hold_writer_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.write_turn().await
    }

    /// Totals of what retention deleted.
    pub fn retention_stats(&self) -> &crate::retention::RetentionStats {
        &self.retention
    }

    /// Creates a job and its `job.created` event (seq 1). With a client id that
    /// exists in the same workspace, returns that job and `false` (nothing written).
    ///
    /// Runs to its end even if the caller stops waiting (see [`JobEvents::write`]).
    pub async fn create_job(&self, request: CreateJob) -> Result<(JobSnapshot, bool), WriteError> {
        use jobstream_protocol::requests::Request as _;
        request.validate()?;
        if self.thread.is_some() {
            // Queued at the first poll, then run to its end by the writer's thread.
            return self.create_job_now(request).await;
        }
        let this = self.clone();
        detached(async move { this.create_job_now(request).await }).await
    }

    async fn create_job_now(&self, request: CreateJob) -> Result<(JobSnapshot, bool), WriteError> {
        let id = request.id;
        let outcome = match self.run(Work::Create(request.clone())).await {
            Ok(Done::Created(job, created)) => return Ok((*job, created)),
            Ok(Done::Applied(_)) => return Err(WriteError::Internal(DbErr::Custom("mismatched write".into()))),
            Err(err) => err,
        };
        match (outcome, id) {
            // Another writer created the same id first: answer as for a repeat.
            (WriteError::Internal(err), Some(id))
                if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) =>
            {
                let row = jobs::Entity::find_by_id(id).one(&self.store.db).await?;
                same_job(row, id, &request)?.map(|job| (job, false)).ok_or(WriteError::Internal(err))
            }
            (err, _) => Err(err),
        }
    }

    /// Applies one write. `may_write` is asked about the job's workspace once
    /// the job is locked; a job it refuses is reported as not found.
    ///
    /// The write runs in its own task (on a SQLite file, on the writer's
    /// thread, from the first poll on): a caller that stops waiting (an HTTP
    /// client that hangs up) does not cancel it half-way, and a committed event
    /// is always handed to the sink. On any failure the transaction is rolled
    /// back before the error is returned.
    pub async fn write(
        &self,
        item: BatchItem,
        may_write: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Result<Applied, WriteError> {
        self.write_with_id(item, None, may_write).await
    }

    /// [`JobEvents::write`] with an optional client-chosen event id (CONTRACT
    /// §7, idempotent writes): the same id again with the same write answers
    /// the stored event and appends nothing ([`Applied::repeated`]); with
    /// another write it is a conflict. Holds across restarts and nodes: the id
    /// is the stored event's primary key.
    pub async fn write_with_id(
        &self,
        item: BatchItem,
        event_id: Option<Uuid>,
        may_write: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Result<Applied, WriteError> {
        let mut applied = self.apply_all(vec![(item, event_id)], may_write, false).await?;
        applied.pop().ok_or_else(|| WriteError::Internal(DbErr::Custom("empty write".into())))
    }

    /// Applies writes in order, all in one transaction: all or nothing. A refusal
    /// names the item ([`WriteError::InBatch`]).
    pub async fn write_batch(
        &self,
        items: Vec<BatchItem>,
        may_write: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Result<Vec<Applied>, WriteError> {
        self.apply_all(items.into_iter().map(|i| (i, None)).collect(), may_write, true).await
    }

    /// [`JobEvents::write_batch`] with an optional event id per item (see
    /// [`JobEvents::write_with_id`]): repeated items append nothing.
    pub async fn write_batch_with_ids(
        &self,
        items: Vec<(BatchItem, Option<Uuid>)>,
        may_write: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Result<Vec<Applied>, WriteError> {
        self.apply_all(items, may_write, true).await
    }

    async fn apply_all(
        &self,
        items: Vec<(BatchItem, Option<Uuid>)>,
        may_write: impl Fn(&str) -> bool + Send + Sync + 'static,
        name_items: bool,
    ) -> Result<Vec<Applied>, WriteError> {
        let may_write: MayWrite = Arc::new(may_write);
        if self.thread.is_some() {
            // Queued at the first poll, then run to its end by the writer's
            // thread, which is the only writer: no two insert one id at once.
            return self.apply_all_now(items, may_write, name_items).await;
        }
        let this = self.clone();
        detached(async move {
            // Ids the client chose (an `eventId`, a new step's id) may be
            // inserted by two writers at once (PostgreSQL: the second waits
            // for the first's commit, then fails on the key).
            let client_ids = |(item, id): &(BatchItem, Option<Uuid>)| {
                id.is_some() || matches!(item, BatchItem::Step(_, start) if start.id.is_some())
            };
            if !items.iter().any(client_ids) {
                return this.apply_all_now(items, may_write, name_items).await;
            }
            match this.apply_all_now(items.clone(), may_write.clone(), name_items).await {
                // Two writers inserted the same new id at once: run again, the
                // second sees the first's event (a repeat or a conflict) or
                // step (taken).
                Err(WriteError::Internal(err))
                    if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) =>
                {
                    this.apply_all_now(items, may_write, name_items).await
                }
                outcome => outcome,
            }
        })
        .await
    }

    async fn apply_all_now(
        &self,
        items: Vec<(BatchItem, Option<Uuid>)>,
        may_write: MayWrite,
        name_items: bool,
    ) -> Result<Vec<Applied>, WriteError> {
        match self.run(Work::Apply { items, may_write, name_items }).await? {
            Done::Applied(applied) => Ok(applied),
            Done::Created(..) => Err(WriteError::Internal(DbErr::Custom("mismatched write".into()))),
        }
    }

    /// Runs one write: on a SQLite file on the writer's thread, on SQLite in
    /// memory in a group commit, alone on PostgreSQL (where row locks let
    /// writers of different jobs commit side by side).
    async fn run(&self, work: Work) -> Result<Done, WriteError> {
        match (&self.thread, &self.group) {
            (Some(thread), _) => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                thread.queue.push(Pending { work, reply });
                answer.await.unwrap_or_else(|_| Err(no_answer()))
            }
            (None, Some(group)) => self.run_grouped(group, work).await,
            (None, None) => self.run_alone(work).await,
        }
    }

    /// One write in its own transaction (PostgreSQL).
    async fn run_alone(&self, work: Work) -> Result<Done, WriteError> {
        let guard = self.write_turn().await;
        let outcome = run_own_transaction(&mut SeaTx::new(&self.write_db, &self.store.db), &*self.sink, work).await;
        drop(guard);
        outcome
    }

    /// Group commit over sea-orm (SQLite in memory): `work` joins the queue,
    /// and whoever holds the writer's turn runs everything queued so far as
    /// one group — one transaction and one sync. A write is answered only
    /// once its group has committed (or failed); an earlier holder of the
    /// turn may have run it.
    async fn run_grouped(&self, group: &GroupQueue, work: Work) -> Result<Done, WriteError> {
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        group.push(Pending { work, reply });
        let answered = |answer: &mut tokio::sync::oneshot::Receiver<Result<Done, WriteError>>| match answer.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => None,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Some(Err(no_answer())),
        };
        loop {
            let guard = self.write_turn().await;
            if let Some(outcome) = answered(&mut answer) {
                return outcome;
            }
            let pending = group.take();
            run_group(&mut SeaTx::new(&self.write_db, &self.store.db), &*self.sink, pending).await;
            drop(guard);
            if let Some(outcome) = answered(&mut answer) {
                return outcome;
            }
        }
    }
}

/// The answer of a write whose group ended without answering it (a panic).
fn no_answer() -> WriteError {
    WriteError::Internal(DbErr::Custom("a group commit ended without an answer".into()))
}

/// The job `row` read for a creation with id `id`, if it was created by the
/// same request (same workspace, type, priority and metadata): a repeat,
/// answered with the existing job. An id taken otherwise, in this workspace
/// or another, is one generic conflict that names no workspace, so ids do
/// not reveal what exists elsewhere.
fn same_job(row: Option<jobs::Model>, id: Uuid, request: &CreateJob) -> Result<Option<JobSnapshot>, WriteError> {
    let Some(row) = row else {
        return Ok(None);
    };
    let same = row.workspace_id == request.workspace_id
        && row.job_type == request.job_type
        && row.priority == request.priority.unwrap_or(0)
        && match (&row.metadata, &request.metadata) {
            (Value::Object(stored), Some(sent)) => stored == sent,
            (Value::Object(stored), None) => stored.is_empty(),
            _ => false,
        };
    if !same {
        return Err(WriteError::Conflict(format!(
            "job id {id} is already used; choose another id, or repeat the original request exactly"
        )));
    }
    let job = job_snapshot(row, None).map_err(|_| WriteError::Conflict(format!("job {id} is unreadable")))?;
    Ok(Some(job))
}

/// Creates the job of `request` inside `tx` (nothing is committed here):
/// the existing job for a repeated id, else the new row and its `job.created`.
async fn create_in(tx: &mut dyn WriteTx, order: i64, request: CreateJob) -> Result<Created, WriteError> {
    let backend = tx.backend();
    let id = request.id.unwrap_or_else(Uuid::now_v7);
    let existing = tx.job(id).await?;
    if let Some(existing) = same_job(existing, id, &request)? {
        return Ok(Created::Existing(Box::new(existing)));
    }
    let now = Timestamp::now();
    let row = jobs::Model {
        id,
        workspace_id: request.workspace_id.clone(),
        job_type: request.job_type.clone(),
        status: JobStatus::Pending.as_str().to_owned(),
        priority: request.priority.unwrap_or(0),
        progress: 0,
        metadata: Value::Object(request.metadata.clone().unwrap_or_default()),
        result: None,
        error: None,
        created_at: now.as_datetime(),
        updated_at: now.as_datetime(),
        started_at: None,
        completed_at: None,
        last_seq: 1,
    };
    let snapshot = job_snapshot(row.clone(), None).map_err(|_| WriteError::Conflict("invalid job".into()))?;
    let event = Event {
        event_id: Uuid::now_v7(),
        seq: 1,
        event_type: EventType::JobCreated,
        job_id: id,
        workspace_id: request.workspace_id.clone(),
        step_id: None,
        timestamp: now,
        body: EventBody::JobCreated(JobCreated { job: snapshot.clone() }),
    };
    let mut script = Script::default();
    script.push(insert_job(backend, row)?);
    tx.execute(script).await?;
    // After the insert: on PostgreSQL it waits for a prune deleting this
    // id to commit, and this read then sees the prune's record.
    if tx.was_pruned(id).await? {
        return Err(WriteError::Conflict(format!(
            "job id {id} is already used; choose another id, or repeat the original request exactly"
        )));
    }
    let mut script = Script::default();
    script.push(insert_events(backend, std::slice::from_ref(&event), &HashMap::new(), order)?);
    tx.execute(script).await?;
    Ok(Created::New(Box::new(snapshot), Box::new(event)))
}

/// Applies `items` inside `tx` (nothing is committed here): every rule is
/// checked against what `tx` sees, and the events to publish after the
/// commit are returned with what each item came to.
///
/// `order` is the commit order, or `None` when it is to be read here (with
/// the jobs' row locks on PostgreSQL); returned with what was staged.
async fn apply_in(
    tx: &mut dyn WriteTx,
    order: Option<i64>,
    items: Vec<(BatchItem, Option<Uuid>)>,
    may_write: &(dyn Fn(&str) -> bool + Sync),
    name_items: bool,
) -> Result<(Staged, i64), WriteError> {
    let mut batch = Batch::new(tx);
    let jobs = items.iter().map(|(item, _)| item.job_id()).collect();
    let steps = items.iter().filter_map(|(item, _)| step_of(item)).collect();
    let locked = batch.lock_jobs(jobs, steps, order.is_none()).await?;
    let order = match order.or(locked) {
        Some(order) => order,
        None => batch.tx.commit_order().await?,
    };
    let mut steps = Vec::with_capacity(items.len());
    for (index, (item, event_id)) in items.into_iter().enumerate() {
        let applied = batch.apply_once(item, event_id, may_write).await.map_err(|err| match err {
            WriteError::Unavailable(_) | WriteError::Internal(_) => err,
            err if name_items => WriteError::InBatch { index, source: Box::new(err) },
            err => err,
        })?;
        steps.push(applied);
    }
    Ok((Staged::Applied(batch.flush(order).await?, steps), order))
}

/// Runs `work` inside `tx` at commit order `order` (read here when
/// `None`), and returns what it staged with that order.
async fn run_in(tx: &mut dyn WriteTx, order: Option<i64>, work: Work) -> Result<(Staged, i64), WriteError> {
    match work {
        Work::Create(request) => {
            let order = match order {
                Some(order) => order,
                None => tx.commit_order().await?,
            };
            Ok((Staged::Created(create_in(tx, order, request).await?), order))
        }
        Work::Apply { items, may_write, name_items } => {
            apply_in(tx, order, items, may_write.as_ref(), name_items).await
        }
    }
}

/// Runs `work` in a transaction of its own, no savepoint: a refused write
/// rolls the whole transaction back. The commit order is read with the
/// write's first request (the jobs' row locks on PostgreSQL; on SQLite
/// the commit counter's update, which leads the reads of the jobs and takes
/// the write lock before anything is read: see [`crate::tx::commit_order_sql`]).
async fn run_own_transaction(tx: &mut dyn WriteTx, sink: &dyn EventSink, work: Work) -> Result<Done, WriteError> {
    tx.begin().await?;
    let (staged, order) = match run_in(tx, None, work).await {
        Ok(staged) => staged,
        Err(err) => {
            tx.rollback().await;
            return Err(err);
        }
    };
    tx.commit(&staged.events().iter().collect::<Vec<_>>(), sink).await?;
    finish(sink, staged, order)
}

/// Runs a group in one transaction, each write inside its own savepoint:
/// a refused write rolls back to its savepoint and is answered with its
/// refusal; the others go on. Then one commit. If the commit fails (and the
/// read-back finds it did not commit), or a storage fault breaks the
/// transaction part-way, every write of the group is answered with the
/// error. After a commit, the group's events reach the sink write by write,
/// in the order they were applied.
///
/// A group of one write needs no savepoint: it runs as a write of its own
/// ([`run_own_transaction`]), two statements fewer.
pub(crate) async fn run_group(tx: &mut dyn WriteTx, sink: &dyn EventSink, mut group: Vec<Pending>) {
    if group.len() == 1 {
        if let Some(Pending { work, reply }) = group.pop() {
            let _ = reply.send(run_own_transaction(tx, sink, work).await);
        }
        return;
    }
    let order = match begin_group(tx).await {
        Ok(order) => order,
        Err(err) => return fail_all(group.into_iter().map(|p| p.reply), err),
    };
    let mut staged: Vec<(Reply, Result<Staged, WriteError>)> = Vec::with_capacity(group.len());
    let mut rest = group.into_iter();
    while let Some(Pending { work, reply }) = rest.next() {
        let outcome = match tx.execute_unprepared("SAVEPOINT write").await {
            Ok(()) => run_in(tx, Some(order), work).await.map(|(staged, _)| staged),
            Err(err) => Err(err),
        };
        let kept = match &outcome {
            Ok(_) => tx.execute_unprepared("RELEASE write").await,
            // A storage fault (disk full, I/O) fails the whole group.
            Err(WriteError::Unavailable(_)) => Err(WriteError::Unavailable(DbErr::Custom("storage fault".into()))),
            Err(_) => match tx.execute_unprepared("ROLLBACK TO write").await {
                Ok(()) => tx.execute_unprepared("RELEASE write").await,
                Err(err) => Err(err),
            },
        };
        match kept {
            Ok(()) => staged.push((reply, outcome)),
            Err(fault) => {
                let err = match outcome {
                    Err(err @ WriteError::Unavailable(_)) => err,
                    _ => fault,
                };
                tracing::warn!(error = %err, "a group commit failed part-way; every write in it is refused");
                tx.rollback().await;
                let replies = staged.into_iter().map(|(reply, _)| reply).chain(std::iter::once(reply));
                return fail_all(replies.chain(rest.map(|p| p.reply)), err);
            }
        }
    }
    let events: Vec<&Event> =
        staged.iter().filter_map(|(_, s)| s.as_ref().ok()).flat_map(|s| s.events().iter()).collect();
    if let Err(err) = tx.commit(&events, sink).await {
        return fail_all(staged.into_iter().map(|(reply, _)| reply), err);
    }
    for (reply, outcome) in staged {
        let _ = reply.send(outcome.and_then(|staged| finish(sink, staged, order)));
    }
}

/// Begins a group's transaction with its commit order (the first
/// statement, which takes SQLite's write lock).
async fn begin_group(tx: &mut dyn WriteTx) -> Result<i64, WriteError> {
    tx.begin().await?;
    match tx.commit_order().await {
        Ok(order) => Ok(order),
        Err(err) => {
            tx.rollback().await;
            Err(err)
        }
    }
}

/// After the commit: hands a write's new events to the sink and answers it.
fn finish(sink: &dyn EventSink, staged: Staged, order: i64) -> Result<Done, WriteError> {
    let (events, steps) = match staged {
        Staged::Created(Created::Existing(job)) => return Ok(Done::Created(job, false)),
        Staged::Created(Created::New(job, event)) => {
            publish(sink, vec![*event], order);
            return Ok(Done::Created(job, true));
        }
        Staged::Applied(events, steps) => (events, steps),
    };
    let mut committed = publish(sink, events, order).into_iter();
    steps
        .into_iter()
        .map(|outcome| match outcome {
            Outcome::New(step) => committed
                .next()
                .map(|event| Applied { event, step, repeated: false })
                .ok_or_else(|| WriteError::Internal(DbErr::Custom("a committed event could not be encoded".into()))),
            Outcome::Repeat(event, order, step) => Committed::new(*event, order)
                .map(|c| Applied { event: Arc::new(c), step, repeated: true })
                .map_err(|e| WriteError::Internal(DbErr::Custom(format!("stored event: {e}")))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Done::Applied)
}

/// Encodes committed events and hands them to the sink. The events are
/// committed whatever the sink does: a sink that panics is logged and told
/// the jobs are uncertain (its subscribers compare their cursors with the
/// database), and the writes are still answered as committed, so that a
/// client never retries (and repeats) a write that was stored.
fn publish(sink: &dyn EventSink, events: Vec<Event>, order: i64) -> Vec<Arc<Committed>> {
    let committed: Vec<Arc<Committed>> = events
        .into_iter()
        .filter_map(|event| match Committed::new(event, Some(order)) {
            Ok(c) => Some(Arc::new(c)),
            Err(err) => {
                tracing::error!(%err, "a committed event could not be encoded");
                None
            }
        })
        .collect();
    let published = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.publish(&committed)));
    if published.is_err() {
        tracing::error!("delivering committed events failed; their jobs' subscribers are checked against the database");
        let jobs: Vec<Uuid> = committed.iter().map(|c| c.event.job_id).collect();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.uncertain(&jobs)));
    }
    committed
}

/// Runs a write in its own task and waits for it. The task is not cancelled
/// when the waiter goes away; a panic inside it rolls the transaction back
/// (the connection is dropped) and is answered as an internal error.
async fn detached<T: Send + 'static>(
    write: impl std::future::Future<Output = Result<T, WriteError>> + Send + 'static,
) -> Result<T, WriteError> {
    match tokio::spawn(write).await {
        Ok(outcome) => outcome,
        Err(err) => {
            tracing::error!(error = %err, "a write task failed; its transaction was rolled back");
            Err(WriteError::Internal(DbErr::Custom("write task failed".into())))
        }
    }
}

/// Rolls `tx` back after `err` and returns the error. A rollback that fails
/// leaves the connection to the pool's release check, which closes it.
async fn rollback(tx: DatabaseTransaction, err: impl Into<WriteError>) -> WriteError {
    let err = err.into();
    if let Err(rollback) = tx.rollback().await {
        tracing::warn!(error = %rollback, "rollback after a failed write failed; the connection is discarded");
    }
    err
}

/// A JSON value as it is stored: JSON text, cast to `json` on PostgreSQL, so
/// that it reads back as sent (a bound JSON value passes through `jsonb`,
/// which rewrites numbers: `-0` as `0`, `1e18` as `1000000000000000000`).
fn json_text(backend: DbBackend, value: Option<&Value>) -> Result<sea_orm::sea_query::SimpleExpr, DbErr> {
    use sea_orm::sea_query::{Alias, Expr};
    let text = value.map(serde_json::to_string).transpose().map_err(|e| DbErr::Custom(format!("json value: {e}")))?;
    Ok(match backend {
        DbBackend::Postgres => Expr::val(text).cast_as(Alias::new("json")),
        _ => Expr::val(text).into(),
    })
}

/// The insert of a new job row, its JSON columns as JSON text (see [`json_text`]).
fn insert_job(backend: DbBackend, row: jobs::Model) -> Result<sea_orm::Statement, DbErr> {
    use sea_orm::sea_query::{Expr, Query, SimpleExpr};
    let values: [SimpleExpr; 14] = [
        Expr::val(row.id).into(),
        Expr::val(row.workspace_id).into(),
        Expr::val(row.job_type).into(),
        Expr::val(row.status).into(),
        Expr::val(row.priority).into(),
        Expr::val(row.progress).into(),
        json_text(backend, Some(&row.metadata))?,
        json_text(backend, row.result.as_ref())?,
        Expr::val(row.error).into(),
        Expr::val(row.created_at).into(),
        Expr::val(row.updated_at).into(),
        Expr::val(row.started_at).into(),
        Expr::val(row.completed_at).into(),
        Expr::val(row.last_seq).into(),
    ];
    let columns = [
        jobs::Column::Id,
        jobs::Column::WorkspaceId,
        jobs::Column::JobType,
        jobs::Column::Status,
        jobs::Column::Priority,
        jobs::Column::Progress,
        jobs::Column::Metadata,
        jobs::Column::Result,
        jobs::Column::Error,
        jobs::Column::CreatedAt,
        jobs::Column::UpdatedAt,
        jobs::Column::StartedAt,
        jobs::Column::CompletedAt,
        jobs::Column::LastSeq,
    ];
    let mut insert = Query::insert();
    insert.into_table(jobs::Entity).columns(columns);
    insert.values(values).map_err(|e| DbErr::Custom(format!("job insert: {e}")))?;
    Ok(backend.build(&insert))
}

/// The insert of events. Their data goes in as JSON text: on PostgreSQL it is cast to
/// `json`, which keeps the text as sent (a `\u0000` in an output chunk
/// included), where a bound JSON value would pass through `jsonb`, which cannot
/// hold U+0000. `lines` holds the `line` of each `step.output` event, by id.
fn insert_events(
    backend: DbBackend,
    events: &[Event],
    lines: &HashMap<Uuid, i64>,
    order: i64,
) -> Result<sea_orm::Statement, DbErr> {
    use sea_orm::sea_query::{Alias, Expr, Query, SimpleExpr};
    use sea_orm::Iterable as _;
    let mut insert = Query::insert();
    insert.into_table(job_events::Entity).columns(job_events::Column::iter());
    for event in events {
        let data = serde_json::to_string(&event.body).map_err(|e| DbErr::Custom(format!("event body: {e}")))?;
        let data: SimpleExpr = match backend {
            DbBackend::Postgres => Expr::val(data).cast_as(Alias::new("json")),
            _ => Expr::val(data).into(),
        };
        let row: [SimpleExpr; 10] = [
            Expr::val(event.event_id).into(),
            Expr::val(event.job_id).into(),
            Expr::val(event.seq).into(),
            Expr::val(event.event_type.as_str()).into(),
            Expr::val(event.workspace_id.as_str()).into(),
            Expr::val(event.step_id).into(),
            Expr::val(event.timestamp.as_datetime()).into(),
            data,
            Expr::val(order).into(),
            Expr::val(lines.get(&event.event_id).copied()).into(),
        ];
        insert.values(row).map_err(|e| DbErr::Custom(format!("event insert: {e}")))?;
    }
    Ok(backend.build(&insert))
}

/// An update of the columns whose value in `now` differs from `read`, except
/// `skip` (never the key: it does not change). Setting a column to the value
/// it has is not free: on SQLite, with foreign keys on, setting a row's key
/// makes every update look up every row that refers to it (all the events of
/// a job or a step, so a write's cost grew with the job's history), and each
/// indexed column set rewrites its index entries.
fn changed_columns<M, E, A>(read: M, now: &M, skip: &[E::Column]) -> A
where
    M: sea_orm::ModelTrait<Entity = E> + IntoActiveModel<A>,
    E: EntityTrait<Model = M, ActiveModel = A>,
    A: ActiveModelTrait<Entity = E>,
{
    use sea_orm::Iterable as _;
    let before: Vec<_> = E::Column::iter().map(|column| read.get(column)).collect();
    let mut row = read.into_active_model();
    for (column, before) in E::Column::iter().zip(before) {
        let value = now.get(column);
        let skipped = skip.iter().any(|s| sea_orm::IdenStatic::as_str(s) == sea_orm::IdenStatic::as_str(&column));
        if value != before && !skipped {
            row.set(column, value);
        }
    }
    row
}

/// A step row in the batch and whether it must be inserted or updated at flush.
struct StepRow {
    row: job_steps::Model,
    /// The row as read, to update only what changed; `None` for a new step.
    read: Option<job_steps::Model>,
    new: bool,
    dirty: bool,
}

/// The state of one write transaction: locked job rows and touched steps, kept
/// in memory and written once at [`Batch::flush`].
struct Batch<'a> {
    tx: &'a mut dyn WriteTx,
    backend: DbBackend,
    /// Locked job rows: as changed by the batch, as read, and whether changed.
    jobs: HashMap<Uuid, (jobs::Model, jobs::Model, bool)>,
    steps: HashMap<Uuid, StepRow>,
    /// Step ids already looked up: a step not in `steps` does not exist.
    looked_up: BTreeSet<Uuid>,
    /// The client `eventId`s of the batch's items so far.
    event_ids: BTreeSet<Uuid>,
    events: Vec<Event>,
    /// The `line` of each `step.output` event of the batch, by event id.
    lines: HashMap<Uuid, i64>,
    now: Timestamp,
    /// The id the next event takes (a client's `eventId`), else a new one.
    next_id: Option<Uuid>,
}

impl<'a> Batch<'a> {
    fn new(tx: &'a mut dyn WriteTx) -> Self {
        Self {
            backend: tx.backend(),
            tx,
            jobs: HashMap::new(),
            steps: HashMap::new(),
            looked_up: BTreeSet::new(),
            event_ids: BTreeSet::new(),
            events: Vec::new(),
            lines: HashMap::new(),
            now: Timestamp::now(),
            next_id: None,
        }
    }

    /// Loads and locks every job of the batch, and (SQLite) the `steps` its
    /// items name (see [`WriteTx::lock_rows`]). With `with_order`, the same
    /// request reads the transaction's commit order: on PostgreSQL its id,
    /// with the row locks, returned if any job was found; on SQLite the
    /// commit counter's next value, always. On SQLite every id of `steps`
    /// counts as looked up: one not found does not exist.
    async fn lock_jobs(
        &mut self,
        ids: BTreeSet<Uuid>,
        steps: BTreeSet<Uuid>,
        with_order: bool,
    ) -> Result<Option<i64>, WriteError> {
        let rows = self.tx.lock_rows(&ids, &steps, with_order).await?;
        for row in rows.jobs {
            self.jobs.insert(row.id, (row.clone(), row, false));
        }
        for row in rows.steps {
            self.steps.insert(row.id, StepRow { read: Some(row.clone()), row, new: false, dirty: false });
        }
        if rows.steps_read {
            self.looked_up.extend(steps);
        }
        Ok(rows.order)
    }

    async fn step(&mut self, job_id: Uuid, step_id: Uuid) -> Result<&mut StepRow, WriteError> {
        if !self.steps.contains_key(&step_id) && !self.looked_up.contains(&step_id) {
            let row = self.tx.step(step_id).await?;
            match row {
                Some(row) if row.job_id == job_id => {
                    self.steps.insert(step_id, StepRow { read: Some(row.clone()), row, new: false, dirty: false });
                }
                _ => return Err(WriteError::StepNotFound { job: job_id, step: step_id }),
            }
        }
        match self.steps.get_mut(&step_id) {
            Some(step) if step.row.job_id == job_id => Ok(step),
            _ => Err(WriteError::StepNotFound { job: job_id, step: step_id }),
        }
    }

    /// A step that must be running to take the write `what`.
    async fn running_step(&mut self, job_id: Uuid, step_id: Uuid, what: &str) -> Result<&mut StepRow, WriteError> {
        let step = self.step(job_id, step_id).await?;
        if step.row.status != StepStatus::Running.wire_name() {
            return Err(WriteError::Conflict(format!(
                "step {step_id} is {}: only a running step takes {what}",
                step.row.status
            )));
        }
        Ok(step)
    }

    /// [`Batch::apply`], unless `event_id` names a stored event: then the
    /// write is a repeat (the same write) or a conflict (another one).
    async fn apply_once(
        &mut self,
        item: BatchItem,
        event_id: Option<Uuid>,
        may_write: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Outcome, WriteError> {
        let Some(id) = event_id else { return self.apply(item, may_write).await.map(Outcome::New) };
        // Twice in one request, whether it is new or a repeat of a stored event.
        if !self.event_ids.insert(id) {
            return Err(WriteError::Invalid(jobstream_protocol::ValidationError::new(
                "eventId",
                format!("{id} is used twice in this request"),
            )));
        }
        let Some(row) = self.tx.event(id).await? else {
            self.next_id = Some(id);
            let outcome = self.apply(item, may_write).await;
            self.next_id = None;
            return outcome.map(Outcome::New);
        };
        let order = row.commit_order;
        let stored =
            crate::store::stored_event(row).map_err(|_| WriteError::Conflict(format!("event {id} is unreadable")))?;
        if !may_write(&stored.workspace_id) {
            return Err(WriteError::Conflict(format!("eventId {id} is already used; choose another")));
        }
        if !same_write(&item, &stored) {
            return Err(WriteError::Conflict(format!(
                "eventId {id} was used for another write; repeat the original write exactly, or choose another eventId"
            )));
        }
        let step = match (&item, stored.step_id) {
            (BatchItem::Step(..) | BatchItem::StepComplete(..), Some(step_id)) => {
                self.tx.step(step_id).await?.and_then(|row| step_snapshot(row).ok())
            }
            _ => None,
        };
        Ok(Outcome::Repeat(Box::new(stored), order, step))
    }

    /// Checks one write against the current state and records its effects.
    async fn apply(
        &mut self,
        item: BatchItem,
        may_write: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Option<StepSnapshot>, WriteError> {
        let job_id = item.job_id();
        let (workspace_id, status) = match self.jobs.get(&job_id) {
            Some((job, _, _)) if may_write(&job.workspace_id) => {
                (job.workspace_id.clone(), JobStatus::parse(&job.status).unwrap_or(JobStatus::Failed))
            }
            _ => return Err(WriteError::JobNotFound(job_id)),
        };
        if status.is_terminal() && !matches!(item, BatchItem::Event(..)) {
            return Err(WriteError::JobFinished { job: job_id, status });
        }
        let now = self.now;
        let seq = self.jobs.get(&job_id).map_or(1, |(job, _, _)| job.last_seq + 1);
        let mut change = JobChange::None;
        let mut step_out = None;
        let mut line = None;
        let (event_type, step_id, body) = match item {
            BatchItem::Status(_, request) => {
                let next = request.status;
                let Some(event_type) = EventType::for_status(next).filter(|_| status.can_become(next)) else {
                    return Err(WriteError::InvalidTransition { job: job_id, from: status, to: next });
                };
                let result = request.result.filter(|r| !r.is_null() && next == JobStatus::Completed);
                let error = request.error.filter(|_| matches!(next, JobStatus::Failed | JobStatus::Cancelled));
                let body = StatusChanged {
                    status: next,
                    previous_status: status,
                    result: result.clone(),
                    error: error.clone(),
                };
                change = JobChange::Status { next, result, error };
                (event_type, None, EventBody::Status(body))
            }
            BatchItem::Progress(_, request) => {
                let progress = clamp_progress(request.progress);
                change = JobChange::Progress(progress);
                (
                    EventType::JobProgress,
                    None,
                    EventBody::JobProgress(JobProgress { progress, message: request.message }),
                )
            }
            BatchItem::Step(_, request) => {
                let step_id = request.id.unwrap_or_else(Uuid::now_v7);
                // A new id (v7: time and random bits) is nobody's; a client's
                // may be taken, by this batch or by a stored step.
                let taken = match request.id {
                    None => false,
                    Some(_) if self.steps.contains_key(&step_id) => true,
                    Some(_) if self.looked_up.contains(&step_id) => false,
                    Some(_) => self.tx.step(step_id).await?.is_some(),
                };
                if taken {
                    return Err(WriteError::Conflict(format!("step id {step_id} is already used")));
                }
                let row = job_steps::Model {
                    id: step_id,
                    job_id,
                    position: seq,
                    name: request.name.clone(),
                    phase: request.phase.wire_name(),
                    step_type: request.step_type.wire_name(),
                    status: StepStatus::Running.wire_name(),
                    started_at: Some(now.as_datetime()),
                    completed_at: None,
                    duration_ms: None,
                    error: None,
                    tokens_input: None,
                    tokens_output: None,
                    output_lines: 0,
                };
                step_out = Some(step_snapshot(row.clone()).map_err(|_| WriteError::Conflict("invalid step".into()))?);
                self.steps.insert(step_id, StepRow { row, read: None, new: true, dirty: true });
                let body = StepStarted { name: request.name, phase: request.phase, step_type: request.step_type };
                (EventType::StepStarted, Some(step_id), EventBody::StepStarted(body))
            }
            BatchItem::StepProgress(_, step_id, request) => {
                self.running_step(job_id, step_id, "progress").await?;
                let body = StepProgress { progress: clamp_progress(request.progress), message: request.message };
                (EventType::StepProgress, Some(step_id), EventBody::StepProgress(body))
            }
            BatchItem::Output(_, step_id, request) => {
                let step = self.running_step(job_id, step_id, "output").await?;
                // Numbers the step's lines (see `job_events.line`).
                line = Some(step.row.output_lines);
                step.row.output_lines += request.chunk.bytes().filter(|&b| b == b'\n').count() as i64;
                step.dirty = true;
                let body = StepOutput { chunk: request.chunk, stream: request.stream.unwrap_or_default() };
                (EventType::StepOutput, Some(step_id), EventBody::StepOutput(body))
            }
            BatchItem::StepComplete(_, step_id, request) => {
                let step = self.running_step(job_id, step_id, "completion").await?;
                let started = step.row.started_at.map_or(now, Timestamp::from);
                let duration_ms = now.millis_since(started);
                step.row.status = request.status.wire_name();
                step.row.completed_at = Some(now.as_datetime());
                step.row.duration_ms = Some(duration_ms);
                step.row.error = request.error.clone();
                step.row.tokens_input = request.tokens_input;
                step.row.tokens_output = request.tokens_output;
                step.dirty = true;
                step_out =
                    Some(step_snapshot(step.row.clone()).map_err(|_| WriteError::Conflict("invalid step".into()))?);
                let event_type =
                    if request.status == StepStatus::Failed { EventType::StepFailed } else { EventType::StepCompleted };
                let body = StepFinished {
                    status: request.status,
                    duration_ms,
                    error: request.error,
                    tokens_input: request.tokens_input,
                    tokens_output: request.tokens_output,
                };
                (event_type, Some(step_id), EventBody::StepFinished(body))
            }
            BatchItem::Event(_, request) => {
                if let Some(step_id) = request.step_id {
                    self.step(job_id, step_id).await?;
                }
                let payload = request.payload.unwrap_or_else(Map::new);
                (request.event_type, request.step_id, EventBody::Custom(CustomEvent { payload }))
            }
        };
        if let Some((job, _, dirty)) = self.jobs.get_mut(&job_id) {
            change.apply(job, now);
            job.last_seq = seq;
            job.updated_at = now.as_datetime();
            *dirty = true;
        }
        let event_id = self.next_id.take().unwrap_or_else(Uuid::now_v7);
        if let Some(line) = line {
            self.lines.insert(event_id, line);
        }
        self.events.push(Event { event_id, seq, event_type, job_id, workspace_id, step_id, timestamp: now, body });
        Ok(step_out)
    }

    /// Writes what the batch recorded: new and changed steps, the events, the
    /// jobs; on SQLite in one request (see [`Script`]).
    async fn flush(self, order: i64) -> Result<Vec<Event>, WriteError> {
        use sea_orm::QueryTrait;
        let mut script = Script::default();
        let (new_steps, changed_steps): (Vec<_>, Vec<_>) =
            self.steps.into_values().filter(|s| s.dirty).partition(|s| s.new);
        for chunk in new_steps.chunks(INSERT_CHUNK) {
            let rows = chunk.iter().map(|s| s.row.clone().into_active_model());
            script.push(job_steps::Entity::insert_many(rows).build(self.backend));
        }
        for step in changed_steps {
            let id = step.row.id;
            let Some(read) = step.read else { continue };
            let row = changed_columns(read, &step.row, &[]);
            let update = job_steps::Entity::update_many().set(row).filter(job_steps::Column::Id.eq(id)).into_query();
            push_update(&mut script, self.backend, &update);
        }
        for chunk in self.events.chunks(INSERT_CHUNK) {
            script.push(insert_events(self.backend, chunk, &self.lines, order)?);
        }
        for (id, (job, read, dirty)) in self.jobs {
            if dirty {
                // `metadata` never changes after creation; `result` goes in as JSON text.
                let result_changed = job.result != read.result;
                let row = changed_columns(read, &job, &[jobs::Column::Metadata, jobs::Column::Result]);
                let mut update = jobs::Entity::update_many().set(row);
                if result_changed {
                    update = update.col_expr(jobs::Column::Result, json_text(self.backend, job.result.as_ref())?);
                }
                push_update(&mut script, self.backend, &update.filter(jobs::Column::Id.eq(id)).into_query());
            }
        }
        self.tx.execute(script).await?;
        Ok(self.events)
    }
}

/// Adds `update` to `script` unless it sets nothing (no column changed).
fn push_update(script: &mut Script, backend: DbBackend, update: &sea_orm::sea_query::UpdateStatement) {
    if !update.get_values().is_empty() {
        script.push(backend.build(update));
    }
}

/// The stored step an item names, if any: the one it writes to, or the id a
/// new step asks for (which must not be taken).
fn step_of(item: &BatchItem) -> Option<Uuid> {
    match item {
        BatchItem::Step(_, request) => request.id,
        BatchItem::StepProgress(_, step, _) | BatchItem::Output(_, step, _) | BatchItem::StepComplete(_, step, _) => {
            Some(*step)
        }
        BatchItem::Event(_, request) => request.step_id,
        BatchItem::Status(..) | BatchItem::Progress(..) => None,
    }
}

/// Whether `item` is the write that stored `stored` (what the client sent,
/// not what the server computed: seq, time, previous status, duration).
fn same_write(item: &BatchItem, stored: &Event) -> bool {
    let step_is = |step: &Uuid| stored.step_id == Some(*step);
    stored.job_id == item.job_id()
        && match (item, &stored.body) {
            (BatchItem::Status(_, r), EventBody::Status(s)) => {
                let result = r.result.clone().filter(|v| !v.is_null() && r.status == JobStatus::Completed);
                s.status == r.status && s.result == result && s.error == r.error
            }
            (BatchItem::Progress(_, r), EventBody::JobProgress(p)) => {
                p.progress == clamp_progress(r.progress) && p.message == r.message
            }
            (BatchItem::Step(_, r), EventBody::StepStarted(s)) => {
                s.name == r.name
                    && s.phase == r.phase
                    && s.step_type == r.step_type
                    && r.id.is_none_or(|id| stored.step_id == Some(id))
            }
            (BatchItem::StepProgress(_, step, r), EventBody::StepProgress(p)) => {
                step_is(step) && p.progress == clamp_progress(r.progress) && p.message == r.message
            }
            (BatchItem::Output(_, step, r), EventBody::StepOutput(o)) => {
                step_is(step) && o.chunk == r.chunk && o.stream == r.stream.unwrap_or_default()
            }
            (BatchItem::StepComplete(_, step, r), EventBody::StepFinished(f)) => {
                step_is(step)
                    && f.status == r.status
                    && f.error == r.error
                    && f.tokens_input == r.tokens_input
                    && f.tokens_output == r.tokens_output
            }
            (BatchItem::Event(_, r), EventBody::Custom(c)) => {
                stored.event_type == r.event_type
                    && stored.step_id == r.step_id
                    && c.payload == r.payload.clone().unwrap_or_default()
            }
            _ => false,
        }
}

/// What a write changes in the job row besides `last_seq` and `updated_at`.
enum JobChange {
    None,
    Status { next: JobStatus, result: Option<Value>, error: Option<String> },
    Progress(u8),
}

impl JobChange {
    fn apply(self, job: &mut jobs::Model, now: Timestamp) {
        match self {
            JobChange::None => {}
            JobChange::Progress(progress) => job.progress = i16::from(progress),
            JobChange::Status { next, result, error } => {
                job.status = next.as_str().to_owned();
                if next == JobStatus::Running {
                    job.started_at = Some(now.as_datetime());
                }
                if next.is_terminal() {
                    job.completed_at = Some(now.as_datetime());
                    job.result = result;
                    job.error = error;
                }
            }
        }
    }
}

/// Requests are validated to 0–100 before they get here.
fn clamp_progress(progress: i64) -> u8 {
    u8::try_from(progress.clamp(0, 100)).unwrap_or(100)
}
