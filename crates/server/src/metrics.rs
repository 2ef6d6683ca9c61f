//! Prometheus metrics at `/metrics`, in the Prometheus text exposition format
//! (version 0.0.4), kept with `prometheus-client`: connections, subscriptions by
//! room kind, events appended and delivered, catch-ups, bus lag, database
//! latency, HTTP requests.
//!
//! Every label takes its value from a bounded set, never from what a client
//! sends: the route is the matched route template (or `unmatched`), the method
//! one of the standard methods (or `other`), the status the numeric code.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter as RawCounter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge as RawGauge};
use prometheus_client::metrics::histogram::Histogram as RawHistogram;
use prometheus_client::registry::Registry;

use crate::app::AppState;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// The `route` label of requests that matched no route.
const UNMATCHED: &str = "unmatched";

/// The `method` label of requests whose method is not a standard one.
const OTHER_METHOD: &str = "other";

/// A monotonically increasing count.
#[derive(Debug, Default, Clone)]
pub struct Counter(RawCounter);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }
}

/// A count added to at the rate of deliveries (once per event per socket),
/// from every thread that delivers: one cache line per stripe, the stripe
/// chosen by the adding thread, summed when scraped. A single atomic is one
/// cache line that every delivering thread takes in turn.
#[derive(Debug, Clone, Default)]
pub struct StripedCounter(Arc<[Stripe; STRIPES]>);

/// Stripes of a [`StripedCounter`]: a few per core of a small server.
const STRIPES: usize = 8;

/// One stripe, alone on its cache line (128 bytes: the line pair that
/// x86-64's adjacent-line prefetcher fetches together).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(std::sync::atomic::AtomicU64);

impl StripedCounter {
    /// Adds `n` to the calling thread's stripe.
    pub fn add(&self, n: u64) {
        thread_local! {
            static KEY: u8 = const { 0 };
        }
        // The address of a thread-local is the thread's own: mixed, its top
        // bits pick a stripe (threads may share one; that is correct, only
        // slower).
        let stripe = KEY.with(|key| (std::ptr::from_ref(key) as usize).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 61);
        self.0[stripe % STRIPES].0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// The sum of the stripes.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|stripe| stripe.0.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }
}

/// A value that goes up and down. Dereferences to its atomic, so it is moved
/// with `fetch_add` and `fetch_sub`.
#[derive(Debug, Default, Clone)]
pub struct Gauge(RawGauge);

impl std::ops::Deref for Gauge {
    type Target = AtomicI64;
    fn deref(&self) -> &AtomicI64 {
        self.0.inner()
    }
}

/// A latency histogram in seconds.
#[derive(Debug, Clone)]
pub struct Histogram(RawHistogram);

impl Default for Histogram {
    fn default() -> Self {
        Self(new_histogram())
    }
}

impl Histogram {
    /// Records one observation, in seconds.
    pub fn observe(&self, seconds: f64) {
        self.0.observe(seconds);
    }

    /// Records the time since `start`.
    pub fn since(&self, start: Instant) {
        self.observe(start.elapsed().as_secs_f64());
    }
}

fn new_histogram() -> RawHistogram {
    RawHistogram::new(BUCKETS)
}

/// The cluster bus reports its errors and lag here.
impl jobstream_delivery::bus::BusMetrics for Metrics {
    fn error(&self) {
        self.bus_errors.inc();
    }

    fn lag(&self, seconds: f64) {
        self.bus_lag.observe(seconds);
    }
}

/// The labels of `jobstream_http_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    /// The matched route template, or `unmatched`.
    route: String,
    /// A standard method, or `other`.
    method: &'static str,
    /// The response's status code.
    status: u16,
}

/// A label set of one label with a fixed value.
type FixedLabel = [(&'static str, &'static str); 1];

/// The process's metrics. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Inner>);

