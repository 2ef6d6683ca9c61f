//! A minimal Socket.IO v5 / Engine.IO v4 client over WebSocket, built for load:
//! one task and one socket per client, events parsed without copying, and
//! delivery accounting per job (next seq, duplicate, jump).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::stats::{now_us, Delivery};

/// A subscription a client makes after connecting.
#[derive(Debug, Clone)]
pub enum Sub {
    /// `subscribe:job`.
    Job(String),
    /// `subscribe:job` with `since` on the first subscribe (a replay).
    JobSince(String, i64),
    /// `subscribe:workspace:jobs`.
    Workspace(String),
}

/// The producer's newest acknowledged seq per job: a reconnecting client has
/// caught up once it has seen that seq.
pub type Targets = Arc<HashMap<String, AtomicI64>>;

/// One simulated client.
#[derive(Debug, Clone)]
pub struct Client {
    /// The server.
    pub addr: SocketAddr,
    /// The local address to connect from (spreads ephemeral ports over 127.0.0.x).
    pub source: IpAddr,
    /// The bearer token.
    pub token: Arc<str>,
    /// What to subscribe to.
    pub subs: Vec<Sub>,
    /// Force-close the connection after a random time in this range, then reconnect with `since`.
    pub jitter: Option<(Duration, Duration)>,
    /// For replay latency (jitter).
    pub targets: Option<Targets>,
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(rename = "jobId", borrow)]
    job_id: std::borrow::Cow<'a, str>,
    seq: i64,
    #[serde(default, borrow)]
    chunk: Option<std::borrow::Cow<'a, str>>,
}

/// `["name", body]`, or `["name", body, "offset"]` from a socket.io server with
/// connection state recovery.
#[derive(Deserialize)]
struct EventPacket<'a>(
    #[allow(dead_code)] &'a str,
    #[serde(borrow)] Body<'a>,
    #[serde(default, borrow)] Option<std::borrow::Cow<'a, str>>,
);

type Ws = WebSocketStream<tokio::net::TcpStream>;

/// Per-client cursors: the last seq seen per job, and the socket.io recovery
/// session (`pid`, last offset) where the server offers one.
#[derive(Default)]
struct Cursors {
    last: HashMap<String, i64>,
    pid: Option<String>,
    offset: Option<String>,
}

impl Cursors {
    fn on_event(&mut self, text: &str, delivery: &Delivery) {
        let Ok(EventPacket(_, body, offset)) = serde_json::from_str::<EventPacket<'_>>(text) else { return };
        if let Some(offset) = offset {
            self.offset = Some(offset.into_owned());
        }
        if let Some(sent) =
            body.chunk.as_deref().and_then(|c| c.strip_prefix("t=")).and_then(|t| t.trim().parse::<u64>().ok())
        {
            delivery.latency.record_us(now_us().saturating_sub(sent));
        }
        match self.last.get_mut(body.job_id.as_ref()) {
            None => {
                delivery.received.fetch_add(1, Ordering::Relaxed);
                self.last.insert(body.job_id.into_owned(), body.seq);
            }
            Some(last) if body.seq <= *last => {
                delivery.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Some(last) => {
                if body.seq > *last + 1 {
                    delivery.out_of_order.fetch_add(1, Ordering::Relaxed);
                    delivery.skipped.fetch_add((body.seq - *last - 1) as u64, Ordering::Relaxed);
                }
                delivery.received.fetch_add(1, Ordering::Relaxed);
                *last = body.seq;
            }
        }
    }

    /// Takes the subscription ack's snapshot seqs as starting points.
    fn on_ack(&mut self, ack: &Value) {
        let mut start = |job: &Value| {
            if let (Some(id), Some(seq)) =
                (job.get("id").and_then(Value::as_str), job.get("lastSeq").and_then(Value::as_i64))
            {
                self.last.entry(id.to_owned()).or_insert(seq);
            }
        };
        if let Some(job) = ack.get("job") {
            start(job);
        }
        for job in ack.get("jobs").and_then(Value::as_array).into_iter().flatten() {
            start(job);
        }
    }
}

async fn open(client: &Client, cursors: &mut Cursors) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(client.source, 0)).context("bind source address")?;
    let stream = socket.connect(client.addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", client.addr);
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.context("websocket handshake")?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        bail!("expected an engine.io open packet, got {open:?}");
    }
    let mut auth = serde_json::json!({ "token": &*client.token });
    if let (Some(pid), Some(offset)) = (&cursors.pid, &cursors.offset) {
        auth["pid"] = pid.clone().into();
        auth["offset"] = offset.clone().into();
    }
    ws.send(Message::text(format!("40{auth}"))).await?;
    loop {
        let packet = next_text(&mut ws).await?;
        match packet.as_bytes() {
            [b'4', b'0', ..] => {
                let connect: Value = serde_json::from_str(&packet[2..]).unwrap_or(Value::Null);
                if let Some(pid) = connect.get("pid").and_then(Value::as_str) {
                    cursors.pid = Some(pid.to_owned());
                }
                return Ok(ws);
            }
            [b'4', b'4', ..] => bail!("connect refused: {packet}"),
            [b'2'] => ws.send(Message::text("3")).await?,
            _ => {}
        }
    }
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | None => bail!("connection closed"),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err.into()),
        }
    }
}

