//! Retention: deleting finished jobs, with their steps and events, once they
//! are older than a cut (CONTRACT §7, "Retention").
//!
//! - Only jobs in a terminal status whose `completedAt` is before the cut are
//!   deleted; a running job is never deleted, however old.
//! - Work is done in small transactions, each sized to hold the writer's turn
//!   (SQLite) or its jobs' row locks (PostgreSQL) about 4 ms, from what the
//!   previous ones took, so writers and readers never wait long. A large job
//!   is recorded in `pruned_jobs` with its first slice, so it reads as
//!   deleted from then on, never as a history without its end.
//! - Concurrent runs (several nodes) are safe: every delete re-checks its
//!   condition, and deleting what is already gone deletes nothing.
//! - A job being deleted may still take a `job:event` (finished jobs do): the
//!   last step deletes the job row with whatever events remain.
//! - On SQLite, space is given back with `PRAGMA incremental_vacuum` when the
//!   file was created with incremental auto-vacuum (every file created by this
//!   version is); an older file keeps its size and reuses the pages (run
//!   `VACUUM` once, server stopped, to convert it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, OnConflict, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement,
};
use uuid::Uuid;

use crate::entity::{job_events, jobs};
use crate::error::WriteError;
use crate::writer::JobEvents;

/// Finished jobs considered per round.
const JOB_BATCH: u64 = 100;
/// How long one delete transaction should hold the writer's turn (SQLite) or
/// its jobs' row locks (PostgreSQL); each transaction is sized from what the
/// previous ones took (see [`Slice`]).
const HOLD: Duration = Duration::from_millis(4);
/// The statuses a job can be deleted in.
const TERMINAL: [&str; 3] = ["completed", "failed", "cancelled"];

/// What to delete.
#[derive(Debug, Clone)]
pub struct Prune {
    /// Jobs that finished before this instant.
    pub finished_before: DateTime<Utc>,
    /// Only this workspace's jobs, or every workspace's.
    pub workspace: Option<String>,
    /// Count what would be deleted, and delete nothing.
    pub dry_run: bool,
}

/// What a prune deleted (or, dry, would delete).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Jobs (with their steps).
    pub jobs: u64,
    /// Events.
    pub events: u64,
}

impl PruneReport {
    fn add(&mut self, other: PruneReport) {
        self.jobs += other.jobs;
        self.events += other.events;
    }
}

/// Totals since the start, for metrics.
#[derive(Debug, Default)]
pub struct RetentionStats {
    /// Jobs deleted.
    pub jobs: AtomicU64,
    /// Events deleted.
    pub events: AtomicU64,
}

