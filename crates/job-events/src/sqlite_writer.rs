//! SQLite's writes, on a thread of the writer's own with a synchronous connection.
//!
//! sqlx runs every SQLite connection on a thread of its own, and each request
//! is a round trip to it: that thread is woken, runs the statement, answers,
//! and the task waiting for the answer is woken in turn. A write is four such
//! requests (begin, reads, changes, commit), and those wake-ups cost more CPU
//! than the statements (BENCHMARKS.md §2, "What a write is, by kind"). Here
//! the writer's connection lives on one thread that runs whole groups of
//! writes (group commit, see `writer`): a write costs one hand-over to the
//! thread and one answer back, however many statements it runs.
//!
//! The thread runs the same rules and the same statements as every other
//! writer (`writer` over [`WriteTx`]); this module adds only how statements
//! are sent and rows read back, in the formats sqlx uses (UUIDs as 16-byte
//! blobs, timestamps as RFC 3339 text, JSON as text), so that rows written
//! here and read through sea-orm, or the other way round, are the same.
//!
//! Used for SQLite files. A database in memory is only reachable through the
//! pool's own connections, and keeps writing through sea-orm.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, SecondsFormat, Utc};
use jobstream_protocol::Event;
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, OpenFlags, Row, ToSql};
use sea_orm::{DbBackend, DbErr, EntityTrait, QueryTrait, Statement};
use uuid::Uuid;

use crate::entity::{job_events, job_steps, jobs};
use crate::error::WriteError;
use crate::script::Script;
use crate::sink::EventSink;
use crate::tx::{steps_among, writable_jobs, LockedRows, WriteTx, CHUNK, SQLITE_NEXT_ORDER};

/// Statements kept prepared on the connection (a write's statements differ
/// by how many ids they list; a few dozen shapes cover nearly all writes).
const STATEMENT_CACHE: usize = 64;

