//! `/metrics` under hostile traffic: random method names and unknown paths add
//! no `jobstream_http_requests_total` series (labels take only bounded values),
//! known routes are labelled by their template, and the whole answer is
//! Prometheus text with every documented family, type and help text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use futures::StreamExt as _;
use jobstream_server::testing::TestServer;
use rand::Rng as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use uuid::Uuid;

/// The methods that keep their own name in the `method` label.
const STANDARD_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Concrete paths of known routes, with the template each should be labelled by.
fn known_paths(job: Uuid) -> Vec<(String, &'static str)> {
    vec![
        ("/healthz".to_owned(), "/healthz"),
        ("/readyz".to_owned(), "/readyz"),
        ("/api/v1/jobs".to_owned(), "/api/v1/jobs"),
        (format!("/api/v1/jobs/{job}"), "/api/v1/jobs/{job_id}"),
        (format!("/api/v1/jobs/{job}/events/stream"), "/api/v1/jobs/{job_id}/events/stream"),
        ("/api/v1/events/batch".to_owned(), "/api/v1/events/batch"),
    ]
}

/// A server on a fresh in-memory database.
async fn start() -> TestServer {
    TestServer::start().await.expect("start the server")
}

/// An answer: status, headers (lower-cased names) and body.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// Sends one HTTP/1.1 request with any method token, on its own connection.
async fn send(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("send the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read the answer");
    let text = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Answer { status, headers, body: body.to_owned() }
}

/// A method token that is not a standard method: letters, digits, `-` and `_`.
fn random_method(rng: &mut impl rand::Rng) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    loop {
        let len = rng.gen_range(3..=16);
        let name: String = (0..len).map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())])).collect();
        if !STANDARD_METHODS.contains(&name.as_str()) {
            return name;
        }
    }
}

/// A path that matches no route.
fn random_unknown_path(rng: &mut impl rand::Rng) -> String {
    format!("/zz-{:08x}/{:016x}", rng.gen::<u32>(), rng.gen::<u64>())
}

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
struct Exposition {
    /// Family name → (type, help).
    families: BTreeMap<String, (String, String)>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    is_name_start(c) || c.is_ascii_digit()
}

/// Splits a metric or label name off the front of `text`.
fn take_name(text: &str) -> (&str, &str) {
    assert!(text.starts_with(is_name_start), "a name must start {text:?}");
    let end = text.find(|c: char| !is_name_char(c)).unwrap_or(text.len());
    text.split_at(end)
}

/// Parses `{k="v",…}` at the front of `text`; returns the labels and the rest.
fn take_labels(mut text: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    text = text.strip_prefix('{').expect("labels open with `{`");
    loop {
        if let Some(rest) = text.strip_prefix('}') {
            return (labels, rest);
        }
        let (key, rest) = take_name(text);
        let mut chars = rest.strip_prefix("=\"").unwrap_or_else(|| panic!("`=\"` after label {key}")).chars();
        let mut value = String::new();
        loop {
            match chars.next().expect("a closed label value") {
                '"' => break,
                '\\' => match chars.next().expect("an escape") {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    other => panic!("unknown escape \\{other}"),
                },
                '\n' => panic!("a raw newline in a label value"),
                c => value.push(c),
            }
        }
        assert!(labels.insert(key.to_owned(), value).is_none(), "label {key} given twice");
        text = chars.as_str();
        text = text.strip_prefix(',').unwrap_or(text);
    }
}

