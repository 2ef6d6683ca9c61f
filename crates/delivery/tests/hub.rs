//! The delivery hub under concurrent writers, slow outlets and overflowing
//! mailboxes: every subscriber gets, per job, the exact contiguous range of
//! `seq` it asked for, in order, once, and its announcement first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../job-events/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobstream_delivery::{Announce, DeliveryConfig, Hub, Outlet, OutletError, Subscriber};
use jobstream_job_events::{Committed, EventStore, JobEvents};
use jobstream_protocol::{BatchItem, CreateJob, JobStatus, ProgressRequest};
use support::TestDb;
use uuid::Uuid;

/// What an outlet saw: `None` for the announcement, else (job, seq).
type Log = Arc<Mutex<Vec<Option<(Uuid, i64)>>>>;

/// An outlet that refuses every `full_every`-th send, and (with `min_gap`) any
/// send sooner than `min_gap` after the last one it took: a slow reader.
struct Collector {
    log: Log,
    full_every: u32,
    calls: AtomicU32,
    min_gap: Duration,
    last: Mutex<std::time::Instant>,
}

impl Outlet for Collector {
    fn try_send(&self, event: &Committed) -> Result<(), OutletError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if self.full_every > 0 && call.is_multiple_of(self.full_every) {
            return Err(OutletError::Full);
        }
        let mut last = self.last.lock().unwrap();
        if last.elapsed() < self.min_gap {
            return Err(OutletError::Full);
        }
        *last = std::time::Instant::now();
        self.log.lock().unwrap().push(Some((event.event.job_id, event.event.seq)));
        Ok(())
    }

    fn close(&self) {}
}

fn announce(log: &Log) -> Announce {
    let log = log.clone();
    Box::new(move || {
        log.lock().unwrap().push(None);
        Ok(())
    })
}

fn subscriber(hub: &Hub, full_every: u32) -> (Subscriber, Log) {
    slow_subscriber(hub, full_every, Duration::ZERO)
}

fn slow_subscriber(hub: &Hub, full_every: u32, min_gap: Duration) -> (Subscriber, Log) {
    let log: Log = Arc::default();
    let last = Mutex::new(std::time::Instant::now() - min_gap);
    let outlet = Collector { log: log.clone(), full_every, calls: AtomicU32::new(0), min_gap, last };
    (hub.subscriber(Arc::new(outlet)), log)
}

fn job_request() -> CreateJob {
    CreateJob { id: None, workspace_id: "ws-1".into(), job_type: "build".into(), priority: None, metadata: None }
}

/// Per job, the seqs received, after checking the announcement came first.
fn received(log: &Log) -> HashMap<Uuid, Vec<i64>> {
    let log = log.lock().unwrap();
    if let Some(first) = log.first() {
        assert_eq!(first, &None, "the announcement comes before any event");
    }
    let mut per_job: HashMap<Uuid, Vec<i64>> = HashMap::new();
    for (job, seq) in log.iter().flatten() {
        per_job.entry(*job).or_default().push(*seq);
    }
    per_job
}

