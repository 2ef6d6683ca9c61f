//! The cluster bus: committed events from every node reach every node.
//!
//! With `JOBSTREAM_REDIS_URL`, each node publishes the events it commits to one
//! Redis pub/sub channel and dispatches what other nodes publish to its local
//! hub. With `JOBSTREAM_BUS=postgres` (no Redis), each node sends a PostgreSQL
//! NOTIFY naming the jobs and their newest seq (payloads are limited to 8000
//! bytes, so events are not carried), and the others read those events from
//! the database. Either way the bus only wakes nodes up; the database is the truth:
//! - an event that arrives out of order shows a gap, which the subscriber
//!   fills from the database;
//! - after the subscription to Redis is (re)established, every local
//!   subscriber compares its cursors with the database;
//! - a sweep every few seconds compares the newest seq seen per followed job
//!   with the database and replays what the bus lost.
//!
//! A node reads and tracks only what its own subscribers follow: a job or
//! workspace with no local subscriber costs it no database read, and the
//! newest-seq bookkeeping is pruned to the followed jobs at each sweep.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jobstream_job_events::delivery::Hub;
use jobstream_job_events::{Committed, EventSink};
use jobstream_protocol::Event;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::metrics::Metrics;

/// The Redis channel all nodes share.
const CHANNEL: &str = "jobstream:events";
/// How often the sweep compares followed jobs with the database.
const SWEEP_EVERY: Duration = Duration::from_secs(3);

/// Why the bus could not start.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The URL is not a Redis URL.
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
}

#[derive(Serialize)]
struct Outgoing<'a> {
    /// The publishing node, so that it can skip its own messages.
    n: &'a str,
    /// When it was published (µs since the epoch), for the bus lag metric.
    t: u64,
    e: Vec<&'a RawValue>,
    /// The commit order of each event (same positions as `e`).
    o: Vec<Option<i64>>,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    n: &'a str,
    t: u64,
    #[serde(borrow)]
    e: Vec<&'a RawValue>,
    /// Absent from nodes that do not send it: the events are then placed through the database.
    #[serde(default)]
    o: Vec<Option<i64>>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The sink of a clustered node: the local hub first, then the bus.
#[derive(Debug)]
pub struct ClusterSink {
    hub: Hub,
    outbox: mpsc::UnboundedSender<Vec<Arc<Committed>>>,
    seen: Arc<Mutex<Seen>>,
}

/// Per followed job: the newest seq dispatched here, and its workspace.
type Seen = HashMap<Uuid, (i64, String)>;

impl EventSink for ClusterSink {
    fn publish(&self, events: &[Arc<Committed>]) {
        self.hub.dispatch(events);
        note_seen(&self.hub, &self.seen, events);
        let _ = self.outbox.send(events.to_vec());
    }
}