impl JobEvents {
    /// Deletes (or counts) the finished jobs of `prune`, their steps and events.
    ///
    /// Candidates are read oldest finished first, in the order of the
    /// `completed_at` index (a job has a `completedAt` only in a terminal
    /// status, and every delete checks the status again), so each round reads
    /// what it deletes, not every finished job. Jobs with few events are
    /// deleted together, as many as fit in one transaction of about [`HOLD`];
    /// a larger job is deleted in slices of its own.
    pub async fn prune(&self, prune: &Prune) -> Result<PruneReport, WriteError> {
        let db = &self.store().db;
        let backend = self.store().backend();
        let candidates = || {
            let mut select = jobs::Entity::find().filter(jobs::Column::CompletedAt.lt(prune.finished_before));
            select = match &prune.workspace {
                // SQLite without statistics would read the workspace's jobs through
                // its own index and sort them all; `+` keeps it on `completed_at`.
                Some(workspace) if backend == DbBackend::Sqlite => {
                    select.filter(Expr::cust_with_values("+\"workspace_id\" = ?", [workspace.as_str()]))
                }
                Some(workspace) => select.filter(jobs::Column::WorkspaceId.eq(workspace.as_str())),
                None => select,
            };
            select
        };
        if prune.dry_run {
            let finished = || candidates().filter(jobs::Column::Status.is_in(TERMINAL));
            let jobs = finished().count(db).await?;
            let ids = finished().select_only().column(jobs::Column::Id);
            let events = job_events::Entity::find()
                .filter(job_events::Column::JobId.in_subquery(sea_orm::QueryTrait::into_query(ids)))
                .count(db)
                .await?;
            return Ok(PruneReport { jobs, events });
        }
        let mut report = PruneReport::default();
        let mut slice = Slice::new(250, 16, 4_000);
        // Where the last round ended, and the jobs seen there that stay (a
        // job that changed meanwhile): each round starts where the last one
        // ended, so what stays is read once, not in every round.
        let mut after: Option<DateTime<Utc>> = None;
        let mut stays: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
        loop {
            let mut select = candidates();
            if let Some(after) = after {
                select = select.filter(jobs::Column::CompletedAt.gte(after));
            }
            let rows: Vec<(Uuid, String, i64, Option<DateTime<Utc>>)> = select
                .select_only()
                .column(jobs::Column::Id)
                .column(jobs::Column::Status)
                .column(jobs::Column::LastSeq)
                .column(jobs::Column::CompletedAt)
                .order_by_asc(jobs::Column::CompletedAt)
                .limit(JOB_BATCH + stays.len() as u64)
                .into_tuple()
                .all(db)
                .await?;
            let rows: Vec<_> = rows.into_iter().filter(|row| !stays.contains(&row.0)).collect();
            if rows.is_empty() {
                break;
            }
            if let Some(last) = rows.last().and_then(|row| row.3) {
                if after != Some(last) {
                    stays.clear();
                }
                after = Some(last);
            }
            stays.extend(rows.iter().map(|row| row.0));
            let mut round = PruneReport::default();
            let mut group: Vec<Uuid> = Vec::new();
            // Rows a group deletes: its events, and one per job.
            let mut group_rows = 0;
            for (id, status, last_seq, _) in rows {
                if !TERMINAL.contains(&status.as_str()) {
                    continue;
                }
                let rows = u64::try_from(last_seq).unwrap_or(0) + 1;
                if rows > slice.size {
                    let (events, deleted) = self.delete_job(id, prune.finished_before, &mut slice).await?;
                    round.add(PruneReport { jobs: u64::from(deleted), events });
                    continue;
                }
                if group_rows + rows > slice.size {
                    let group = std::mem::take(&mut group);
                    round.add(self.delete_jobs(&group, group_rows, prune.finished_before, &mut slice).await?);
                    group_rows = 0;
                }
                group.push(id);
                group_rows += rows;
            }
            round.add(self.delete_jobs(&group, group_rows, prune.finished_before, &mut slice).await?);
            report.add(round);
        }
        if report.jobs > 0 {
            self.give_space_back().await;
        }
        Ok(report)
    }

    /// Deletes jobs with few events, their steps and events, in one
    /// transaction: those of `ids` still finished before the cut, locked
    /// first on PostgreSQL so that a concurrent `job:event` waits and then
    /// finds the job gone. Counted in the metrics once committed.
    /// `rows` is what the group was sized by (events and jobs), for `slice`.
    async fn delete_jobs(
        &self,
        ids: &[Uuid],
        rows: u64,
        cut: DateTime<Utc>,
        slice: &mut Slice,
    ) -> Result<PruneReport, WriteError> {
        if ids.is_empty() {
            return Ok(PruneReport::default());
        }
        let backend = self.store().backend();
        let (guard, tx) = self.begin_write().await?;
        let held = std::time::Instant::now();
        let outcome = async {
            // Read by primary key alone, and checked here: with the status and
            // cut in the query, SQLite's planner chose, from about ten ids on,
            // the `completed_at` index — a walk over every job finished before
            // the cut (20 ms at 250,000), inside the writer's turn.
            let mut still = jobs::Entity::find()
                .select_only()
                .column(jobs::Column::Id)
                .column(jobs::Column::Status)
                .column(jobs::Column::CompletedAt)
                .filter(jobs::Column::Id.is_in(ids.iter().copied()))
                // Locked in id order, as writes lock theirs: no deadlock with a
                // batch writing to several of these jobs.
                .order_by_asc(jobs::Column::Id);
            if backend == DbBackend::Postgres {
                still = still.lock_exclusive();
            }
            let rows: Vec<(Uuid, String, Option<DateTime<Utc>>)> = still.into_tuple().all(&tx).await?;
            let still: Vec<Uuid> =
                rows.into_iter().filter(|(_, status, done)| prunable(status, *done, cut)).map(|(id, ..)| id).collect();
            if still.is_empty() {
                return Ok(PruneReport::default());
            }
            let events = job_events::Entity::delete_many()
                .filter(job_events::Column::JobId.is_in(still.clone()))
                .exec(&tx)
                .await?;
            let jobs = jobs::Entity::delete_many().filter(jobs::Column::Id.is_in(still.clone())).exec(&tx).await?;
            mark_pruned(&tx, backend, &still).await?;
            Ok::<_, sea_orm::DbErr>(PruneReport { jobs: jobs.rows_affected, events: events.rows_affected })
        }
        .await;
        match outcome {
            Ok(report) => {
                tx.commit().await?;
                drop(guard);
                self.pace(slice.observe(rows, held.elapsed())).await;
                self.stats_add(report);
                Ok(report)
            }
            Err(err) => {
                let _ = tx.rollback().await;
                Err(err.into())
            }
        }
    }

