//! The raw floor: the least a server can do for the load generator's `idle` and
//! `fanout` scenarios on this machine, to put jobstream's and Node's figures
//! beside a physical limit.
//!
//! It speaks just enough Engine.IO v4 / Socket.IO v5 over WebSocket (open,
//! namespace connect, `subscribe:job` with its ack) and just enough of the
//! HTTP API to create a job, a step and write output (`api.running_job`,
//! `produce_at`). Nothing is stored. A write builds the event (the same fields
//! and size as jobstream's), encodes its WebSocket frame once, and writes that
//! frame to each subscriber's TCP socket from the writing thread with one
//! non-blocking `write`; only a socket whose kernel buffer is full gets a task,
//! which flushes its backlog and ends. An idle connection holds its TCP stream,
//! a reading task with tungstenite's read buffer, and nothing else.
//!
//! ```text
//! floor --listen 127.0.0.1:0     # prints "floor listening on http://ADDR"
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

/// One job: its next seq and its subscribers.
#[derive(Default)]
struct Job {
    seq: i64,
    subscribers: Vec<Arc<Conn>>,
}

#[derive(Default)]
struct State {
    jobs: Mutex<HashMap<String, Job>>,
    sids: AtomicU64,
}

/// A subscriber's TCP stream and what could not be written yet.
struct Conn {
    stream: Arc<TcpStream>,
    out: Mutex<Out>,
}

#[derive(Default)]
struct Out {
    backlog: Vec<u8>,
    flushing: bool,
    closed: bool,
}

impl Conn {
    /// Writes a whole frame now if the kernel takes it, else queues it behind
    /// the backlog and makes sure a flusher runs.
    fn send(self: &Arc<Self>, frame: &[u8]) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if out.closed {
            return;
        }
        if out.backlog.is_empty() {
            match self.stream.try_write(frame) {
                Ok(n) if n == frame.len() => return,
                Ok(n) => out.backlog.extend_from_slice(&frame[n..]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => out.backlog.extend_from_slice(frame),
                Err(_) => {
                    out.closed = true;
                    return;
                }
            }
        } else {
            out.backlog.extend_from_slice(frame);
        }
        if !out.flushing {
            out.flushing = true;
            tokio::spawn(self.clone().flush());
        }
    }

