//! Retention: deleting finished jobs, with their steps and events, once they
//! are older than a cut (CONTRACT §7, "Retention").
//!
//! - Only jobs in a terminal status whose `completedAt` is before the cut are
//!   deleted; a running job is never deleted, however old.
//! - Work is done in small transactions (at most 1,000 events each; a large
//!   job is recorded in `pruned_jobs` with its first slice, so it reads as
//!   deleted from then on, never as a history without its end), each taking
//!   the job's row lock on PostgreSQL or the one writer's turn on SQLite only
//!   for milliseconds, so writers and readers never wait long.
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
/// Events deleted per transaction.
const EVENT_BATCH: u64 = 1_000;
/// SQLite pages given back per transaction (4 KiB each).
const VACUUM_PAGES: u32 = 2_000;
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
    /// deleted together, up to [`EVENT_BATCH`] events in one transaction; a
    /// larger job is deleted in slices of its own.
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
            let mut group_events = 0;
            for (id, status, last_seq, _) in rows {
                if !TERMINAL.contains(&status.as_str()) {
                    continue;
                }
                let events = u64::try_from(last_seq).unwrap_or(0);
                if events > EVENT_BATCH {
                    let (events, deleted) = self.delete_job(id, prune.finished_before).await?;
                    round.add(PruneReport { jobs: u64::from(deleted), events });
                    continue;
                }
                if group_events + events > EVENT_BATCH {
                    round.add(self.delete_jobs(&std::mem::take(&mut group), prune.finished_before).await?);
                    group_events = 0;
                }
                group.push(id);
                group_events += events;
            }
            round.add(self.delete_jobs(&group, prune.finished_before).await?);
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
    async fn delete_jobs(&self, ids: &[Uuid], cut: DateTime<Utc>) -> Result<PruneReport, WriteError> {
        if ids.is_empty() {
            return Ok(PruneReport::default());
        }
        let backend = self.store().backend();
        let (guard, tx) = self.begin_write().await?;
        let held = std::time::Instant::now();
        let outcome = async {
            let mut still = jobs::Entity::find()
                .select_only()
                .column(jobs::Column::Id)
                .filter(jobs::Column::Id.is_in(ids.iter().copied()))
                .filter(jobs::Column::Status.is_in(TERMINAL))
                .filter(jobs::Column::CompletedAt.lt(cut));
            if backend == DbBackend::Postgres {
                still = still.lock_exclusive();
            }
            let still: Vec<Uuid> = still.into_tuple().all(&tx).await?;
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
                self.pace(held.elapsed()).await;
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
    async fn delete_job(&self, id: Uuid, cut: DateTime<Utc>) -> Result<(u64, bool), WriteError> {
        let backend = self.store().backend();
        let mut events = 0;
        loop {
            let newest = Query::select()
                .column(job_events::Column::Id)
                .from(job_events::Entity)
                .and_where(Expr::col(job_events::Column::JobId).eq(id))
                .order_by(job_events::Column::Seq, sea_orm::Order::Desc)
                .limit(EVENT_BATCH)
                .to_owned();
            let delete = Query::delete()
                .from_table(job_events::Entity)
                .and_where(Expr::col(job_events::Column::Id).in_subquery(newest))
                // Only while the job is still one to delete.
                .and_where(Expr::exists(
                    Query::select()
                        .expr(Expr::val(1))
                        .from(jobs::Entity)
                        .and_where(Expr::col((jobs::Entity, jobs::Column::Id)).eq(id))
                        .and_where(Expr::col((jobs::Entity, jobs::Column::Status)).is_in(TERMINAL))
                        .and_where(Expr::col((jobs::Entity, jobs::Column::CompletedAt)).lt(cut))
                        .to_owned(),
                ))
                .to_owned();
            let (guard, tx) = self.begin_write().await?;
            let held = std::time::Instant::now();
            let deleted = match tx.execute(backend.build(&delete)).await {
                Ok(result) => result.rows_affected(),
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
            self.pace(held.elapsed()).await;
            self.stats_add(PruneReport { jobs: 0, events: deleted });
            events += deleted;
            if deleted < EVENT_BATCH {
                break;
            }
        }
        let (guard, tx) = self.begin_write().await?;
        let held = std::time::Instant::now();
        let outcome = async {
            let rest = job_events::Entity::delete_many().filter(job_events::Column::JobId.eq(id)).exec(&tx).await?;
            let job = jobs::Entity::delete_many()
                .filter(jobs::Column::Id.eq(id))
                .filter(jobs::Column::Status.is_in(TERMINAL))
                .filter(jobs::Column::CompletedAt.lt(cut))
                .exec(&tx)
                .await?;
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
        for _ in 0..10_000 {
            let free = db.query_one(Statement::from_string(DbBackend::Sqlite, "PRAGMA freelist_count")).await;
            let Ok(Some(row)) = free else { return };
            if row.try_get_by_index::<i64>(0).unwrap_or(0) == 0 {
                return;
            }
            let guard = self.write_turn().await;
            let held = std::time::Instant::now();
            let sql = format!("PRAGMA incremental_vacuum({VACUUM_PAGES})");
            let _ = db.execute(Statement::from_string(DbBackend::Sqlite, sql)).await;
            drop(guard);
            self.pace(held.elapsed()).await;
        }
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
    let select = Query::select()
        .expr(Expr::val(1))
        .from(Alias::new(PRUNED_JOBS))
        .and_where(Expr::col(Alias::new("id")).eq(id))
        .to_owned();
    Ok(db.query_one(backend.build(&select)).await?.is_some())
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