async fn every_subscriber_gets_each_job_in_order_once_under_concurrent_writers_and_slow_outlets(db: &TestDb) {
    // Arrange: a hub with tiny mailboxes, so overflow and catch-up happen often.
    let config =
        DeliveryConfig { queue_limit: 8, pending_limit: 8, page_size: 16, stall_timeout: Duration::from_secs(10) };
    let hub = Hub::new(EventStore::new(db.db.clone()), config);
    let writer = JobEvents::new(db.db.clone(), Arc::new(hub.clone()));
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let (job, _) = writer.create_job(job_request()).await.unwrap();
        jobs.push(job.id);
    }
    let (j1, j2) = (jobs[0], jobs[1]);
    let ok = |_: &jobstream_protocol::JobSnapshot| Ok::<(), ()>(());
    let (job_only, job_log) = subscriber(&hub, 0);
    job_only.subscribe_job(j1, None, ok, |_| announce(&job_log)).await.unwrap();
    let (workspace, ws_log) = subscriber(&hub, 0);
    workspace.subscribe_workspace("ws-1", |_| announce(&ws_log)).await.unwrap();
    let (both, both_log) = subscriber(&hub, 0);
    both.subscribe_workspace("ws-1", |_| announce(&both_log)).await.unwrap();
    both.subscribe_job(j1, Some(0), ok, |_| Box::new(|| Ok(()))).await.unwrap();
    let (slow, slow_log) = slow_subscriber(&hub, 3, Duration::from_millis(5));
    slow.subscribe_workspace("ws-1", |_| announce(&slow_log)).await.unwrap();
    let (replay, replay_log) = subscriber(&hub, 0);
    replay.subscribe_job(j2, Some(0), ok, |_| announce(&replay_log)).await.unwrap();

    // Act: four producers, single writes and batches, and a job created mid-run.
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let writer = writer.clone();
            let jobs = jobs.clone();
            tokio::spawn(async move {
                for i in 0..30usize {
                    let job = jobs[(p + i) % jobs.len()];
                    let progress = |n: usize| {
                        BatchItem::Progress(job, ProgressRequest { progress: (n % 100) as i64, message: None })
                    };
                    if i % 5 == 0 {
                        writer
                            .write_batch(vec![progress(i), progress(i + 1), progress(i + 2)], |_| true)
                            .await
                            .unwrap();
                    } else {
                        writer.write(progress(i), |_| true).await.unwrap();
                    }
                }
            })
        })
        .collect();
    let (late, _) = writer.create_job(job_request()).await.unwrap();
    writer.emit_job_status_changed(late.id, JobStatus::Queued, None, None).await.unwrap();
    for producer in producers {
        producer.await.unwrap();
    }

    // Assert: wait until delivery settles, then check exact ranges.
    let mut last = HashMap::new();
    for job in jobs.iter().chain([&late.id]) {
        last.insert(*job, writer.store().last_seq(*job).await.unwrap().unwrap());
    }
    let expect = |log: &Log, wanted: &[(Uuid, i64)]| {
        let got = received(log);
        let want: HashMap<Uuid, Vec<i64>> =
            wanted.iter().map(|(job, from)| (*job, ((from + 1)..=last[job]).collect())).collect();
        (got == want, format!("got {got:?}\nwant {want:?}"))
    };
    let workspace_wants: Vec<(Uuid, i64)> = jobs.iter().map(|j| (*j, 1)).chain([(late.id, 0)]).collect();
    let mut both_wants = workspace_wants.clone();
    both_wants[0] = (j1, 0);
    type Wanted = Vec<(Uuid, i64)>;
    let checks: Vec<(&str, &Log, Wanted)> = vec![
        ("job only", &job_log, vec![(j1, 1)]),
        ("workspace", &ws_log, workspace_wants.clone()),
        ("both rooms", &both_log, both_wants),
        ("slow", &slow_log, workspace_wants),
        ("replay", &replay_log, vec![(j2, 0)]),
    ];
    for (name, log, wanted) in checks {
        let mut outcome = expect(log, &wanted);
        for _ in 0..200 {
            if outcome.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            outcome = expect(log, &wanted);
        }
        assert!(outcome.0, "{name}: {}", outcome.1);
    }
    assert!(hub.stats().overflows.load(Ordering::Relaxed) > 0, "the test exercised overflow");
}