/// The metrics themselves, and the registry that exposes them.
#[derive(Debug)]
pub struct Inner {
    /// Socket.IO connections open now.
    pub connections: Gauge,
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
    /// Events written straight to a socket's WebSocket, encoded once for all sockets.
    pub socket_writes_direct: StripedCounter,
    /// TCP connections open now.
    pub tcp_connections: Gauge,
    /// Refusals by the limit that refused (`crate::limits`).
    refusals: Family<FixedLabel, RawCounter>,
    /// Clients cut off for being slow, by what they were slow to send.
    timeouts: Family<FixedLabel, RawCounter>,
    /// HTTP requests by (route, method, status).
    http: Family<HttpLabels, RawCounter>,
    /// HTTP request latency.
    pub http_latency: Histogram,
    /// Everything above, by exposed name.
    registry: Registry,
}

impl Default for Inner {
    fn default() -> Self {
        let connections = Gauge::default();
        let appended = Counter::default();
        let db: Family<FixedLabel, RawHistogram> = Family::new_with_constructor(new_histogram);
        let db_write = Histogram(db.get_or_create_owned(&[("op", "write")]));
        let db_read = Histogram(db.get_or_create_owned(&[("op", "read")]));
        let bus_lag = Histogram::default();
        let bus_errors = Counter::default();
        let tcp_connections = Gauge::default();
        let socket_writes_direct = StripedCounter::default();
        // Every label value exists from the start, so that rates work from the first refusal.
        let refusals = Family::<FixedLabel, RawCounter>::default();
        for refusal in Refusal::ALL {
            let _ = refusals.get_or_create(&[("limit", refusal.label())]);
        }
        let timeouts = Family::<FixedLabel, RawCounter>::default();
        for timeout in Timeout::ALL {
            let _ = timeouts.get_or_create(&[("kind", timeout.label())]);
        }
        let http = Family::<HttpLabels, RawCounter>::default();
        let http_latency = Histogram::default();

        // Help texts are given without their final period: the registry adds it.
        let mut registry = Registry::default();
        registry.register("jobstream_connections", "Socket.IO connections open now", connections.0.clone());
        registry.register("jobstream_events_appended", "Events committed through this node", appended.0.clone());
        registry.register(
            "jobstream_bus_lag_seconds",
            "Time from publication on the cluster bus to receipt on this node",
            bus_lag.0.clone(),
        );
        registry.register(
            "jobstream_bus_errors",
            "Cluster bus publish or connection failures (delivery is repaired from the database)",
            bus_errors.0.clone(),
        );
        registry.register("jobstream_db_seconds", "Database latency of request handlers, by operation", db);
        registry.register("jobstream_http_requests", "HTTP requests by route, method and status", http.clone());
        registry.register(
            "jobstream_http_request_seconds",
            "HTTP request latency (to the response head for streams)",
            http_latency.0.clone(),
        );
        registry.register(
            "jobstream_tcp_connections",
            "TCP connections open now (HTTP, long-polling, SSE and WebSocket)",
            tcp_connections.0.clone(),
        );
        registry.register("jobstream_refusals", "Refusals by the limit that refused", refusals.clone());
        registry.register(
            "jobstream_timeouts",
            "Clients cut off for sending a request head or body too slowly",
            timeouts.clone(),
        );
        Self {
            connections,
            appended,
            db_write,
            db_read,
            bus_lag,
            bus_errors,
            tcp_connections,
            socket_writes_direct,
            refusals,
            timeouts,
            http,
            http_latency,
            registry,
        }
    }
}

/// A limit that refused something (`crate::limits`), the `limit` label of
/// `jobstream_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A TCP connection past the connection limit.
    Connections,
    /// A Socket.IO connection past the limit per token subject.
    SubjectConnections,
    /// A subscribe past the limit per socket.
    Subscriptions,
    /// A write past the rate per token subject.
    WriteRate,
}

impl Refusal {
    /// Every refusal.
    pub const ALL: [Self; 4] = [Self::Connections, Self::SubjectConnections, Self::Subscriptions, Self::WriteRate];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::SubjectConnections => "subject_connections",
            Self::Subscriptions => "subscriptions",
            Self::WriteRate => "write_rate",
        }
    }
}

/// What a client was too slow to send, the `kind` label of `jobstream_timeouts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// A request head (also an idle kept-alive connection without a next request).
    Header,
    /// A request body.
    Body,
}

