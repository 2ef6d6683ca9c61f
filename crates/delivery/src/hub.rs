//! Delivery: committed events to subscribers, per job in `seq` order, each once, without gaps.
//!
//! Each node has one [`Hub`]. A subscriber (a Socket.IO socket, an SSE stream)
//! gets a [`Subscriber`] handle; the hub indexes subscribers by room, and a
//! committed event is offered to every subscriber whose rooms cover it — once,
//! even when two of its rooms do. Each offer is classified against the
//! subscriber's [`Subscriptions`] (its cursor per job):
//! - the next `seq` is sent;
//! - an older one is a duplicate and dropped;
//! - a later one shows a gap (writers committed out of order, a queue
//!   overflowed, a bus message was lost): the missing events are read from the
//!   database — every event below a committed `seq` is committed — in pages,
//!   sent in order, then delivery goes on.
//!
//! **Two paths.** A caught-up subscriber (nothing queued, no worker running)
//! gets the next event of its job written to its outlet by its dispatch lane
//! (one task per core; a small batch by the dispatching thread itself), under
//! the subscriber's short lock: no queue of its own, no task of its own woken.
//! The outlet encodes the event's JSON, which [`Committed`] holds encoded once
//! for every subscriber. Everything else — a subscription being set up, a gap,
//! a full outlet, a command — is queued, and a worker task is started that owns
//! the cursors until the queue is empty, then hands them back and ends. While
//! a worker runs, every later event is queued behind it, so order is kept. An
//! idle subscriber holds no task, and a socket with no subscription holds no
//! delivery state at all (its [`Subscriber`] is made on first subscribe).
//!
//! A workspace subscription holds cursors only for the workspace's unfinished
//! jobs and for jobs active while it is subscribed; every other job's events
//! are placed with the snapshot's commit horizon (`docs/delivery-design.md`
//! has the design and the argument that nothing is lost or sent twice).
//!
//! Memory stays bounded: a queue holds at most `queue_limit` events; past
//! that, the hub stops queueing for that subscriber and asks it to
//! resynchronise from the database once it has caught up. A subscriber whose
//! outlet is full waits (backing off) and never skips; one that stays full for
//! `stall_timeout` is closed, and its client resumes with `since` when it
//! reconnects. Subscribing registers the room before the snapshot is read, and
//! the announcement (ack) is sent by the worker before anything it announces,
//! retried while the outlet is full.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use jobstream_protocol::{JobSnapshot, Room};
use jobstream_rooms::{EventKey, Subscriptions, Verdict};
use uuid::Uuid;

use jobstream_job_events::{Committed, EventPage, EventSink, ReadError, WorkspaceSnapshot};

use crate::source::EventSource;

/// Where a subscriber's events go.
pub trait Outlet: Send + Sync + 'static {
    /// Sends one event without waiting. [`OutletError::Full`] means: try again later.
    fn try_send(&self, event: &Committed) -> Result<(), OutletError>;
    /// Sends the first events of `events` (not empty), in order, without
    /// waiting: how many it took (at least one), or why it took none. An
    /// outlet that can write several events at once (a replay) does so; by
    /// default, [`Outlet::try_send`] one after the other.
    fn try_send_many(&self, events: &[Arc<Committed>]) -> Result<usize, OutletError> {
        let mut sent = 0;
        for event in events {
            match self.try_send(event) {
                Ok(()) => sent += 1,
                Err(err) if sent == 0 => return Err(err),
                Err(_) => break,
            }
        }
        Ok(sent)
    }
    /// Ends the connection (the client may reconnect and resume).
    fn close(&self);
    /// After [`OutletError::Full`]: resolves when the outlet may have room
    /// again (its connection wrote something). `None` when it cannot tell;
    /// the worker then retries after a backoff (2 ms doubling to 50 ms).
    /// Called on the outlet's own handle, which the future may keep.
    fn ready(self: Arc<Self>) -> Option<ReadyFuture> {
        None
    }
}

/// See [`Outlet::ready`].
pub type ReadyFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Why an outlet did not take an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutletError {
    /// Its buffer is full.
    Full,
    /// It is gone.
    Closed,
}

/// Sends a subscription's announcement (a Socket.IO ack, an SSE snapshot frame)
/// from the worker, so that it goes out before any event it announces. It is
/// called again while it answers [`OutletError::Full`].
pub type Announce = Box<dyn FnMut() -> Result<(), OutletError> + Send>;

/// Sends the refusal of a job subscription whose `since` cannot be honoured in
/// order (see [`jobstream_rooms::Unreachable`]); called again while it
/// answers [`OutletError::Full`].
pub type Refuse = Box<dyn FnMut(jobstream_rooms::Unreachable) -> Result<(), OutletError> + Send>;

/// Delivery limits.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Events a subscriber's mailbox holds before it switches to catching up from the database.
    pub queue_limit: usize,
    /// Events held for subscriptions being set up.
    pub pending_limit: usize,
    /// Events read per page when catching up or replaying, at most; pages
    /// are also cut at about [`PAGE_BYTES`] by the database.
    pub page_size: u64,
    /// How long an outlet may stay full (its client reads nothing) before the
    /// subscriber is closed: its outlet ends the connection and everything it
    /// held is freed. The client resumes with `since` / `Last-Event-ID`.
    pub stall_timeout: Duration,
}

/// About how many bytes of events a catch-up page holds (the event that
/// reaches it ends the page), so a subscriber catching up on large events
/// holds a bounded number of bytes, not a bounded number of events.
pub const PAGE_BYTES: usize = 1024 * 1024;

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self { queue_limit: 1024, pending_limit: 4096, page_size: 2000, stall_timeout: Duration::from_secs(30) }
    }
}

/// Counters for operators.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Events sent to outlets.
    pub delivered: AtomicU64,
    /// Of those, events written on dispatch (by a lane) to a caught-up
    /// subscriber (the fast path: no queue, no task woken).
    pub fast: AtomicU64,
    /// Subscribers handled by a worker task now (behind: setting up a
    /// subscription, catching up, waiting on a full outlet); the others are
    /// served by the fast path and hold no task.
    pub behind: AtomicU64,
    /// Catch-up reads from the database (gaps, replays, resynchronisations).
    pub catch_ups: AtomicU64,
    /// Mailboxes that overflowed.
    pub overflows: AtomicU64,
    /// Subscribers closed because their outlet stayed full for `stall_timeout`.
    pub stalls: AtomicU64,
    /// Per-job positions held by all subscribers (cursors): grows with the jobs
    /// they follow and the jobs active while they follow, not with history.
    pub cursors: AtomicU64,
}

/// The per-node delivery hub. Cheap to clone. It is the [`EventSink`] of the writer.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

