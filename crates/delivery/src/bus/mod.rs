//! The cluster bus: committed events from every node reach every node.
//!
//! The transport is a [`Driver`]: [`redis::RedisDriver`] publishes the events
//! a node commits on one Redis pub/sub channel; [`postgres::PostgresDriver`]
//! sends a PostgreSQL `NOTIFY` naming the jobs and their newest seq (payloads
//! are limited to 8000 bytes, so events are not carried) and the other nodes
//! read those events from the database. This module holds what does not depend
//! on the transport. Either way the bus only wakes nodes up; the database is
//! the truth:
//! - an event that arrives out of order shows a gap, which the subscriber
//!   fills from the database;
//! - after the subscription to the transport is (re)established, every local
//!   subscriber compares its cursors with the database;
//! - a sweep every few seconds compares the newest seq seen per followed job
//!   with the database and replays what the bus lost.
//!
//! A node reads and dispatches only what its own subscribers follow: a job or
//! workspace with no local subscriber costs it no database read and no
//! dispatch, and the newest-seq bookkeeping (`seen`) holds only followed jobs
//! (entries are added only for them and pruned at each sweep).

pub mod postgres;
pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use jobstream_job_events::{Committed, EventSink};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::hub::Hub;

/// How often the sweep compares followed jobs with the database.
const SWEEP_EVERY: Duration = Duration::from_secs(3);
/// Events read per page when a bus message announces events not carried.
const READ_PAGE: u64 = 1000;

/// A transport error (connecting, publishing, subscribing). Never fatal: the
/// bus retries, and subscribers repair from the database.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DriverError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

impl DriverError {
    /// Wraps any error.
    pub fn new(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(err))
    }
}

/// The newest `seq` of a job, announced without its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The job.
    pub job_id: Uuid,
    /// Its newest committed `seq`.
    pub seq: i64,
    /// Its workspace, when the sender knows it (nodes that do not send it get
    /// the job read whenever it may be followed).
    pub workspace_id: Option<String>,
}

/// What one node announced.
#[derive(Debug)]
pub enum Message {
    /// Committed events, carried whole.
    Events(Vec<Arc<Committed>>),
    /// Only the newest `seq` per job: the events are read from the database.
    Heads(Vec<Head>),
}

/// One received announcement.
#[derive(Debug)]
pub struct Envelope {
    /// The node that published it (a node skips its own).
    pub node: String,
    /// When it was published, in microseconds since the Unix epoch.
    pub sent_at_us: u64,
    /// What it carries.
    pub message: Message,
}

/// A cluster transport. Best effort both ways: whatever it loses is repaired
/// from the database by the subscribers and the sweep.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// Sends this node's committed events (in commit order) to the others.
    async fn publish(&self, node: &str, events: &[Arc<Committed>]) -> Result<(), DriverError>;

    /// Connects and returns what every node publishes (this one included),
    /// in the order the transport delivers it. The stream ends when the
    /// connection is lost; the bus then subscribes again.
    async fn subscribe(&self) -> Result<BoxStream<'static, Envelope>, DriverError>;
}

/// What the bus reports to the node's metrics.
pub trait BusMetrics: Send + Sync + 'static {
    /// A transport error (publish, subscribe, connection lost).
    fn error(&self);
    /// The time from publish to receipt, in seconds.
    fn lag(&self, seconds: f64);
}

/// The sink of a clustered node: the local hub first, then the bus.
pub struct ClusterSink {
    hub: Hub,
    outbox: mpsc::UnboundedSender<Vec<Arc<Committed>>>,
    seen: Arc<Mutex<Seen>>,
}

impl std::fmt::Debug for ClusterSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSink").field("hub", &self.hub).finish_non_exhaustive()
    }
}

/// Per followed job: the newest seq dispatched here, and its workspace.
type Seen = HashMap<Uuid, (i64, String)>;

impl EventSink for ClusterSink {
    fn publish(&self, events: &[Arc<Committed>]) {
        self.hub.dispatch(events);
        note_seen(&self.hub, &self.seen, events);
        let _ = self.outbox.send(events.to_vec());
    }

    /// This node's subscribers compare their cursors with the database.
    /// Other nodes are not told: if such a write committed, their
    /// subscribers get it when a later event of its job shows the gap (filled
    /// from the database) or when they subscribe again.
    fn uncertain(&self, jobs: &[Uuid]) {
        self.hub.uncertain(jobs);
    }
}

