//! Reads: job snapshots, job lists, workspace snapshots and replay pages.

use std::sync::Arc;

use jobstream_protocol::{
    Event, EventBody, EventType, JobSnapshot, JobStatus, StepPhase, StepSnapshot, StepStatus, StepType, Timestamp,
    WORKSPACE_SNAPSHOT_LIMIT,
};
use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, IsolationLevel,
    QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
};
use uuid::Uuid;

use jobstream_rooms::Horizon;

/// The statuses of a job that is not finished.
const LIVE: [&str; 3] = ["pending", "queued", "running"];

use crate::entity::{job_events, job_steps, jobs};
use crate::error::ReadError;
use crate::sink::Committed;

/// Read access to the job tables. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventStore {
    pub(crate) db: DatabaseConnection,
}

/// The most bytes of events one page read holds (see [`EventStore::events_page`]).
pub const MAX_PAGE_BYTES: usize = 64 * 1024 * 1024;

/// A page of a job's events (see [`EventStore::events_page`]).
#[derive(Debug, Clone, Default)]
pub struct EventPage {
    /// The events, ascending by `seq`.
    pub events: Vec<Arc<Committed>>,
    /// Whether the page was cut (by its `limit` or its bytes), so that events
    /// after its last one may follow; `false` once the job's end was reached.
    pub more: bool,
}

/// The most workspace ids [`EventStore::jobs`] binds in one statement.
pub const IN_LIST_MAX: usize = 10_000;

/// A filter for [`EventStore::jobs`].
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    /// Only these workspaces; `None` for every workspace.
    pub workspaces: Option<Vec<String>>,
    /// Only jobs in this status.
    pub status: Option<JobStatus>,
    /// At most this many.
    pub limit: u64,
}

/// What a `subscribe:workspace:jobs` needs, read in one consistent transaction.
/// Its size depends on the unfinished jobs, not on the workspace's history.
#[derive(Debug, Clone)]
pub struct WorkspaceSnapshot {
    /// The most recently updated jobs, newest first (without steps).
    pub jobs: Vec<JobSnapshot>,
    /// The unfinished jobs with their `lastSeq`: the subscriber needs what
    /// comes after. (Finished jobs, listed or not, are placed by the horizon.)
    pub cursors: Vec<(Uuid, i64)>,
    /// What the snapshot saw: places the later events of every other job.
    pub horizon: Horizon,
}

