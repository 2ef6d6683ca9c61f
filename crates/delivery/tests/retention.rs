//! Retention on both engines: exactly the finished jobs older than the cut are
//! deleted with their steps and events, running and recent jobs stay, a dry
//! run counts the same, concurrent runs are safe, live delivery of other jobs
//! goes on, and SQLite gives the space back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../job-events/tests/support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobstream_delivery::{DeliveryConfig, Hub, Outlet, OutletError};
use jobstream_job_events::{Committed, EventStore, JobEvents, Prune};
use jobstream_protocol::{BatchItem, CreateJob, JobStatus, StartStep, StepOutputRequest, StepPhase, StepType};
use sea_orm::{ConnectionTrait, Statement};
use support::TestDb;
use uuid::Uuid;

fn create(workspace: &str) -> CreateJob {
    CreateJob { id: None, workspace_id: workspace.into(), job_type: "build".into(), priority: None, metadata: None }
}

/// A job with a step and `lines` output events, finished with `status` (or left running).
async fn job_with_output(writer: &JobEvents, workspace: &str, lines: usize, finish: Option<JobStatus>) -> Uuid {
    let (job, _) = writer.create_job(create(workspace)).await.unwrap();
    writer.emit_job_status_changed(job.id, JobStatus::Queued, None, None).await.unwrap();
    writer.emit_job_status_changed(job.id, JobStatus::Running, None, None).await.unwrap();
    let start = StartStep { id: None, name: "make".into(), phase: StepPhase::Execution, step_type: StepType::Command };
    let step = writer.write(BatchItem::Step(job.id, start), |_| true).await.unwrap().step.unwrap().id;
    let chunk = "x".repeat(1000);
    let items: Vec<BatchItem> = (0..lines)
        .map(|_| BatchItem::Output(job.id, step, StepOutputRequest { chunk: chunk.clone(), stream: None }))
        .collect();
    for batch in items.chunks(500) {
        writer.write_batch(batch.to_vec(), |_| true).await.unwrap();
    }
    if let Some(status) = finish {
        writer.emit_job_status_changed(job.id, status, None, None).await.unwrap();
    }
    job.id
}

struct Seqs(Mutex<Vec<(Uuid, i64)>>);

impl Outlet for Seqs {
    fn try_send(&self, event: &Committed) -> Result<(), OutletError> {
        self.0.lock().unwrap().push((event.event.job_id, event.event.seq));
        Ok(())
    }
    fn close(&self) {}
}