/// Starts the bus on `driver` (publisher, listener and sweep tasks) and returns
/// the sink the writer should use.
pub fn start(driver: impl Driver, hub: Hub, metrics: Arc<dyn BusMetrics>) -> ClusterSink {
    let driver: Arc<dyn Driver> = Arc::new(driver);
    let node: Arc<str> = Uuid::new_v4().to_string().into();
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let (outbox, inbox) = mpsc::unbounded_channel();
    tokio::spawn(publisher(driver.clone(), node.clone(), inbox, metrics.clone()));
    tokio::spawn(listener(driver, node, hub.clone(), seen.clone(), metrics));
    tokio::spawn(sweeper(hub.clone(), seen.clone()));
    ClusterSink { hub, outbox, seen }
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records the newest seq of the followed jobs among `events`.
fn note_seen(hub: &Hub, seen: &Mutex<Seen>, events: &[Arc<Committed>]) {
    let mut seen = lock(seen);
    for event in events {
        let (job, workspace) = (event.event.job_id, &event.event.workspace_id);
        match seen.get_mut(&job) {
            Some((seq, _)) => *seq = (*seq).max(event.event.seq),
            None if hub.interested(job, workspace) => {
                seen.insert(job, (event.event.seq, workspace.clone()));
            }
            None => {}
        }
    }
}

async fn publisher(
    driver: Arc<dyn Driver>,
    node: Arc<str>,
    mut inbox: mpsc::UnboundedReceiver<Vec<Arc<Committed>>>,
    metrics: Arc<dyn BusMetrics>,
) {
    while let Some(events) = inbox.recv().await {
        if let Err(err) = driver.publish(&node, &events).await {
            // Other nodes repair from the database; nothing is lost.
            metrics.error();
            tracing::warn!(%err, "bus publish failed");
        }
    }
}

async fn listener(
    driver: Arc<dyn Driver>,
    node: Arc<str>,
    hub: Hub,
    seen: Arc<Mutex<Seen>>,
    metrics: Arc<dyn BusMetrics>,
) {
    loop {
        match driver.subscribe().await {
            Ok(mut messages) => {
                tracing::info!("cluster bus connected");
                // Anything committed elsewhere while we were not listening is in the database.
                hub.resync_all();
                while let Some(envelope) = messages.next().await {
                    if envelope.node == *node {
                        continue;
                    }
                    metrics.lag(now_us().saturating_sub(envelope.sent_at_us) as f64 / 1e6);
                    receive(envelope.message, &hub, &seen).await;
                }
                tracing::warn!("cluster bus connection lost; reconnecting");
            }
            Err(err) => tracing::warn!(%err, "cannot reach the cluster bus; retrying"),
        }
        metrics.error();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Dispatches what another node announced, for local subscribers only.
async fn receive(message: Message, hub: &Hub, seen: &Mutex<Seen>) {
    match message {
        Message::Events(mut events) => {
            events.retain(|e| hub.interested(e.event.job_id, &e.event.workspace_id));
            if !events.is_empty() {
                note_seen(hub, seen, &events);
                hub.dispatch(&events);
            }
        }
        Message::Heads(heads) => {
            for head in heads {
                // Nobody here follows it: nothing to read.
                let followed = match &head.workspace_id {
                    Some(ws) => hub.interested(head.job_id, ws),
                    // From a node that does not send workspaces: read it.
                    None => true,
                };
                if followed {
                    catch_up_job(hub, seen, head.job_id, head.seq).await;
                }
            }
        }
    }
}

/// Reads a job's events after the newest seen here, up to `newest`, and
/// dispatches them. For a job not seen here yet, only the newest event is read:
/// it wakes the subscribers, who fill any gap before it from the database.
async fn catch_up_job(hub: &Hub, seen: &Mutex<Seen>, job: Uuid, newest: i64) {
    loop {
        let known = lock(seen).get(&job).map_or(newest - 1, |(seq, _)| *seq);
        if known >= newest {
            return;
        }
        let Ok(page) = hub.store().events_page(job, known, READ_PAGE, crate::PAGE_BYTES).await else { return };
        let events = page.events;
        if events.is_empty() {
            return;
        }
        note_seen(hub, seen, &events);
        hub.dispatch(&events);
        if !lock(seen).contains_key(&job) {
            return;
        }
    }
}

/// Replays, from the database, events of followed jobs that no bus message announced.
async fn sweeper(hub: Hub, seen: Arc<Mutex<Seen>>) {
    let mut ticker = tokio::time::interval(SWEEP_EVERY);
    loop {
        ticker.tick().await;
        lock(&seen).retain(|job, (_, ws)| hub.interested(*job, ws));
        let (jobs, workspaces) = hub.rooms();
        let store = hub.store().clone();
        let recent = chrono::Utc::now() - chrono::Duration::seconds(60);
        let mut heads = store.last_seqs(jobs).await.unwrap_or_default();
        heads.extend(store.recently_updated(workspaces, recent).await.unwrap_or_default());
        for (job, last_seq) in heads {
            catch_up_job(&hub, &seen, job, last_seq).await;
        }
    }
}