impl EventStore {
    /// Wraps an open connection.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// The connection.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Which engine is behind it.
    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), ReadError> {
        self.db.ping().await.map_err(ReadError::from)
    }

    /// A job with its steps, or `None`.
    pub async fn job(&self, id: Uuid) -> Result<Option<JobSnapshot>, ReadError> {
        let Some(job) = jobs::Entity::find_by_id(id).filter(not_being_deleted()).one(&self.db).await? else {
            return Ok(None);
        };
        let steps = job_steps::Entity::find()
            .filter(job_steps::Column::JobId.eq(id))
            .order_by_asc(job_steps::Column::Position)
            .all(&self.db)
            .await?;
        let steps = steps.into_iter().map(step_snapshot).collect::<Result<Vec<_>, _>>()?;
        Ok(Some(job_snapshot(job, Some(steps))?))
    }

    /// Jobs, newest first.
    ///
    /// A token may name more workspaces than one SQL statement takes bound
    /// values (SQLite: 32,766): the list is then read in parts of at most
    /// [`IN_LIST_MAX`] ids, each part's newest `limit` jobs, merged newest
    /// first and cut to `limit` (the newest `limit` of the union are among
    /// them).
    pub async fn jobs(&self, query: JobQuery) -> Result<Vec<JobSnapshot>, ReadError> {
        let parts: Vec<Option<&[String]>> = match &query.workspaces {
            None => vec![None],
            Some(ids) if ids.len() <= IN_LIST_MAX => vec![Some(ids.as_slice())],
            Some(ids) => ids.chunks(IN_LIST_MAX).map(Some).collect(),
        };
        let several = parts.len() > 1;
        let mut rows = Vec::new();
        for workspaces in parts {
            // A job whose deletion has begun is gone everywhere (not listed).
            let mut select = jobs::Entity::find().filter(not_being_deleted());
            if let Some(workspaces) = workspaces {
                select = select.filter(jobs::Column::WorkspaceId.is_in(workspaces.iter().cloned()));
            }
            if let Some(status) = query.status {
                select = select.filter(jobs::Column::Status.eq(status.as_str()));
            }
            let part = select
                .order_by_desc(jobs::Column::CreatedAt)
                .order_by_desc(jobs::Column::Id)
                .limit(query.limit)
                .all(&self.db)
                .await?;
            rows.extend(part);
        }
        if several {
            rows.sort_by(|a, b| (&b.created_at, &b.id).cmp(&(&a.created_at, &a.id)));
            rows.truncate(usize::try_from(query.limit).unwrap_or(usize::MAX));
        }
        rows.into_iter().map(|j| job_snapshot(j, None)).collect()
    }

    /// The snapshot of a workspace, the cursors of its unfinished jobs, and the horizon of the snapshot, consistent with each other: a
    /// subscriber that gets the events after these cursors, and the events of
    /// other jobs that the horizon did not see, misses nothing and gets nothing twice.
    pub async fn workspace_snapshot(&self, workspace_id: &str) -> Result<WorkspaceSnapshot, ReadError> {
        let backend = self.backend();
        let tx = match backend {
            DbBackend::Postgres => {
                self.db.begin_with_config(Some(IsolationLevel::RepeatableRead), Some(AccessMode::ReadOnly)).await?
            }
            _ => self.db.begin().await?,
        };
        // First statement: on PostgreSQL this fixes the transaction's snapshot,
        // which every read below uses; on SQLite it starts the read transaction.
        let horizon = Self::horizon_in(&tx, backend).await?;
        let recent = jobs::Entity::find()
            .filter(jobs::Column::WorkspaceId.eq(workspace_id))
            .filter(not_being_deleted())
            .order_by_desc(jobs::Column::UpdatedAt)
            .order_by_desc(jobs::Column::Id)
            .limit(WORKSPACE_SNAPSHOT_LIMIT)
            .all(&tx)
            .await?;
        let cursors: Vec<(Uuid, i64)> = jobs::Entity::find()
            .select_only()
            .column(jobs::Column::Id)
            .column(jobs::Column::LastSeq)
            .filter(jobs::Column::WorkspaceId.eq(workspace_id))
            // Listed, not excluded: `IN` narrows the (workspace_id, status)
            // index to the live jobs; `NOT IN` would read every finished job.
            .filter(jobs::Column::Status.is_in(LIVE))
            .into_tuple::<(Uuid, i64)>()
            .all(&tx)
            .await?;
        tx.commit().await?;
        let jobs = recent.into_iter().map(|j| job_snapshot(j, None)).collect::<Result<_, _>>()?;
        Ok(WorkspaceSnapshot { jobs, cursors, horizon })
    }

    async fn horizon_in(db: &impl ConnectionTrait, backend: DbBackend) -> Result<Horizon, ReadError> {
        let sql = match backend {
            DbBackend::Postgres => "SELECT pg_current_snapshot()::text AS v",
            _ => "SELECT CAST(value AS TEXT) AS v FROM commit_counter WHERE id = 1",
        };
        let row = db
            .query_one(sea_orm::Statement::from_string(backend, sql))
            .await?
            .ok_or_else(|| corrupt("no commit horizon".into()))?;
        let text: String = row.try_get("", "v")?;
        let horizon = match backend {
            DbBackend::Postgres => Horizon::parse_pg_snapshot(&text),
            _ => text.parse().ok().map(Horizon::Counter),
        };
        horizon.ok_or_else(|| corrupt(format!("unreadable commit horizon {text:?}")))
    }

    /// The last `seq` of a job that `horizon` saw (0 if none): where a
    /// workspace subscriber's cursor for it starts. Reads backwards from the
    /// newest event; only events after the snapshot are skipped, so this
    /// reads a few rows, not the job's history.
    pub async fn last_seen_seq(&self, job_id: Uuid, horizon: &Horizon) -> Result<i64, ReadError> {
        const PAGE: u64 = 64;
        let mut below = i64::MAX;
        loop {
            let rows: Vec<(i64, Option<i64>)> = job_events::Entity::find()
                .select_only()
                .column(job_events::Column::Seq)
                .column(job_events::Column::CommitOrder)
                .filter(job_events::Column::JobId.eq(job_id))
                .filter(job_events::Column::Seq.lt(below))
                .order_by_desc(job_events::Column::Seq)
                .limit(PAGE)
                .into_tuple()
                .all(&self.db)
                .await?;
            for (seq, order) in &rows {
                // Rows from before commit orders were kept are older than any snapshot.
                if order.is_none_or(|o| horizon.saw(o)) {
                    return Ok(*seq);
                }
            }
            match rows.last() {
                Some((seq, _)) if rows.len() as u64 == PAGE => below = *seq,
                _ => return Ok(0),
            }
        }
    }

    /// The jobs of a workspace with an event that `horizon` may not have seen:
    /// those a workspace subscriber compares with its cursors after it lost
    /// track (a mailbox overflow, a bus outage). Grows with the events since
    /// the snapshot, not with the workspace's history.
    pub async fn jobs_changed_since(&self, workspace_id: &str, horizon: &Horizon) -> Result<Vec<Uuid>, ReadError> {
        Ok(job_events::Entity::find()
            .select_only()
            .column(job_events::Column::JobId)
            .distinct()
            .filter(job_events::Column::WorkspaceId.eq(workspace_id))
            .filter(job_events::Column::CommitOrder.gte(horizon.lower_bound()))
            .into_tuple::<Uuid>()
            .all(&self.db)
            .await?)
    }

    /// Up to `limit` events of a job with `seq > since`, ascending, and at most
    /// about [`MAX_PAGE_BYTES`] of them (see [`EventStore::events_page`]).
    pub async fn events_after(&self, job_id: Uuid, since: i64, limit: u64) -> Result<Vec<Arc<Committed>>, ReadError> {
        Ok(self.events_page(job_id, since, limit, MAX_PAGE_BYTES).await?.events)
    }

    /// A page of a job's events with `seq > since`, ascending: at most `limit`
    /// events, and no more once it holds about `max_bytes` of stored event
    /// data. The event that reaches `max_bytes` ends the page, so a page holds
    /// at least one event when there is one. `max_bytes` is at most
    /// [`MAX_PAGE_BYTES`]. [`EventPage::more`] tells whether events may follow.
    ///
    /// The cut is made by the database from each row's byte length (SQLite:
    /// read from the row header; PostgreSQL: first by stored size, then by
    /// text size over only those rows), so rows past it are never sent or
    /// held; what is held here is then bounded once more by the events' wire
    /// JSON, the form the callers keep.
    pub async fn events_page(
        &self,
        job_id: Uuid,
        since: i64,
        limit: u64,
        max_bytes: usize,
    ) -> Result<EventPage, ReadError> {
        let max_bytes = max_bytes.clamp(1, MAX_PAGE_BYTES);
        let values = [
            job_id.into(),
            since.into(),
            i64::try_from(limit.max(1)).unwrap_or(i64::MAX).into(),
            i64::try_from(max_bytes).unwrap_or(i64::MAX).into(),
        ];
        if self.backend() == DbBackend::Sqlite {
            // The whole page is one value; its events are made as it is read.
            let page = self.sqlite_page(values).await?;
            return page.events(job_id, max_bytes);
        }
        let (rows, more) = self.event_rows(job_id, values, max_bytes).await?;
        page_of(rows.into_iter(), more, max_bytes)
    }

    /// The rows of [`EventStore::events_page`] on PostgreSQL, one result row
    /// each, cut by the database at `max_bytes` of their JSON text (so what is
    /// sent and held stays about `max_bytes` however well the events
    /// compress); reading also stops there. `values`: the job, `since`, the
    /// limit and the byte bound. `more` if rows were left.
    async fn event_rows(
        &self,
        job_id: Uuid,
        values: [sea_orm::Value; 4],
        max_bytes: usize,
    ) -> Result<(Vec<Result<(Event, Option<i64>), ReadError>>, bool), ReadError> {
        use futures::StreamExt;
        use sea_orm::StreamTrait;
        // `whole`: the count, stored size and last seq of the next `limit`
        // rows, and whether any of them is compressed (read from the values'
        // headers, no value read). With none compressed, a stored size is
        // the text's size and a few header bytes, so when the total is under
        // the bound the page is those rows (the common page of small events)
        // and nothing below `page` runs. Otherwise: `rough`, a first cut by
        // stored sizes (a compressed size is smaller than the text, so this
        // cut is never short); then `cut`, by the text sizes of only those
        // rows (a compressed value is expanded here at most to what the
        // first cut let through).
        const PAGE: &str = "WITH stored AS MATERIALIZED (SELECT seq, pg_column_size(data) AS size, \
                 pg_column_compression(data) IS NOT NULL AS packed FROM job_events \
                 WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3), \
             whole AS MATERIALIZED (SELECT count(*) AS n, coalesce(sum(size), 0) AS t, max(seq) AS m, \
                 coalesce(bool_or(packed), false) AS packed FROM stored), \
             rough AS MATERIALIZED (SELECT max(seq) FILTER (WHERE within) AS last FROM \
                 (SELECT seq, sum(size) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) - size < $4 AS within \
                  FROM stored) AS m), \
             exact AS MATERIALIZED (SELECT seq, octet_length(data::text) AS size FROM job_events \
                 WHERE job_id = $1 AND seq > $2 AND seq <= (SELECT last FROM rough)), \
             cut AS MATERIALIZED (SELECT count(*) FILTER (WHERE within) AS kept, max(seq) FILTER (WHERE within) AS last FROM \
                 (SELECT seq, sum(size) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) - size < $4 AS within \
                  FROM exact) AS m), \
             page AS MATERIALIZED (SELECT n, \
                 CASE WHEN NOT packed AND t < $4 THEN n ELSE (SELECT kept FROM cut) END AS kept, \
                 CASE WHEN NOT packed AND t < $4 THEN m ELSE (SELECT last FROM cut) END AS last FROM whole) \
             SELECT e.id, e.seq, e.event_type, e.workspace_id, e.step_id, e.created_at, e.commit_order, \
                 e.data::text AS data, (page.n >= $3 OR page.kept < page.n) AS more \
             FROM job_events e, page WHERE e.job_id = $1 AND e.seq > $2 AND e.seq <= page.last \
             ORDER BY e.seq LIMIT $3";
        let statement = Statement::from_sql_and_values(DbBackend::Postgres, PAGE, values);
        let mut more = false;
        let mut rows = Vec::new();
        let mut held = 0usize;
        let mut stream = self.db.stream(statement).await?;
        while let Some(row) = stream.next().await {
            let row = row?;
            if held >= max_bytes {
                // Rows the stored sizes let through past the bound: not read.
                more = true;
                break;
            }
            more |= row.try_get::<bool>("", "more")?;
            let data: String = row.try_get("", "data")?;
            held += data.len();
            let id: Uuid = row.try_get("", "id")?;
            let event_type: String = row.try_get("", "event_type")?;
            let event = event_of(
                id,
                row.try_get("", "seq")?,
                &event_type,
                job_id,
                row.try_get("", "workspace_id")?,
                row.try_get("", "step_id")?,
                row.try_get::<chrono::DateTime<chrono::Utc>>("", "created_at")?,
                &data,
            )?;
            rows.push(Ok((event, row.try_get("", "commit_order")?)));
        }
        Ok((rows, more))
    }

    /// The rows of [`EventStore::events_page`] on SQLite, read as one result
    /// row: a JSON array of the page's rows, built by SQLite. The driver runs
    /// each SQLite connection on a thread of its own and hands every result
    /// row to the caller through a channel; for a replay page of thousands of
    /// small rows that hand-off, not the read, was the cost (BENCHMARKS §7).
    /// The page is cut by the rows' byte lengths first (`octet_length` reads
    /// a row's length from its header, not its value), so the one value stays
    /// far below SQLite's largest string (1e9 bytes).
    async fn sqlite_page(&self, values: [sea_orm::Value; 4]) -> Result<SqlitePage, ReadError> {
        // Each row as a JSON array in the order of `PageRow`, ids as hex;
        // `data` (JSON text as stored) is spliced in last, not parsed by
        // SQLite. The rows come in `seq` order from the subquery, and the
        // order is checked when they are read rather than sorted again by
        // SQLite.
        // `whole`: the count, total size and last seq of the next `limit`
        // rows, from their headers. The page ends at the last of them when
        // their total is under the bound (the common page of small events);
        // only otherwise is a running sum (a window) computed to find the
        // row that reaches the bound. `more`: rows were left by the limit or
        // by the cut. (A plan with the cut in CTEs of its own, each
        // materialized, cost 1.5–2× this one per page; BENCHMARKS §7.)
        const PAGE: &str = "WITH whole AS MATERIALIZED (SELECT count(*) AS n, total(size) AS t, max(seq) AS m FROM \
                 (SELECT seq, octet_length(data) AS size FROM job_events \
                  WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3)) \
             SELECT (SELECT n FROM whole) >= ?3 OR count(*) < (SELECT n FROM whole), \
             '[' || group_concat(rtrim(json_array(hex(id), seq, event_type, workspace_id, \
             CASE WHEN step_id IS NULL THEN NULL ELSE hex(step_id) END, created_at, commit_order), ']') \
             || ',' || data || ']', ',') || ']' \
             FROM (SELECT * FROM job_events WHERE job_id = ?1 AND seq > ?2 AND seq <= \
                 (SELECT CASE WHEN t < ?4 THEN m ELSE \
                     (SELECT max(seq) FROM (SELECT seq, sum(octet_length(data)) OVER \
                         (ORDER BY seq ROWS UNBOUNDED PRECEDING) - octet_length(data) AS before \
                      FROM job_events WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3) WHERE before < ?4) \
                  END FROM whole) \
             ORDER BY seq)";
        let statement = Statement::from_sql_and_values(DbBackend::Sqlite, PAGE, values);
        let Some(result) = self.db.query_one(statement).await? else { return Ok(SqlitePage::default()) };
        let more = result.try_get_by_index::<Option<bool>>(0)?.unwrap_or(false);
        // No row: the aggregate of nothing is NULL.
        let text = result.try_get_by_index::<Option<String>>(1)?;
        Ok(SqlitePage { text, more })
    }

    /// The `lastSeq` of a job, or `None` if it does not exist.
    pub async fn last_seq(&self, job_id: Uuid) -> Result<Option<i64>, ReadError> {
        Ok(jobs::Entity::find_by_id(job_id)
            .select_only()
            .column(jobs::Column::LastSeq)
            .into_tuple::<i64>()
            .one(&self.db)
            .await?)
    }
}