/// The mark the first slice of a job's deletion leaves (`pruned_jobs`).
fn deletion_mark(job: Uuid) -> sea_orm::sea_query::InsertStatement {
    use sea_orm::sea_query::{Alias, Query};
    Query::insert()
        .into_table(Alias::new("pruned_jobs"))
        .columns([Alias::new("id"), Alias::new("pruned_at")])
        .values_panic([job.into(), chrono::Utc::now().into()])
        .to_owned()
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    let row = db.db.query_one(Statement::from_string(db.db.get_database_backend(), sql)).await.unwrap().unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

async fn retention_deletes_exactly_the_finished_jobs_older_than_the_cut(db: &TestDb) {
    let hub = Hub::new(EventStore::new(db.db.clone()), DeliveryConfig::default());
    let writer = JobEvents::new(db.db.clone(), Arc::new(hub.clone()));
    let old_a = job_with_output(&writer, "ws-1", 1200, Some(JobStatus::Completed)).await;
    let old_b = job_with_output(&writer, "ws-2", 10, Some(JobStatus::Failed)).await;
    let old_running = job_with_output(&writer, "ws-1", 10, None).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let recent = job_with_output(&writer, "ws-1", 10, Some(JobStatus::Completed)).await;

    // A subscriber of the running job, written to while the prune runs.
    let outlet = Arc::new(Seqs(Mutex::default()));
    let subscriber = hub.subscriber(outlet.clone());
    subscriber.subscribe_job(old_running, None, |_| Ok::<(), ()>(()), |_| Box::new(|| Ok(()))).await.unwrap();

    let dry = writer.prune(&Prune { finished_before: cut, workspace: None, dry_run: true }).await.unwrap();
    assert_eq!(dry.jobs, 2);
    let only_ws2 =
        writer.prune(&Prune { finished_before: cut, workspace: Some("ws-2".into()), dry_run: false }).await.unwrap();
    assert_eq!(only_ws2.jobs, 1, "the workspace filter");
    assert!(writer.store().job(old_b).await.unwrap().is_none());

    let producer = {
        let writer = writer.clone();
        tokio::spawn(async move {
            for p in 0..20 {
                let item = BatchItem::Progress(
                    old_running,
                    jobstream_protocol::ProgressRequest { progress: p, message: None },
                );
                writer.write(item, |_| true).await.unwrap();
            }
        })
    };
    let prune = Prune { finished_before: cut, workspace: None, dry_run: false };
    let (first, second) = tokio::join!(writer.prune(&prune), writer.prune(&prune));
    producer.await.unwrap();
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.jobs + second.jobs, 1, "two concurrent runs delete the one job once");
    assert_eq!(first.events + second.events + only_ws2.events, dry.events, "the dry run counted the same events");

    assert!(writer.store().job(old_a).await.unwrap().is_none(), "old finished job deleted");
    assert!(writer.store().events_after(old_a, 0, 10).await.unwrap().is_empty());
    assert!(writer.store().job(old_running).await.unwrap().is_some(), "a running job is never deleted");
    assert!(writer.store().job(recent).await.unwrap().is_some(), "a job finished after the cut stays");
    assert_eq!(count(db, "SELECT COUNT(*) FROM job_steps WHERE job_id NOT IN (SELECT id FROM jobs)").await, 0);

    let last = writer.store().last_seq(old_running).await.unwrap().unwrap();
    for _ in 0..100 {
        if outlet.0.lock().unwrap().last().map(|(_, s)| *s) == Some(last) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got: Vec<i64> = outlet.0.lock().unwrap().iter().map(|(_, s)| *s).collect();
    let first_seq = got.first().copied().unwrap_or(0);
    assert_eq!(got, (first_seq..=last).collect::<Vec<_>>(), "live delivery of the running job went on");

    if db.db.get_database_backend() == sea_orm::DbBackend::Sqlite {
        assert_eq!(count(db, "PRAGMA auto_vacuum").await, 2, "new files use incremental auto-vacuum");
        assert_eq!(count(db, "PRAGMA freelist_count").await, 0, "the freed pages were given back");
    }
}

/// Many small jobs (several rounds, finished together in one batch), one job
/// larger than a delete slice, and a workspace filter that must skip the
/// other workspace's old jobs without reading them again in every round.
async fn retention_deletes_every_round_of_small_jobs_and_large_jobs_in_slices(db: &TestDb) {
    let writer = JobEvents::new(db.db.clone(), Arc::new(jobstream_job_events::NullSink));
    let mut small = Vec::new();
    for i in 0..240 {
        let workspace = if i % 3 == 0 { "ws-other" } else { "ws-main" };
        let (job, _) = writer.create_job(create(workspace)).await.unwrap();
        small.push((job.id, workspace));
    }
    // All finished in one batch: one transaction, one commit time for all.
    let finish: Vec<BatchItem> = small
        .iter()
        .flat_map(|(id, _)| {
            [JobStatus::Queued, JobStatus::Running, JobStatus::Completed].map(|status| {
                BatchItem::Status(*id, jobstream_protocol::StatusRequest { status, result: None, error: None })
            })
        })
        .collect();
    for chunk in finish.chunks(300) {
        writer.write_batch(chunk.to_vec(), |_| true).await.unwrap();
    }
    let large = job_with_output(&writer, "ws-main", 1_600, Some(JobStatus::Completed)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = chrono::Utc::now();
    let stats = |w: &JobEvents| {
        let s = w.retention_stats();
        (s.jobs.load(std::sync::atomic::Ordering::Relaxed), s.events.load(std::sync::atomic::Ordering::Relaxed))
    };

    let main = writer.prune(&Prune { finished_before: cut, workspace: Some("ws-main".into()), dry_run: false }).await;
    let main = main.unwrap();
    assert_eq!(main.jobs, 160 + 1);
    assert_eq!(main.events, 160 * 4 + 1_600 + 5);
    assert_eq!(stats(&writer), (main.jobs, main.events), "the metrics count what was deleted");
    assert!(writer.store().job(large).await.unwrap().is_none());
    for (id, workspace) in &small {
        assert_eq!(writer.store().job(*id).await.unwrap().is_some(), *workspace == "ws-other", "{workspace}");
    }
    let rest = writer.prune(&Prune { finished_before: cut, workspace: None, dry_run: false }).await.unwrap();
    assert_eq!((rest.jobs, rest.events), (80, 80 * 4));
    assert_eq!(count(db, "SELECT COUNT(*) FROM jobs").await, 0);
    assert_eq!(count(db, "SELECT COUNT(*) FROM job_events").await, 0);
}

/// Subscribers, clients and SSE streams remember positions per job id: a new
/// job under a deleted job's id would lose its first events to them. So an id
/// stays taken after its job is deleted, whether the job went with others
/// (small) or in slices (large), and whatever the new request.
async fn a_deleted_jobs_id_is_never_given_to_a_new_job(db: &TestDb) {
    let writer = JobEvents::new(db.db.clone(), Arc::new(jobstream_job_events::NullSink));
    let small = job_with_output(&writer, "ws-1", 3, Some(JobStatus::Completed)).await;
    let large = job_with_output(&writer, "ws-1", 1_200, Some(JobStatus::Cancelled)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = chrono::Utc::now();
    let report = writer.prune(&Prune { finished_before: cut, workspace: None, dry_run: false }).await.unwrap();
    assert_eq!(report.jobs, 2);
    for id in [small, large] {
        for workspace in ["ws-1", "ws-2"] {
            let again = CreateJob { id: Some(id), ..create(workspace) };
            match writer.create_job(again).await {
                Err(jobstream_job_events::WriteError::Conflict(message)) => {
                    assert!(message.contains("already used"), "{message}");
                }
                other => panic!("a deleted job's id was given again: {other:?}"),
            }
        }
        assert!(writer.store().job(id).await.unwrap().is_none(), "nothing was created");
    }
    assert_eq!(count(db, "SELECT COUNT(*) FROM pruned_jobs").await, 2);
    // Pruning again records nothing twice, and other ids are still free.
    writer.prune(&Prune { finished_before: chrono::Utc::now(), workspace: None, dry_run: false }).await.unwrap();
    assert_eq!(count(db, "SELECT COUNT(*) FROM pruned_jobs").await, 2);
    let fresh = CreateJob { id: Some(Uuid::now_v7()), ..create("ws-1") };
    let (_, created) = writer.create_job(fresh).await.unwrap();
    assert!(created);
}

/// A job part-way through deletion (its first slice deleted, then the prune
/// stopped: a crash, a storage error) reads as deleted everywhere and takes no
/// writes, rather than showing a history without its end; the next prune
/// finishes it.
async fn a_job_whose_deletion_has_begun_is_not_found_and_the_next_prune_finishes_it(db: &TestDb) {
    let writer = JobEvents::new(db.db.clone(), Arc::new(jobstream_job_events::NullSink));
    let job = job_with_output(&writer, "ws-1", 30, Some(JobStatus::Completed)).await;
    let step = writer.store().job(job).await.unwrap().unwrap().steps.unwrap()[0].id;
    // What the first slice of a large job's deletion leaves when the prune stops there.
    let backend = db.db.get_database_backend();
    let mark = backend.build(&deletion_mark(job));
    db.db.execute(mark).await.unwrap();
    db.db.execute(Statement::from_string(backend, "DELETE FROM job_events WHERE seq > 20".to_owned())).await.unwrap();

    assert!(writer.store().job(job).await.unwrap().is_none(), "the job reads as deleted");
    assert!(writer.store().step_log_info(job, step).await.unwrap().is_none(), "its step log too");
    let listed = writer
        .store()
        .jobs(jobstream_job_events::JobQuery { workspaces: Some(vec!["ws-1".into()]), status: None, limit: 50 })
        .await
        .unwrap();
    assert!(listed.iter().all(|j| j.id != job), "nor is it listed");
    let snapshot = writer.store().workspace_snapshot("ws-1").await.unwrap();
    assert!(snapshot.jobs.iter().all(|j| j.id != job), "nor in a workspace snapshot");
    let late = jobstream_protocol::CustomEventRequest {
        event_type: jobstream_protocol::EventType::AiToolCalled,
        step_id: None,
        payload: None,
    };
    assert!(
        matches!(
            writer.write(BatchItem::Event(job, late), |_| true).await,
            Err(jobstream_job_events::WriteError::JobNotFound(_))
        ),
        "and takes no write"
    );
    let report =
        writer.prune(&Prune { finished_before: chrono::Utc::now(), workspace: None, dry_run: false }).await.unwrap();
    assert_eq!((report.jobs, report.events), (1, 20));
    assert_eq!(count(db, "SELECT COUNT(*) FROM jobs").await, 0);
    assert_eq!(count(db, "SELECT COUNT(*) FROM job_events").await, 0);
}

/// Several nodes pruning one large job at once: each slice transaction locks
/// the job first, so they take turns instead of deadlocking on its events.
async fn concurrent_prunes_of_large_jobs_delete_each_once_without_an_error(db: &TestDb) {
    let writer = JobEvents::new(db.db.clone(), Arc::new(jobstream_job_events::NullSink));
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(job_with_output(&writer, "ws-1", 1_500, Some(JobStatus::Completed)).await);
    }
    let total = count(db, "SELECT COUNT(*) FROM job_events").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let prune = Prune { finished_before: chrono::Utc::now(), workspace: None, dry_run: false };
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let (writer, prune) = (writer.clone(), prune.clone());
            tokio::spawn(async move { writer.prune(&prune).await })
        })
        .collect();
    let (mut deleted_jobs, mut deleted_events) = (0, 0);
    for run in runs {
        let report = run.await.unwrap().expect("a concurrent prune fails");
        deleted_jobs += report.jobs;
        deleted_events += report.events;
    }
    assert_eq!(deleted_jobs, 3, "each job deleted once");
    assert_eq!(deleted_events, u64::try_from(total).unwrap(), "each event deleted once");
    assert_eq!(count(db, "SELECT COUNT(*) FROM job_events").await, 0);
    for job in jobs {
        assert!(writer.store().job(job).await.unwrap().is_none());
    }
}

