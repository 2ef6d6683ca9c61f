//! A step's log: the raw text (contract §7, "Raw step log"), numbered lines
//! from any line or from the end, and a search of the whole log (additions
//! documented in `docs/contract.md`, "Step log").
//!
//! All three read the step's `step.output` chunks from the database a page at
//! a time (see `jobstream_job_events::log` for what a line is), so a read
//! holds one page in memory whatever the size of the log. They authorise as
//! the other GET routes: `read` scope and the job's workspace, else 404.

use std::collections::{HashMap, VecDeque};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jobstream_job_events::log::visible_text;
use jobstream_job_events::{EventStore, LineAssembler, LogChunk, LogCursor, LogLine, StepLogInfo};
use jobstream_protocol::{ErrorCode, OutputStream, StepStatus, Timestamp};
use jobstream_rooms::Action;
use serde::Serialize;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::Auth;
use super::int_param;
use crate::app::AppState;

/// Chunks read from the database per page.
const PAGE_CHUNKS: u64 = 256;
/// Most lines one `log/lines` answer holds (also its `limit` and `tail` maximum).
pub const MAX_LINES: i64 = 5_000;
/// A line longer than this (bytes) is cut in a `log/lines` answer (`cut: true`).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Text a `log/lines` answer gathers at most (bytes) before it stops early.
const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;
/// Longest search text (bytes).
pub const MAX_QUERY_BYTES: usize = 200;
/// Most matches one search answer holds (also its `limit` maximum).
pub const MAX_MATCHES: i64 = 1_000;
/// Log text one search request reads at most (bytes); it then answers with `next`.
pub const SEARCH_BUDGET_BYTES: usize = 32 * 1024 * 1024;
/// In a search, a line is matched on its first this many bytes.
const SEARCH_LINE_BYTES: usize = 1024 * 1024;

/// The three log routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/jobs/{job_id}/steps/{step_id}/log", get(raw_log))
        .route("/api/v1/jobs/{job_id}/steps/{step_id}/log/lines", get(log_lines))
        .route("/api/v1/jobs/{job_id}/steps/{step_id}/log/search", get(log_search))
}

/// The step the path names, if the token may read its job; else 404.
async fn step_for(app: &AppState, auth: &Auth, job: &str, step: &str) -> Result<(Uuid, StepLogInfo), ApiError> {
    auth.require_scope(Action::Read)?;
    let job = super::job_id(job)?;
    let step = super::step_id(job, step)?;
    match app.store.step_log_info(job, step).await? {
        Some(info) if auth.allows(Action::Read, &info.workspace_id) => Ok((step, info)),
        Some(_) => Err(ApiError::job_not_found(job)),
        None => Err(ApiError::new(ErrorCode::NotFound, format!("step {step} not found in job {job}"))),
    }
}

/// `?stream=`: absent or empty for both streams.
fn stream_param(params: &HashMap<String, String>) -> Result<Option<OutputStream>, ApiError> {
    match params.get("stream").map(String::as_str) {
        None | Some("") => Ok(None),
        Some("stdout") => Ok(Some(OutputStream::Stdout)),
        Some("stderr") => Ok(Some(OutputStream::Stderr)),
        Some(other) => Err(ApiError::new(
            ErrorCode::InvalidPayload,
            format!("stream: must be stdout or stderr, got {:?}", other.chars().take(40).collect::<String>()),
        )),
    }
}