/// A SQLite page as read: the rows as one JSON text (see
/// [`EventStore::sqlite_page`]), `None` when there were none.
#[derive(Default)]
struct SqlitePage {
    text: Option<String>,
    more: bool,
}

/// One row of a [`SqlitePage`], in the order of the page query's
/// `json_array`; strings are borrowed from the page where they have no
/// escapes, and `data` is the stored text, read once into its typed body.
#[derive(serde::Deserialize)]
struct PageRow<'a> {
    id: Uuid,
    seq: i64,
    #[serde(borrow)]
    event_type: std::borrow::Cow<'a, str>,
    workspace_id: String,
    step_id: Option<Uuid>,
    #[serde(borrow)]
    created_at: std::borrow::Cow<'a, str>,
    commit_order: Option<i64>,
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

impl SqlitePage {
    /// The page's events of job `job_id` (the rows are that job's: the query
    /// selects by it), cut at `max_bytes` of wire JSON like every page.
    fn events(self, job_id: Uuid, max_bytes: usize) -> Result<EventPage, ReadError> {
        let Some(text) = self.text else { return Ok(EventPage { events: Vec::new(), more: false }) };
        let rows: Vec<PageRow<'_>> =
            serde_json::from_str(&text).map_err(|e| corrupt(format!("events of job {job_id} cannot be read: {e}")))?;
        let mut rows = rows;
        if !rows.is_sorted_by_key(|row| row.seq) {
            rows.sort_unstable_by_key(|row| row.seq);
        }
        let events = rows.into_iter().map(|row| {
            let created_at = chrono::DateTime::parse_from_rfc3339(&row.created_at)
                .map_err(|_| corrupt(format!("event {} has an invalid time {:?}", row.id, row.created_at)))?
                .with_timezone(&chrono::Utc);
            let event = event_of(
                row.id,
                row.seq,
                &row.event_type,
                job_id,
                row.workspace_id,
                row.step_id,
                created_at,
                row.data.get(),
            )?;
            Ok((event, row.commit_order))
        });
        page_of(events, self.more, max_bytes)
    }
}

