//! The hub on the in-memory source: the fast path for caught-up subscribers,
//! the worker for everything else, and the hand-over between them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobstream_delivery::memory::MemorySource;
use jobstream_delivery::{Announce, DeliveryConfig, Hub, Outlet, OutletError, Subscriber};
use jobstream_job_events::Committed;
use uuid::Uuid;

/// (job, seq) in the order the outlet took them.
type Log = Arc<Mutex<Vec<(Uuid, i64)>>>;

/// An outlet that refuses everything while `full` is set.
struct Collector {
    log: Log,
    full: Arc<AtomicBool>,
}

impl Outlet for Collector {
    fn try_send(&self, event: &Committed) -> Result<(), OutletError> {
        if self.full.load(Ordering::Acquire) {
            return Err(OutletError::Full);
        }
        self.log.lock().unwrap().push((event.event.job_id, event.event.seq));
        Ok(())
    }

    fn close(&self) {}
}

fn setup() -> (Arc<MemorySource>, Hub) {
    let source = Arc::new(MemorySource::new());
    let hub = Hub::with_source(source.clone(), DeliveryConfig::default());
    (source, hub)
}

fn subscriber(hub: &Hub) -> (Subscriber, Log, Arc<AtomicBool>) {
    let (log, full): (Log, Arc<AtomicBool>) = Default::default();
    (hub.subscriber(Arc::new(Collector { log: log.clone(), full: full.clone() })), log, full)
}

fn quiet() -> Announce {
    Box::new(|| Ok(()))
}