impl Timeout {
    /// Every kind.
    pub const ALL: [Self; 2] = [Self::Header, Self::Body];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Body => "body",
        }
    }
}

impl Metrics {
    /// Counts a refusal.
    pub fn refused(&self, refusal: Refusal) {
        self.0.refusals.get_or_create(&[("limit", refusal.label())]).inc();
    }

    /// Counts a client cut off for slowness.
    pub fn timed_out(&self, timeout: Timeout) {
        self.0.timeouts.get_or_create(&[("kind", timeout.label())]).inc();
    }
}

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Metrics {
    fn count_request(&self, route: String, method: &'static str, status: u16) {
        self.0.http.get_or_create(&HttpLabels { route, method, status }).inc();
    }
}

/// The `method` label of a request: the method if it is a standard one, else `other`.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => OTHER_METHOD,
    }
}

/// Middleware: counts requests by matched route template, method and status.
pub async fn track_http(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| UNMATCHED.to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let start = Instant::now();
    let response = next.run(request).await;
    metrics.http_latency.since(start);
    metrics.count_request(route, method, response.status().as_u16());
    response
}

/// The values the delivery hub keeps, and the direct-write count (summed
/// from its stripes), read at scrape time.
fn hub_registry(app: &AppState) -> Registry {
    let stats = app.hub.stats();
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    let (subscribers, job_subs, workspace_subs) = app.hub.subscription_counts();
    let subscriptions = Family::<FixedLabel, RawGauge>::default();
    subscriptions.get_or_create(&[("room", "job")]).set(saturating_i64(job_subs));
    subscriptions.get_or_create(&[("room", "workspace")]).set(saturating_i64(workspace_subs));

    let mut registry = Registry::default();
    registry.register(
        "jobstream_subscribers",
        "Subscribers (sockets and SSE streams with at least one subscription)",
        ConstGauge::new(saturating_i64(subscribers)),
    );
    registry.register("jobstream_subscriptions", "Subscriptions by room kind", subscriptions);
    registry.register(
        "jobstream_events_delivered",
        "Events sent to subscribers (each subscriber counts once)",
        ConstCounter::new(load(&stats.delivered)),
    );
    registry.register(
        "jobstream_socket_writes_direct",
        "Events written straight to a socket's WebSocket, encoded once for all sockets (the others go through the socket's queue)",
        ConstCounter::new(app.metrics.socket_writes_direct.get()),
    );
    registry.register(
        "jobstream_events_delivered_fast",
        "Of the events delivered, those written straight to a caught-up subscriber (no queue, no task woken)",
        ConstCounter::new(load(&stats.fast)),
    );
    registry.register(
        "jobstream_subscribers_behind",
        "Subscribers handled by a delivery worker now (setting up, catching up, or waiting on a full outlet)",
        ConstGauge::new(i64::try_from(load(&stats.behind)).unwrap_or(i64::MAX)),
    );
    registry.register(
        "jobstream_catch_ups",
        "Reads from the database to fill a gap, replay, or resynchronise a subscriber",
        ConstCounter::new(load(&stats.catch_ups)),
    );
    registry.register(
        "jobstream_mailbox_overflows",
        "Subscribers switched to catching up from the database because they fell behind",
        ConstCounter::new(load(&stats.overflows)),
    );
    registry.register(
        "jobstream_stalled_subscribers",
        "Subscribers closed because they stopped reading",
        ConstCounter::new(load(&stats.stalls)),
    );
    registry.register(
        "jobstream_cursors",
        "Per-job positions held by all subscribers (grows with followed and active jobs, not history)",
        ConstGauge::new(i64::try_from(load(&stats.cursors)).unwrap_or(i64::MAX)),
    );
    let pruned = app.writer.retention_stats();
    registry.register(
        "jobstream_pruned_jobs",
        "Finished jobs deleted by retention",
        ConstCounter::new(load(&pruned.jobs)),
    );
    registry.register(
        "jobstream_pruned_events",
        "Events deleted by retention",
        ConstCounter::new(load(&pruned.events)),
    );
    registry
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `GET /metrics`: Prometheus text exposition. No token needed (keep the port private).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "The metrics in the Prometheus text format", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 500, description = "The metrics could not be encoded (no body)", content_type = "text/plain"),
    ),
)]
pub async fn render(State(app): State<AppState>) -> Response {
    let mut out = String::with_capacity(8192);
    let encoded = prometheus_text::encode(&mut out, &app.metrics.registry)
        .and_then(|()| prometheus_text::encode(&mut out, &hub_registry(&app)));
    match encoded {
        Ok(()) => ([(CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], out).into_response(),
        Err(err) => {
            tracing::error!(%err, "encoding metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
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

    fn uncertain(&self, jobs: &[uuid::Uuid]) {
        self.inner.uncertain(jobs);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_counting_sink_passes_on_writes_of_unknown_outcome() {
        use jobstream_job_events::EventSink;
        #[derive(Debug, Default)]
        struct Told(std::sync::Mutex<Vec<uuid::Uuid>>);
        impl EventSink for Told {
            fn publish(&self, _: &[Arc<jobstream_job_events::Committed>]) {}
            fn uncertain(&self, jobs: &[uuid::Uuid]) {
                self.0.lock().unwrap().extend_from_slice(jobs);
            }
        }
        let sink = CountingSink { inner: Told::default(), metrics: Metrics::default() };
        let job = uuid::Uuid::now_v7();
        sink.uncertain(&[job]);
        assert_eq!(*sink.inner.0.lock().unwrap(), vec![job]);
    }

    #[test]
    fn a_striped_counter_sums_what_every_thread_added() {
        let counter = StripedCounter::default();
        std::thread::scope(|scope| {
            for n in 1..=16u64 {
                let counter = counter.clone();
                scope.spawn(move || {
                    for _ in 0..1000 {
                        counter.add(n);
                    }
                    counter.inc();
                });
            }
        });
        assert_eq!(counter.get(), 1000 * (1..=16).sum::<u64>() + 16);
    }

    #[test]
    fn standard_methods_keep_their_name_and_any_other_is_counted_as_other() {
        for name in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            let method = Method::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(method_label(&method), name);
        }
        for name in ["get", "CONNECT", "TRACE", "PROPFIND", "XYZZY", "G3T"] {
            let method = Method::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(method_label(&method), OTHER_METHOD);
        }
    }

    #[test]
    fn the_registry_exposes_every_request_side_family_with_its_buckets() {
        let metrics = Metrics::default();
        metrics.connections.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        metrics.appended.add(3);
        metrics.db_write.observe(0.003);
        metrics.count_request("/healthz".to_owned(), "GET", 200);
        metrics.refused(Refusal::WriteRate);
        metrics.timed_out(Timeout::Header);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &metrics.registry).unwrap();
        for line in [
            "# TYPE jobstream_connections gauge",
            "jobstream_connections 2",
            "# HELP jobstream_events_appended_total Events committed through this node.",
            "# TYPE jobstream_events_appended_total counter",
            "jobstream_events_appended_total 3",
            "# TYPE jobstream_db_seconds histogram",
            "jobstream_db_seconds_bucket{op=\"write\",le=\"0.0025\"} 0",
            "jobstream_db_seconds_bucket{op=\"write\",le=\"0.005\"} 1",
            "jobstream_db_seconds_bucket{op=\"write\",le=\"+Inf\"} 1",
            "jobstream_db_seconds_count{op=\"read\"} 0",
            "# TYPE jobstream_http_requests_total counter",
            "jobstream_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 1",
            "# TYPE jobstream_http_request_seconds histogram",
            "jobstream_http_request_seconds_bucket{le=\"1\"} 0",
            "# TYPE jobstream_tcp_connections gauge",
            "jobstream_refusals_total{limit=\"write_rate\"} 1",
            "jobstream_refusals_total{limit=\"connections\"} 0",
            "jobstream_refusals_total{limit=\"subject_connections\"} 0",
            "jobstream_refusals_total{limit=\"subscriptions\"} 0",
            "jobstream_timeouts_total{kind=\"header\"} 1",
            "jobstream_timeouts_total{kind=\"body\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
    }
}