/// Parses the Prometheus text format strictly: every line is `# HELP`, `# TYPE`
/// or `name{labels} value`, every family is declared once (help before type),
/// and every sample belongs to a declared family.
fn parse(text: &str) -> Exposition {
    let mut exposition = Exposition::default();
    let mut help: Option<(String, String)> = None;
    for line in text.lines() {
        assert!(!line.is_empty(), "an empty line in\n{text}");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').expect("`# HELP name text`");
            help = Some((name.to_owned(), text.to_owned()));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("`# TYPE name type`");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "type {kind}");
            let (help_name, help_text) = help.take().unwrap_or_else(|| panic!("no HELP before TYPE {name}"));
            assert_eq!(help_name, name, "HELP and TYPE name different families");
            let previous = exposition.families.insert(name.to_owned(), (kind.to_owned(), help_text));
            assert!(previous.is_none(), "family {name} declared twice");
        } else {
            assert!(!line.starts_with('#'), "an unknown comment line {line:?}");
            let (name, rest) = take_name(line);
            let (labels, rest) = if rest.starts_with('{') { take_labels(rest) } else { (BTreeMap::new(), rest) };
            let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("one space before the value: {line:?}"));
            assert!(!value.contains(' '), "one value and no timestamp: {line:?}");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("a numeric value: {line:?}"));
            let family = exposition
                .families
                .iter()
                .find(|(family, (kind, _))| {
                    name == family.as_str()
                        || (kind == "histogram"
                            && ["_bucket", "_sum", "_count"]
                                .iter()
                                .any(|suffix| name.strip_suffix(suffix) == Some(family.as_str())))
                })
                .map(|(family, _)| family.clone());
            assert!(family.is_some(), "sample {name} of no declared family");
            exposition.samples.push(Sample { name: name.to_owned(), labels, value });
        }
    }
    assert!(help.is_none(), "a HELP without TYPE");
    exposition
}

async fn scrape(addr: SocketAddr) -> (Answer, Exposition) {
    let answer = send(addr, "GET", "/metrics").await;
    assert_eq!(answer.status, 200);
    let exposition = parse(&answer.body);
    (answer, exposition)
}

/// Sends every (method, path) with a few requests in flight; returns their statuses.
async fn send_all(addr: SocketAddr, requests: Vec<(String, String)>) -> Vec<u16> {
    futures::stream::iter(requests)
        .map(|(method, path)| async move { send(addr, &method, &path).await.status })
        .buffer_unordered(8)
        .collect()
        .await
}

#[tokio::test]
async fn random_methods_and_unknown_paths_leave_the_request_series_bounded() {
    let server = start().await;
    let job = Uuid::new_v4();
    let known = known_paths(job);
    let mut rng = rand::thread_rng();
    let mut hostile = Vec::new();
    let mut random_names = HashSet::new();
    for i in 0..1_000 {
        let method = random_method(&mut rng);
        random_names.insert(method.clone());
        let path = if i % 2 == 0 { known[i / 2 % known.len()].0.clone() } else { random_unknown_path(&mut rng) };
        hostile.push((method, path));
    }
    for _ in 0..200 {
        let method = STANDARD_METHODS[rng.gen_range(0..STANDARD_METHODS.len())].to_owned();
        hostile.push((method, random_unknown_path(&mut rng)));
    }
    let unknown_paths: Vec<String> =
        hostile.iter().filter(|(_, p)| p.starts_with("/zz-")).map(|(_, p)| p.clone()).collect();
    send_all(server.addr(), hostile.clone()).await;

    let (answer, exposition) = scrape(server.addr()).await;
    let series = exposition.series("jobstream_http_requests_total");
    assert!(!series.is_empty(), "requests to known routes are counted");
    assert!(series.len() <= 24, "{} request series after 1,200 hostile requests:\n{}", series.len(), answer.body);
    let templates: HashSet<&str> = known.iter().map(|(_, t)| *t).collect();
    for sample in &series {
        let keys: Vec<&str> = sample.labels.keys().map(String::as_str).collect();
        assert_eq!(keys, ["method", "route", "status"]);
        let route = sample.labels["route"].as_str();
        assert!(route == "unmatched" || templates.contains(route), "route label {route:?}");
        let method = sample.labels["method"].as_str();
        assert!(method == "other" || STANDARD_METHODS.contains(&method), "method label {method:?}");
        let status: u16 = sample.labels["status"].parse().expect("a numeric status");
        assert!((100..600).contains(&status), "status label {status}");
    }
    for name in &random_names {
        assert!(!answer.body.contains(&format!("\"{name}\"")), "method {name} became a label value");
    }
    for path in &unknown_paths {
        assert!(!answer.body.contains(path.as_str()), "path {path} became a label value");
    }
    // Nothing is lost: the random methods on known routes are all counted, as `other`.
    let other: f64 = series.iter().filter(|s| s.labels["method"] == "other").map(|s| s.value).sum();
    assert_eq!(other, 500.0);

    // The same again adds no series: the set of label values is closed.
    let mut again = Vec::new();
    for i in 0..1_000 {
        let path = if i % 2 == 0 { known[i / 2 % known.len()].0.clone() } else { random_unknown_path(&mut rng) };
        again.push((random_method(&mut rng), path));
    }
    send_all(server.addr(), again).await;
    let (answer, exposition) = scrape(server.addr()).await;
    let after = exposition.series("jobstream_http_requests_total");
    assert_eq!(after.len(), series.len(), "series grew:\n{}", answer.body);
    server.stop().await.expect("the server stops");
}