    /// Deletes one job's events in small transactions, then the job (if it is
    /// still finished before the cut). Returns (events deleted, job deleted).
    async fn delete_job(&self, id: Uuid, cut: DateTime<Utc>, slice: &mut Slice) -> Result<(u64, bool), WriteError> {
        let backend = self.store().backend();
        let mut events = 0;
        loop {
            let size = slice.size;
            let newest = Query::select()
                .column(job_events::Column::Id)
                .from(job_events::Entity)
                .and_where(Expr::col(job_events::Column::JobId).eq(id))
                .order_by(job_events::Column::Seq, sea_orm::Order::Desc)
                .limit(size)
                .to_owned();
            let delete = Query::delete()
                .from_table(job_events::Entity)
                .and_where(Expr::col(job_events::Column::Id).in_subquery(newest))
                .to_owned();
            let (guard, tx) = self.begin_write().await?;
            let held = std::time::Instant::now();
            // Only while the job is still one to delete.
            let deleted = match lock_if_prunable(&tx, backend, id, cut).await {
                Ok(true) => tx.execute(backend.build(&delete)).await.map(|result| result.rows_affected()),
                Ok(false) => {
                    let _ = tx.rollback().await;
                    return Ok((events, false));
                }
                Err(err) => Err(err),
            };
            let deleted = match deleted {
                Ok(deleted) => deleted,
                Err(err) => {
                    let _ = tx.rollback().await;
                    return Err(err.into());
                }
            };
            // From its first slice on, the job reads as deleted (a reader
            // never sees its history without its end, even if this stops here).
            if events == 0 && deleted > 0 {
                if let Err(err) = mark_pruned(&tx, backend, &[id]).await {
                    let _ = tx.rollback().await;
                    return Err(err.into());
                }
            }
            tx.commit().await?;
            drop(guard);
            self.pace(slice.observe(size, held.elapsed())).await;
            self.stats_add(PruneReport { jobs: 0, events: deleted });
            events += deleted;
            if deleted < size {
                break;
            }
        }
        let (guard, tx) = self.begin_write().await?;
        let held = std::time::Instant::now();
        let outcome = async {
            if !lock_if_prunable(&tx, backend, id, cut).await? {
                return Ok((0, false));
            }
            let rest = job_events::Entity::delete_many().filter(job_events::Column::JobId.eq(id)).exec(&tx).await?;
            let job = jobs::Entity::delete_many().filter(jobs::Column::Id.eq(id)).exec(&tx).await?;
            let deleted = job.rows_affected == 1;
            if deleted {
                mark_pruned(&tx, backend, &[id]).await?;
            }
            Ok::<_, sea_orm::DbErr>((rest.rows_affected, deleted))
        }
        .await;
        match outcome {
            Ok((rest, true)) => {
                tx.commit().await?;
                drop(guard);
                self.pace(held.elapsed()).await;
                self.stats_add(PruneReport { jobs: 1, events: rest });
                Ok((events + rest, true))
            }
            // No longer one to delete (gone, or changed): its last events stay.
            Ok((_, false)) => {
                let _ = tx.rollback().await;
                Ok((events, false))
            }
            Err(err) => {
                let _ = tx.rollback().await;
                Err(err.into())
            }
        }
    }

    fn stats_add(&self, report: PruneReport) {
        let stats = self.retention_stats();
        stats.jobs.fetch_add(report.jobs, Ordering::Relaxed);
        stats.events.fetch_add(report.events, Ordering::Relaxed);
    }