/// Waits until no subscriber is handled by a worker.
async fn settled(hub: &Hub) {
    for _ in 0..5000 {
        // Lanes first: an offer they make may start a worker.
        if hub.dispatching() == 0 && hub.stats().behind.load(Ordering::Acquire) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("a worker is still running");
}

fn commit(source: &MemorySource, hub: &Hub, job: Uuid) -> Arc<Committed> {
    let event = source.append(job).unwrap();
    hub.dispatch(std::slice::from_ref(&event));
    event
}

fn seqs(log: &Log, job: Uuid) -> Vec<i64> {
    log.lock().unwrap().iter().filter(|(j, _)| *j == job).map(|(_, s)| *s).collect()
}

#[tokio::test]
async fn a_caught_up_subscriber_gets_each_event_from_the_dispatching_thread_without_a_worker() {
    let (source, hub) = setup();
    let job = source.create_job("ws");
    let (sub, log, _) = subscriber(&hub);
    sub.subscribe_job(job, None, |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    settled(&hub).await;
    let fast_before = hub.stats().fast.load(Ordering::Relaxed);

    for _ in 0..100 {
        commit(&source, &hub, job);
    }

    // Delivered synchronously: nothing to wait for.
    assert_eq!(seqs(&log, job), (1..=100).collect::<Vec<_>>());
    assert_eq!(hub.stats().fast.load(Ordering::Relaxed) - fast_before, 100);
    assert_eq!(hub.stats().behind.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_gap_is_filled_from_the_source_by_a_worker_and_the_fast_path_resumes_after_it() {
    let (source, hub) = setup();
    let job = source.create_job("ws");
    let (sub, log, _) = subscriber(&hub);
    sub.subscribe_job(job, None, |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    settled(&hub).await;

    commit(&source, &hub, job);
    source.append(job).unwrap(); // seq 2 committed, its dispatch lost
    commit(&source, &hub, job); // seq 3 shows the gap
    settled(&hub).await;
    let fast_before = hub.stats().fast.load(Ordering::Relaxed);
    commit(&source, &hub, job);

    assert_eq!(seqs(&log, job), vec![1, 2, 3, 4]);
    assert_eq!(hub.stats().fast.load(Ordering::Relaxed) - fast_before, 1, "seq 4 took the fast path");
}

#[tokio::test]
async fn events_for_a_full_outlet_wait_in_order_and_none_overtakes_them_through_the_fast_path() {
    let (source, hub) = setup();
    let job = source.create_job("ws");
    let (sub, log, full) = subscriber(&hub);
    sub.subscribe_job(job, None, |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    settled(&hub).await;

    full.store(true, Ordering::Release);
    for _ in 0..10 {
        commit(&source, &hub, job);
    }
    assert!(seqs(&log, job).is_empty());
    full.store(false, Ordering::Release);
    // While the worker drains, later events queue behind it.
    for _ in 0..10 {
        commit(&source, &hub, job);
    }
    settled(&hub).await;

    assert_eq!(seqs(&log, job), (1..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_workspace_subscription_holds_no_cursor_for_finished_jobs_yet_gets_their_later_events_once() {
    let (source, hub) = setup();
    let mut finished = Vec::new();
    for _ in 0..10_000 {
        let job = source.create_job("ws");
        source.append(job).unwrap();
        source.finish(job);
        finished.push(job);
    }
    let (sub, log, _) = subscriber(&hub);
    sub.subscribe_workspace("ws", |_| quiet()).await.unwrap();
    let created = source.create_job("ws");
    commit(&source, &hub, created);
    settled(&hub).await;
    assert!(hub.stats().cursors.load(Ordering::Relaxed) <= 1, "cursors held: not one per finished job");

    let old = finished[1234];
    commit(&source, &hub, old);
    commit(&source, &hub, old);
    commit(&source, &hub, created);
    settled(&hub).await;

    assert_eq!(seqs(&log, old), vec![2, 3]);
    assert_eq!(seqs(&log, created), vec![1, 2]);
    assert_eq!(log.lock().unwrap().len(), 4, "nothing else arrives");
}

#[tokio::test]
async fn after_an_unsubscribe_nothing_of_the_room_arrives_and_no_task_is_left() {
    let (source, hub) = setup();
    let (a, b) = (source.create_job("ws"), source.create_job("ws"));
    let (sub, log, _) = subscriber(&hub);
    sub.subscribe_job(a, None, |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    sub.subscribe_job(b, None, |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    commit(&source, &hub, a);
    assert!(sub.unsubscribe(jobstream_protocol::Room::Job(a)).await);
    commit(&source, &hub, a);
    commit(&source, &hub, b); // the sentinel, on the same subscriber
    settled(&hub).await;

    assert_eq!(seqs(&log, a), vec![1]);
    assert_eq!(seqs(&log, b), vec![1]);
    drop(sub);
    settled(&hub).await;
    assert_eq!(hub.sizes(), (0, 0, 0));
}

/// Waits until `done` holds (events on the dispatch lanes arrive from other tasks).
async fn until(done: impl Fn() -> bool) {
    for _ in 0..5000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("not reached in 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_room_is_written_on_the_dispatch_lanes_and_each_subscriber_still_gets_each_event_once_in_order() {
    let (source, hub) = setup();
    let job = source.create_job("ws");
    let mut staying = Vec::new();
    let mut leaving = Vec::new();
    for i in 0..300 {
        let (sub, log, _) = subscriber(&hub);
        sub.subscribe_job(job, None, |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
        if i % 10 == 3 { &mut leaving } else { &mut staying }.push((sub, log));
    }
    settled(&hub).await;

    for _ in 0..100 {
        commit(&source, &hub, job);
    }
    for (sub, _) in &leaving {
        assert!(sub.unsubscribe(jobstream_protocol::Room::Job(job)).await);
    }
    let mut joining = Vec::new();
    for _ in 0..20 {
        let (sub, log, _) = subscriber(&hub);
        let since = 100;
        sub.subscribe_job(job, Some(since), |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
        joining.push((sub, log, since));
    }
    for _ in 0..100 {
        commit(&source, &hub, job);
    }

    until(|| staying.iter().all(|(_, log)| seqs(log, job).last() == Some(&200))).await;
    until(|| joining.iter().all(|(_, log, _)| seqs(log, job).last() == Some(&200))).await;
    settled(&hub).await;
    for (_, log) in &staying {
        assert_eq!(seqs(log, job), (1..=200).collect::<Vec<_>>());
    }
    for (_, log, since) in &joining {
        assert_eq!(seqs(log, job), (since + 1..=200).collect::<Vec<_>>());
    }
    // Nothing after the unsubscribe: a gap-free prefix of what came before it.
    for (_, log) in &leaving {
        let got = seqs(log, job);
        assert_eq!(got, (1..=got.len() as i64).collect::<Vec<_>>());
        assert!(got.len() <= 100);
    }
    assert!(hub.stats().fast.load(Ordering::Relaxed) >= 300 * 100, "the lanes write on the fast path");
}

#[tokio::test]
async fn a_small_batch_is_not_offered_inline_ahead_of_a_batch_still_waiting_on_the_lane() {
    // One thread: the lanes run only when this test awaits.
    let (source, hub) = setup();
    let job = source.create_job("ws");
    let (sub, log, _) = subscriber(&hub);
    sub.subscribe_job(job, None, |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    let mut others = Vec::new();
    for _ in 0..20 {
        let (other, _, _) = subscriber(&hub);
        other.subscribe_job(job, None, |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
        others.push(other);
    }
    settled(&hub).await;
    let catch_ups = hub.stats().catch_ups.load(Ordering::Relaxed);

    commit(&source, &hub, job); // 21 sends: handed to the lanes
    assert!(hub.dispatching() >= 1, "seq 1 waits on a lane");
    drop(others);
    commit(&source, &hub, job); // one send, for a subscriber whose lane has seq 1 waiting
    settled(&hub).await;

    assert_eq!(seqs(&log, job), vec![1, 2]);
    let repaired = hub.stats().catch_ups.load(Ordering::Relaxed) - catch_ups;
    assert_eq!(repaired, 0, "seq 2 did not overtake seq 1 (no gap to repair)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_workspaces_written_at_once_each_get_every_event_once_in_order() {
    let (source, hub) = setup();
    let mut rooms = Vec::new();
    for w in 0..20 {
        let workspace = format!("ws-{w}");
        let job = source.create_job(&workspace);
        let mut logs = Vec::new();
        for _ in 0..10 {
            let (sub, log, _) = subscriber(&hub);
            sub.subscribe_workspace(&workspace, |_| quiet()).await.unwrap();
            logs.push((sub, log));
        }
        rooms.push((job, logs));
    }
    settled(&hub).await;
    let catch_ups = hub.stats().catch_ups.load(Ordering::Relaxed);

    // Batches of one event per workspace, as a group commit hands them over.
    for _ in 0..50 {
        let batch: Vec<_> = rooms.iter().map(|(job, _)| source.append(*job).unwrap()).collect();
        hub.dispatch(&batch);
    }
    until(|| rooms.iter().all(|(job, logs)| logs.iter().all(|(_, log)| seqs(log, *job).last() == Some(&50)))).await;
    settled(&hub).await;

    for (job, logs) in &rooms {
        for (_, log) in logs {
            assert_eq!(seqs(log, *job), (1..=50).collect::<Vec<_>>());
            assert!(log.lock().unwrap().iter().all(|(j, _)| j == job), "only its own workspace's events");
        }
    }
    assert_eq!(hub.stats().catch_ups.load(Ordering::Relaxed), catch_ups);
}

/// Takes at most 1, 2, 3 or 4 events per call in turn, and is full on every
/// third call: the worker's runs must still arrive once each, in order.
struct Batcher {
    log: Log,
    calls: Mutex<usize>,
    /// How many calls took more than one event.
    many: Arc<std::sync::atomic::AtomicUsize>,
}

impl Batcher {
    fn take(&self, keys: &[(Uuid, i64)]) -> Result<usize, OutletError> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls
        };
        if call % 3 == 0 {
            return Err(OutletError::Full);
        }
        let take = keys.len().min(call % 4 + 1);
        if take > 1 {
            self.many.fetch_add(1, Ordering::Relaxed);
        }
        self.log.lock().unwrap().extend_from_slice(&keys[..take]);
        Ok(take)
    }
}

impl Outlet for Batcher {
    fn try_send(&self, event: &Committed) -> Result<(), OutletError> {
        self.take(&[(event.event.job_id, event.event.seq)]).map(|_| ())
    }

    fn try_send_many(&self, events: &[Arc<Committed>]) -> Result<usize, OutletError> {
        let keys: Vec<(Uuid, i64)> = events.iter().map(|e| (e.event.job_id, e.event.seq)).collect();
        self.take(&keys)
    }

    fn close(&self) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_handed_to_the_outlet_in_runs_arrives_once_in_order_however_much_each_call_takes() {
    let source = Arc::new(MemorySource::new());
    let hub = Hub::with_source(source.clone(), DeliveryConfig { page_size: 7, ..DeliveryConfig::default() });
    let job = source.create_job("ws");
    for _ in 0..100 {
        source.append(job).unwrap();
    }
    let (log, many): (Log, Arc<std::sync::atomic::AtomicUsize>) = Default::default();
    let sub = hub.subscriber(Arc::new(Batcher { log: log.clone(), calls: Mutex::new(0), many: many.clone() }));
    sub.subscribe_job(job, Some(0), |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    // Live events while the replay runs.
    for _ in 0..50 {
        commit(&source, &hub, job);
    }
    until(|| seqs(&log, job).len() >= 150).await;
    settled(&hub).await;
    assert_eq!(seqs(&log, job), (1..=150).collect::<Vec<_>>());
    assert!(many.load(Ordering::Relaxed) > 0, "runs were handed over several events at a time");
}

/// An announcement (an ack) that records itself in the log as `(nil, n)`.
fn mark(log: &Log, n: i64) -> Announce {
    let log = log.clone();
    Box::new(move || {
        log.lock().unwrap().push((Uuid::nil(), n));
        Ok(())
    })
}

/// A hub reading pages of 100, and a job with `events` events.
fn long_job(events: usize) -> (Arc<MemorySource>, Hub, Uuid) {
    let source = Arc::new(MemorySource::new());
    let hub = Hub::with_source(source.clone(), DeliveryConfig { page_size: 100, ..DeliveryConfig::default() });
    let job = source.create_job("ws");
    for _ in 0..events {
        source.append(job).unwrap();
    }
    (source, hub, job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_during_a_replay_is_acked_after_the_page_being_sent_not_after_the_whole_history() {
    let (source, hub, job) = long_job(5000);
    let other = source.create_job("ws");
    let (sub, log, full) = subscriber(&hub);
    sub.subscribe_job(other, None, |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    full.store(true, Ordering::Release);
    sub.subscribe_job(job, Some(0), |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    // The replay's first page waits on the full outlet.
    until(|| hub.stats().catch_ups.load(Ordering::Relaxed) > 0).await;
    sub.unsubscribe_then(jobstream_protocol::Room::Job(job), Some(mark(&log, -1))).await.map_err(|_| ()).unwrap();
    full.store(false, Ordering::Release);
    until(|| log.lock().unwrap().contains(&(Uuid::nil(), -1))).await;
    commit(&source, &hub, job);
    commit(&source, &hub, other); // the sentinel, on the same subscriber
    until(|| seqs(&log, other) == vec![1]).await;
    settled(&hub).await;

    let log = log.lock().unwrap().clone();
    let ack = log.iter().position(|entry| *entry == (Uuid::nil(), -1)).unwrap();
    let replayed: Vec<i64> = log[..ack].iter().filter(|(j, _)| *j == job).map(|(_, s)| *s).collect();
    assert!(
        !replayed.is_empty() && replayed.len() <= 200,
        "acked after the page being sent: {} events",
        replayed.len()
    );
    assert_eq!(replayed, (1..=replayed.len() as i64).collect::<Vec<_>>());
    assert!(log[ack..].iter().all(|(j, _)| *j != job), "nothing of the job after the ack");
    drop(sub);
    settled(&hub).await;
    assert_eq!(hub.sizes(), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_left_during_its_replay_but_still_followed_through_its_workspace_is_replayed_to_the_end() {
    let (source, hub, job) = long_job(1000);
    let (sub, log, full) = subscriber(&hub);
    full.store(true, Ordering::Release);
    sub.subscribe_job(job, Some(0), |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    until(|| hub.stats().catch_ups.load(Ordering::Relaxed) > 0).await;
    sub.subscribe_workspace("ws", |_| quiet()).await.unwrap();
    sub.unsubscribe_then(jobstream_protocol::Room::Job(job), Some(mark(&log, -1))).await.map_err(|_| ()).unwrap();
    full.store(false, Ordering::Release);
    commit(&source, &hub, job);
    until(|| seqs(&log, job).len() >= 1001).await;
    settled(&hub).await;

    assert_eq!(seqs(&log, job), (1..=1001).collect::<Vec<_>>());
    assert!(log.lock().unwrap().contains(&(Uuid::nil(), -1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_closed_during_a_replay_stops_at_the_page_being_sent() {
    let (_source, hub, job) = long_job(5000);
    let (sub, log, full) = subscriber(&hub);
    full.store(true, Ordering::Release);
    sub.subscribe_job(job, Some(0), |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    until(|| hub.stats().catch_ups.load(Ordering::Relaxed) > 0).await;
    drop(sub);
    full.store(false, Ordering::Release);
    settled(&hub).await;

    assert!(seqs(&log, job).len() <= 200, "stopped after the page being sent");
    assert_eq!(hub.sizes(), (0, 0, 0));
    assert_eq!(hub.stats().cursors.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_and_unsubscribes_made_during_a_replay_are_acked_in_the_order_they_were_made() {
    let (source, hub, job) = long_job(3000);
    let other = source.create_job("ws");
    let (sub, log, full) = subscriber(&hub);
    full.store(true, Ordering::Release);
    sub.subscribe_job(job, Some(0), |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    until(|| hub.stats().catch_ups.load(Ordering::Relaxed) > 0).await;
    sub.subscribe_job(other, None, |_| Ok::<(), ()>(()), |_| mark(&log, -2)).await.unwrap();
    sub.unsubscribe_then(jobstream_protocol::Room::Job(other), Some(mark(&log, -1))).await.map_err(|_| ()).unwrap();
    sub.subscribe_job(other, None, |_| Ok::<(), ()>(()), |_| mark(&log, -3)).await.unwrap();
    full.store(false, Ordering::Release);
    until(|| log.lock().unwrap().contains(&(Uuid::nil(), -3))).await;
    commit(&source, &hub, other);
    commit(&source, &hub, job);
    until(|| seqs(&log, other) == vec![1] && seqs(&log, job).len() == 3001).await;
    settled(&hub).await;

    let marks: Vec<i64> = log.lock().unwrap().iter().filter(|(j, _)| j.is_nil()).map(|(_, n)| *n).collect();
    assert_eq!(marks, vec![-2, -1, -3]);
    assert_eq!(seqs(&log, job), (1..=3001).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_and_an_unsubscribe_made_during_a_replay_take_effect_between_its_pages() {
    let (source, hub, a) = long_job(5000);
    let b = source.create_job("ws");
    for _ in 0..700 {
        source.append(b).unwrap();
    }
    let (sub, log, full) = subscriber(&hub);
    full.store(true, Ordering::Release);
    sub.subscribe_job(a, Some(0), |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    until(|| hub.stats().catch_ups.load(Ordering::Relaxed) > 0).await;
    // Behind A's replay: a subscribe of B with its own history, then leaving A.
    sub.subscribe_job(b, Some(0), |_| Ok::<(), ()>(()), |_| mark(&log, -2)).await.unwrap();
    sub.unsubscribe_then(jobstream_protocol::Room::Job(a), Some(mark(&log, -1))).await.map_err(|_| ()).unwrap();
    full.store(false, Ordering::Release);
    commit(&source, &hub, b); // a live event of B, the sentinel
    until(|| seqs(&log, b).len() == 701).await;
    settled(&hub).await;

    let entries = log.lock().unwrap().clone();
    let at = |n: i64| entries.iter().position(|entry| *entry == (Uuid::nil(), n)).unwrap();
    let a_before = |i: usize| entries[..i].iter().filter(|(j, _)| *j == a).count();
    assert!(at(-2) < at(-1), "acked in the order they were made");
    assert!(
        a_before(at(-2)) <= 200,
        "B subscribed after the page being sent, not after {} events of A",
        a_before(at(-2))
    );
    assert!(a_before(at(-1)) <= 200, "A left after the page being sent");
    assert!(entries[at(-1)..].iter().all(|(j, _)| *j != a), "nothing of A after its unsubscribe ack");
    assert_eq!(seqs(&log, b), (1..=701).collect::<Vec<_>>());
    let a_seqs = seqs(&log, a);
    assert_eq!(a_seqs, (1..=a_seqs.len() as i64).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_subscribe_with_an_older_since_after_fast_deliveries_repeats_nothing_and_goes_on_in_order() {
    let (source, hub) = setup();
    let job = source.create_job("ws");
    let (sub, log, _) = subscriber(&hub);
    sub.subscribe_job(job, None, |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    settled(&hub).await;
    for _ in 0..5 {
        commit(&source, &hub, job);
    }
    assert_eq!(seqs(&log, job), vec![1, 2, 3, 4, 5]);

    // The position the fast path reached (5) decides, not the one the cursors had before it.
    sub.subscribe_job(job, Some(2), |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    settled(&hub).await;
    commit(&source, &hub, job);
    commit(&source, &hub, job);

    assert_eq!(seqs(&log, job), (1..=7).collect::<Vec<_>>());
}

#[tokio::test]
async fn jobs_of_a_workspace_interleaved_and_dispatched_twice_arrive_once_each_in_order() {
    let (source, hub) = setup();
    let (a, b) = (source.create_job("ws"), source.create_job("ws"));
    let (sub, log, _) = subscriber(&hub);
    sub.subscribe_workspace("ws", |_| quiet()).await.unwrap();
    settled(&hub).await;

    for job in [a, a, b, a, b, b, a, a, b] {
        let event = commit(&source, &hub, job);
        // Again, as a second path (a bus, a retry) would: a duplicate.
        hub.dispatch(std::slice::from_ref(&event));
    }
    settled(&hub).await;

    assert_eq!(seqs(&log, a), vec![1, 2, 3, 4, 5]);
    assert_eq!(seqs(&log, b), vec![1, 2, 3, 4]);
    assert_eq!(hub.stats().behind.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_job_left_after_fast_deliveries_and_followed_again_resumes_after_what_was_given() {
    let (source, hub) = setup();
    let job = source.create_job("ws");
    let (sub, log, _) = subscriber(&hub);
    sub.subscribe_job(job, None, |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    settled(&hub).await;
    for _ in 0..3 {
        commit(&source, &hub, job);
    }
    assert!(sub.unsubscribe(jobstream_protocol::Room::Job(job)).await);
    settled(&hub).await;
    commit(&source, &hub, job); // 4: not followed

    // Followed again from an older `since`: 4 is sent (never given), 1–3 are not again.
    sub.subscribe_job(job, Some(1), |_| Ok::<(), ()>(()), |_| quiet()).await.unwrap();
    settled(&hub).await;
    commit(&source, &hub, job);

    assert_eq!(seqs(&log, job), vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_subscriber_with_a_room_limit_refuses_one_room_too_many_but_not_a_room_it_has() {
    let (source, hub) = setup();
    let (a, b, c) = (source.create_job("ws"), source.create_job("ws"), source.create_job("ws"));
    let (log, full): (Log, Arc<AtomicBool>) = Default::default();
    let sub = hub.subscriber(Arc::new(Collector { log: log.clone(), full })).with_room_limit(2);
    let ok = |_: &jobstream_protocol::JobSnapshot| Ok::<(), ()>(());
    sub.subscribe_job(a, None, ok, |_| quiet()).await.unwrap();
    sub.subscribe_job(b, None, ok, |_| quiet()).await.unwrap();

    let refused = sub.subscribe_job(c, None, ok, |_| quiet()).await;
    assert!(matches!(refused, Err(jobstream_delivery::SubscribeError::TooManyRooms { limit: 2 })));
    sub.subscribe_job(a, None, ok, |_| quiet()).await.unwrap();
    assert!(sub.unsubscribe(jobstream_protocol::Room::Job(b)).await);
    sub.subscribe_job(c, None, ok, |_| quiet()).await.unwrap();
    settled(&hub).await;
    commit(&source, &hub, b);
    commit(&source, &hub, c);
    commit(&source, &hub, a); // the sentinel

    assert_eq!(seqs(&log, c), vec![1]);
    assert_eq!(seqs(&log, a), vec![1]);
    assert!(seqs(&log, b).is_empty());
    assert_eq!(hub.subscription_counts(), (1, 2, 0));
}