#[tokio::test]
async fn known_routes_are_labelled_by_their_template() {
    let server = start().await;
    let job = Uuid::new_v4();
    let job_path = format!("/api/v1/jobs/{job}");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(send(server.addr(), "GET", &job_path).await.status);
    }
    assert!(statuses.iter().all(|s| *s == statuses[0]), "the same answer each time: {statuses:?}");
    let job_status = statuses[0];
    let healthz = send(server.addr(), "GET", "/healthz").await.status;
    let stream_status = send(server.addr(), "PATCH", &format!("{job_path}/events/stream")).await.status;
    assert_eq!(stream_status, 405);

    let (answer, exposition) = scrape(server.addr()).await;
    let count = |route: &str, method: &str, status: u16| {
        exposition
            .series("jobstream_http_requests_total")
            .iter()
            .find(|s| {
                s.labels["route"] == route && s.labels["method"] == method && s.labels["status"] == status.to_string()
            })
            .map(|s| s.value)
    };
    assert_eq!(count("/api/v1/jobs/{job_id}", "GET", job_status), Some(3.0), "in\n{}", answer.body);
    assert_eq!(count("/healthz", "GET", healthz), Some(1.0), "in\n{}", answer.body);
    assert_eq!(count("/api/v1/jobs/{job_id}/events/stream", "PATCH", 405), Some(1.0), "in\n{}", answer.body);
    assert!(!answer.body.contains(&job.to_string()), "a concrete path became a label value:\n{}", answer.body);
    let latency = exposition.series("jobstream_http_request_seconds_count");
    assert_eq!(latency.len(), 1);
    assert_eq!(latency[0].value, 5.0, "every tracked request is timed");
    server.stop().await.expect("the server stops");
}

