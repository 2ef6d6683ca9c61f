//! The delivery hub under concurrent writers, slow outlets and overflowing
//! mailboxes: every subscriber gets, per job, the exact contiguous range of
//! `seq` it asked for, in order, once, and its announcement first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobstream_job_events::delivery::{Announce, DeliveryConfig, Hub, Outlet, OutletError, Subscriber};
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

on_both_engines!(
    every_subscriber_gets_each_job_in_order_once_under_concurrent_writers_and_slow_outlets,
    a_replay_of_many_events_streams_in_order_through_a_small_mailbox,
);