/// A stored event of a page as the wire event, its body read from its stored
/// JSON text straight into its type.
#[allow(clippy::too_many_arguments)]
fn event_of(
    event_id: Uuid,
    seq: i64,
    event_type: &str,
    job_id: Uuid,
    workspace_id: String,
    step_id: Option<Uuid>,
    created_at: chrono::DateTime<chrono::Utc>,
    data: &str,
) -> Result<Event, ReadError> {
    let event_type = parse("event type", event_type, EventType::parse)?;
    let body = EventBody::from_stored_json(event_type, data)
        .map_err(|e| corrupt(format!("event {event_id} has invalid data: {e}")))?;
    Ok(Event { event_id, seq, event_type, job_id, workspace_id, step_id, timestamp: created_at.into(), body })
}

/// An [`EventPage`] of `events` (ascending), encoded, ending once it holds
/// `max_bytes` of wire JSON (the event that reaches it is the last); `more`
/// as the database said, or set when this cut leaves events behind.
fn page_of(
    events: impl Iterator<Item = Result<(Event, Option<i64>), ReadError>>,
    mut more: bool,
    max_bytes: usize,
) -> Result<EventPage, ReadError> {
    let mut page = Vec::with_capacity(events.size_hint().0);
    let mut bytes = 0;
    for event in events {
        if bytes >= max_bytes {
            more = true;
            break;
        }
        let (event, order) = event?;
        let committed = Committed::new(event, order).map_err(|e| corrupt(format!("event cannot be encoded: {e}")))?;
        bytes += committed.json.get().len();
        page.push(Arc::new(committed));
    }
    Ok(EventPage { events: page, more })
}