/// A write that waits for the first slice of its job's deletion (which marks
/// the job deleted and holds its lock, or the writer's turn) is refused as
/// not found once that slice commits, never stored after it.
async fn a_write_waiting_for_the_first_slice_of_a_deletion_is_refused_after_it(db: &TestDb) {
    use sea_orm::TransactionTrait;
    let writer = JobEvents::new(db.db.clone(), Arc::new(jobstream_job_events::NullSink));
    let job = job_with_output(&writer, "ws-1", 10, Some(JobStatus::Completed)).await;
    let backend = db.db.get_database_backend();
    let mark = backend.build(&deletion_mark(job));
    let before = writer.store().last_seq(job).await.unwrap();
    let late = move || {
        BatchItem::Event(
            job,
            jobstream_protocol::CustomEventRequest {
                event_type: jobstream_protocol::EventType::AiToolCalled,
                step_id: None,
                payload: None,
            },
        )
    };
    let outcome = if backend == sea_orm::DbBackend::Postgres {
        // What a slice does: lock the job, delete some events, mark it.
        let slice = db.db.begin().await.unwrap();
        let lock = format!("SELECT status FROM jobs WHERE id = '{job}' FOR UPDATE");
        slice.execute(Statement::from_string(backend, lock)).await.unwrap();
        slice.execute(mark).await.unwrap();
        let write = {
            let writer = writer.clone();
            tokio::spawn(async move { writer.write(late(), |_| true).await })
        };
        // Until the write waits for the job's lock.
        let waiting =
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()";
        while count(db, waiting).await == 0 {
            tokio::task::yield_now().await;
        }
        slice.commit().await.unwrap();
        write.await.unwrap()
    } else {
        let turn = writer.hold_writer_turn().await;
        let write = {
            let writer = writer.clone();
            tokio::spawn(async move { writer.write(late(), |_| true).await })
        };
        while writer.queued_writes() == 0 {
            tokio::task::yield_now().await;
        }
        db.db.execute(mark).await.unwrap();
        drop(turn);
        write.await.unwrap()
    };
    assert!(
        matches!(outcome, Err(jobstream_job_events::WriteError::JobNotFound(_))),
        "the write is refused, not stored: {outcome:?}"
    );
    assert_eq!(writer.store().last_seq(job).await.unwrap(), before, "nothing appended");
}

on_both_engines!(
    a_write_waiting_for_the_first_slice_of_a_deletion_is_refused_after_it,
    concurrent_prunes_of_large_jobs_delete_each_once_without_an_error,
    a_job_whose_deletion_has_begun_is_not_found_and_the_next_prune_finishes_it,
    retention_deletes_exactly_the_finished_jobs_older_than_the_cut,
    retention_deletes_every_round_of_small_jobs_and_large_jobs_in_slices,
    a_deleted_jobs_id_is_never_given_to_a_new_job,
);