struct HubInner {
    store: Arc<dyn EventSource>,
    config: DeliveryConfig,
    /// Subscribers by room, sharded by the room's hash: dispatch takes two
    /// shared locks (the job's room, the workspace's room), subscribing one
    /// exclusive lock of one shard; no lock covers the whole index.
    shards: Box<[RwLock<Shard>]>,
    /// Every subscriber, for operations on all of them (resync, counts).
    mailboxes: RwLock<HashMap<u64, Arc<Mailbox>>>,
    next_id: AtomicU64,
    stats: DeliveryStats,
    /// The dispatch lanes (see [`Hub::dispatch`]): a subscriber is always on
    /// lane `id % lanes.len()`.
    lanes: Box<[Lane]>,
}

/// A batch with at most this many sends is offered by the dispatching thread
/// itself (where its subscribers' lanes have nothing waiting): handing it to
/// a lane would cost more than the sends.
const INLINE_SENDS: usize = 8;

/// At most this many lanes, whatever the number of cores.
const MAX_LANES: usize = 8;

/// One dispatch lane: a task that offers the batches handed to it, in the
/// order they were handed, to the subscribers chosen at dispatch.
struct Lane {
    /// Started on first use.
    tx: OnceLock<tokio::sync::mpsc::UnboundedSender<Handoff>>,
    /// Batches handed to the lane and not yet offered in full. While it is
    /// above zero, the lane's subscribers are not offered anything inline
    /// (that would overtake what waits).
    waiting: AtomicUsize,
}

/// Events and, for each, the subscribers the lane offers it to, in order.
type Handoff = (Vec<Arc<Committed>>, Vec<Arc<LaneList>>);

/// Subscribers of one lane, in the order they are offered an event.
type LaneList = Vec<Arc<Mailbox>>;

/// Offers each event to its subscribers, in order. The counters of the fast
/// path are added once per batch: lanes on other cores share them.
fn offer_all(hub: &Hub, events: &[Arc<Committed>], targets: &[Arc<LaneList>]) {
    let mut fast = 0;
    for (event, mailboxes) in events.iter().zip(targets) {
        for mailbox in mailboxes.iter() {
            fast += u64::from(mailbox.offer(hub, event));
        }
    }
    if fast > 0 {
        let stats = &hub.inner.stats;
        stats.delivered.fetch_add(fast, Ordering::Relaxed);
        stats.fast.fetch_add(fast, Ordering::Relaxed);
    }
}

/// Shards of the room index: a power of two, a few per core.
const SHARDS: usize = 32;

/// The subscribers of the rooms that hash to one shard.
#[derive(Default)]
struct Shard {
    by_job: HashMap<Uuid, Members>,
    by_workspace: HashMap<String, Members>,
}

impl Shard {
    fn add(&mut self, mailbox: &Arc<Mailbox>, room: &Room, lanes: usize) {
        let members = match room {
            Room::Job(job) => self.by_job.entry(*job).or_insert_with(|| Members::new(lanes)),
            Room::Workspace(ws) => self.by_workspace.entry(ws.clone()).or_insert_with(|| Members::new(lanes)),
        };
        members.insert(mailbox);
    }

    fn remove(&mut self, id: u64, room: &Room) {
        fn drop_from<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Members>, key: &K, id: u64) {
            if let Some(members) = map.get_mut(key) {
                members.remove(id);
                if members.is_empty() {
                    map.remove(key);
                }
            }
        }
        match room {
            Room::Job(job) => drop_from(&mut self.by_job, job, id),
            Room::Workspace(ws) => drop_from(&mut self.by_workspace, ws, id),
        }
    }
}

/// The subscribers of one room, by dispatch lane (`id % lanes`).
///
/// Each lane's list is shared with the handoffs that carry it: dispatching an
/// event to a room hands each lane one reference to its list, not one per
/// subscriber (a reference count changed per subscriber and per event is a
/// write to each subscriber's object by the dispatching core, which the lane's
/// core then has to fetch back). Joining or leaving while a handoff still
/// holds the list copies it first ([`Arc::make_mut`]); otherwise it is
/// changed in place. Leaving finds the subscriber by its position: O(1).
struct Members {
    /// Per lane: its subscribers, `None` while it has none.
    lanes: Box<[Option<Arc<LaneList>>]>,
    /// Subscriber id → position in its lane's list.
    at: HashMap<u64, usize>,
}

impl Members {
    fn new(lanes: usize) -> Self {
        Self { lanes: (0..lanes).map(|_| None).collect(), at: HashMap::new() }
    }

    fn lane_of(&self, id: u64) -> usize {
        (id as usize) % self.lanes.len()
    }

    fn insert(&mut self, mailbox: &Arc<Mailbox>) {
        if self.at.contains_key(&mailbox.id) {
            return;
        }
        let lane = self.lane_of(mailbox.id);
        let list = Arc::make_mut(self.lanes[lane].get_or_insert_with(Arc::default));
        self.at.insert(mailbox.id, list.len());
        list.push(mailbox.clone());
    }

    fn remove(&mut self, id: u64) {
        let Some(position) = self.at.remove(&id) else { return };
        let lane = self.lane_of(id);
        let Some(shared) = self.lanes[lane].as_mut() else { return };
        let list = Arc::make_mut(shared);
        if position < list.len() {
            list.swap_remove(position);
            if let Some(moved) = list.get(position) {
                self.at.insert(moved.id, position);
            }
        }
        if list.is_empty() {
            self.lanes[lane] = None;
        }
    }

    fn contains(&self, id: u64) -> bool {
        self.at.contains_key(&id)
    }

    fn len(&self) -> usize {
        self.at.len()
    }

    fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

/// One subscriber as the hub sees it: its outlet, its rooms, and its delivery
/// state behind one short lock.
///
/// **Fast path.** While nothing is queued and no worker runs, a dispatched
/// event is classified against the cursors and written to the outlet right
/// there, by the dispatch lane offering it: no task of the subscriber's is
/// woken and nothing is queued.
/// **Slow path.** Anything else (a subscription being set up, a gap, a full
/// outlet, commands) is queued, and a worker task is started that owns the
/// cursors until the queue is empty again; then it hands them back and ends.
/// While a worker runs, every event is queued behind what it is doing, so
/// order is kept. An idle subscriber holds no task.
///
/// Laid out in declaration order (`repr(C)`): what the fast path reads for
/// every event (the outlet, the lock, the flags, the hot cursor, the queue's
/// length) comes first, in the object's first 128 bytes (its reference
/// counts included), the pair of cache lines a first touch brings in; the
/// cursors, which the fast path reads only when the hot cursor does not
/// answer, come after.
#[repr(C)]
struct Mailbox {
    outlet: Arc<dyn Outlet>,
    state: std::sync::Mutex<MailboxState>,
    id: u64,
    /// The rooms this subscriber is indexed under: leaving touches only these.
    rooms: std::sync::Mutex<Vec<Room>>,
}

#[repr(C)]
struct MailboxState {
    /// A worker runs and owns the cursors (`cursors` is then empty).
    worker: bool,
    /// The subscriber has stopped: nothing more is taken.
    closed: bool,
    /// The job the fast path delivered last, and its position, kept here
    /// instead of in `cursors` while that job's events keep coming in order
    /// (see [`Hot`]).
    hot: Option<Hot>,
    /// What waits for the worker.
    queue: VecDeque<Msg>,
    /// The cursors, when no worker has them.
    cursors: Cursors,
    /// Events in `queue`: bounded by `queue_limit`, commands are not counted.
    queued_events: usize,
    /// Set when an event was not queued; cleared by the worker when it resynchronises.
    overflowed: bool,
}

/// The fast path's write-back cache of one cursor.
///
/// When the fast path delivers an event (its classification said
/// [`Verdict::Deliver`], the outlet took it, the cursor advanced), it keeps
/// the job and the new position here. The next event of that job is then
/// classified against this copy alone: `seq` at or below it is a duplicate,
/// `seq` one above it the next event to deliver, which is what classifying it
/// against the cursors would say, because nothing else changes the
/// subscriptions meanwhile (only a worker does, and a worker starts only
/// after [`MailboxState::flush_hot`]). Anything else (another job, a gap, a
/// full outlet) writes the position back to the cursors first and goes the
/// usual way. So the cursors of a subscriber following one job in order are
/// read once, not for every event: a delivery touches the subscriber's own
/// object and its connection, nothing more.
struct Hot {
    job_id: Uuid,
    seq: i64,
}

impl MailboxState {
    /// Writes the fast path's cached position back to the cursors.
    fn flush_hot(&mut self) {
        if let Some(Hot { job_id, seq }) = self.hot.take() {
            let known = self.cursors.subs.advance_existing(job_id, seq);
            debug_assert!(known, "a hot position belongs to a cursor");
        }
    }
}

/// A subscriber's position in each followed job, and what waits on a
/// subscription being set up.
#[derive(Default)]
#[repr(C)]
struct Cursors {
    subs: Subscriptions,
    /// The number of cursors last added to [`DeliveryStats::cursors`].
    counted: usize,
    /// Events for subscriptions being set up, classified again at activation.
    pending: Vec<Arc<Committed>>,
    /// Some pending events were dropped: resynchronise at activation.
    pending_overflow: bool,
}

impl Cursors {
    fn count(&mut self, stats: &DeliveryStats) {
        let held = self.subs.held();
        if held != self.counted {
            if held > self.counted {
                stats.cursors.fetch_add((held - self.counted) as u64, Ordering::Relaxed);
            } else {
                stats.cursors.fetch_sub((self.counted - held) as u64, Ordering::Relaxed);
            }
            self.counted = held;
        }
    }
}

impl Mailbox {
    fn state(&self) -> std::sync::MutexGuard<'_, MailboxState> {
        lock(&self.state)
    }

    /// Offers a committed event: written at once if the subscriber is caught
    /// up on its job and the outlet has room, else queued for the worker.
    /// True when it was written here (the caller counts it as delivered on
    /// the fast path).
    fn offer(self: &Arc<Self>, hub: &Hub, event: &Arc<Committed>) -> bool {
        let stats = &hub.inner.stats;
        let mut state = self.state();
        if state.closed {
            return false;
        }
        'fast: {
            if !state.queue.is_empty() || state.worker {
                break 'fast;
            }
            let seq = event.event.seq;
            if let Some(hot) = state.hot.as_mut().filter(|hot| hot.job_id == event.event.job_id) {
                if seq <= hot.seq {
                    return false;
                }
                if seq == hot.seq + 1 {
                    if self.outlet.try_send(event).is_ok() {
                        hot.seq = seq;
                        return true;
                    }
                    // Full or gone: the worker takes it from here.
                    state.flush_hot();
                    break 'fast;
                }
            }
            state.flush_hot();
            let cursors = &mut state.cursors;
            match cursors.subs.classify(key(event)) {
                Verdict::Ignore | Verdict::Duplicate => return false,
                Verdict::Deliver if self.outlet.try_send(event).is_ok() => {
                    cursors.subs.advance(key(event));
                    cursors.count(stats);
                    state.hot = Some(Hot { job_id: event.event.job_id, seq });
                    return true;
                }
                // The outlet is full or gone (the worker waits, or stops), or the event needs work.
                _ => {}
            }
        }
        if state.queued_events >= hub.inner.config.queue_limit {
            if !state.overflowed {
                state.overflowed = true;
                stats.overflows.fetch_add(1, Ordering::Relaxed);
                self.push(hub, &mut state, Msg::Resync);
            }
            return false;
        }
        state.queued_events += 1;
        self.push(hub, &mut state, Msg::Event(event.clone()));
        false
    }

    /// Queues a message and makes sure a worker will take it.
    fn push(self: &Arc<Self>, hub: &Hub, state: &mut MailboxState, msg: Msg) {
        if state.closed {
            return;
        }
        state.queue.push_back(msg);
        if !state.worker {
            state.flush_hot();
            state.worker = true;
            let cursors = Box::new(std::mem::take(&mut state.cursors));
            hub.inner.stats.behind.fetch_add(1, Ordering::Relaxed);
            let worker = Worker {
                id: self.id,
                hub: hub.clone(),
                mailbox: self.clone(),
                outlet: self.outlet.clone(),
                c: cursors,
            };
            tokio::spawn(worker.run());
        }
    }

    /// Queues a command for the worker.
    fn send(self: &Arc<Self>, hub: &Hub, msg: Msg) {
        let mut state = self.state();
        self.push(hub, &mut state, msg);
    }
}

enum Msg {
    Event(Arc<Committed>),
    Resync,
    Begin(Room),
    Abort(Room),
    /// Boxed, like the next one: the mailbox allocates slots of the largest variant.
    ActivateJob(Box<ActivateJob>),
    ActivateWorkspace(Box<ActivateWorkspace>),
    /// Ends a subscription, then sends its announcement (the ack), so that
    /// nothing of the room is sent after the client is told it is over.
    Unsubscribe(Room, Option<Announce>),
    Close,
}

impl Msg {
    /// A subscriber's request (or its end), as opposed to an event or a resynchronisation.
    fn is_command(&self) -> bool {
        !matches!(self, Msg::Event(_) | Msg::Resync)
    }
}

struct ActivateJob {
    job_id: Uuid,
    workspace_id: String,
    last_seq: i64,
    since: Option<i64>,
    announce: Announce,
    refuse: Option<Refuse>,
}

struct ActivateWorkspace {
    workspace_id: String,
    cursors: Vec<(Uuid, i64)>,
    horizon: jobstream_rooms::Horizon,
    announce: Announce,
}

