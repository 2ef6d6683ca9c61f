//! The OpenAPI document (`GET /api/v1/openapi.json`) against the real server,
//! on SQLite and on PostgreSQL: every route is exercised, on success and on its
//! main errors, and each answer must be one the document lists for that route
//! (status, media type, documented headers) with a body valid against the
//! documented JSON Schema. A second test checks that every route the server
//! registers is in the document, method by method.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use jobstream_server::testing::TestServer;
use jobstream_server::Config;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use uuid::Uuid;

// ---------------------------------------------------------------- HTTP

/// An answer: status, headers (lower-cased names) and body (de-chunked).
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request.
#[derive(Debug, Clone)]
struct Call {
    method: &'static str,
    /// The route template, as in the document.
    route: &'static str,
    /// The concrete path and query.
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Call {
    fn new(method: &'static str, route: &'static str, path: impl Into<String>) -> Self {
        Self { method, route, path: path.into(), headers: Vec::new(), body: None }
    }

    fn get(route: &'static str, path: impl Into<String>) -> Self {
        Self::new("GET", route, path)
    }

    fn post(route: &'static str, path: impl Into<String>, body: Value) -> Self {
        Self::new("POST", route, path).raw_body("application/json", body.to_string().into_bytes())
    }

    fn raw_body(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.headers.push(("Content-Type".into(), content_type.into()));
        self.body = Some(body);
        self
    }

    fn bearer(self, token: &str) -> Self {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

fn head_of(call: &Call, addr: SocketAddr) -> String {
    let mut head = format!("{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n", call.method, call.path);
    for (name, value) in &call.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", call.body.as_ref().map_or(0, Vec::len)));
    head
}

/// Splits a raw HTTP/1.1 answer.
fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body);
    }
    Some(Answer { status, headers, body })
}

/// The data of a chunked body, as far as it arrived.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..line_end]).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size else { break };
        raw = &raw[line_end + 2..];
        if size == 0 || raw.len() < size {
            out.extend_from_slice(&raw[..size.min(raw.len())]);
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
    out
}

/// Sends a request on its own connection and reads the whole answer.
async fn send(addr: SocketAddr, call: &Call) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head_of(call, addr).as_bytes()).await.expect("send the head");
    if let Some(body) = &call.body {
        // A peer may answer (413) and close before the whole body is sent.
        let _ = stream.write_all(body).await;
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    parse_answer(&raw).unwrap_or_else(|| panic!("no HTTP answer to {} {}", call.method, call.path))
}

/// Opens a stream and reads until `until` is in the body, then drops the connection.
async fn send_until(addr: SocketAddr, call: &Call, until: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head_of(call, addr).as_bytes()).await.expect("send the head");
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf).await.expect("read the stream");
        raw.extend_from_slice(&buf[..n]);
        if n == 0 || parse_answer(&raw).is_some_and(|a| a.text().contains(until)) {
            break;
        }
    }
    parse_answer(&raw).expect("an HTTP answer")
}

// ---------------------------------------------------------------- the document

/// The OpenAPI document and what was checked against it.
struct Document {
    doc: Value,
    /// (route, method, status) seen.
    seen: BTreeSet<(String, String, u16)>,
}

fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

impl Document {
    fn new(doc: Value) -> Self {
        assert_eq!(doc["openapi"], "3.1.0");
        Self { doc, seen: BTreeSet::new() }
    }