/// Records the newest seq of the followed jobs among `events`.
fn note_seen(hub: &Hub, seen: &Mutex<Seen>, events: &[Arc<Committed>]) {
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
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

/// The PostgreSQL channel for `LISTEN` / `NOTIFY`.
const PG_CHANNEL: &str = "jobstream_events";

#[derive(Serialize, Deserialize)]
struct Wake {
    /// The publishing node.
    n: String,
    /// When it was published (µs since the epoch).
    t: u64,
    /// Per job: (job, newest seq).
    j: Vec<(Uuid, i64)>,
    /// The workspace of each job in `j` (absent from older nodes).
    #[serde(default)]
    w: Vec<String>,
}

/// Starts the PostgreSQL LISTEN/NOTIFY bus and returns the sink the writer should use.
pub fn start_postgres(database_url: &str, hub: Hub, metrics: Metrics) -> ClusterSink {
    let node: Arc<str> = Uuid::new_v4().to_string().into();
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let (outbox, inbox) = mpsc::unbounded_channel();
    tokio::spawn(pg_publisher(hub.clone(), node.clone(), inbox, metrics.clone()));
    tokio::spawn(pg_listener(database_url.to_owned(), node, hub.clone(), seen.clone(), metrics));
    tokio::spawn(sweeper(hub.clone(), seen.clone()));
    ClusterSink { hub, outbox, seen }
}

async fn pg_publisher(
    hub: Hub,
    node: Arc<str>,
    mut inbox: mpsc::UnboundedReceiver<Vec<Arc<Committed>>>,
    metrics: Metrics,
) {
    use sea_orm::{ConnectionTrait, Statement};
    while let Some(events) = inbox.recv().await {
        let mut newest: HashMap<Uuid, (i64, &str)> = HashMap::new();
        for event in &events {
            let entry = newest.entry(event.event.job_id).or_insert((0, &event.event.workspace_id));
            entry.0 = entry.0.max(event.event.seq);
        }
        let jobs: Vec<(Uuid, i64, &str)> = newest.into_iter().map(|(job, (seq, ws))| (job, seq, ws)).collect();
        // At most about 260 bytes a job (a workspace id is at most 200 bytes):
        // 25 jobs a notification stays below the 8000-byte limit.
        for chunk in jobs.chunks(25) {
            let wake = Wake {
                n: node.to_string(),
                t: now_us(),
                j: chunk.iter().map(|(job, seq, _)| (*job, *seq)).collect(),
                w: chunk.iter().map(|(_, _, ws)| (*ws).to_owned()).collect(),
            };
            let Ok(payload) = serde_json::to_string(&wake) else { continue };
            let db = hub.store().connection();
            let statement = Statement::from_sql_and_values(
                db.get_database_backend(),
                "SELECT pg_notify($1, $2)",
                [PG_CHANNEL.into(), payload.into()],
            );
            if let Err(err) = db.execute(statement).await {
                metrics.bus_errors.inc();
                tracing::warn!(%err, "bus notify failed");
            }
        }
    }
}

async fn pg_listener(url: String, node: Arc<str>, hub: Hub, seen: Arc<Mutex<Seen>>, metrics: Metrics) {
    use sea_orm::sqlx::postgres::PgListener;
    loop {
        match PgListener::connect(&url).await {
            Ok(mut listener) => {
                if let Err(err) = listener.listen(PG_CHANNEL).await {
                    tracing::warn!(%err, "bus LISTEN failed");
                } else {
                    tracing::info!("cluster bus (PostgreSQL LISTEN/NOTIFY) connected");
                    hub.resync_all();
                    while let Ok(notification) = listener.recv().await {
                        let Ok(wake) = serde_json::from_str::<Wake>(notification.payload()) else { continue };
                        if wake.n == *node {
                            continue;
                        }
                        metrics.bus_lag.observe(now_us().saturating_sub(wake.t) as f64 / 1e6);
                        for (i, (job, newest)) in wake.j.into_iter().enumerate() {
                            // Nobody here follows it: nothing to read.
                            if wake.w.get(i).is_some_and(|ws| !hub.interested(job, ws)) {
                                continue;
                            }
                            catch_up_job(&hub, &seen, job, newest).await;
                        }
                    }
                    tracing::warn!("cluster bus connection lost; reconnecting");
                }
            }
            Err(err) => tracing::warn!(%err, "cannot reach the database for the bus; retrying"),
        }
        metrics.bus_errors.inc();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reads a job's events after the newest seen here, up to `newest`, and
/// dispatches them. For a job not seen here yet, only the newest event is read:
/// it wakes the subscribers, who fill any gap before it from the database.
async fn catch_up_job(hub: &Hub, seen: &Mutex<Seen>, job: Uuid, newest: i64) {
    loop {
        let known = seen.lock().unwrap_or_else(|e| e.into_inner()).get(&job).map_or(newest - 1, |(seq, _)| *seq);
        if known >= newest {
            return;
        }
        let Ok(events) = hub.store().events_after(job, known, 1000).await else { return };
        if events.is_empty() {
            return;
        }
        note_seen(hub, seen, &events);
        hub.dispatch(&events);
        if seen.lock().unwrap_or_else(|e| e.into_inner()).get(&job).is_none() {
            return;
        }
    }
}

/// Starts the bus tasks and returns the sink the writer should use.
pub fn start(url: &str, hub: Hub, metrics: Metrics) -> Result<ClusterSink, BusError> {
    let client = redis::Client::open(url).map_err(BusError::Url)?;
    let node: Arc<str> = Uuid::new_v4().to_string().into();
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let (outbox, inbox) = mpsc::unbounded_channel();
    tokio::spawn(publisher(client.clone(), node.clone(), inbox, metrics.clone()));
    tokio::spawn(subscriber(client, node, hub.clone(), seen.clone(), metrics));
    tokio::spawn(sweeper(hub.clone(), seen.clone()));
    Ok(ClusterSink { hub, outbox, seen })
}

async fn publisher(
    client: redis::Client,
    node: Arc<str>,
    mut inbox: mpsc::UnboundedReceiver<Vec<Arc<Committed>>>,
    metrics: Metrics,
) {
    let mut connection = None;
    while let Some(events) = inbox.recv().await {
        let message = Outgoing {
            n: &node,
            t: now_us(),
            e: events.iter().map(|c| &*c.json).collect(),
            o: events.iter().map(|c| c.order).collect(),
        };
        let Ok(payload) = serde_json::to_string(&message) else { continue };
        if connection.is_none() {
            connection = client.get_connection_manager().await.ok();
        }
        let Some(conn) = connection.as_mut() else {
            metrics.bus_errors.inc();
            continue;
        };
        if let Err(err) = conn.publish::<_, _, ()>(CHANNEL, payload).await {
            // Other nodes repair from the database; nothing is lost.
            metrics.bus_errors.inc();
            tracing::warn!(%err, "bus publish failed");
        }
    }
}

async fn subscriber(client: redis::Client, node: Arc<str>, hub: Hub, seen: Arc<Mutex<Seen>>, metrics: Metrics) {
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if let Err(err) = pubsub.subscribe(CHANNEL).await {
                    tracing::warn!(%err, "bus subscribe failed");
                } else {
                    tracing::info!("cluster bus connected");
                    // Anything committed elsewhere while we were not listening is in the database.
                    hub.resync_all();
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let Ok(payload) = message.get_payload::<String>() else { continue };
                        receive(&payload, &node, &hub, &seen, &metrics);
                    }
                    tracing::warn!("cluster bus connection lost; reconnecting");
                }
            }
            Err(err) => tracing::warn!(%err, "cannot reach the cluster bus; retrying"),
        }
        metrics.bus_errors.inc();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn receive(payload: &str, node: &str, hub: &Hub, seen: &Mutex<Seen>, metrics: &Metrics) {
    let Ok(message) = serde_json::from_str::<Incoming<'_>>(payload) else {
        tracing::warn!("ignoring a malformed bus message");
        return;
    };
    if message.n == node {
        return;
    }
    metrics.bus_lag.observe(now_us().saturating_sub(message.t) as f64 / 1e6);
    let orders = message.o;
    let events: Vec<Arc<Committed>> = message
        .e
        .into_iter()
        .enumerate()
        .filter_map(|(i, raw)| {
            let event: Event = serde_json::from_str(raw.get()).ok()?;
            let order = orders.get(i).copied().flatten();
            Some(Arc::new(Committed { event, json: raw.to_owned(), order }))
        })
        .collect();
    note_seen(hub, seen, &events);
    hub.dispatch(&events);
}

/// Replays, from the database, events of followed jobs that no bus message announced.
async fn sweeper(hub: Hub, seen: Arc<Mutex<Seen>>) {
    let mut ticker = tokio::time::interval(SWEEP_EVERY);
    loop {
        ticker.tick().await;
        seen.lock().unwrap_or_else(|e| e.into_inner()).retain(|job, (_, ws)| hub.interested(*job, ws));
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