impl Hub {
    /// A hub reading snapshots and catch-ups from `store` (an
    /// [`jobstream_job_events::EventStore`], or any other [`EventSource`]).
    pub fn new(store: impl EventSource, config: DeliveryConfig) -> Self {
        Self::with_source(Arc::new(store), config)
    }

    /// [`Hub::new`] with a shared source.
    pub fn with_source(store: Arc<dyn EventSource>, config: DeliveryConfig) -> Self {
        let inner = HubInner {
            store,
            config,
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            mailboxes: RwLock::default(),
            next_id: AtomicU64::new(1),
            stats: DeliveryStats::default(),
            lanes: (0..std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, MAX_LANES))
                .map(|_| Lane { tx: OnceLock::new(), waiting: AtomicUsize::new(0) })
                .collect(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// The counters.
    pub fn stats(&self) -> &DeliveryStats {
        &self.inner.stats
    }

    /// (subscribers, job rooms, workspace rooms) currently indexed.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let (mut jobs, mut workspaces) = (0, 0);
        for shard in self.inner.shards.iter() {
            let shard = read(shard);
            jobs += shard.by_job.len();
            workspaces += shard.by_workspace.len();
        }
        (read(&self.inner.mailboxes).len(), jobs, workspaces)
    }

    /// Registers a subscriber and starts its worker.
    pub fn subscriber(&self, outlet: Arc<dyn Outlet>) -> Subscriber {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let state = MailboxState {
            worker: false,
            closed: false,
            hot: None,
            queue: VecDeque::new(),
            cursors: Cursors::default(),
            queued_events: 0,
            overflowed: false,
        };
        let mailbox =
            Arc::new(Mailbox { outlet, state: std::sync::Mutex::new(state), id, rooms: std::sync::Mutex::default() });
        write(&self.inner.mailboxes).insert(id, mailbox.clone());
        Subscriber { id, hub: self.clone(), mailbox, calls: tokio::sync::Mutex::new(()), max_rooms: 0 }
    }

    fn shard_of<K: std::hash::Hash + ?Sized>(&self, kind: u8, key: &K) -> &RwLock<Shard> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        kind.hash(&mut hasher);
        key.hash(&mut hasher);
        &self.inner.shards[(hasher.finish() as usize) % self.inner.shards.len()]
    }

    fn job_shard(&self, job: &Uuid) -> &RwLock<Shard> {
        self.shard_of(0, job)
    }

    fn workspace_shard(&self, workspace: &str) -> &RwLock<Shard> {
        self.shard_of(1, workspace)
    }

    fn shard(&self, room: &Room) -> &RwLock<Shard> {
        match room {
            Room::Job(job) => self.job_shard(job),
            Room::Workspace(ws) => self.workspace_shard(ws),
        }
    }