    /// Validates `instance` against the schema at `pointer` (a JSON pointer into the document).
    fn validate(&self, pointer: &str, instance: &Value) -> Result<(), String> {
        // The schema, with the document's components beside it for its `$ref`s.
        let mut schema = self.doc.pointer(pointer).cloned().ok_or_else(|| format!("no schema at {pointer}"))?;
        let object = schema.as_object_mut().ok_or_else(|| format!("the schema at {pointer} is not an object"))?;
        object.insert("components".into(), self.doc["components"].clone());
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| format!("the schema at {pointer} does not compile: {e}"))?;
        let errors: Vec<String> =
            validator.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Checks an answer against the document and records it.
    fn check(&mut self, call: &Call, answer: &Answer) {
        let method = call.method.to_ascii_lowercase();
        let what = format!("{} {} → {}: {}", call.method, call.path, answer.status, answer.text());
        let base = format!("/paths/{}/{method}/responses", escape_pointer(call.route));
        let responses =
            self.doc.pointer(&base).unwrap_or_else(|| panic!("{} {} is not documented", call.method, call.route));
        let status = answer.status.to_string();
        let response = responses.get(&status).unwrap_or_else(|| panic!("undocumented status: {what}"));
        for name in response.get("headers").and_then(Value::as_object).into_iter().flatten().map(|(n, _)| n) {
            assert!(answer.headers.contains_key(&name.to_ascii_lowercase()), "header {name} missing: {what}");
        }
        match response.get("content").and_then(Value::as_object) {
            None => assert!(answer.body.is_empty(), "a body where none is documented: {what}"),
            Some(content) => {
                let actual = answer.headers.get("content-type").cloned().unwrap_or_default();
                let essence = |t: &str| t.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
                let (media, _) = content
                    .iter()
                    .find(|(media, _)| essence(media) == essence(&actual))
                    .unwrap_or_else(|| panic!("content type {actual:?} is not one of {:?}: {what}", content.keys()));
                if essence(media) == "application/json" {
                    let pointer = format!("{base}/{status}/content/{}/schema", escape_pointer(media));
                    if let Err(errors) = self.validate(&pointer, &answer.json()) {
                        panic!("the body does not fit the document: {errors}\n{what}");
                    }
                }
            }
        }
        self.seen.insert((call.route.to_owned(), method, answer.status));
    }

    /// Every documented (route, method) pair.
    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (route, item) in self.doc["paths"].as_object().expect("paths") {
            for method in ["get", "post", "put", "patch", "delete"] {
                if item.get(method).is_some() {
                    out.insert((route.clone(), method.to_owned()));
                }
            }
        }
        out
    }
}

/// Sends `call`, expects `status`, checks the answer against the document.
async fn expect(server: SocketAddr, doc: &mut Document, call: Call, status: u16) -> Answer {
    let answer = send(server, &call).await;
    assert_eq!(answer.status, status, "{} {}: {}", call.method, call.path, answer.text());
    doc.check(&call, &answer);
    answer
}

/// The error code of an error answer.
fn code(answer: &Answer) -> String {
    answer.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
}

// ---------------------------------------------------------------- the routes

const JOBS: &str = "/api/v1/jobs";
const JOB: &str = "/api/v1/jobs/{job_id}";
const STATUS: &str = "/api/v1/jobs/{job_id}/status";
const PROGRESS: &str = "/api/v1/jobs/{job_id}/progress";
const STEPS: &str = "/api/v1/jobs/{job_id}/steps";
const STEP_PROGRESS: &str = "/api/v1/jobs/{job_id}/steps/{step_id}/progress";
const OUTPUT: &str = "/api/v1/jobs/{job_id}/steps/{step_id}/output";
const COMPLETE: &str = "/api/v1/jobs/{job_id}/steps/{step_id}/complete";
const EVENTS: &str = "/api/v1/jobs/{job_id}/events";
const JOB_STREAM: &str = "/api/v1/jobs/{job_id}/events/stream";
const WORKSPACE_STREAM: &str = "/api/v1/workspaces/{workspace_id}/events/stream";
const BATCH: &str = "/api/v1/events/batch";
const LOG: &str = "/api/v1/jobs/{job_id}/steps/{step_id}/log";
const LOG_LINES: &str = "/api/v1/jobs/{job_id}/steps/{step_id}/log/lines";
const LOG_SEARCH: &str = "/api/v1/jobs/{job_id}/steps/{step_id}/log/search";