/// `GET …/steps/{stepId}/log[?stream=stdout|stderr]`: the chunks in `seq`
/// order as `text/plain; charset=utf-8`, streamed a page at a time. A step
/// with no output answers 200 with an empty body. A database error after the
/// answer has begun ends the connection without finishing the body.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{job_id}/steps/{step_id}/log",
    tag = "events",
    params(
        super::StepPath,
        ("stream" = Option<String>, Query, description = "Only this stream: `stdout` or `stderr` (default both)"),
    ),
    responses(
        (status = 200, description = "The step's output chunks in `seq` order, streamed", content_type = "text/plain; charset=utf-8", body = String),
        (status = 404, description = "No such job or step, or one the token may not read"),
        (status = 422, description = "`stream` is not `stdout` or `stderr`"),
    ),
)]
pub async fn raw_log(
    State(app): State<AppState>,
    auth: Auth,
    Path((job, step)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let stream = stream_param(&params)?;
    let (step, _) = step_for(&app, &auth, &job, &step).await?;
    // The first page is read before answering, so that an unavailable
    // database is a 503 rather than a cut body.
    let first = app.store.log_chunks(step, LogCursor::START, PAGE_CHUNKS).await?;
    let body = futures::stream::unfold((app.store.clone(), Some(first)), move |(store, page)| async move {
        let mut page = page?;
        loop {
            let last = page.last()?;
            let cursor = LogCursor::after(last);
            let full = page.len() as u64 == PAGE_CHUNKS;
            let text = concat(&page, stream);
            let next = if full {
                match store.log_chunks(step, cursor, PAGE_CHUNKS).await {
                    Ok(next) => Some(next),
                    Err(err) => {
                        tracing::warn!(error = %err, %step, "raw log: read failed; the answer is cut");
                        return Some((Err(std::io::Error::other("log read failed")), (store, None)));
                    }
                }
            } else {
                Some(Vec::new())
            };
            if !text.is_empty() {
                return Some((Ok::<_, std::io::Error>(Bytes::from(text)), (store, next)));
            }
            page = next?;
        }
    });
    Ok((
        [(CONTENT_TYPE, "text/plain; charset=utf-8"), (CACHE_CONTROL, "no-cache"), (X_CONTENT_TYPE_OPTIONS, "nosniff")],
        Body::from_stream(body),
    )
        .into_response())
}

fn concat(page: &[LogChunk], stream: Option<OutputStream>) -> String {
    let mut text = String::new();
    for chunk in page.iter().filter(|c| stream.is_none_or(|s| s == c.stream)) {
        text.push_str(&chunk.chunk);
    }
    text
}

/// One line of a `log/lines` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    /// Its number, from 1.
    n: i64,
    /// The seq of the chunk it starts in.
    seq: i64,
    /// That chunk's timestamp.
    #[schema(value_type = String, format = DateTime)]
    timestamp: Timestamp,
    stream: OutputStream,
    text: String,
    /// `false` only for the last line of a log not ended by `\n` yet.
    ended: bool,
    /// Present and `true` when the text was cut at [`MAX_LINE_BYTES`].
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cut: bool,
}