async fn a_replay_of_many_events_streams_in_order_through_a_small_mailbox(db: &TestDb) {
    let config =
        DeliveryConfig { queue_limit: 4, pending_limit: 4, page_size: 100, stall_timeout: Duration::from_secs(10) };
    let hub = Hub::new(EventStore::new(db.db.clone()), config);
    let writer = JobEvents::new(db.db.clone(), Arc::new(hub.clone()));
    let (job, _) = writer.create_job(job_request()).await.unwrap();
    let batch: Vec<BatchItem> =
        (0..1000).map(|i| BatchItem::Progress(job.id, ProgressRequest { progress: i % 100, message: None })).collect();
    for chunk in batch.chunks(500) {
        writer.write_batch(chunk.to_vec(), |_| true).await.unwrap();
    }
    let (replay, log) = subscriber(&hub, 7);
    replay.subscribe_job(job.id, Some(0), |_| Ok::<(), ()>(()), |_| announce(&log)).await.unwrap();
    let want: Vec<i64> = (1..=1001).collect();
    for _ in 0..200 {
        if received(&log).get(&job.id) == Some(&want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(received(&log).get(&job.id), Some(&want));
}

/// Adds `n` finished jobs to a workspace directly (their history is not what
/// this test is about; only their number is).
async fn seed_finished_jobs(db: &TestDb, workspace: &str, n: usize) {
    use jobstream_job_events::entity::jobs;
    use sea_orm::{EntityTrait, IntoActiveModel};
    let now = chrono::Utc::now();
    let rows: Vec<jobs::Model> = (0..n)
        .map(|_| jobs::Model {
            id: Uuid::now_v7(),
            workspace_id: workspace.to_owned(),
            job_type: "old".into(),
            status: "completed".into(),
            priority: 0,
            progress: 100,
            metadata: serde_json::json!({}),
            result: None,
            error: None,
            created_at: now,
            updated_at: now - chrono::Duration::hours(1),
            started_at: Some(now),
            completed_at: Some(now),
            last_seq: 4,
        })
        .collect();
    for chunk in rows.chunks(500) {
        jobs::Entity::insert_many(chunk.iter().cloned().map(IntoActiveModel::into_active_model))
            .exec_without_returning(&db.db)
            .await
            .unwrap();
    }
}

async fn a_workspace_subscription_holds_no_cursor_for_finished_jobs_and_still_gets_their_later_events_once(
    db: &TestDb,
) {
    let hub = Hub::new(EventStore::new(db.db.clone()), DeliveryConfig::default());
    let writer = JobEvents::new(db.db.clone(), Arc::new(hub.clone()));
    let workspace = "ws-history";
    let request = || CreateJob { workspace_id: workspace.into(), ..job_request() };
    // A finished job with a real history, and 10,000 finished jobs besides.
    let (finished, _) = writer.create_job(request()).await.unwrap();
    writer.emit_job_status_changed(finished.id, JobStatus::Queued, None, None).await.unwrap();
    writer.emit_job_status_changed(finished.id, JobStatus::Cancelled, None, None).await.unwrap();
    seed_finished_jobs(db, workspace, 10_000).await;

    // A job created while the subscription is being set up, and one after.
    let (sub, log) = subscriber(&hub, 0);
    let racing = {
        let writer = writer.clone();
        tokio::spawn(async move {
            let (job, _) = writer.create_job(request()).await.unwrap();
            writer.emit_job_status_changed(job.id, JobStatus::Queued, None, None).await.unwrap();
            job.id
        })
    };
    sub.subscribe_workspace(workspace, |_| announce(&log)).await.unwrap();
    let racing = racing.await.unwrap();
    let (late, _) = writer.create_job(request()).await.unwrap();

    // A job:event appended to the finished job after the subscription.
    let custom = |job| {
        BatchItem::Event(
            job,
            jobstream_protocol::CustomEventRequest {
                event_type: jobstream_protocol::EventType::GatePassed,
                step_id: None,
                payload: None,
            },
        )
    };
    let appended = writer.write(custom(finished.id), |_| true).await.unwrap().event.event.seq;
    let sentinel = writer.write(custom(late.id), |_| true).await.unwrap().event.event.seq;

    let mut got = HashMap::new();
    for _ in 0..200 {
        got = received(&log);
        if got.get(&late.id).is_some_and(|s| s.contains(&sentinel)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(got.get(&finished.id), Some(&vec![appended]), "the finished job's later event, once");
    assert_eq!(got.get(&late.id), Some(&vec![1, 2]), "a job created after the snapshot, from its start");
    let racing_seqs = got.get(&racing).cloned().unwrap_or_default();
    assert!(
        racing_seqs == vec![1, 2] || racing_seqs == vec![2] || racing_seqs.is_empty(),
        "a job created during set-up: from where the snapshot left it, each once: {racing_seqs:?}"
    );
    assert_eq!(got.len(), 2 + usize::from(!racing_seqs.is_empty()), "nothing of the 10,000: {got:?}");
    // What the subscription holds does not depend on the 10,000 finished jobs.
    let held = hub.stats().cursors.load(Ordering::Relaxed);
    assert!(held <= 8, "cursors held: {held}");
}

on_both_engines!(
    every_subscriber_gets_each_job_in_order_once_under_concurrent_writers_and_slow_outlets,
    a_replay_of_many_events_streams_in_order_through_a_small_mailbox,
    a_workspace_subscription_holds_no_cursor_for_finished_jobs_and_still_gets_their_later_events_once,
);