/// Exercises every route of `server`, checking each answer against the document.
async fn every_route_answers_as_documented(server: &TestServer) {
    let addr = server.addr();
    let raw = send(addr, &Call::get("/api/v1/openapi.json", "/api/v1/openapi.json")).await;
    let mut doc = Document::new(raw.json());
    doc.check(&Call::get("/api/v1/openapi.json", "/api/v1/openapi.json"), &raw);

    let ws = format!("ws-{}", Uuid::new_v4().simple());
    let other = format!("other-{}", Uuid::new_v4().simple());
    let writer = server.publish_token(&ws);
    let reader = server.subscribe_token(&ws);
    let outsider = server.publish_token(&other);
    let both = server.token(&TestServer::claims(&[&ws, &other], "publish subscribe"));

    // Operations.
    expect(addr, &mut doc, Call::get("/healthz", "/healthz"), 200).await;
    expect(addr, &mut doc, Call::get("/readyz", "/readyz"), 200).await;
    expect(addr, &mut doc, Call::get("/metrics", "/metrics"), 200).await;

    // Jobs.
    let job = Uuid::now_v7();
    let create = json!({ "id": job, "workspaceId": ws, "type": "build", "metadata": { "branch": "main" } });
    expect(addr, &mut doc, Call::post(JOBS, JOBS, create.clone()).bearer(&writer), 201).await;
    expect(addr, &mut doc, Call::post(JOBS, JOBS, create.clone()).bearer(&writer), 200).await;
    expect(addr, &mut doc, Call::post(JOBS, JOBS, create.clone()), 401).await;
    expect(addr, &mut doc, Call::post(JOBS, JOBS, create.clone()).bearer("not-a-token"), 401).await;
    expect(addr, &mut doc, Call::post(JOBS, JOBS, create.clone()).bearer(&reader), 403).await;
    expect(addr, &mut doc, Call::post(JOBS, JOBS, create.clone()).bearer(&outsider), 403).await;
    let taken = json!({ "id": job, "workspaceId": other, "type": "build" });
    let answer = expect(addr, &mut doc, Call::post(JOBS, JOBS, taken).bearer(&both), 409).await;
    assert_eq!(code(&answer), "conflict");
    let not_json = Call::new("POST", JOBS, JOBS).raw_body("application/json", b"{".to_vec()).bearer(&writer);
    expect(addr, &mut doc, not_json, 400).await;
    let not_typed =
        Call::new("POST", JOBS, JOBS).raw_body("text/plain", create.to_string().into_bytes()).bearer(&writer);
    expect(addr, &mut doc, not_typed, 400).await;
    let answer = expect(addr, &mut doc, Call::post(JOBS, JOBS, json!({ "type": "build" })).bearer(&writer), 422).await;
    assert_eq!(code(&answer), "invalid_payload");
    let huge = json!({ "workspaceId": ws, "type": "build", "metadata": { "blob": "x".repeat(1_100_000) } });
    expect(addr, &mut doc, Call::post(JOBS, JOBS, huge).bearer(&writer), 413).await;

    let list = |query: &str| Call::get(JOBS, format!("{JOBS}?{query}"));
    let answer = expect(addr, &mut doc, list(&format!("workspaceId={ws}")).bearer(&reader), 200).await;
    assert_eq!(answer.json()["jobs"][0]["id"], json!(job));
    expect(addr, &mut doc, list("limit=10").bearer(&reader), 200).await;
    expect(addr, &mut doc, list("limit=0").bearer(&reader), 422).await;
    expect(addr, &mut doc, list("status=sleeping").bearer(&reader), 422).await;
    expect(addr, &mut doc, list(&format!("workspaceId={other}")).bearer(&reader), 403).await;
    expect(addr, &mut doc, list("").bearer(&writer.replace('.', "")), 401).await;

    let job_path = |route: &'static str, job: &dyn std::fmt::Display| route.replace("{job_id}", &job.to_string());
    expect(addr, &mut doc, Call::get(JOB, job_path(JOB, &job)).bearer(&reader), 200).await;
    expect(addr, &mut doc, Call::get(JOB, job_path(JOB, &Uuid::now_v7())).bearer(&reader), 404).await;
    expect(addr, &mut doc, Call::get(JOB, job_path(JOB, &"not-a-uuid")).bearer(&reader), 404).await;
    expect(addr, &mut doc, Call::get(JOB, job_path(JOB, &job)).bearer(&outsider), 404).await;
    expect(addr, &mut doc, Call::get(JOB, job_path(JOB, &job)), 401).await;

    // Writes, with eventId repeats and conflicts.
    let status = |body: Value| Call::post(STATUS, job_path(STATUS, &job), body).bearer(&writer);
    let event_id = Uuid::now_v7();
    expect(addr, &mut doc, status(json!({ "status": "queued" })), 200).await;
    expect(addr, &mut doc, status(json!({ "status": "running", "eventId": event_id })), 200).await;
    expect(addr, &mut doc, status(json!({ "status": "running", "eventId": event_id })), 200).await;
    let answer = expect(addr, &mut doc, status(json!({ "status": "cancelled", "eventId": event_id })), 409).await;
    assert_eq!(code(&answer), "conflict");
    let answer = expect(addr, &mut doc, status(json!({ "status": "pending" })), 409).await;
    assert_eq!(code(&answer), "invalid_transition");
    expect(addr, &mut doc, status(json!({ "status": "exploded" })), 422).await;
    expect(addr, &mut doc, status(json!({ "status": "running", "eventId": "nope" })), 422).await;
    let missing = Call::post(STATUS, job_path(STATUS, &Uuid::now_v7()), json!({ "status": "running" })).bearer(&writer);
    expect(addr, &mut doc, missing, 404).await;
    let scope = Call::post(STATUS, job_path(STATUS, &job), json!({ "status": "running" })).bearer(&reader);
    expect(addr, &mut doc, scope, 403).await;

    let progress = |body: Value| Call::post(PROGRESS, job_path(PROGRESS, &job), body).bearer(&writer);
    expect(addr, &mut doc, progress(json!({ "progress": 10, "message": "compiling" })), 200).await;
    expect(addr, &mut doc, progress(json!({ "progress": 101 })), 422).await;
    let missing = Call::post(PROGRESS, job_path(PROGRESS, &Uuid::now_v7()), json!({ "progress": 1 })).bearer(&writer);
    expect(addr, &mut doc, missing, 404).await;

    let step = Uuid::now_v7();
    let steps = |body: Value| Call::post(STEPS, job_path(STEPS, &job), body).bearer(&writer);
    let start = json!({ "id": step, "name": "compile", "phase": "execution", "stepType": "command", "eventId": step });
    let answer = expect(addr, &mut doc, steps(start.clone()), 201).await;
    assert_eq!(answer.json()["step"]["status"], "running");
    expect(addr, &mut doc, steps(start), 200).await;
    expect(addr, &mut doc, steps(json!({ "name": "x", "phase": "nowhere", "stepType": "command" })), 422).await;
    let taken = json!({ "id": step, "name": "again", "phase": "execution", "stepType": "command" });
    expect(addr, &mut doc, steps(taken), 409).await;

    let step_path = |route: &'static str, step: &Uuid| job_path(route, &job).replace("{step_id}", &step.to_string());
    let step_progress = |step: &Uuid, body: Value| Call::post(STEP_PROGRESS, step_path(STEP_PROGRESS, step), body);
    expect(addr, &mut doc, step_progress(&step, json!({ "progress": 50 })).bearer(&writer), 200).await;
    expect(addr, &mut doc, step_progress(&Uuid::now_v7(), json!({ "progress": 50 })).bearer(&writer), 404).await;
    expect(addr, &mut doc, step_progress(&step, json!({ "progress": -1 })).bearer(&writer), 422).await;

    let output = |body: Value| Call::post(OUTPUT, step_path(OUTPUT, &step), body).bearer(&writer);
    expect(addr, &mut doc, output(json!({ "chunk": "cc -O2 main.c\n" })), 200).await;
    expect(addr, &mut doc, output(json!({ "chunk": "warning\n", "stream": "stderr", "eventId": Uuid::now_v7() })), 200)
        .await;
    let answer = expect(addr, &mut doc, output(json!({ "chunk": "y".repeat(70_000) })), 413).await;
    assert_eq!(code(&answer), "payload_too_large");
    expect(addr, &mut doc, output(json!({ "chunk": 7 })), 422).await;

    let complete = |body: Value| Call::post(COMPLETE, step_path(COMPLETE, &step), body).bearer(&writer);
    let answer = expect(addr, &mut doc, complete(json!({ "status": "completed", "tokensInput": 3 })), 200).await;
    assert_eq!(answer.json()["step"]["status"], "completed");
    expect(addr, &mut doc, complete(json!({ "status": "completed" })), 409).await;
    expect(addr, &mut doc, complete(json!({ "status": "running" })), 422).await;
    expect(addr, &mut doc, output(json!({ "chunk": "late\n" })), 409).await;

    let custom = |body: Value| Call::post(EVENTS, job_path(EVENTS, &job), body).bearer(&writer);
    let tool = json!({ "type": "ai.tool_called", "stepId": step, "payload": { "tool": "grep" }, "eventId": job });
    expect(addr, &mut doc, custom(tool.clone()), 201).await;
    expect(addr, &mut doc, custom(tool), 200).await;
    expect(addr, &mut doc, custom(json!({ "type": "job.completed" })), 422).await;

    // A batch: all or nothing.
    let batch = |body: Value| Call::post(BATCH, BATCH, body).bearer(&writer);
    let items = json!({ "events": [
        { "jobId": job, "kind": "progress", "progress": 90 },
        { "jobId": job, "kind": "step", "name": "test", "phase": "validation", "stepType": "command" },
        { "jobId": job, "kind": "event", "type": "gate.passed", "payload": {} },
        { "jobId": job, "kind": "status", "status": "completed", "result": { "ok": true }, "eventId": Uuid::now_v7() },
    ]});
    let answer = expect(addr, &mut doc, batch(items), 200).await;
    assert_eq!(answer.json()["events"].as_array().map(Vec::len), Some(4));
    expect(addr, &mut doc, batch(json!({ "events": [] })), 422).await;
    expect(addr, &mut doc, batch(json!({ "events": [{ "jobId": job, "kind": "teleport" }] })), 422).await;
    let done = json!({ "events": [{ "jobId": job, "kind": "progress", "progress": 95 }] });
    let answer = expect(addr, &mut doc, batch(done), 409).await;
    assert_eq!(code(&answer), "invalid_transition");
    let unknown = json!({ "events": [{ "jobId": Uuid::now_v7(), "kind": "progress", "progress": 1 }] });
    expect(addr, &mut doc, batch(unknown), 404).await;

    // History.
    let history = |query: &str| Call::get(EVENTS, format!("{}?{query}", job_path(EVENTS, &job))).bearer(&reader);
    let answer = expect(addr, &mut doc, history("since=0"), 200).await;
    let page = answer.json();
    let last_seq = page["lastSeq"].as_i64().expect("lastSeq");
    assert_eq!(page["events"].as_array().map(Vec::len), Some(last_seq as usize));
    expect(addr, &mut doc, history("since=2&limit=2"), 200).await;
    expect(addr, &mut doc, history("since=-1"), 422).await;
    expect(addr, &mut doc, history("limit=10001"), 422).await;
    let missing = Call::get(EVENTS, job_path(EVENTS, &Uuid::now_v7())).bearer(&reader);
    expect(addr, &mut doc, missing, 404).await;

    // The step's log: raw, as numbered lines, searched.
    let log = |route: &'static str, query: &str| {
        Call::get(route, format!("{}?{query}", step_path(route, &step))).bearer(&reader)
    };
    expect(addr, &mut doc, log(LOG, ""), 200).await;
    expect(addr, &mut doc, log(LOG, "stream=stderr"), 200).await;
    expect(addr, &mut doc, log(LOG, "stream=both"), 422).await;
    expect(addr, &mut doc, log(LOG_LINES, "from=1&limit=10"), 200).await;
    expect(addr, &mut doc, log(LOG_LINES, "tail=5"), 200).await;
    expect(addr, &mut doc, log(LOG_LINES, "limit=5001"), 422).await;
    expect(addr, &mut doc, log(LOG_SEARCH, "q=a"), 200).await;
    expect(addr, &mut doc, log(LOG_SEARCH, "q="), 422).await;
    let unknown_step = Call::get(LOG, step_path(LOG, &Uuid::now_v7())).bearer(&reader);
    expect(addr, &mut doc, unknown_step, 404).await;

    // The job stream of a finished job: the whole history, then its end.
    let stream = |query: &str| Call::get(JOB_STREAM, format!("{}?{query}", job_path(JOB_STREAM, &job)));
    let call = stream(&format!("token={reader}"));
    let answer = send(addr, &call).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    doc.check(&call, &answer);
    let frames = sse_data(&answer.text());
    assert!(!frames.is_empty(), "{}", answer.text());
    for data in &frames {
        doc.validate("/components/schemas/Event", data).unwrap_or_else(|e| panic!("an SSE frame: {e}: {data}"));
    }
    expect(addr, &mut doc, stream(&format!("since={last_seq}")).bearer(&reader), 204).await;
    let resume = stream("").bearer(&reader).header("Last-Event-ID", &last_seq.to_string());
    expect(addr, &mut doc, resume, 204).await;
    expect(addr, &mut doc, stream("since=soon").bearer(&reader), 422).await;
    let missing = Call::get(JOB_STREAM, job_path(JOB_STREAM, &Uuid::now_v7())).bearer(&reader);
    expect(addr, &mut doc, missing, 404).await;
    expect(addr, &mut doc, stream(""), 401).await;

    // The job stream of a running job: live, and a resume point beyond its newest event.
    let running = Uuid::now_v7();
    let create = json!({ "id": running, "workspaceId": ws, "type": "deploy" });
    expect(addr, &mut doc, Call::post(JOBS, JOBS, create).bearer(&writer), 201).await;
    let live = Call::get(JOB_STREAM, job_path(JOB_STREAM, &running)).bearer(&reader);
    let answer = send_until(addr, &live, "\n\n").await;
    assert_eq!(answer.status, 200);
    doc.check(&live, &answer);
    let beyond = Call::get(JOB_STREAM, format!("{}?since=5", job_path(JOB_STREAM, &running))).bearer(&reader);
    let answer = expect(addr, &mut doc, beyond, 422).await;
    assert_eq!(code(&answer), "invalid_cursor");

    // The workspace stream: a snapshot first.
    let workspace = |ws: &str| WORKSPACE_STREAM.replace("{workspace_id}", ws);
    let call = Call::get(WORKSPACE_STREAM, format!("{}?token={reader}", workspace(&ws)));
    let answer = send_until(addr, &call, "\n\n").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    doc.check(&call, &answer);
    let text = answer.text();
    assert!(text.starts_with("event: snapshot\n"), "{text}");
    let snapshot = sse_data(&text).into_iter().next().expect("a snapshot frame");
    assert_eq!(snapshot["jobs"][0]["id"], json!(running));
    let jobs = snapshot["jobs"].as_array().cloned().unwrap_or_default();
    for job in &jobs {
        doc.validate("/components/schemas/JobSnapshot", job).unwrap_or_else(|e| panic!("a snapshot job: {e}"));
    }
    expect(addr, &mut doc, Call::get(WORKSPACE_STREAM, workspace(&other)).bearer(&reader), 403).await;
    expect(addr, &mut doc, Call::get(WORKSPACE_STREAM, workspace(&"w".repeat(300))).bearer(&reader), 422).await;
    expect(addr, &mut doc, Call::get(WORKSPACE_STREAM, workspace(&ws)), 401).await;

    // Every operation was exercised, with a 2xx and at least one error.
    for (route, method) in doc.operations() {
        let statuses: Vec<u16> =
            doc.seen.iter().filter(|(r, m, _)| *r == route && *m == method).map(|(_, _, s)| *s).collect();
        assert!(statuses.iter().any(|s| (200..300).contains(s)), "{method} {route}: no success checked");
        let public = ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"].contains(&route.as_str());
        assert!(public || statuses.iter().any(|s| *s >= 400), "{method} {route}: no error checked");
    }
}