/// Runs a client until `stop` turns true. `ready` is told once the first
/// subscriptions are acked.
pub async fn run(
    client: Client,
    delivery: Arc<Delivery>,
    ready: tokio::sync::mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
) {
    let mut cursors = Cursors::default();
    let mut ready = Some(ready);
    let mut rng_state = (client.source.to_string().len() as u64) ^ now_us();
    let mut attempt = 0u32;
    while !*stop.borrow() {
        let reconnected = ready.is_none();
        let started = Instant::now();
        let catch_up: Vec<(String, i64)> = match (&client.targets, reconnected) {
            (Some(targets), true) => {
                targets.iter().map(|(job, seq)| (job.clone(), seq.load(Ordering::Relaxed))).collect()
            }
            _ => Vec::new(),
        };
        let mut ws = match open(&client, &mut cursors).await {
            Ok(ws) => ws,
            Err(_) => {
                delivery.errors.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(20)))).await;
                continue;
            }
        };
        attempt = 0;
        let deadline = client.jitter.map(|(min, max)| {
            rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let span = max.saturating_sub(min).as_millis().max(1) as u64;
            tokio::time::Instant::now() + min + Duration::from_millis((rng_state >> 33) % span)
        });
        if let Err(err) =
            session(&client, &mut ws, &mut cursors, &delivery, &mut ready, &mut stop, deadline, &catch_up, started)
                .await
        {
            let _ = err;
            delivery.errors.fetch_add(1, Ordering::Relaxed);
        }
        if deadline.is_some() && !*stop.borrow() {
            delivery.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let _ = ws.close(None).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    client: &Client,
    ws: &mut Ws,
    cursors: &mut Cursors,
    delivery: &Delivery,
    ready: &mut Option<tokio::sync::mpsc::Sender<()>>,
    stop: &mut watch::Receiver<bool>,
    deadline: Option<tokio::time::Instant>,
    catch_up: &[(String, i64)],
    started: Instant,
) -> anyhow::Result<()> {
    let mut pending_acks = 0usize;
    let subscribed = Instant::now();
    for (i, sub) in client.subs.iter().enumerate() {
        let (event, payload) = match sub {
            Sub::Job(job) => {
                let mut payload = serde_json::json!({ "jobId": job });
                if let Some(seq) = cursors.last.get(job) {
                    payload["since"] = (*seq).into();
                }
                ("subscribe:job", payload)
            }
            Sub::JobSince(job, since) => {
                // The replay starts after `since`: the ack's `lastSeq` is where it ends, not where it starts.
                let since = *cursors.last.entry(job.clone()).or_insert(*since);
                ("subscribe:job", serde_json::json!({ "jobId": job, "since": since }))
            }
            Sub::Workspace(ws) => ("subscribe:workspace:jobs", serde_json::json!({ "workspaceId": ws })),
        };
        ws.send(Message::text(format!("42{}{}", i + 1, serde_json::json!([event, payload])))).await?;
        pending_acks += 1;
    }
    let mut waiting: Vec<(String, i64)> = catch_up
        .iter()
        .filter(|(job, target)| cursors.last.get(job).is_none_or(|seen| seen < target))
        .cloned()
        .collect();
    let mut replay_pending = !catch_up.is_empty();
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
    loop {
        let message = tokio::select! {
            message = ws.next() => message,
            _ = stop.changed() => return Ok(()),
            () = tokio::time::sleep_until(deadline.unwrap_or(far)) => return Ok(()),
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => return Err(anyhow!("closed by the server")),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
        };
        let text = text.as_str();
        if let Some(event) = text.strip_prefix("42") {
            let json = event.trim_start_matches(|c: char| c.is_ascii_digit());
            cursors.on_event(json, delivery);
            if !waiting.is_empty() {
                waiting.retain(|(job, target)| cursors.last.get(job).is_none_or(|seen| seen < target));
                if waiting.is_empty() && replay_pending {
                    replay_pending = false;
                    delivery.replay.record(started.elapsed());
                }
            }
        } else if let Some(ack) = text.strip_prefix("43") {
            let json = ack.trim_start_matches(|c: char| c.is_ascii_digit());
            let value: Value = serde_json::from_str(json).unwrap_or(Value::Null);
            let body = value.get(0).cloned().unwrap_or(Value::Null);
            if body.get("ok") != Some(&Value::Bool(true)) {
                return Err(anyhow!("subscription refused: {body}"));
            }
            delivery.acks.record(subscribed.elapsed());
            delivery.ack_bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
            cursors.on_ack(&body);
            pending_acks = pending_acks.saturating_sub(1);
            if pending_acks == 0 && waiting.is_empty() && replay_pending {
                replay_pending = false;
                delivery.replay.record(started.elapsed());
            }
            if pending_acks == 0 {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(()).await;
                }
            }
        } else if text == "2" {
            ws.send(Message::text("3")).await?;
        } else if text.starts_with("41") || text.starts_with('1') {
            return Err(anyhow!("disconnected by the server"));
        }
    }
}
