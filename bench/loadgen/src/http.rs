//! The producer side: HTTP writes to jobstream (or the Node reference) at a
//! target rate or as fast as possible, with accepted events and write latency.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::stats::{now_us, Histogram};

/// An HTTP API client with a pooled connection set.
#[derive(Clone, Debug)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: Arc<str>,
    auth: Arc<str>,
}

/// Write-side measurements.
#[derive(Debug, Default)]
pub struct Writes {
    /// Events the server accepted (2xx).
    pub accepted: AtomicU64,
    /// Requests refused or failed.
    pub failed: AtomicU64,
    /// Request latency.
    pub latency: Histogram,
}

impl Api {
    /// A client for `base` (`http://127.0.0.1:3000`) with a bearer token.
    pub fn new(base: &str, token: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build(connector);
        Self { client, base: base.trim_end_matches('/').into(), auth: format!("Bearer {token}").into() }
    }

    /// Sends a request and returns the status and the JSON answer.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", &*self.auth)
            .header("content-type", "application/json")
            .body(Full::new(bytes))?;
        let response = self.client.request(request).await.context("HTTP request")?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// A GET whose answer is text (`/metrics`), or `None` unless it answers 200.
    pub async fn get_text(&self, path: &str) -> anyhow::Result<Option<String>> {
        let request = Request::builder()
            .method("GET")
            .uri(format!("{}{path}", self.base))
            .header("authorization", &*self.auth)
            .body(Full::new(Bytes::new()))?;
        let response = self.client.request(request).await.context("HTTP request")?;
        let ok = response.status().as_u16() == 200;
        let body = response.into_body().collect().await?.to_bytes();
        Ok(ok.then(|| String::from_utf8_lossy(&body).into_owned()))
    }

    /// A POST that must answer 2xx; returns the JSON answer.
    pub async fn post_ok(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, answer) = self.call("POST", path, Some(&body)).await?;
        if !(200..300).contains(&status) {
            return Err(anyhow!("POST {path}: {status} {answer}"));
        }
        Ok(answer)
    }

    /// Creates a job in `workspace`, moves it to running and starts one step: (job id, step id, last seq).
    pub async fn running_job(&self, workspace: &str) -> anyhow::Result<(String, String, i64)> {
        let job = self.post_ok("/api/v1/jobs", json!({ "workspaceId": workspace, "type": "bench" })).await?;
        let id = job["id"].as_str().ok_or_else(|| anyhow!("no job id in {job}"))?.to_owned();
        for status in ["queued", "running"] {
            self.post_ok(&format!("/api/v1/jobs/{id}/status"), json!({ "status": status })).await?;
        }
        let step = self
            .post_ok(
                &format!("/api/v1/jobs/{id}/steps"),
                json!({ "name": "load", "phase": "execution", "stepType": "command" }),
            )
            .await?;
        let step_id = step["step"]["id"].as_str().ok_or_else(|| anyhow!("no step id in {step}"))?.to_owned();
        let seq = step["event"]["seq"].as_i64().unwrap_or(4);
        Ok((id, step_id, seq))
    }

    /// Writes `batch` output events (one request) carrying their send time; returns the newest seq.
    pub async fn write_output(&self, job: &str, step: &str, batch: usize) -> anyhow::Result<i64> {
        let chunk = format!("t={}", now_us());
        if batch <= 1 {
            let answer =
                self.post_ok(&format!("/api/v1/jobs/{job}/steps/{step}/output"), json!({ "chunk": chunk })).await?;
            return Ok(answer["event"]["seq"].as_i64().unwrap_or(0));
        }
        let events: Vec<Value> =
            (0..batch).map(|_| json!({ "jobId": job, "kind": "output", "stepId": step, "chunk": chunk })).collect();
        let answer = self.post_ok("/api/v1/events/batch", json!({ "events": events })).await?;
        Ok(answer["events"].as_array().and_then(|a| a.last()).and_then(|e| e["seq"].as_i64()).unwrap_or(0))
    }
}

/// One job's output stream to write to.
#[derive(Debug, Clone)]
pub struct Stream {
    /// The API.
    pub api: Api,
    /// The job.
    pub job: String,
    /// Its running step.
    pub step: String,
}

/// Writes to one job at `rate` events/s for `duration`, one event per request,
/// with up to 64 requests in flight. Records the newest acknowledged seq in `target`.
pub async fn produce_at(
    stream: Stream,
    rate: f64,
    duration: Duration,
    writes: Arc<Writes>,
    target: Option<Arc<AtomicI64>>,
) {
    let Stream { api, job, step } = stream;
    let batch = 1;
    let interval = Duration::from_secs_f64(batch as f64 / rate.max(0.001));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
    let end = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < end {
        ticker.tick().await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        let (api, job, step, writes, target) = (api.clone(), job.clone(), step.clone(), writes.clone(), target.clone());
        tasks.spawn(async move {
            let started = Instant::now();
            match api.write_output(&job, &step, batch).await {
                Ok(seq) => {
                    writes.latency.record(started.elapsed());
                    writes.accepted.fetch_add(batch as u64, Ordering::Relaxed);
                    if let Some(target) = target {
                        target.fetch_max(seq, Ordering::Relaxed);
                    }
                }
                Err(_) => {
                    writes.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// Closed loop: `workers` writers each writing as fast as answers come, for `duration`.
pub async fn produce_flat_out(
    api: Api,
    jobs: Vec<(String, String)>,
    batch: usize,
    duration: Duration,
    writes: Arc<Writes>,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let timer = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
        }
    });
    produce_until(api, jobs, batch, stop, writes).await;
    timer.abort();
}

/// As [`produce_flat_out`], until `stop` is set (each writer finishes the request it has in flight).
pub async fn produce_until(
    api: Api,
    jobs: Vec<(String, String)>,
    batch: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    writes: Arc<Writes>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for (job, step) in jobs {
        let (api, writes, stop) = (api.clone(), writes.clone(), stop.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match api.write_output(&job, &step, batch).await {
                    Ok(_) => {
                        writes.latency.record(started.elapsed());
                        writes.accepted.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        writes.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