/// The `data:` of each frame of an SSE text (one line of data per frame here).
fn sse_data(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data}")))
        .collect()
}

/// 429 with `Retry-After`, and 408 for a body that does not arrive, on a server with tight limits.
async fn limits_answer_as_documented(server: &TestServer) {
    let addr = server.addr();
    let mut doc = Document::new(send(addr, &Call::get("/api/v1/openapi.json", "/api/v1/openapi.json")).await.json());
    let ws = format!("ws-{}", Uuid::new_v4().simple());
    let writer = server.publish_token(&ws);
    let create = || Call::post(JOBS, JOBS, json!({ "workspaceId": ws, "type": "build" })).bearer(&writer);
    // The burst is 2 at 1 write per second: writes in a row soon go over the rate.
    let mut statuses = Vec::new();
    while statuses.len() < 20 && statuses.last() != Some(&429) {
        let call = create();
        let answer = send(addr, &call).await;
        doc.check(&call, &answer);
        statuses.push(answer.status);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");

    // A body announced but never sent is answered when the body deadline passes.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {JOBS} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {writer}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.expect("send the head");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let answer = parse_answer(&raw).expect("an answer");
    assert_eq!(answer.status, 408, "{}", answer.text());
    doc.check(&Call::new("POST", JOBS, JOBS), &answer);
}

fn tight_limits(database_url: &str) -> Config {
    let mut config = Config::for_tests(database_url, "limits-test-secret");
    config.limits.max_writes_per_second = 1;
    config.limits.write_burst = 2;
    config.limits.body_timeout = Duration::from_millis(300);
    config
}

fn postgres_url() -> Option<String> {
    match std::env::var("JOBSTREAM_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("JOBSTREAM_TEST_POSTGRES_URL must be set in CI")
        }
        Err(_) => {
            eprintln!("skipped: JOBSTREAM_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_the_document_says_on_sqlite() {
    let server = TestServer::start().await.expect("start");
    every_route_answers_as_documented(&server).await;
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_the_document_says_on_postgres() {
    let Some(url) = postgres_url() else { return };
    let server = TestServer::start_postgres(&url).await.expect("start");
    every_route_answers_as_documented(&server).await;
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_and_body_time_limits_answer_as_the_document_says() {
    let server = TestServer::start_with(tight_limits("sqlite::memory:")).await.expect("start");
    limits_answer_as_documented(&server).await;
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_without_a_database_answers_503_with_retry_after_as_documented() {
    let Some(url) = postgres_url() else { return };
    let server = TestServer::start_postgres(&url).await.expect("start");
    let addr = server.addr();
    let mut doc = Document::new(send(addr, &Call::get("/api/v1/openapi.json", "/api/v1/openapi.json")).await.json());
    // The database goes away under the running server.
    let name = server.database_name().expect("a database of its own").to_owned();
    let admin = sea_orm::Database::connect(&url).await.expect("connect");
    sea_orm::ConnectionTrait::execute_unprepared(&admin, &format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .expect("drop the database");
    let call = Call::get("/readyz", "/readyz");
    let answer = send(addr, &call).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    doc.check(&call, &answer);
    let reader = server.subscribe_token("w");
    let call = Call::get(JOBS, format!("{JOBS}?workspaceId=w")).bearer(&reader);
    let answer = send(addr, &call).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    doc.check(&call, &answer);
    let _ = server.stop().await;
}

// ---------------------------------------------------------------- no route forgotten

/// The pages of the dashboard: HTML, CSS, script and its settings, not API.
const DASHBOARD: [&str; 5] =
    ["/", "/assets/app.css", "/assets/app.js", "/assets/favicon.svg", "/dashboard/config.json"];

/// The path templates of the server's router, read from its `Debug` form.
fn router_paths() -> BTreeSet<String> {
    let router = jobstream_server::app::routes(jobstream_server::metrics::Metrics::default());
    let text = format!("{router:?}");
    let mut paths = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(": \"/") {
        rest = &rest[start + 3..];
        let end = rest.find('"').unwrap_or(rest.len());
        let path = &rest[..end];
        if !path.contains("__private__") {
            paths.insert(path.to_owned());
        }
        rest = &rest[end..];
    }
    assert!(paths.len() > 10, "the router's Debug form no longer lists its paths: {text}");
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_the_server_is_in_the_document_with_each_of_its_methods() {
    let server = TestServer::start().await.expect("start");
    let addr = server.addr();
    let doc = Document::new(send(addr, &Call::get("/api/v1/openapi.json", "/api/v1/openapi.json")).await.json());
    let documented = doc.operations();
    let routes = router_paths();
    let documented_paths: BTreeSet<String> = documented.iter().map(|(p, _)| p.clone()).collect();
    // The dashboard's pages and its ES modules (`/assets/…`) are not the API.
    let api_routes: BTreeSet<String> =
        routes.iter().filter(|p| !DASHBOARD.contains(&p.as_str()) && !p.starts_with("/assets/")).cloned().collect();
    assert_eq!(api_routes, documented_paths, "routes of the server vs paths of the document");
    for page in DASHBOARD {
        assert!(routes.contains(page), "the dashboard list is out of date: {page} is not a route");
    }

    // Which methods each route answers: axum says 405 for the others.
    let mut answered = BTreeMap::new();
    for route in &api_routes {
        let path = route
            .replace("{job_id}", &Uuid::now_v7().to_string())
            .replace("{step_id}", &Uuid::now_v7().to_string())
            .replace("{workspace_id}", "w");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let call = Call::new(method, "", path.clone()).raw_body("application/json", b"{}".to_vec());
            let answer = send(addr, &call).await;
            if answer.status != 405 {
                answered.entry(route.clone()).or_insert_with(BTreeSet::new).insert(method.to_ascii_lowercase());
            }
        }
    }
    let answered: BTreeSet<(String, String)> = answered
        .into_iter()
        .flat_map(|(route, methods)| methods.into_iter().map(move |m| (route.clone(), m)))
        .collect();
    assert_eq!(answered, documented, "methods the server answers vs operations of the document");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_refuses_answers_that_do_not_fit_the_document() {
    let server = TestServer::start().await.expect("start");
    let doc =
        Document::new(send(server.addr(), &Call::get("/api/v1/openapi.json", "/api/v1/openapi.json")).await.json());
    let event = json!({
        "eventId": Uuid::now_v7(), "seq": 2, "type": "job.progress", "jobId": Uuid::now_v7(),
        "workspaceId": "w", "stepId": null, "timestamp": "2025-01-31T12:00:00.000Z", "progress": 5
    });
    doc.validate("/components/schemas/Event", &event).expect("a job.progress event fits");
    for (field, value) in [
        ("seq", json!(0)),
        ("type", json!("job.exploded")),
        ("eventId", json!("not-a-uuid")),
        ("timestamp", json!("yesterday")),
        ("progress", json!("five")),
    ] {
        let mut wrong = event.clone();
        wrong[field] = value;
        assert!(doc.validate("/components/schemas/Event", &wrong).is_err(), "{field} accepted: {wrong}");
    }
    // The fields of another type: a job.progress event with step.output's fields.
    let mut wrong = event.clone();
    wrong.as_object_mut().expect("an object").remove("progress");
    wrong["chunk"] = json!("text");
    assert!(doc.validate("/components/schemas/Event", &wrong).is_err(), "{wrong}");
    // An error code that does not go with the status.
    let not_found = "/paths/~1api~1v1~1jobs~1{job_id}/get/responses/404/content/application~1json/schema";
    let body = |code: &str| json!({ "error": { "code": code, "message": "m" } });
    doc.validate(not_found, &body("not_found")).expect("not_found fits a 404");
    assert!(doc.validate(not_found, &body("conflict")).is_err());
    server.stop().await.expect("stop");
}
