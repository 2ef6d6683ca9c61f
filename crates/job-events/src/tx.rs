//! A write transaction's I/O, behind one trait: what the writer's rules read
//! (jobs, steps, stored events, the commit order) and the changes they make.
//!
//! The rules themselves (`writer`: `seq`, status and step rules, `eventId`,
//! group commit with a savepoint per write) run over any [`WriteTx`]:
//!
//! - [`SeaTx`], over sea-orm: PostgreSQL, and SQLite databases in memory;
//! - `sqlite_writer::SqliteTx`, over a synchronous SQLite connection on a
//!   thread of the writer's own (SQLite files): there every call returns at
//!   once, without a round trip to another thread.
//!
//! Both run the same statements, built with sea-query: an implementation adds
//! only how they are sent and how rows are read back.

use std::collections::BTreeSet;

use jobstream_protocol::Event;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};
use uuid::Uuid;

use crate::entity::{job_events, job_steps, jobs};
use crate::error::WriteError;
use crate::script::{Script, ROW_KIND};
use crate::sink::EventSink;

/// Rows per statement that lists ids (keeps SQLite under its bound-parameter limit).
pub(crate) const CHUNK: usize = 500;

/// What [`WriteTx::lock_rows`] read.
#[derive(Debug, Default)]
pub(crate) struct LockedRows {
    /// The commit order, when asked for and read with the rows.
    pub order: Option<i64>,
    /// The jobs found that take writes, locked.
    pub jobs: Vec<jobs::Model>,
    /// The steps found, when `steps_read`.
    pub steps: Vec<job_steps::Model>,
    /// Whether the steps asked for were read (a step not found then does not exist).
    pub steps_read: bool,
}

/// One write transaction at a time, on one connection. A method that fails
/// leaves the transaction to the caller, who rolls it (or its savepoint) back.
#[async_trait::async_trait]
pub(crate) trait WriteTx: Send {
    /// The engine: the statements are built for it.
    fn backend(&self) -> DbBackend;

    /// Begins a transaction.
    async fn begin(&mut self) -> Result<(), WriteError>;

    /// Commits. A commit that reports an error may still have committed (a
    /// dropped connection after the server committed): the outcome is then
    /// read back by the first event's id, so that a committed write is
    /// answered as such and one that is not is never announced. If the
    /// outcome cannot be known, `sink` is told the jobs are uncertain and the
    /// write is answered unavailable (the client retries).
    async fn commit(&mut self, events: &[&Event], sink: &dyn EventSink) -> Result<(), WriteError>;

    /// Rolls back. A connection whose rollback fails is never reused.
    async fn rollback(&mut self);

    /// Runs a statement without values (`SAVEPOINT`, `RELEASE`, `ROLLBACK TO`).
    async fn execute_unprepared(&mut self, sql: &'static str) -> Result<(), WriteError>;

    /// The commit order of the transaction (see [`commit_order_sql`]); run as
    /// its first statement, it takes SQLite's write lock.
    async fn commit_order(&mut self) -> Result<i64, WriteError>;

    /// The jobs of `jobs` that take writes, locked (in id order on
    /// PostgreSQL, so that two writers cannot deadlock), and on SQLite the
    /// `steps`. With `with_order`, the commit order is read with them (see
    /// [`LockedRows::order`]).
    async fn lock_rows(
        &mut self,
        jobs: &BTreeSet<Uuid>,
        steps: &BTreeSet<Uuid>,
        with_order: bool,
    ) -> Result<LockedRows, WriteError>;

    /// The job `id`, whatever its state.
    async fn job(&mut self, id: Uuid) -> Result<Option<jobs::Model>, WriteError>;

    /// The step `id`.
    async fn step(&mut self, id: Uuid) -> Result<Option<job_steps::Model>, WriteError>;

    /// The stored event `id`.
    async fn event(&mut self, id: Uuid) -> Result<Option<job_events::Model>, WriteError>;

    /// Whether job `id` was deleted by retention (the id stays taken).
    async fn was_pruned(&mut self, id: Uuid) -> Result<bool, WriteError>;

    /// Runs the statements of `script` in order.
    async fn execute(&mut self, script: Script) -> Result<(), WriteError>;
}

/// SQLite's next commit order; its row says what it is when it leads a
/// write's reads.
pub(crate) const SQLITE_NEXT_ORDER: &str =
    "UPDATE commit_counter SET value = value + 1 WHERE id = 1 RETURNING 'order' AS row_kind, value AS v";

/// The statement that reads the commit order of the current write
/// transaction (see the `commit_order` migration): the PostgreSQL
/// transaction id, or the next value of SQLite's commit counter, which only
/// the one writer takes. Run as a transaction's first statement on SQLite, it
/// takes the write lock up front (waiting as `busy_timeout` allows), so the
/// transaction never has to upgrade a read snapshot to a write, which SQLite
/// refuses at once when another connection wrote in between.
pub(crate) fn commit_order_sql(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "SELECT pg_current_xact_id()::text::bigint AS v",
        _ => SQLITE_NEXT_ORDER,
    }
}