/// A condition on `jobs` rows: the job's deletion has not begun. Retention
/// records a job in `pruned_jobs` with the first slice of its events it
/// deletes, so that a job part-way through deletion (a long one, or one whose
/// deletion was cut short) is already `not_found`, never a history without
/// its end.
pub(crate) fn not_being_deleted() -> sea_orm::sea_query::SimpleExpr {
    sea_orm::sea_query::Expr::cust("NOT EXISTS (SELECT 1 FROM pruned_jobs WHERE pruned_jobs.id = jobs.id)")
}

fn corrupt(message: String) -> ReadError {
    ReadError::Internal(DbErr::Custom(message))
}

fn parse<T>(what: &str, text: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T, ReadError> {
    parse(text).ok_or_else(|| corrupt(format!("stored {what} {text:?} is not valid")))
}

/// A stored row as the wire event.
pub(crate) fn stored_event(row: job_events::Model) -> Result<Event, ReadError> {
    let event_type = parse("event type", &row.event_type, EventType::parse)?;
    let body = EventBody::from_stored(event_type, row.data)
        .map_err(|e| corrupt(format!("event {} has invalid data: {e}", row.id)))?;
    Ok(Event {
        event_id: row.id,
        seq: row.seq,
        event_type,
        job_id: row.job_id,
        workspace_id: row.workspace_id,
        step_id: row.step_id,
        timestamp: row.created_at.into(),
        body,
    })
}

/// A job row as its snapshot.
pub(crate) fn job_snapshot(job: jobs::Model, steps: Option<Vec<StepSnapshot>>) -> Result<JobSnapshot, ReadError> {
    Ok(JobSnapshot {
        id: job.id,
        workspace_id: job.workspace_id,
        job_type: job.job_type,
        status: parse("job status", &job.status, JobStatus::parse)?,
        priority: job.priority,
        progress: u8::try_from(job.progress).unwrap_or(0),
        metadata: job.metadata,
        result: job.result,
        error: job.error,
        created_at: job.created_at.into(),
        updated_at: job.updated_at.into(),
        started_at: job.started_at.map(Timestamp::from),
        completed_at: job.completed_at.map(Timestamp::from),
        last_seq: job.last_seq,
        steps,
    })
}

/// A step row as its snapshot.
pub(crate) fn step_snapshot(step: job_steps::Model) -> Result<StepSnapshot, ReadError> {
    Ok(StepSnapshot {
        id: step.id,
        job_id: step.job_id,
        phase: parse("step phase", &step.phase, StepPhase::from_wire_name)?,
        step_type: parse("step type", &step.step_type, StepType::from_wire_name)?,
        status: parse("step status", &step.status, StepStatus::from_wire_name)?,
        name: step.name,
        started_at: step.started_at.map(Timestamp::from),
        completed_at: step.completed_at.map(Timestamp::from),
        duration_ms: step.duration_ms,
        error: step.error,
        tokens_input: step.tokens_input,
        tokens_output: step.tokens_output,
    })
}

impl EventStore {
    /// The `lastSeq` of the given jobs (missing jobs are left out).
    pub async fn last_seqs(&self, jobs: Vec<Uuid>) -> Result<Vec<(Uuid, i64)>, ReadError> {
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(500) {
            let rows = jobs::Entity::find()
                .select_only()
                .column(jobs::Column::Id)
                .column(jobs::Column::LastSeq)
                .filter(jobs::Column::Id.is_in(chunk.to_vec()))
                .into_tuple::<(Uuid, i64)>()
                .all(&self.db)
                .await?;
            out.extend(rows);
        }
        Ok(out)
    }

    /// Jobs of the given workspaces updated since `since`, with their `lastSeq`.
    pub async fn recently_updated(
        &self,
        workspaces: Vec<String>,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<(Uuid, i64)>, ReadError> {
        // In parts of at most IN_LIST_MAX ids: a node may follow more
        // workspaces than one statement takes bound values.
        let mut updated = Vec::new();
        for part in workspaces.chunks(IN_LIST_MAX) {
            let rows = jobs::Entity::find()
                .select_only()
                .column(jobs::Column::Id)
                .column(jobs::Column::LastSeq)
                .filter(jobs::Column::WorkspaceId.is_in(part.iter().cloned()))
                .filter(jobs::Column::UpdatedAt.gte(since))
                .into_tuple::<(Uuid, i64)>()
                .all(&self.db)
                .await?;
            updated.extend(rows);
        }
        Ok(updated)
    }
}