    /// Offers committed events to the subscribers whose rooms cover them.
    ///
    /// The subscribers of each event are chosen here, under the index's
    /// shared locks; the offers themselves are made by the dispatch lanes,
    /// one task per core, each offering to its own subscribers (`id % lanes`)
    /// in dispatch order. So the sends of a batch are spread over the cores
    /// by their number, whatever the sizes of the rooms, and the dispatching
    /// thread (the writer's commit) returns at once. A small batch (at most
    /// [`INLINE_SENDS`] sends) is offered here instead, to each subscriber
    /// whose lane has nothing waiting; the others go to their lane as usual.
    pub fn dispatch(&self, events: &[Arc<Committed>]) {
        let lanes = self.inner.lanes.len();
        // Per lane: the events it has subscribers for and, for each, those subscribers.
        let mut per_lane: Vec<Handoff> = (0..lanes).map(|_| (Vec::new(), Vec::new())).collect();
        let mut sends = 0;
        for event in events {
            let (job, workspace) = (&event.event.job_id, event.event.workspace_id.as_str());
            let (job_shard, ws_shard) = (self.job_shard(job), self.workspace_shard(workspace));
            // One guard when both rooms share a shard: a second read of the same
            // lock could wait behind a queued writer.
            let by_job = read(job_shard);
            let other = (!std::ptr::eq(job_shard, ws_shard)).then(|| read(ws_shard));
            let by_ws: &Shard = other.as_deref().unwrap_or(&by_job);
            let job_set = by_job.by_job.get(job);
            let ws_set = by_ws.by_workspace.get(workspace);
            let chosen: Vec<Option<Arc<LaneList>>> = match (job_set, ws_set) {
                // One room: each lane's list as it is.
                (Some(one), None) | (None, Some(one)) => one.lanes.to_vec(),
                (None, None) => continue,
                // Both: once per subscriber, even when both of its rooms cover the event.
                (Some(job_set), Some(ws_set)) => (0..lanes)
                    .map(|lane| {
                        let mut both: LaneList = job_set.lanes[lane].as_deref().cloned().unwrap_or_default();
                        let others = ws_set.lanes[lane].iter().flat_map(|list| list.iter());
                        both.extend(others.filter(|mailbox| !job_set.contains(mailbox.id)).cloned());
                        (!both.is_empty()).then(|| Arc::new(both))
                    })
                    .collect(),
            };
            for ((batch, targets), list) in per_lane.iter_mut().zip(chosen) {
                if let Some(list) = list {
                    sends += list.len();
                    batch.push(event.clone());
                    targets.push(list);
                }
            }
        }
        for (lane, (batch, targets)) in per_lane.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            if sends <= INLINE_SENDS && self.inner.lanes[lane].waiting.load(Ordering::Acquire) == 0 {
                offer_all(self, &batch, &targets);
            } else {
                self.hand_off(lane, (batch, targets));
            }
        }
    }

    /// Hands a batch to a lane. Without a runtime, or once it is gone, the
    /// batch is offered here.
    fn hand_off(&self, lane: usize, handoff: Handoff) {
        let Lane { tx, waiting } = &self.inner.lanes[lane];
        let tx = tx.get_or_init(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Handoff>();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let hub = Arc::downgrade(&self.inner);
                runtime.spawn(async move {
                    while let Some((events, targets)) = rx.recv().await {
                        let Some(inner) = hub.upgrade() else { return };
                        let hub = Hub { inner };
                        offer_all(&hub, &events, &targets);
                        hub.inner.lanes[lane].waiting.fetch_sub(1, Ordering::Release);
                    }
                });
            }
            tx
        });
        waiting.fetch_add(1, Ordering::AcqRel);
        if let Err(unsent) = tx.send(handoff) {
            let (events, targets) = unsent.0;
            offer_all(self, &events, &targets);
            waiting.fetch_sub(1, Ordering::Release);
        }
    }

    /// Batches handed to the dispatch lanes and not yet offered in full.
    pub fn dispatching(&self) -> usize {
        self.inner.lanes.iter().map(|lane| lane.waiting.load(Ordering::Acquire)).sum()
    }

    /// (subscribers, job subscriptions, workspace subscriptions).
    pub fn subscription_counts(&self) -> (usize, usize, usize) {
        let (mut jobs, mut workspaces) = (0, 0);
        for shard in self.inner.shards.iter() {
            let shard = read(shard);
            jobs += shard.by_job.values().map(Members::len).sum::<usize>();
            workspaces += shard.by_workspace.values().map(Members::len).sum::<usize>();
        }
        (read(&self.inner.mailboxes).len(), jobs, workspaces)
    }

    /// The job and workspace rooms with local subscribers.
    pub fn rooms(&self) -> (Vec<Uuid>, Vec<String>) {
        let (mut jobs, mut workspaces) = (Vec::new(), Vec::new());
        for shard in self.inner.shards.iter() {
            let shard = read(shard);
            jobs.extend(shard.by_job.keys().copied());
            workspaces.extend(shard.by_workspace.keys().cloned());
        }
        (jobs, workspaces)
    }

    /// Whether any local subscriber follows this job or this workspace.
    pub fn interested(&self, job_id: Uuid, workspace_id: &str) -> bool {
        read(self.job_shard(&job_id)).by_job.contains_key(&job_id)
            || read(self.workspace_shard(workspace_id)).by_workspace.contains_key(workspace_id)
    }

    /// Asks every subscriber to compare its cursors with the database and catch
    /// up (after events may have been missed, e.g. while a bus was down).
    pub fn resync_all(&self) {
        for mailbox in read(&self.inner.mailboxes).values() {
            mailbox.send(self, Msg::Resync);
        }
    }

    /// The source the hub reads from.
    pub fn store(&self) -> &Arc<dyn EventSource> {
        &self.inner.store
    }

    fn add_room(&self, mailbox: &Arc<Mailbox>, room: &Room) {
        write(self.shard(room)).add(mailbox, room, self.inner.lanes.len());
        lock(&mailbox.rooms).push(room.clone());
    }

    fn remove_room(&self, mailbox: &Mailbox, room: &Room) {
        write(self.shard(room)).remove(mailbox.id, room);
        lock(&mailbox.rooms).retain(|r| r != room);
    }

    /// Removes a subscriber from the index: only its own rooms are touched.
    fn forget(&self, mailbox: &Mailbox) {
        write(&self.inner.mailboxes).remove(&mailbox.id);
        let rooms = std::mem::take(&mut *lock(&mailbox.rooms));
        for room in &rooms {
            write(self.shard(room)).remove(mailbox.id, room);
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(lock: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventSink for Hub {
    fn publish(&self, events: &[Arc<Committed>]) {
        self.dispatch(events);
    }

    /// Rare (a commit whose outcome is unknown): every subscriber compares its
    /// cursors with the database, which covers workspace followers too.
    fn uncertain(&self, jobs: &[Uuid]) {
        if !jobs.is_empty() {
            self.resync_all();
        }
    }
}

/// Why a subscription was refused. Nothing stays registered.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError<E> {
    /// The caller's check refused it (its own error, e.g. forbidden).
    #[error("refused")]
    Refused(E),
    /// No such job.
    #[error("not found")]
    NotFound,
    /// `since` is beyond the job's newest event.
    #[error("since {since} is beyond the job's last seq {last_seq}")]
    InvalidCursor {
        /// What was asked.
        since: i64,
        /// The job's newest seq.
        last_seq: i64,
    },
    /// The subscriber already has `limit` subscriptions (see
    /// [`Subscriber::with_room_limit`]) and this one would be new.
    #[error("{limit} subscriptions, the most allowed")]
    TooManyRooms {
        /// The limit.
        limit: usize,
    },
    /// The snapshot could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// One subscriber's handle: subscribe, unsubscribe, close.
pub struct Subscriber {
    id: u64,
    hub: Hub,
    mailbox: Arc<Mailbox>,
    /// Serialises this subscriber's subscribe and unsubscribe calls. While it
    /// is held and no call is under way, the rooms of the mailbox (those
    /// registered in the hub index) are exactly the subscriber's subscriptions.
    calls: tokio::sync::Mutex<()>,
    /// The most subscriptions at once; 0 for no limit.
    max_rooms: usize,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Subscriber {
    fn send(&self, msg: Msg) {
        self.mailbox.send(&self.hub, msg);
    }

    /// At most `max` subscriptions at once (0: no limit): a subscribe to one
    /// more room is refused with [`SubscribeError::TooManyRooms`]; a room
    /// already subscribed to does not count again.
    #[must_use]
    pub fn with_room_limit(mut self, max: usize) -> Self {
        self.max_rooms = max;
        self
    }

    /// Registers `room` (if new) so that events committed from now on reach
    /// the worker: whether it is new, or the refusal when it is one too many.
    fn begin<E>(&self, room: &Room) -> Result<bool, SubscribeError<E>> {
        let fresh = {
            let rooms = lock(&self.mailbox.rooms);
            let fresh = !rooms.contains(room);
            if fresh && self.max_rooms != 0 && rooms.len() >= self.max_rooms {
                return Err(SubscribeError::TooManyRooms { limit: self.max_rooms });
            }
            fresh
        };
        if fresh {
            self.hub.add_room(&self.mailbox, room);
        }
        self.send(Msg::Begin(room.clone()));
        Ok(fresh)
    }

    fn abort(&self, fresh: bool, room: Room) {
        if fresh {
            self.hub.remove_room(&self.mailbox, &room);
        }
        self.send(Msg::Abort(room));
    }

    /// Subscribes to a job. `check` sees the snapshot first (workspace access);
    /// `announce` builds the ack from it. After the announcement, the outlet
    /// gets every event with `seq > since` (or `> lastSeq` without `since`).
    pub async fn subscribe_job<E>(
        &self,
        job_id: Uuid,
        since: Option<i64>,
        check: impl FnOnce(&JobSnapshot) -> Result<(), E>,
        announce: impl FnOnce(JobSnapshot) -> Announce,
    ) -> Result<(), SubscribeError<E>> {
        self.subscribe_job_or_refuse(job_id, since, check, announce, None).await
    }

    /// [`Subscriber::subscribe_job`], with `refuse` sent instead of the
    /// announcement when this subscriber already has later events of the job
    /// than `since` after a gap it never got (they cannot be sent in order).
    /// Without `refuse`, the subscription then goes on from what it has.
    pub async fn subscribe_job_or_refuse<E>(
        &self,
        job_id: Uuid,
        since: Option<i64>,
        check: impl FnOnce(&JobSnapshot) -> Result<(), E>,
        announce: impl FnOnce(JobSnapshot) -> Announce,
        refuse: Option<Refuse>,
    ) -> Result<(), SubscribeError<E>> {
        let _calls = self.calls.lock().await;
        let room = Room::Job(job_id);
        let fresh = self.begin(&room)?;
        let job = match self.hub.inner.store.job(job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                self.abort(fresh, room);
                return Err(SubscribeError::NotFound);
            }
            Err(err) => {
                self.abort(fresh, room);
                return Err(err.into());
            }
        };
        if let Err(err) = check(&job) {
            self.abort(fresh, room);
            return Err(SubscribeError::Refused(err));
        }
        if let Some(since) = since.filter(|s| *s > job.last_seq) {
            self.abort(fresh, room);
            return Err(SubscribeError::InvalidCursor { since, last_seq: job.last_seq });
        }
        let (workspace_id, last_seq) = (job.workspace_id.clone(), job.last_seq);
        self.send(Msg::ActivateJob(Box::new(ActivateJob {
            job_id,
            workspace_id,
            last_seq,
            since,
            announce: announce(job),
            refuse,
        })));
        Ok(())
    }

    /// Subscribes to a workspace (access must be checked before). `announce`
    /// builds the ack from the snapshot; after it, the outlet gets every event
    /// committed after the snapshot, for every job of the workspace.
    pub async fn subscribe_workspace(
        &self,
        workspace_id: &str,
        announce: impl FnOnce(Vec<JobSnapshot>) -> Announce,
    ) -> Result<(), SubscribeError<std::convert::Infallible>> {
        let _calls = self.calls.lock().await;
        let room = Room::Workspace(workspace_id.to_owned());
        let fresh = self.begin(&room)?;
        match self.hub.inner.store.workspace_snapshot(workspace_id).await {
            Ok(WorkspaceSnapshot { jobs, cursors, horizon }) => {
                let announce = announce(jobs);
                let workspace_id = workspace_id.to_owned();
                let activation = ActivateWorkspace { workspace_id, cursors, horizon, announce };
                self.send(Msg::ActivateWorkspace(Box::new(activation)));
                Ok(())
            }
            Err(err) => {
                self.abort(fresh, room);
                Err(err.into())
            }
        }
    }

    /// Ends a subscription; returns whether there was one.
    pub async fn unsubscribe(&self, room: Room) -> bool {
        self.unsubscribe_then(room, None).await.is_ok()
    }

    /// Ends a subscription; `announce` (the ack) is sent by the worker once no
    /// more events of the room can reach the outlet. Without a subscription,
    /// hands `announce` back (there is nothing to wait for).
    pub async fn unsubscribe_then(&self, room: Room, announce: Option<Announce>) -> Result<(), Option<Announce>> {
        let _calls = self.calls.lock().await;
        if !lock(&self.mailbox.rooms).contains(&room) {
            return Err(announce);
        }
        self.hub.remove_room(&self.mailbox, &room);
        self.send(Msg::Unsubscribe(room, announce));
        Ok(())
    }

    /// Ends every subscription and stops the worker.
    pub fn close(&self) {
        self.hub.forget(&self.mailbox);
        self.send(Msg::Close);
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.close();
    }
}

/// The worker stops: its outlet is gone, or it was closed.
struct Stop;

struct Worker {
    id: u64,
    hub: Hub,
    mailbox: Arc<Mailbox>,
    outlet: Arc<dyn Outlet>,
    /// The subscriber's cursors, owned while this worker runs.
    c: Box<Cursors>,
}

fn key(event: &Committed) -> EventKey<'_> {
    EventKey {
        job_id: event.event.job_id,
        workspace_id: &event.event.workspace_id,
        seq: event.event.seq,
        order: event.order,
    }
}

impl Worker {
    /// Takes queued messages until there are none, then hands the cursors back
    /// (the fast path resumes) and ends; or stops the subscriber.
    async fn run(mut self) {
        loop {
            let msg = {
                let mut state = self.mailbox.state();
                match state.queue.pop_front() {
                    Some(msg) => {
                        if matches!(msg, Msg::Event(_)) {
                            state.queued_events -= 1;
                        }
                        msg
                    }
                    None => {
                        self.c.count(&self.hub.inner.stats);
                        if !self.c.subs.has_pending() {
                            self.c.pending = Vec::new();
                        }
                        state.cursors = *self.c;
                        state.worker = false;
                        // A caught-up subscriber keeps no queue: an idle socket
                        // would hold the room of its subscribe's commands.
                        state.queue = VecDeque::new();
                        self.hub.inner.stats.behind.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                }
            };
            // Boxed: the handlers' futures are large, the loop's is not.
            let stop = Box::pin(self.handle(msg)).await.is_err();
            self.c.count(&self.hub.inner.stats);
            if stop {
                break;
            }
        }
        {
            let mut state = self.mailbox.state();
            state.closed = true;
            state.queue.clear();
            state.queued_events = 0;
        }
        self.c.subs = Subscriptions::default();
        self.c.count(&self.hub.inner.stats);
        self.hub.inner.stats.behind.fetch_sub(1, Ordering::Relaxed);
        self.outlet.close();
        self.hub.forget(&self.mailbox);
    }

    async fn handle(&mut self, msg: Msg) -> Result<(), Stop> {
        match msg {
            Msg::Event(event) => self.offer(event).await,
            Msg::Resync => {
                self.mailbox.state().overflowed = false;
                Box::pin(self.resync()).await
            }
            Msg::Begin(Room::Job(job)) => {
                self.c.subs.begin_job(job);
                Ok(())
            }
            Msg::Begin(Room::Workspace(ws)) => {
                self.c.subs.begin_workspace(&ws);
                Ok(())
            }
            Msg::Abort(room) => {
                match room {
                    Room::Job(job) => self.c.subs.abort_job(job),
                    Room::Workspace(ws) => self.c.subs.abort_workspace(&ws),
                }
                self.settle_pending().await
            }
            Msg::ActivateJob(activation) => {
                let ActivateJob { job_id, workspace_id, last_seq, since, announce, refuse } = *activation;
                let cursor = match (self.c.subs.activate_job(job_id, &workspace_id, last_seq, since), refuse) {
                    (Ok(cursor), _) => cursor,
                    (Err(unreachable), Some(mut refuse)) => {
                        self.c.subs.abort_job(job_id);
                        return self.wait_while_full(|| refuse(unreachable)).await;
                    }
                    (Err(unreachable), None) => unreachable.delivered,
                };
                self.announce(announce).await?;
                self.settle_pending().await?;
                if cursor < last_seq {
                    Box::pin(self.catch_up(job_id)).await?;
                }
                Ok(())
            }
            Msg::ActivateWorkspace(activation) => {
                let ActivateWorkspace { workspace_id, cursors, horizon, announce } = *activation;
                self.c.subs.activate_workspace(&workspace_id, cursors, Some(horizon));
                self.announce(announce).await?;
                self.settle_pending().await
            }
            Msg::Unsubscribe(room, announce) => {
                match room {
                    Room::Job(job) => self.c.subs.unsubscribe_job(job),
                    Room::Workspace(ws) => self.c.subs.unsubscribe_workspace(&ws),
                };
                match announce {
                    Some(announce) => self.announce(announce).await,
                    None => Ok(()),
                }
            }
            Msg::Close => Err(Stop),
        }
    }

    async fn announce(&self, announce: Announce) -> Result<(), Stop> {
        self.wait_while_full(announce).await
    }

    /// Classifies the held events again now that a subscription changed state.
    async fn settle_pending(&mut self) -> Result<(), Stop> {
        for event in std::mem::take(&mut self.c.pending) {
            self.offer(event).await?;
        }
        if self.c.pending_overflow {
            self.resync().await?;
            self.c.pending_overflow = self.c.subs.has_pending();
        }
        if !self.c.subs.has_pending() {
            self.c.pending = Vec::new();
        }
        Ok(())
    }

    async fn offer(&mut self, event: Arc<Committed>) -> Result<(), Stop> {
        match self.c.subs.classify(key(&event)) {
            Verdict::Ignore | Verdict::Duplicate => Ok(()),
            Verdict::Pending => {
                if self.c.pending.len() < self.hub.inner.config.pending_limit {
                    self.c.pending.push(event);
                } else {
                    self.c.pending_overflow = true;
                }
                Ok(())
            }
            Verdict::Deliver => self.deliver(&event).await,
            Verdict::Resolve => {
                self.resolve(event.event.job_id, &event.event.workspace_id).await?;
                match self.c.subs.classify(key(&event)) {
                    Verdict::Deliver => self.deliver(&event).await,
                    Verdict::Gap { .. } => {
                        Box::pin(self.catch_up(event.event.job_id)).await?;
                        if self.c.subs.classify(key(&event)) == Verdict::Deliver {
                            self.deliver(&event).await?;
                        }
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
            Verdict::Gap { .. } => {
                Box::pin(self.catch_up(event.event.job_id)).await?;
                if self.c.subs.classify(key(&event)) == Verdict::Deliver {
                    self.deliver(&event).await?;
                }
                Ok(())
            }
        }
    }

    async fn deliver(&mut self, event: &Committed) -> Result<(), Stop> {
        let outlet = self.outlet.clone();
        self.wait_while_full(|| outlet.try_send(event)).await?;
        self.c.subs.advance(key(event));
        self.hub.inner.stats.delivered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Calls `send` until the outlet takes it, backing off while it is full;
    /// stops when the outlet is gone, or has stayed full for `stall_timeout`
    /// (the worker then closes it: a client that stopped reading is let go).
    async fn wait_while_full(&self, mut send: impl FnMut() -> Result<(), OutletError>) -> Result<(), Stop> {
        const LONGEST_PAUSE: Duration = Duration::from_millis(50);
        let stall_timeout = self.hub.inner.config.stall_timeout;
        let mut since: Option<tokio::time::Instant> = None;
        let mut pause = Duration::from_millis(2);
        loop {
            match send() {
                Ok(()) => return Ok(()),
                Err(OutletError::Closed) => return Err(Stop),
                Err(OutletError::Full) => {
                    let waited = since.get_or_insert_with(tokio::time::Instant::now).elapsed();
                    if waited >= stall_timeout {
                        self.hub.inner.stats.stalls.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(subscriber = self.id, "subscriber has not read for {waited:?}; closing it");
                        return Err(Stop);
                    }
                    match self.outlet.clone().ready() {
                        // Woken by the connection's progress; the timeout only
                        // covers a wake-up that came between the send and now.
                        Some(ready) => {
                            let _ = tokio::time::timeout(LONGEST_PAUSE, ready).await;
                        }
                        None => {
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(LONGEST_PAUSE);
                        }
                    }
                }
            }
        }
    }

    /// Sends a job's committed events after its cursor, page by page, until the
    /// database has no more. While a full page is being sent, the next one is
    /// read (from the page's last `seq`), so the database and the sending
    /// overlap; a catch-up holds at most these two pages.
    async fn catch_up(&mut self, job_id: Uuid) -> Result<(), Stop> {
        let page_size = self.hub.inner.config.page_size.max(1);
        self.hub.inner.stats.catch_ups.fetch_add(1, Ordering::Relaxed);
        let mut next: Option<(i64, EventPage)> = None;
        loop {
            // Between pages: the subscribes, unsubscribes and close waiting
            // behind this catch-up take effect now, not after the rest of the
            // job's history. No page is held while they run (one may start a
            // catch-up of its own): the next page is read again after them.
            if self.has_commands() {
                next = None;
                self.take_commands().await?;
            }
            let Some(cursor) = self.c.subs.cursor(job_id) else {
                return Ok(());
            };
            let page = match next.take() {
                // Read from where this page's predecessor ended, which is
                // where its sending left the cursor.
                Some((since, page)) if since == cursor => page,
                _ => {
                    self.read(|store| async move { store.events_page(job_id, cursor, page_size, PAGE_BYTES).await })
                        .await?
                }
            };
            let more = page.more;
            let last = page.events.last().map(|event| event.event.seq);
            let sent = match last.filter(|_| more) {
                Some(since) => {
                    let store = self.hub.inner.store.clone();
                    let read = Box::pin(async move { store.events_page(job_id, since, page_size, PAGE_BYTES).await });
                    let (sent, read) = tokio::join!(self.send_page(page.events), read);
                    // A failed read is read again, with retries, by the next turn.
                    next = read.ok().map(|page| (since, page));
                    sent?
                }
                None => self.send_page(page.events).await?,
            };
            if !sent || !more {
                return Ok(());
            }
        }
    }

    /// Whether a command (anything but an event or a resynchronisation) waits in the mailbox.
    fn has_commands(&self) -> bool {
        self.mailbox.state().queue.iter().any(Msg::is_command)
    }

    /// Handles now, in the order they were queued, the commands waiting in
    /// the mailbox (subscribes being set up, activations, unsubscribes, a
    /// close): a catch-up calls it between pages, so that a subscription made
    /// or left during a long replay does not wait for the replay to end.
    ///
    /// Only queued *events* (and resynchronisations) are overtaken, never a
    /// command: the socket's requests still take effect, and are acked, in
    /// the order they were made. An overtaken event is classified when its
    /// turn comes, against the cursors as they are then: an event of a room
    /// left is dropped (nothing of the room follows the unsubscribe's ack);
    /// one a newer subscription's catch-up already sent is a duplicate and
    /// dropped; any other is delivered in `seq` order, as ever.
    async fn take_commands(&mut self) -> Result<(), Stop> {
        loop {
            let msg = {
                let mut state = self.mailbox.state();
                let at = state.queue.iter().position(Msg::is_command);
                match at.and_then(|at| state.queue.remove(at)) {
                    Some(msg) => msg,
                    None => return Ok(()),
                }
            };
            Box::pin(self.handle(msg)).await?;
        }
    }

    /// Sends a page's events that the subscriber has not had; `false` when it
    /// stopped early (unsubscribed meanwhile, or a hole in the table: nothing
    /// more to send).
    ///
    /// The events to deliver are chosen first (each one's cursor advanced as
    /// it is chosen: the worker owns the cursors, and if a send fails for good
    /// the subscriber stops), then handed to the outlet as a run, which it may
    /// write several at a time.
    async fn send_page(&mut self, events: Vec<Arc<Committed>>) -> Result<bool, Stop> {
        let mut run = Vec::with_capacity(events.len());
        let mut complete = true;
        for event in events {
            match self.c.subs.classify(key(&event)) {
                Verdict::Deliver => {
                    self.c.subs.advance(key(&event));
                    run.push(event);
                }
                Verdict::Duplicate => {}
                _ => {
                    complete = false;
                    break;
                }
            }
        }
        let mut at = 0;
        while at < run.len() {
            let outlet = self.outlet.clone();
            let rest = &run[at..];
            let mut taken = 0;
            self.wait_while_full(|| outlet.try_send_many(rest).map(|n| taken = n)).await?;
            // At least one, by the trait's contract; never past the end.
            let taken = taken.clamp(1, rest.len());
            at += taken;
            self.hub.inner.stats.delivered.fetch_add(taken as u64, Ordering::Relaxed);
        }
        Ok(complete)
    }

    /// Starts the cursor of a job followed through `workspace_id` at the last
    /// `seq` the workspace's snapshot saw (see [`Verdict::Resolve`]).
    async fn resolve(&mut self, job_id: Uuid, workspace_id: &str) -> Result<(), Stop> {
        let Some(horizon) = self.c.subs.horizon(workspace_id) else {
            self.c.subs.start(job_id, workspace_id, 0);
            return Ok(());
        };
        let seq = self
            .read(|store| {
                let horizon = horizon.clone();
                async move { store.last_seen_seq(job_id, &horizon).await }
            })
            .await?;
        self.c.subs.start(job_id, workspace_id, seq);
        Ok(())
    }

    /// After dropped events: compares every followed job with the database and
    /// catches up. The jobs compared are those with a cursor and those of a
    /// followed workspace changed since its snapshot, never its whole history.
    async fn resync(&mut self) -> Result<(), Stop> {
        let mut candidates: HashSet<Uuid> = self.c.subs.job_cursors().into_iter().map(|(job, _)| job).collect();
        for workspace in self.c.subs.active_workspaces() {
            let Some(horizon) = self.c.subs.horizon(&workspace) else { continue };
            let changed = self
                .read(|store| {
                    let (ws, horizon) = (workspace.clone(), horizon.clone());
                    async move { store.jobs_changed_since(&ws, &horizon).await }
                })
                .await?;
            for job in changed {
                if self.c.subs.cursor(job).is_none() {
                    self.resolve(job, &workspace).await?;
                }
                candidates.insert(job);
            }
        }
        let ids: Vec<Uuid> = candidates.into_iter().collect();
        let last = self.read(|store| {
            let ids = ids.clone();
            async move { store.last_seqs(ids).await }
        });
        for (job, last_seq) in last.await? {
            if last_seq > self.c.subs.cursor(job).unwrap_or(0) {
                self.catch_up(job).await?;
            }
        }
        Ok(())
    }

    /// A database read, retried while the database is unavailable (the subscriber
    /// is closed if it stays so: its client resumes with `since` later).
    async fn read<T, F, Fut>(&self, op: F) -> Result<T, Stop>
    where
        F: Fn(Arc<dyn EventSource>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ReadError>>,
    {
        for attempt in 0..5u32 {
            // Boxed: database futures are large, and an idle worker should stay small.
            match Box::pin(op(self.hub.inner.store.clone())).await {
                Ok(value) => return Ok(value),
                Err(err) => {
                    tracing::warn!(subscriber = self.id, attempt, error = %err, source = ?std::error::Error::source(&err), "catch-up read failed");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
                }
            }
        }
        Err(Stop)
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    struct Discard;

    impl Outlet for Discard {
        fn try_send(&self, _: &Committed) -> Result<(), OutletError> {
            Ok(())
        }
        fn close(&self) {}
    }

    fn mailboxes(hub: &Hub, n: usize) -> Vec<Arc<Mailbox>> {
        (0..n).map(|_| hub.subscriber(Arc::new(Discard)).mailbox.clone()).collect()
    }

    fn ids(members: &Members) -> Vec<u64> {
        let mut ids: Vec<u64> = members.lanes.iter().flatten().flat_map(|list| list.iter().map(|m| m.id)).collect();
        ids.sort_unstable();
        ids
    }

    #[tokio::test]
    async fn a_room_keeps_each_subscriber_once_on_its_lane_through_joins_and_leaves() {
        let hub = Hub::with_source(Arc::new(crate::memory::MemorySource::default()), DeliveryConfig::default());
        let all = mailboxes(&hub, 9);
        let mut members = Members::new(3);
        for mailbox in all.iter().chain(&all) {
            members.insert(mailbox);
        }
        assert_eq!(members.len(), 9);
        for (lane, list) in members.lanes.iter().enumerate() {
            let list = list.as_deref().map(Vec::as_slice).unwrap_or_default();
            assert!(list.iter().all(|m| (m.id as usize) % 3 == lane));
        }
        // Leaving from the middle, the end and the start of a lane's list.
        for gone in [all[4].id, all[8].id, all[0].id, all[0].id] {
            members.remove(gone);
            assert!(!members.contains(gone));
        }
        let left: Vec<u64> =
            all.iter().map(|m| m.id).filter(|id| ![all[4].id, all[8].id, all[0].id].contains(id)).collect();
        assert_eq!(ids(&members), left);
        for &id in &left {
            members.remove(id);
        }
        assert!(members.is_empty());
        assert!(members.lanes.iter().all(Option::is_none), "an empty lane holds no list");
    }

    #[tokio::test]
    async fn a_list_handed_to_a_lane_is_not_changed_by_a_later_join_or_leave() {
        let hub = Hub::with_source(Arc::new(crate::memory::MemorySource::default()), DeliveryConfig::default());
        let all = mailboxes(&hub, 4);
        let mut members = Members::new(1);
        for mailbox in &all[..3] {
            members.insert(mailbox);
        }
        let handed = members.lanes[0].clone().expect("a list");
        members.remove(all[0].id);
        members.insert(&all[3]);
        let handed: Vec<u64> = handed.iter().map(|m| m.id).collect();
        assert_eq!(handed, [all[0].id, all[1].id, all[2].id]);
        assert_eq!(ids(&members), [all[1].id, all[2].id, all[3].id]);
    }
}