    /// On SQLite, where a prune's transaction holds the one writer's turn,
    /// waits as long as it held it: writes queued meanwhile commit first, and
    /// a prune takes at most half of the writer's time however long it runs.
    async fn pace(&self, held: Duration) {
        if self.store().backend() == DbBackend::Sqlite {
            tokio::time::sleep(held).await;
        }
    }

    /// SQLite: hands freed pages back to the file system, a slice at a time.
    async fn give_space_back(&self) {
        if self.store().backend() != DbBackend::Sqlite {
            return;
        }
        let db = &self.store().db;
        let mode = db.query_one(Statement::from_string(DbBackend::Sqlite, "PRAGMA auto_vacuum")).await;
        let incremental = matches!(mode, Ok(Some(row)) if row.try_get_by_index::<i32>(0).ok() == Some(2));
        if !incremental {
            return;
        }
        let mut slice = Slice::new(256, 16, 4_096);
        for _ in 0..100_000 {
            let free = db.query_one(Statement::from_string(DbBackend::Sqlite, "PRAGMA freelist_count")).await;
            let Ok(Some(row)) = free else { return };
            if row.try_get_by_index::<i64>(0).unwrap_or(0) == 0 {
                return;
            }
            let guard = self.write_turn().await;
            let held = std::time::Instant::now();
            let sql = format!("PRAGMA incremental_vacuum({})", slice.size);
            let _ = self.write_db().execute(Statement::from_string(DbBackend::Sqlite, sql)).await;
            drop(guard);
            self.pace(slice.observe(slice.size, held.elapsed())).await;
        }
    }
}

/// Whether a job in `status`, finished at `done`, is one to delete at `cut`.
fn prunable(status: &str, done: Option<DateTime<Utc>>, cut: DateTime<Utc>) -> bool {
    TERMINAL.contains(&status) && done.is_some_and(|at| at < cut)
}

/// Reads the job `id` by key, locking its row on PostgreSQL (as a write
/// does), and tells whether it is still one to delete at `cut`. Every
/// transaction that deletes a slice of a job's events takes this lock first,
/// so two of them on one job (two nodes pruning at once) run one after the
/// other instead of locking the same events in opposite orders (a deadlock
/// that failed one of them).
async fn lock_if_prunable(
    tx: &sea_orm::DatabaseTransaction,
    backend: DbBackend,
    id: Uuid,
    cut: DateTime<Utc>,
) -> Result<bool, sea_orm::DbErr> {
    let mut select =
        jobs::Entity::find_by_id(id).select_only().column(jobs::Column::Status).column(jobs::Column::CompletedAt);
    if backend == DbBackend::Postgres {
        select = select.lock_exclusive();
    }
    let row: Option<(String, Option<DateTime<Utc>>)> = select.into_tuple().one(tx).await?;
    Ok(row.is_some_and(|(status, done)| prunable(&status, done, cut)))
}

/// The size of the next delete transaction (rows, or pages given back),
/// adjusted after each one so that it holds the writer's turn about [`HOLD`]:
/// smaller after one that held it longer, larger after one that held it less
/// than half as long, within `[min, max]`.
#[derive(Debug)]
struct Slice {
    size: u64,
    min: u64,
    max: u64,
}

impl Slice {
    fn new(size: u64, min: u64, max: u64) -> Self {
        Self { size, min, max }
    }

    /// After a transaction of `rows` held the turn for `held`: the size that
    /// would have held it [`HOLD`] at the same rate, moving at most ×1.25 up or
    /// ×0.25 down per step. With a fixed cost per transaction (the commit's
    /// sync) it settles where a transaction takes [`HOLD`], or at `min`.
    /// Returns `held`, for the pause that follows.
    fn observe(&mut self, rows: u64, held: Duration) -> Duration {
        if rows == 0 || rows * 2 < self.size {
            // A small last group says little about the full size.
            return held;
        }
        tracing::debug!(rows, held_us = held.as_micros() as u64, size = self.size, "retention transaction");
        let fit = HOLD.as_secs_f64() * rows as f64 / held.as_secs_f64().max(1e-6);
        let size = self.size as f64;
        self.size = (fit.clamp(size * 0.25, size * 1.25) as u64).clamp(self.min, self.max);
        held
    }
}

/// The table of deleted jobs' ids (see the `pruned_jobs` migration).
const PRUNED_JOBS: &str = "pruned_jobs";