/// The commit order of `tx` (see [`commit_order_sql`]).
pub(crate) async fn commit_order(tx: &DatabaseTransaction, backend: DbBackend) -> Result<i64, DbErr> {
    let row = tx
        .query_one(sea_orm::Statement::from_string(backend, commit_order_sql(backend)))
        .await?
        .ok_or_else(|| DbErr::Custom("no commit order".into()))?;
    row.try_get::<i64>("", "v")
}

/// The jobs of `ids` that take writes: a job whose deletion has begun takes
/// no more (it is not found).
pub(crate) fn writable_jobs(ids: &[Uuid]) -> sea_orm::Select<jobs::Entity> {
    use sea_orm::ColumnTrait;
    jobs::Entity::find().filter(jobs::Column::Id.is_in(ids.to_vec())).filter(crate::store::not_being_deleted())
}

/// The steps of `ids`.
pub(crate) fn steps_among(ids: &[Uuid]) -> sea_orm::Select<job_steps::Entity> {
    use sea_orm::ColumnTrait;
    job_steps::Entity::find().filter(job_steps::Column::Id.is_in(ids.to_vec()))
}

/// A write transaction over sea-orm: on the writer's connection `db`, with
/// commit outcomes read back through `read` (another connection).
pub(crate) struct SeaTx<'a> {
    db: &'a DatabaseConnection,
    read: &'a DatabaseConnection,
    tx: Option<DatabaseTransaction>,
}

impl<'a> SeaTx<'a> {
    pub(crate) fn new(db: &'a DatabaseConnection, read: &'a DatabaseConnection) -> Self {
        Self { db, read, tx: None }
    }

    fn tx(&self) -> Result<&DatabaseTransaction, WriteError> {
        self.tx.as_ref().ok_or_else(|| WriteError::Internal(DbErr::Custom("no transaction".into())))
    }
}