impl From<LogLine> for Line {
    fn from(l: LogLine) -> Self {
        Self {
            n: l.number,
            seq: l.seq,
            timestamp: l.timestamp,
            stream: l.stream,
            text: l.text,
            ended: l.ended,
            cut: l.cut,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinesAnswer {
    lines: Vec<Line>,
    /// Lines in the log as far as known: exact when `end` is true.
    total: i64,
    /// Whether the answer reaches the end of the log as stored.
    end: bool,
    /// The seq of the last chunk read (0 if none): later `step:output`
    /// events of the step follow it.
    last_seq: i64,
    /// The step's status when read.
    status: StepStatus,
}

/// `GET …/log/lines?from=N&limit=M` (lines N.. N+M-1) or `?tail=M` (the last
/// M lines, read to the end of the log). `limit`/`tail`: 1 to 5,000, default 500.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{job_id}/steps/{step_id}/log/lines",
    tag = "events",
    params(
        super::StepPath,
        ("from" = Option<i64>, Query, minimum = 1, description = "The first line (from 1; default 1)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 5000, description = "Lines from `from` (default 500)"),
        ("tail" = Option<i64>, Query, minimum = 1, maximum = 5000, description = "Instead of `from`/`limit`: the last this many lines"),
    ),
    responses(
        (status = 200, description = "Numbered lines of the step's log", body = LinesAnswer),
        (status = 404, description = "No such job or step, or one the token may not read"),
        (status = 422, description = "A parameter is out of range"),
    ),
)]
pub async fn log_lines(
    State(app): State<AppState>,
    auth: Auth,
    Path((job, step)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let tail = match params.get("tail").filter(|v| !v.is_empty()) {
        Some(_) => Some(int_param(&params, "tail", 500, 1..=MAX_LINES)?),
        None => None,
    };
    let from = int_param(&params, "from", 1, 1..=i64::MAX)?;
    let limit = int_param(&params, "limit", 500, 1..=MAX_LINES)?;
    let (step, info) = step_for(&app, &auth, &job, &step).await?;
    let store = &app.store;
    let (want, start) = match tail {
        // One line more than asked, in case the last one has no `\n` yet.
        Some(tail) => (tail, (info.output_lines - tail).max(0)),
        None => (limit, from - 1),
    };
    let (mut cursor, skip) = store.log_seek(step, start).await?;
    let mut assembler = LineAssembler::new(start.saturating_add(1), skip, MAX_LINE_BYTES);
    let mut lines: VecDeque<Line> = VecDeque::new();
    let mut bytes = 0usize;
    let mut last_seq = 0;
    let mut end = false;
    loop {
        let page = store.log_chunks(step, cursor, PAGE_CHUNKS).await?;
        for chunk in &page {
            assembler.push(chunk, |line| {
                bytes += json_len(&line.text);
                lines.push_back(line.into());
            });
            last_seq = chunk.seq;
            if tail.is_some() {
                // The last `want` lines, within the byte bound.
                while lines.len() as i64 > want || (bytes > MAX_PAGE_BYTES && lines.len() > 1) {
                    if let Some(line) = lines.pop_front() {
                        bytes -= json_len(&line.text);
                    }
                }
            }
        }
        match page.last() {
            Some(last) if page.len() as u64 == PAGE_CHUNKS => cursor = LogCursor::after(last),
            _ => {
                end = true;
                break;
            }
        }
        if tail.is_none() && (lines.len() as i64 >= want || bytes >= MAX_PAGE_BYTES) {
            break;
        }
    }
    let mut last_number = assembler.next_number() - 1;
    if end {
        if let Some(line) = assembler.finish() {
            last_number = line.number;
            bytes += json_len(&line.text);
            lines.push_back(line.into());
        }
    }
    // At most `want` lines, and at most MAX_PAGE_BYTES of (escaped) text, but
    // always one line: a tail answer keeps the last lines, a forward one the first.
    while lines.len() as i64 > want || (bytes > MAX_PAGE_BYTES && lines.len() > 1) {
        let dropped = if tail.is_some() {
            lines.pop_front()
        } else {
            end = false;
            lines.pop_back()
        };
        if let Some(line) = dropped {
            bytes = bytes.saturating_sub(json_len(&line.text));
        }
    }
    // Past the end, nothing was numbered: the ended lines, and a last one
    // without its `\n` yet if the log has one.
    let total = match (end, lines.is_empty()) {
        (true, false) => last_number,
        (true, true) => info.output_lines + i64::from(has_open_line(store, step, info.output_lines).await?),
        (false, _) => last_number.max(info.output_lines),
    };
    let answer = LinesAnswer { lines: lines.into(), total, end, last_seq, status: info.status };
    Ok(([(CACHE_CONTROL, "no-cache")], Json(answer)).into_response())
}

/// Whether the step's log, with `newlines` `\n` in it, goes on after the
/// last of them: a last line whose `\n` has not come yet.
async fn has_open_line(store: &EventStore, step: uuid::Uuid, newlines: i64) -> Result<bool, ApiError> {
    let (cursor, skip) = store.log_seek(step, newlines).await?;
    let mut assembler = LineAssembler::new(newlines.saturating_add(1), skip, 1);
    for chunk in &store.log_chunks(step, cursor, PAGE_CHUNKS).await? {
        assembler.push(chunk, |_| {});
    }
    Ok(assembler.finish().is_some())
}

/// The size of `text` as a JSON string (a control character is written as
/// `\u00XX`, a quote or backslash escaped): what the byte bound of an answer counts.
fn json_len(text: &str) -> usize {
    text.len()
        + text
            .bytes()
            .map(|b| match b {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
                0..=0x1f => 5,
                _ => 0,
            })
            .sum::<usize>()
        + 2
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchAnswer {
    /// The numbers of the matching lines, ascending.
    matches: Vec<i64>,
    /// Where to go on (`after=next`), or `null` when the end of the log was reached.
    next: Option<i64>,
}

/// `GET …/log/search?q=TEXT[&after=N][&limit=M]`: the lines after line N
/// (default 0) whose visible text (escape sequences left out) contains TEXT,
/// ignoring case. TEXT: 1 to 200 bytes. `limit`: 1 to 1,000, default 100. One
/// request reads at most 32 MiB of log, then answers with `next`.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{job_id}/steps/{step_id}/log/search",
    tag = "events",
    params(
        super::StepPath,
        ("q" = String, Query, description = "The text to find (1 to 200 bytes), ignoring case and escape sequences"),
        ("after" = Option<i64>, Query, minimum = 0, description = "Only lines after this one (default 0)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many matches (default 100)"),
    ),
    responses(
        (status = 200, description = "The numbers of the matching lines", body = SearchAnswer),
        (status = 404, description = "No such job or step, or one the token may not read"),
        (status = 422, description = "A parameter is out of range"),
    ),
)]
pub async fn log_search(
    State(app): State<AppState>,
    auth: Auth,
    Path((job, step)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let query = params.get("q").map(String::as_str).unwrap_or("");
    if query.is_empty() || query.len() > MAX_QUERY_BYTES {
        return Err(ApiError::new(
            ErrorCode::InvalidPayload,
            format!("q: must be 1 to {MAX_QUERY_BYTES} bytes, got {}", query.len()),
        ));
    }
    let after = int_param(&params, "after", 0, 0..=i64::MAX)?;
    let limit = int_param(&params, "limit", 100, 1..=MAX_MATCHES)?;
    let (step, _) = step_for(&app, &auth, &job, &step).await?;
    let needle = query.to_lowercase();
    let store: &EventStore = &app.store;
    let (mut cursor, skip) = store.log_seek(step, after).await?;
    let mut assembler = LineAssembler::new(after.saturating_add(1), skip, SEARCH_LINE_BYTES);
    let mut matches = Vec::new();
    let mut read = 0usize;
    let test = |line: &LogLine| visible_text(&line.text).to_lowercase().contains(&needle);
    loop {
        let page = store.log_chunks(step, cursor, PAGE_CHUNKS).await?;
        for chunk in &page {
            read += chunk.chunk.len();
            assembler.push(chunk, |line| {
                if test(&line) {
                    matches.push(line.number);
                }
            });
            if matches.len() as i64 >= limit {
                matches.truncate(limit as usize);
                let next = matches.last().copied();
                return Ok(Json(SearchAnswer { matches, next }).into_response());
            }
        }
        match page.last() {
            Some(last) if page.len() as u64 == PAGE_CHUNKS => cursor = LogCursor::after(last),
            _ => break,
        }
        if read >= SEARCH_BUDGET_BYTES {
            // Go on after the last line ended so far.
            // A line longer than the budget is left out rather than read forever.
            let ended = assembler.next_number() - 1;
            let next = if ended > after { ended } else { ended.saturating_add(1) };
            return Ok(Json(SearchAnswer { matches, next: Some(next) }).into_response());
        }
    }
    if let Some(line) = assembler.finish() {
        if test(&line) && (matches.len() as i64) < limit {
            matches.push(line.number);
        }
    }
    Ok(Json(SearchAnswer { matches, next: None }).into_response())
}