/// Records that `ids` were deleted, inside the transaction that deletes them:
/// an id names one job forever, so it can never be created again.
async fn mark_pruned(tx: &impl ConnectionTrait, backend: DbBackend, ids: &[Uuid]) -> Result<(), sea_orm::DbErr> {
    if ids.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    let mut insert = Query::insert();
    insert.into_table(Alias::new(PRUNED_JOBS)).columns([Alias::new("id"), Alias::new("pruned_at")]);
    for id in ids {
        insert
            .values([Expr::val(*id).into(), Expr::val(now).into()])
            .map_err(|e| sea_orm::DbErr::Custom(format!("pruned_jobs insert: {e}")))?;
    }
    insert.on_conflict(OnConflict::column(Alias::new("id")).do_nothing().to_owned());
    tx.execute(backend.build(&insert)).await?;
    Ok(())
}

/// Whether a job with `id` was deleted by retention (so the id stays taken).
pub(crate) async fn was_pruned(
    db: &impl ConnectionTrait,
    backend: DbBackend,
    id: Uuid,
) -> Result<bool, sea_orm::DbErr> {
    Ok(db.query_one(was_pruned_query(backend, id)).await?.is_some())
}

/// The read of [`was_pruned`]: a row when job `id` was deleted by retention.
pub(crate) fn was_pruned_query(backend: DbBackend, id: Uuid) -> sea_orm::Statement {
    let select = Query::select()
        .expr(Expr::val(1))
        .from(Alias::new(PRUNED_JOBS))
        .and_where(Expr::col(Alias::new("id")).eq(id))
        .to_owned();
    backend.build(&select)
}

/// Those of `ids` deleted, or being deleted, by retention.
pub(crate) async fn pruned_among(
    db: &impl ConnectionTrait,
    backend: DbBackend,
    ids: impl IntoIterator<Item = Uuid>,
) -> Result<Vec<Uuid>, sea_orm::DbErr> {
    let select = Query::select()
        .column(Alias::new("id"))
        .from(Alias::new(PRUNED_JOBS))
        .and_where(Expr::col(Alias::new("id")).is_in(ids))
        .to_owned();
    db.query_all(backend.build(&select)).await?.iter().map(|row| row.try_get_by_index::<Uuid>(0)).collect()
}

/// Runs a prune every `every` with a cut `retention` before now, forever.
pub async fn run_retention(writer: JobEvents, retention: Duration, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let cut = chrono::Duration::from_std(retention).ok().and_then(|age| Utc::now().checked_sub_signed(age));
        let Some(finished_before) = cut else {
            tracing::error!(?retention, "retention: the retention is too long to compute a cut; nothing is deleted");
            return;
        };
        let prune = Prune { finished_before, workspace: None, dry_run: false };
        match writer.prune(&prune).await {
            Ok(report) if report.jobs > 0 => {
                tracing::info!(jobs = report.jobs, events = report.events, "retention: deleted finished jobs");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "retention: prune failed; trying again later"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_slice_settles_where_a_transaction_holds_the_turn_about_hold() {
        // 1 ms of fixed cost (the commit's sync) and 20 µs a row: 150 rows take 4 ms.
        let mut slice = Slice::new(1_000, 16, 4_000);
        for _ in 0..30 {
            let rows = slice.size;
            slice.observe(rows, MS + Duration::from_micros(20) * rows as u32);
        }
        assert!((140..=160).contains(&slice.size), "{slice:?}");
    }

    #[test]
    fn a_slice_shrinks_at_most_to_a_quarter_a_step_and_stays_within_bounds() {
        let mut slice = Slice::new(1_000, 16, 4_000);
        slice.observe(1_000, 1_000 * MS);
        assert_eq!(slice.size, 250);
        for _ in 0..10 {
            slice.observe(slice.size, 1_000 * MS);
        }
        assert_eq!(slice.size, 16);
        for _ in 0..100 {
            slice.observe(slice.size, Duration::from_micros(1));
        }
        assert_eq!(slice.size, 4_000);
    }

    #[test]
    fn a_small_last_group_does_not_resize_a_slice() {
        let mut slice = Slice::new(1_000, 16, 4_000);
        slice.observe(100, 100 * MS);
        assert_eq!(slice.size, 1_000);
    }
}