    async fn flush(self: Arc<Self>) {
        loop {
            if self.stream.writable().await.is_err() {
                break;
            }
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            match self.stream.try_write(&out.backlog) {
                Ok(n) => {
                    out.backlog.drain(..n);
                    if out.backlog.is_empty() {
                        out.flushing = false;
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.closed = true;
        out.flushing = false;
        out.backlog = Vec::new();
    }

    fn closed(&self) -> bool {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).closed
    }
}

/// An unmasked WebSocket text frame (RFC 6455 §5.2), as a server sends it.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// Reads through a shared stream (writes go through [`Conn::send`]).
struct Shared(Arc<TcpStream>);

impl AsyncRead for Shared {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.0.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            let unfilled = buf.initialize_unfilled();
            match self.0.try_read(unfilled) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Shared {
    /// tungstenite writes only to answer a close or a ping; the floor's own
    /// frames go through [`Conn::send`]. Dropped here.
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Serves `listen` until the process is killed.
pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await.context("bind")?;
    println!("floor listening on http://{}", listener.local_addr()?);
    let state = Arc::new(State::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let _ = connection(stream, state).await;
        });
    }
}

/// One TCP connection: a WebSocket (the request head says so) or HTTP/1.1 API calls.
async fn connection(stream: TcpStream, state: Arc<State>) -> anyhow::Result<()> {
    let mut peek = [0u8; 64];
    let n = stream.peek(&mut peek).await?;
    if peek[..n].starts_with(b"GET /socket.io/") {
        return websocket(stream, state).await;
    }
    let service = hyper::service::service_fn(move |req| api(req, state.clone()));
    hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await?;
    Ok(())
}

/// Reads the upgrade request by hand, answers 101, then speaks Socket.IO.
async fn websocket(stream: TcpStream, state: Arc<State>) -> anyhow::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        stream.readable().await?;
        match stream.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        anyhow::ensure!(head.len() < 16 * 1024, "request head too large");
    }
    let text = String::from_utf8_lossy(&head);
    let key = text
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key")))
        .map(|(_, v)| v.trim().to_owned())
        .context("no Sec-WebSocket-Key")?;
    let stream = Arc::new(stream);
    let conn = Arc::new(Conn { stream: stream.clone(), out: Mutex::default() });
    let accept = derive_accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    conn.send(answer.as_bytes());
    let sid = state.sids.fetch_add(1, Ordering::Relaxed);
    let open =
        format!(r#"0{{"sid":"f{sid}","upgrades":[],"pingInterval":600000,"pingTimeout":600000,"maxPayload":1000000}}"#);
    conn.send(&text_frame(open.as_bytes()));
    // Clients send only small packets: a 1 KiB read chunk (tungstenite's default is 128 KiB).
    let config = WebSocketConfig::default().read_buffer_size(1024);
    let mut ws = WebSocketStream::from_raw_socket(Shared(stream), Role::Server, Some(config)).await;
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else { continue };
        let text = text.as_str();
        if text.starts_with("40") {
            conn.send(&text_frame(format!(r#"40{{"sid":"s{sid}"}}"#).as_bytes()));
        } else if let Some(rest) = text.strip_prefix("42") {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let (ack_id, body) = rest.split_at(digits);
            let packet: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            let job_id = packet[1]["jobId"].as_str().unwrap_or_default().to_owned();
            let last_seq = {
                let mut jobs = state.jobs.lock().unwrap_or_else(|e| e.into_inner());
                let job = jobs.entry(job_id.clone()).or_default();
                job.subscribers.push(conn.clone());
                job.seq
            };
            let ack = json!([{ "ok": true, "job": { "id": job_id, "lastSeq": last_seq } }]);
            conn.send(&text_frame(format!("43{ack_id}{ack}").as_bytes()));
        }
    }
    conn.out.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
    Ok(())
}

fn reply(status: StatusCode, body: Value) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    Ok(response)
}

/// The API calls the load generator makes: create a job, set its status,
/// start a step, write output.
async fn api(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path: Vec<String> = req.uri().path().trim_matches('/').split('/').map(str::to_owned).collect();
    let body = match req.into_body().collect().await {
        Ok(body) => serde_json::from_slice::<Value>(&body.to_bytes()).unwrap_or(Value::Null),
        Err(_) => return reply(StatusCode::BAD_REQUEST, json!({})),
    };
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    match path.as_slice() {
        ["api", "v1", "jobs"] => {
            let id = Uuid::now_v7().to_string();
            let workspace = body["workspaceId"].clone();
            state.jobs.lock().unwrap_or_else(|e| e.into_inner()).entry(id.clone()).or_default().seq = 1;
            reply(StatusCode::CREATED, json!({ "id": id, "workspaceId": workspace, "lastSeq": 1 }))
        }
        ["api", "v1", "jobs", job, "status"] => {
            let seq = bump(&state, job);
            reply(StatusCode::OK, json!({ "event": { "seq": seq } }))
        }
        ["api", "v1", "jobs", job, "steps"] => {
            let seq = bump(&state, job);
            reply(StatusCode::CREATED, json!({ "step": { "id": Uuid::now_v7().to_string() }, "event": { "seq": seq } }))
        }
        ["api", "v1", "jobs", job, "steps", step, "output"] => {
            let chunk = body["chunk"].as_str().unwrap_or_default();
            let event = output(&state, job, step, chunk);
            reply(StatusCode::CREATED, json!({ "event": event }))
        }
        _ => reply(StatusCode::NOT_FOUND, json!({ "error": { "code": "not_found" } })),
    }
}

fn bump(state: &State, job: &str) -> i64 {
    let mut jobs = state.jobs.lock().unwrap_or_else(|e| e.into_inner());
    let job = jobs.entry(job.to_owned()).or_default();
    job.seq += 1;
    job.seq
}

/// Builds a `step.output` event like jobstream's, encodes its frame once, and
/// writes it to every subscriber of the job, in seq order (under the job lock).
fn output(state: &State, job_id: &str, step_id: &str, chunk: &str) -> Value {
    let mut jobs = state.jobs.lock().unwrap_or_else(|e| e.into_inner());
    let job = jobs.entry(job_id.to_owned()).or_default();
    job.seq += 1;
    let event = json!({
        "eventId": Uuid::now_v7().to_string(),
        "seq": job.seq,
        "type": "step.output",
        "jobId": job_id,
        "workspaceId": "bench",
        "stepId": step_id,
        "timestamp": "2026-11-30T00:00:00.000Z",
        "chunk": chunk,
        "stream": "stdout",
    });
    let frame = text_frame(format!(r#"42["step:output",{event}]"#).as_bytes());
    job.subscribers.retain(|conn| !conn.closed());
    for conn in &job.subscribers {
        conn.send(&frame);
    }
    event
}