#[tokio::test]
async fn the_exposition_is_prometheus_text_with_every_documented_family() {
    let server = start().await;
    send(server.addr(), "GET", "/healthz").await;
    let (answer, exposition) = scrape(server.addr()).await;
    assert_eq!(
        answer.headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );

    let expected = [
        ("jobstream_connections", "gauge", "Socket.IO connections open now."),
        ("jobstream_subscribers", "gauge", "Subscribers (sockets and SSE streams with at least one subscription)."),
        (
            "jobstream_subscribers_behind",
            "gauge",
            "Subscribers handled by a delivery worker now (setting up, catching up, or waiting on a full outlet).",
        ),
        ("jobstream_subscriptions", "gauge", "Subscriptions by room kind."),
        ("jobstream_events_appended_total", "counter", "Events committed through this node."),
        ("jobstream_events_delivered_total", "counter", "Events sent to subscribers (each subscriber counts once)."),
        (
            "jobstream_events_delivered_fast_total",
            "counter",
            "Of the events delivered, those written straight to a caught-up subscriber (no queue, no task woken).",
        ),
        (
            "jobstream_catch_ups_total",
            "counter",
            "Reads from the database to fill a gap, replay, or resynchronise a subscriber.",
        ),
        (
            "jobstream_mailbox_overflows_total",
            "counter",
            "Subscribers switched to catching up from the database because they fell behind.",
        ),
        ("jobstream_stalled_subscribers_total", "counter", "Subscribers closed because they stopped reading."),
        (
            "jobstream_cursors",
            "gauge",
            "Per-job positions held by all subscribers (grows with followed and active jobs, not history).",
        ),
        ("jobstream_pruned_jobs_total", "counter", "Finished jobs deleted by retention."),
        ("jobstream_pruned_events_total", "counter", "Events deleted by retention."),
        ("jobstream_bus_lag_seconds", "histogram", "Time from publication on the cluster bus to receipt on this node."),
        (
            "jobstream_bus_errors_total",
            "counter",
            "Cluster bus publish or connection failures (delivery is repaired from the database).",
        ),
        ("jobstream_db_seconds", "histogram", "Database latency of request handlers, by operation."),
        ("jobstream_http_requests_total", "counter", "HTTP requests by route, method and status."),
        ("jobstream_http_request_seconds", "histogram", "HTTP request latency (to the response head for streams)."),
        ("jobstream_tcp_connections", "gauge", "TCP connections open now (HTTP, long-polling, SSE and WebSocket)."),
        (
            "jobstream_socket_writes_direct_total",
            "counter",
            "Events written straight to a socket's WebSocket, encoded once for all sockets (the others go through the socket's queue).",
        ),
        ("jobstream_refusals_total", "counter", "Refusals by the limit that refused."),
        ("jobstream_timeouts_total", "counter", "Clients cut off for sending a request head or body too slowly."),
    ];
    let families: BTreeMap<&str, (&str, &str)> =
        exposition.families.iter().map(|(n, (k, h))| (n.as_str(), (k.as_str(), h.as_str()))).collect();
    let expected: BTreeMap<&str, (&str, &str)> = expected.iter().map(|(n, k, h)| (*n, (*k, *h))).collect();
    assert_eq!(families, expected);

    // Families without labels have one sample named as the family.
    for name in [
        "jobstream_connections",
        "jobstream_subscribers",
        "jobstream_events_appended_total",
        "jobstream_events_delivered_total",
        "jobstream_events_delivered_fast_total",
        "jobstream_socket_writes_direct_total",
        "jobstream_subscribers_behind",
        "jobstream_catch_ups_total",
        "jobstream_mailbox_overflows_total",
        "jobstream_stalled_subscribers_total",
        "jobstream_bus_errors_total",
    ] {
        let series = exposition.series(name);
        assert_eq!(series.len(), 1, "{name}");
        assert!(series[0].labels.is_empty(), "{name}");
    }
    let rooms: BTreeMap<&str, f64> =
        exposition.series("jobstream_subscriptions").iter().map(|s| (s.labels["room"].as_str(), s.value)).collect();
    assert_eq!(rooms, BTreeMap::from([("job", 0.0), ("workspace", 0.0)]));
    // Every limit and timeout has its series from the start.
    let refusals: BTreeMap<&str, f64> =
        exposition.series("jobstream_refusals_total").iter().map(|s| (s.labels["limit"].as_str(), s.value)).collect();
    let limits = ["connections", "subject_connections", "subscriptions", "write_rate"];
    assert_eq!(refusals, limits.iter().map(|l| (*l, 0.0)).collect());
    let timeouts: BTreeMap<&str, f64> =
        exposition.series("jobstream_timeouts_total").iter().map(|s| (s.labels["kind"].as_str(), s.value)).collect();
    assert_eq!(timeouts, BTreeMap::from([("body", 0.0), ("header", 0.0)]));
    // The scrape's own connection is open.
    assert!(exposition.series("jobstream_tcp_connections").iter().all(|s| s.value >= 1.0));

    // Histograms keep their buckets, cumulative, closed by +Inf equal to the count.
    let bounds = ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf"];
    for (family, op) in [
        ("jobstream_bus_lag_seconds", None),
        ("jobstream_http_request_seconds", None),
        ("jobstream_db_seconds", Some("write")),
        ("jobstream_db_seconds", Some("read")),
    ] {
        let of_op = |s: &&Sample| s.labels.get("op").map(String::as_str) == op;
        let buckets: Vec<&Sample> = exposition.series(&format!("{family}_bucket")).into_iter().filter(of_op).collect();
        let les: Vec<&str> = buckets.iter().map(|s| s.labels["le"].as_str()).collect();
        assert_eq!(les, bounds, "{family} {op:?}");
        assert!(buckets.windows(2).all(|w| w[0].value <= w[1].value), "{family} buckets are cumulative");
        let count: Vec<&Sample> = exposition.series(&format!("{family}_count")).into_iter().filter(of_op).collect();
        let sum: Vec<&Sample> = exposition.series(&format!("{family}_sum")).into_iter().filter(of_op).collect();
        assert_eq!((count.len(), sum.len()), (1, 1), "{family} {op:?}");
        assert_eq!(buckets[buckets.len() - 1].value, count[0].value, "{family} {op:?}");
    }
    server.stop().await.expect("the server stops");
}