/// Opens the writer's connection to the SQLite file at `path`, with the
/// pool's settings (see [`crate::db::open`]): write-ahead log, a sync on
/// every commit, foreign keys, and waiting for locks. The file must exist,
/// be in WAL mode and hold the schema (the pool created and migrated it).
pub(crate) fn open(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(crate::db::SQLITE_BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    let mode: String = conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
    let schema: i64 =
        conn.query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 'commit_counter'", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") || schema != 1 {
        return Err(rusqlite::Error::InvalidPath(path.to_path_buf()));
    }
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Called with every statement the writer runs (see `JobEvents::set_metric_callback`).
pub(crate) type MetricCallback = Arc<dyn Fn(&sea_orm::metric::Info<'_>) + Send + Sync>;

/// A write transaction on the writer thread's connection. The connection is
/// opened again at the next transaction after one was discarded.
pub(crate) struct SqliteTx {
    path: PathBuf,
    conn: Option<Connection>,
    metric: Arc<OnceLock<MetricCallback>>,
}

impl SqliteTx {
    /// The writer's transactions on `conn`, the file at `path`, each
    /// statement reported to `metric` once it is set.
    pub(crate) fn new(path: PathBuf, conn: Connection, metric: Arc<OnceLock<MetricCallback>>) -> Self {
        Self { path, conn: Some(conn), metric }
    }

    /// Runs `run`, reporting `statement` to the metric callback if there is one.
    fn observed<T>(
        &mut self,
        statement: &Statement,
        run: impl FnOnce(&mut Self) -> Result<T, WriteError>,
    ) -> Result<T, WriteError> {
        let Some(callback) = self.metric.get().cloned() else { return run(self) };
        let start = std::time::Instant::now();
        let outcome = run(self);
        callback(&sea_orm::metric::Info { elapsed: start.elapsed(), statement, failed: outcome.is_err() });
        outcome
    }

    fn conn(&mut self) -> Result<&mut Connection, WriteError> {
        if self.conn.is_none() {
            self.conn = Some(open(&self.path).map_err(sqlite_error)?);
        }
        self.conn.as_mut().ok_or_else(|| WriteError::Internal(DbErr::Custom("no connection".into())))
    }

    /// After a group: a connection still inside a transaction (a rollback
    /// that failed after a storage fault, a group cut short by a panic) is
    /// closed, never reused: reused, it would run the next writes inside the
    /// failed transaction, where they are never durably committed.
    pub(crate) fn settle(&mut self) {
        let Some(conn) = &self.conn else { return };
        if conn.is_autocommit() {
            return;
        }
        if conn.execute_batch("ROLLBACK").is_err() || !conn.is_autocommit() {
            tracing::warn!("the SQLite writer's connection is still inside a failed transaction; it is closed");
            self.discard();
        }
    }

    /// Closes the connection; the next transaction opens another.
    pub(crate) fn discard(&mut self) {
        if let Some(conn) = self.conn.take() {
            if let Err((_, err)) = conn.close() {
                tracing::warn!(error = %err, "closing the SQLite writer's connection failed");
            }
        }
    }

    fn run(&mut self, sql: &str) -> Result<(), WriteError> {
        if self.metric.get().is_some() {
            let statement = Statement::from_string(DbBackend::Sqlite, sql);
            return self.observed(&statement, |this| this.conn()?.execute_batch(sql).map_err(sqlite_error));
        }
        self.conn()?.execute_batch(sql).map_err(sqlite_error)
    }

    /// Runs `statement` and maps each row it returns with `row`.
    fn query<T>(
        &mut self,
        statement: &Statement,
        row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, WriteError> {
        self.observed(statement, |this| this.query_now(statement, row))
    }

    fn query_now<T>(
        &mut self,
        statement: &Statement,
        mut row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, WriteError> {
        let conn = self.conn()?;
        let mut prepared = conn.prepare_cached(&statement.sql).map_err(sqlite_error)?;
        let values = statement.values.as_ref().map(|v| v.0.as_slice()).unwrap_or_default();
        let mut rows = prepared.query(rusqlite::params_from_iter(values.iter().map(Bind))).map_err(sqlite_error)?;
        let mut out = Vec::new();
        while let Some(next) = rows.next().map_err(sqlite_error)? {
            out.push(row(next).map_err(sqlite_error)?);
        }
        Ok(out)
    }

    fn one<T>(
        &mut self,
        statement: &Statement,
        row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, WriteError> {
        Ok(self.query(statement, row)?.into_iter().next())
    }
}

#[async_trait::async_trait]
impl WriteTx for SqliteTx {
    fn backend(&self) -> DbBackend {
        DbBackend::Sqlite
    }

    async fn begin(&mut self) -> Result<(), WriteError> {
        self.run("BEGIN")
    }

    async fn commit(&mut self, events: &[&Event], sink: &dyn EventSink) -> Result<(), WriteError> {
        let err = match self.run("COMMIT") {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        // A COMMIT that fails with SQLITE_BUSY leaves the transaction open;
        // after an I/O error SQLite has rolled it back. Either way it is over
        // now, and this connection reads what the file holds.
        self.settle();
        let Some(first) = events.first() else { return Err(err) };
        match self.event(first.event_id).await {
            Ok(Some(_)) => {
                tracing::warn!(error = %err, "the commit reported an error but had committed");
                Ok(())
            }
            Ok(None) => Err(err),
            Err(_) => {
                let jobs: Vec<Uuid> = events.iter().map(|e| e.job_id).collect();
                sink.uncertain(&jobs);
                Err(WriteError::Unavailable(DbErr::Custom(format!("commit outcome unknown: {err}"))))
            }
        }
    }

    async fn rollback(&mut self) {
        if let Some(conn) = &self.conn {
            if !conn.is_autocommit() {
                if let Err(err) = conn.execute_batch("ROLLBACK") {
                    tracing::warn!(error = %err, "a rollback failed; the connection is discarded");
                }
            }
        }
        self.settle();
    }

    async fn execute_unprepared(&mut self, sql: &'static str) -> Result<(), WriteError> {
        self.run(sql)
    }

    async fn commit_order(&mut self) -> Result<i64, WriteError> {
        let order = Statement::from_string(DbBackend::Sqlite, SQLITE_NEXT_ORDER);
        self.one(&order, |row| row.get::<_, i64>("v"))?
            .ok_or_else(|| WriteError::Internal(DbErr::Custom("no commit order".into())))
    }

    async fn lock_rows(
        &mut self,
        ids: &BTreeSet<Uuid>,
        steps: &BTreeSet<Uuid>,
        with_order: bool,
    ) -> Result<LockedRows, WriteError> {
        let mut rows = LockedRows { steps_read: true, ..LockedRows::default() };
        if with_order {
            rows.order = Some(self.commit_order().await?);
        }
        let ids: Vec<Uuid> = ids.iter().copied().collect();
        for chunk in ids.chunks(CHUNK) {
            rows.jobs.extend(self.query(&writable_jobs(chunk).build(DbBackend::Sqlite), job_row)?);
        }
        let steps: Vec<Uuid> = steps.iter().copied().collect();
        for chunk in steps.chunks(CHUNK) {
            rows.steps.extend(self.query(&steps_among(chunk).build(DbBackend::Sqlite), step_row)?);
        }
        Ok(rows)
    }

    async fn job(&mut self, id: Uuid) -> Result<Option<jobs::Model>, WriteError> {
        self.one(&jobs::Entity::find_by_id(id).build(DbBackend::Sqlite), job_row)
    }

    async fn step(&mut self, id: Uuid) -> Result<Option<job_steps::Model>, WriteError> {
        self.one(&job_steps::Entity::find_by_id(id).build(DbBackend::Sqlite), step_row)
    }

    async fn event(&mut self, id: Uuid) -> Result<Option<job_events::Model>, WriteError> {
        self.one(&job_events::Entity::find_by_id(id).build(DbBackend::Sqlite), event_row)
    }

    async fn was_pruned(&mut self, id: Uuid) -> Result<bool, WriteError> {
        let select = crate::retention::was_pruned_query(DbBackend::Sqlite, id);
        Ok(self.one(&select, |_| Ok(()))?.is_some())
    }

    async fn execute(&mut self, script: Script) -> Result<(), WriteError> {
        for statement in script.into_statements() {
            self.observed(&statement, |this| {
                let mut prepared = this.conn()?.prepare_cached(&statement.sql).map_err(sqlite_error)?;
                let values = statement.values.as_ref().map(|v| v.0.as_slice()).unwrap_or_default();
                prepared.execute(rusqlite::params_from_iter(values.iter().map(Bind))).map_err(sqlite_error)
            })?;
        }
        Ok(())
    }
}

/// A SQLite error as a write's error: storage faults (disk full, I/O, busy)
/// are 503, values SQLite refuses 422, anything else internal (see
/// [`crate::error`]).
fn sqlite_error(err: rusqlite::Error) -> WriteError {
    let code = match &err {
        rusqlite::Error::SqliteFailure(failure, _) => Some(failure.extended_code),
        _ => None,
    };
    crate::error::sqlite_write_error(code, DbErr::Custom(format!("sqlite: {err}")))
}

/// A sea-query value bound as sqlx binds it for SQLite: UUIDs as 16-byte
/// blobs, timestamps as RFC 3339 text (`2026-12-03T07:44:55.123456+00:00`),
/// JSON as its text.
struct Bind<'a>(&'a sea_orm::Value);

impl ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use sea_orm::Value as V;
        fn owned<T>(value: Option<T>, into: impl FnOnce(T) -> SqlValue) -> ToSqlOutput<'static> {
            ToSqlOutput::Owned(value.map_or(SqlValue::Null, into))
        }
        Ok(match self.0 {
            V::Bool(v) => owned(*v, |v| SqlValue::Integer(v.into())),
            V::TinyInt(v) => owned(*v, |v| SqlValue::Integer(v.into())),
            V::SmallInt(v) => owned(*v, |v| SqlValue::Integer(v.into())),
            V::Int(v) => owned(*v, |v| SqlValue::Integer(v.into())),
            V::BigInt(v) => owned(*v, SqlValue::Integer),
            V::TinyUnsigned(v) => owned(*v, |v| SqlValue::Integer(v.into())),
            V::SmallUnsigned(v) => owned(*v, |v| SqlValue::Integer(v.into())),
            V::Unsigned(v) => owned(*v, |v| SqlValue::Integer(v.into())),
            V::BigUnsigned(Some(v)) => ToSqlOutput::Owned(SqlValue::Integer(
                i64::try_from(*v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
            )),
            V::BigUnsigned(None) => ToSqlOutput::Owned(SqlValue::Null),
            V::Float(v) => owned(*v, |v| SqlValue::Real(v.into())),
            V::Double(v) => owned(*v, SqlValue::Real),
            V::String(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            V::String(None) | V::Bytes(None) | V::Uuid(None) => ToSqlOutput::Owned(SqlValue::Null),
            V::Char(v) => owned(*v, |v| SqlValue::Text(v.to_string())),
            V::Bytes(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
            V::Json(v) => ToSqlOutput::Owned(match v {
                Some(json) => SqlValue::Text(
                    serde_json::to_string(json).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
                ),
                None => SqlValue::Null,
            }),
            V::ChronoDateTimeUtc(v) => owned(v.as_deref(), |at| SqlValue::Text(timestamp_text(at))),
            V::Uuid(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Blob(v.as_bytes())),
            other => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    format!("a value of this type is not written by the SQLite writer: {other:?}").into(),
                ))
            }
        })
    }
}

/// A timestamp as sqlx writes it to SQLite.
pub(crate) fn timestamp_text(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn conversion(column: &str, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Null, format!("{column}: {what}").into())
}

fn opt_uuid(row: &Row<'_>, column: &str) -> rusqlite::Result<Option<Uuid>> {
    match row.get_ref(column)? {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(bytes) => Uuid::from_slice(bytes).map(Some).map_err(|_| conversion(column, "not a UUID")),
        _ => Err(conversion(column, "not a UUID blob")),
    }
}

fn uuid(row: &Row<'_>, column: &str) -> rusqlite::Result<Uuid> {
    opt_uuid(row, column)?.ok_or_else(|| conversion(column, "NULL"))
}

fn opt_time(row: &Row<'_>, column: &str) -> rusqlite::Result<Option<DateTime<Utc>>> {
    match row.get_ref(column)? {
        ValueRef::Null => Ok(None),
        ValueRef::Text(text) => {
            let text = std::str::from_utf8(text).map_err(|_| conversion(column, "not UTF-8"))?;
            parse_timestamp(text).map(Some).ok_or_else(|| conversion(column, "not a timestamp"))
        }
        _ => Err(conversion(column, "not timestamp text")),
    }
}

fn time(row: &Row<'_>, column: &str) -> rusqlite::Result<DateTime<Utc>> {
    opt_time(row, column)?.ok_or_else(|| conversion(column, "NULL"))
}

/// A stored timestamp: RFC 3339, as written, or SQLite's own
/// `YYYY-MM-DD HH:MM:SS[.fff]` in UTC.
fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(text, "%F %T%.f").ok().map(|at| at.and_utc())
}

fn opt_json(row: &Row<'_>, column: &str) -> rusqlite::Result<Option<serde_json::Value>> {
    match row.get_ref(column)? {
        ValueRef::Null => Ok(None),
        ValueRef::Text(text) | ValueRef::Blob(text) => {
            serde_json::from_slice(text).map(Some).map_err(|_| conversion(column, "not JSON"))
        }
        _ => Err(conversion(column, "not JSON text")),
    }
}

fn job_row(row: &Row<'_>) -> rusqlite::Result<jobs::Model> {
    Ok(jobs::Model {
        id: uuid(row, "id")?,
        workspace_id: row.get("workspace_id")?,
        job_type: row.get("job_type")?,
        status: row.get("status")?,
        priority: row.get("priority")?,
        progress: row.get("progress")?,
        metadata: opt_json(row, "metadata")?.ok_or_else(|| conversion("metadata", "NULL"))?,
        result: opt_json(row, "result")?,
        error: row.get("error")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
        started_at: opt_time(row, "started_at")?,
        completed_at: opt_time(row, "completed_at")?,
        last_seq: row.get("last_seq")?,
    })
}

fn step_row(row: &Row<'_>) -> rusqlite::Result<job_steps::Model> {
    Ok(job_steps::Model {
        id: uuid(row, "id")?,
        job_id: uuid(row, "job_id")?,
        position: row.get("position")?,
        name: row.get("name")?,
        phase: row.get("phase")?,
        step_type: row.get("step_type")?,
        status: row.get("status")?,
        started_at: opt_time(row, "started_at")?,
        completed_at: opt_time(row, "completed_at")?,
        duration_ms: row.get("duration_ms")?,
        error: row.get("error")?,
        tokens_input: row.get("tokens_input")?,
        tokens_output: row.get("tokens_output")?,
        output_lines: row.get("output_lines")?,
    })
}

fn event_row(row: &Row<'_>) -> rusqlite::Result<job_events::Model> {
    Ok(job_events::Model {
        id: uuid(row, "id")?,
        job_id: uuid(row, "job_id")?,
        seq: row.get("seq")?,
        event_type: row.get("event_type")?,
        workspace_id: row.get("workspace_id")?,
        step_id: opt_uuid(row, "step_id")?,
        created_at: time(row, "created_at")?,
        data: opt_json(row, "data")?.ok_or_else(|| conversion("data", "NULL"))?,
        commit_order: row.get("commit_order")?,
        line: row.get("line")?,
    })
}

/// The writer's thread: waits for writes, takes the writer's turn, runs what
/// has queued as one group, and answers. Ends once `queue` is closed and
/// drained; the connection closes with it.
pub(crate) fn spawn(
    mut tx: SqliteTx,
    queue: Arc<crate::writer::GroupQueue>,
    turn: Arc<tokio::sync::Mutex<()>>,
    sink: Arc<dyn EventSink>,
    runtime: Option<tokio::runtime::Handle>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("jobstream-sqlite-writer".into()).spawn(move || {
        while queue.wait() {
            // Maintenance (retention) takes the same turn on its own connection.
            let held = turn.blocking_lock();
            let group = queue.take();
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // The sink may hand work to the runtime (delivery's tasks).
                let _runtime = runtime.as_ref().map(tokio::runtime::Handle::enter);
                futures::executor::block_on(crate::writer::run_group(&mut tx, sink.as_ref(), group));
            }));
            if ran.is_err() {
                // The group's writes are answered as failed (their answers
                // were dropped); the connection is not trusted again.
                tracing::error!("a group of writes failed; its transaction was rolled back");
                tx.discard();
            }
            tx.settle();
            drop(held);
        }
        tx.discard();
    })
}