#[async_trait::async_trait]
impl WriteTx for SeaTx<'_> {
    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    async fn begin(&mut self) -> Result<(), WriteError> {
        self.tx = Some(self.db.begin().await?);
        Ok(())
    }

    async fn commit(&mut self, events: &[&Event], sink: &dyn EventSink) -> Result<(), WriteError> {
        let Some(tx) = self.tx.take() else { return Err(WriteError::Internal(DbErr::Custom("no transaction".into()))) };
        let err = match tx.commit().await {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        let Some(first) = events.first() else { return Err(err.into()) };
        for attempt in 0..3u64 {
            match job_events::Entity::find_by_id(first.event_id).one(self.read).await {
                Ok(Some(_)) => {
                    tracing::warn!(error = %err, "the commit reported an error but had committed");
                    return Ok(());
                }
                Ok(None) => return Err(err.into()),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100 * (attempt + 1))).await,
            }
        }
        // Unknown outcome: answer unavailable (the client retries) and let
        // delivery compare these jobs with the database once it answers.
        let jobs: Vec<Uuid> = events.iter().map(|e| e.job_id).collect();
        sink.uncertain(&jobs);
        Err(WriteError::Unavailable(err))
    }

    async fn rollback(&mut self) {
        if let Some(tx) = self.tx.take() {
            // A failed rollback leaves the connection to the pool's release
            // check, which closes it.
            if let Err(err) = tx.rollback().await {
                tracing::warn!(error = %err, "a rollback failed; the connection is discarded");
            }
        }
    }

    async fn execute_unprepared(&mut self, sql: &'static str) -> Result<(), WriteError> {
        self.tx()?.execute_unprepared(sql).await?;
        Ok(())
    }

    async fn commit_order(&mut self) -> Result<i64, WriteError> {
        let backend = self.backend();
        Ok(commit_order(self.tx()?, backend).await?)
    }

    async fn lock_rows(
        &mut self,
        ids: &BTreeSet<Uuid>,
        steps: &BTreeSet<Uuid>,
        with_order: bool,
    ) -> Result<LockedRows, WriteError> {
        use sea_orm::{FromQueryResult, QueryTrait};
        const ORDER: &str = "commit_order_of_tx";
        let backend = self.backend();
        let tx = self.tx()?;
        let ids: Vec<Uuid> = ids.iter().copied().collect();
        let mut rows = LockedRows::default();
        if backend != DbBackend::Postgres {
            // SQLite (one writer: reading is locking): the jobs and steps in
            // one request, led by the commit counter's update (see `Script`).
            use sea_orm::sea_query::Expr;
            let mut script = Script::default();
            if with_order {
                script.push(sea_orm::Statement::from_string(backend, SQLITE_NEXT_ORDER));
            }
            for chunk in ids.chunks(CHUNK) {
                script.push(writable_jobs(chunk).column_as(Expr::val("job"), ROW_KIND).build(backend));
            }
            let step_ids: Vec<Uuid> = steps.iter().copied().collect();
            for chunk in step_ids.chunks(CHUNK) {
                script.push(steps_among(chunk).column_as(Expr::val("step"), ROW_KIND).build(backend));
            }
            for row in script.query_all(tx).await? {
                match row.try_get::<String>("", ROW_KIND)?.as_str() {
                    "order" => rows.order = Some(row.try_get::<i64>("", "v")?),
                    "job" => rows.jobs.push(jobs::Model::from_query_result(&row, "")?),
                    "step" => rows.steps.push(job_steps::Model::from_query_result(&row, "")?),
                    kind => {
                        return Err(WriteError::Internal(DbErr::Custom(format!(
                            "a read returned a row of kind {kind}"
                        ))))
                    }
                }
            }
            rows.steps_read = true;
            return Ok(rows);
        }
        for chunk in ids.chunks(CHUNK) {
            let mut select = writable_jobs(chunk).order_by_asc(jobs::Column::Id).lock_exclusive();
            if with_order && rows.order.is_none() {
                select = select.column_as(sea_orm::sea_query::Expr::cust("pg_current_xact_id()::text::bigint"), ORDER);
            }
            for result in tx.query_all(select.build(backend)).await? {
                if with_order && rows.order.is_none() {
                    rows.order = Some(result.try_get::<i64>("", ORDER)?);
                }
                rows.jobs.push(jobs::Model::from_query_result(&result, "")?);
            }
        }
        // The `not_being_deleted` test above ran on the snapshot the
        // statement began with, and a prune's slice that held a job's lock
        // marks the job without changing its row, so the lock's wait ends
        // without a re-check. Read again, now that the locks are held: a mark
        // committed meanwhile is seen, and the job is not found.
        if !rows.jobs.is_empty() {
            let found: Vec<Uuid> = rows.jobs.iter().map(|job| job.id).collect();
            let mut pruned = BTreeSet::new();
            for chunk in found.chunks(CHUNK) {
                pruned.extend(crate::retention::pruned_among(tx, backend, chunk.iter().copied()).await?);
            }
            rows.jobs.retain(|job| !pruned.contains(&job.id));
        }
        Ok(rows)
    }

    async fn job(&mut self, id: Uuid) -> Result<Option<jobs::Model>, WriteError> {
        Ok(jobs::Entity::find_by_id(id).one(self.tx()?).await?)
    }

    async fn step(&mut self, id: Uuid) -> Result<Option<job_steps::Model>, WriteError> {
        Ok(job_steps::Entity::find_by_id(id).one(self.tx()?).await?)
    }

    async fn event(&mut self, id: Uuid) -> Result<Option<job_events::Model>, WriteError> {
        Ok(job_events::Entity::find_by_id(id).one(self.tx()?).await?)
    }

    async fn was_pruned(&mut self, id: Uuid) -> Result<bool, WriteError> {
        let backend = self.backend();
        Ok(crate::retention::was_pruned(self.tx()?, backend, id).await?)
    }

    async fn execute(&mut self, script: Script) -> Result<(), WriteError> {
        script.execute(self.tx()?).await?;
        Ok(())
    }
}
