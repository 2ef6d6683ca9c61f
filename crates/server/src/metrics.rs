//! Prometheus metrics at `/metrics`, in the text exposition format, kept with
//! atomics (no registry crate): connections, subscriptions by room kind, events
//! appended and delivered, catch-ups, bus lag, database latency, HTTP requests.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A latency histogram in seconds.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation, in seconds.
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Records the time since `start`.
    pub fn since(&self, start: Instant) {
        self.observe(start.elapsed().as_secs_f64());
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// The process's metrics. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Inner>);

/// The metrics themselves.
#[derive(Debug, Default)]
pub struct Inner {
    /// Socket.IO connections open now.
    pub connections: AtomicI64,
    /// Events committed through this node.
    pub appended: Counter,
    /// Database write transactions (one per write request or batch).
    pub db_write: Histogram,
    /// Database reads of request handlers.
    pub db_read: Histogram,
    /// Time from publication on the bus to receipt here.
    pub bus_lag: Histogram,
    /// Bus publish or connection failures.
    pub bus_errors: Counter,
    /// HTTP requests by (route, method, status).
    http: Mutex<HashMap<(String, String, u16), u64>>,
    /// HTTP request latency.
    pub http_latency: Histogram,
}

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Metrics {
    fn count_request(&self, route: String, method: String, status: u16) {
        let mut http = self.0.http.lock().unwrap_or_else(|e| e.into_inner());
        *http.entry((route, method, status)).or_insert(0) += 1;
    }
}

/// Middleware: counts requests by matched route, method and status.
pub async fn track_http(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    metrics.http_latency.since(start);
    metrics.count_request(route, method, response.status().as_u16());
    response
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `GET /metrics`.
pub async fn render(State(app): State<AppState>) -> impl IntoResponse {
    let m = &app.metrics;
    let stats = app.hub.stats();
    let (subscribers, job_subs, workspace_subs) = app.hub.subscription_counts();
    let mut out = String::with_capacity(4096);
    family(&mut out, "jobstream_connections", "gauge", "Socket.IO connections open now.");
    let _ = writeln!(out, "jobstream_connections {}", m.connections.load(Ordering::Relaxed));
    family(&mut out, "jobstream_subscribers", "gauge", "Subscribers (sockets and SSE streams) with a delivery worker.");
    let _ = writeln!(out, "jobstream_subscribers {subscribers}");
    family(&mut out, "jobstream_subscriptions", "gauge", "Subscriptions by room kind.");
    let _ = writeln!(out, "jobstream_subscriptions{{room=\"job\"}} {job_subs}");
    let _ = writeln!(out, "jobstream_subscriptions{{room=\"workspace\"}} {workspace_subs}");
    family(&mut out, "jobstream_events_appended_total", "counter", "Events committed through this node.");
    let _ = writeln!(out, "jobstream_events_appended_total {}", m.appended.get());
    family(
        &mut out,
        "jobstream_events_delivered_total",
        "counter",
        "Events sent to subscribers (each subscriber counts once).",
    );
    let _ = writeln!(out, "jobstream_events_delivered_total {}", stats.delivered.load(Ordering::Relaxed));
    family(
        &mut out,
        "jobstream_catch_ups_total",
        "counter",
        "Reads from the database to fill a gap, replay, or resynchronise a subscriber.",
    );
    let _ = writeln!(out, "jobstream_catch_ups_total {}", stats.catch_ups.load(Ordering::Relaxed));
    family(
        &mut out,
        "jobstream_mailbox_overflows_total",
        "counter",
        "Subscribers switched to catching up from the database because they fell behind.",
    );
    let _ = writeln!(out, "jobstream_mailbox_overflows_total {}", stats.overflows.load(Ordering::Relaxed));
    family(
        &mut out,
        "jobstream_stalled_subscribers_total",
        "counter",
        "Subscribers closed because they stopped reading.",
    );
    let _ = writeln!(out, "jobstream_stalled_subscribers_total {}", stats.stalls.load(Ordering::Relaxed));
    family(
        &mut out,
        "jobstream_bus_lag_seconds",
        "histogram",
        "Time from publication on the cluster bus to receipt on this node.",
    );
    m.bus_lag.render(&mut out, "jobstream_bus_lag_seconds", "");
    family(
        &mut out,
        "jobstream_bus_errors_total",
        "counter",
        "Cluster bus publish or connection failures (delivery is repaired from the database).",
    );
    let _ = writeln!(out, "jobstream_bus_errors_total {}", m.bus_errors.get());
    family(&mut out, "jobstream_db_seconds", "histogram", "Database latency of request handlers, by operation.");
    m.db_write.render(&mut out, "jobstream_db_seconds", "op=\"write\"");
    m.db_read.render(&mut out, "jobstream_db_seconds", "op=\"read\"");
    family(&mut out, "jobstream_http_requests_total", "counter", "HTTP requests by route, method and status.");
    {
        let http = m.0.http.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<_> = http.iter().collect();
        rows.sort();
        for ((route, method, status), count) in rows {
            let _ = writeln!(
                out,
                "jobstream_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {count}"
            );
        }
    }
    family(
        &mut out,
        "jobstream_http_request_seconds",
        "histogram",
        "HTTP request latency (to the response head for streams).",
    );
    m.http_latency.render(&mut out, "jobstream_http_request_seconds", "");
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}

/// Counts committed events on their way to the real sink.
#[derive(Debug)]
pub struct CountingSink<S> {
    /// Where events go.
    pub inner: S,
    /// Where they are counted.
    pub metrics: Metrics,
}

impl<S: jobstream_job_events::EventSink + std::fmt::Debug> jobstream_job_events::EventSink for CountingSink<S> {
    fn publish(&self, events: &[Arc<jobstream_job_events::Committed>]) {
        self.metrics.appended.add(events.len() as u64);
        self.inner.publish(events);
    }
}
