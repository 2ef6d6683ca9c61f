//! Server-Sent Events: a job's stream and a workspace's stream, through the
//! same delivery hub as Socket.IO, so they share its guarantee.
//!
//! A job stream ends after the job's terminal status event (`job.completed`,
//! `job.failed` or `job.cancelled`): that event is the end of the stream, and
//! `job:event`s written after it are not part of it. A stream that would
//! start at or after that end answers `204 No Content`, which tells an
//! `EventSource` to stop reconnecting. Every stream also ends when its token
//! expires; the client reconnects with a fresh token.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use jobstream_delivery::{Announce, Outlet, OutletError, SubscribeError, Subscriber};
use jobstream_job_events::entity::job_events;
use jobstream_job_events::{Committed, EventStore, ReadError};
use jobstream_protocol::{ErrorCode, EventType, JobSnapshot};
use jobstream_rooms::Action;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use std::collections::HashMap;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::Auth;
use crate::app::AppState;
use crate::auth::Expiry;

/// Frames buffered per stream before the hub treats the reader as slow.
const STREAM_BUFFER: usize = 256;
/// Bytes of frames buffered per stream before the hub treats the reader as
/// slow (one frame may pass it): what a stream holds is bounded in bytes too.
const STREAM_BUFFER_BYTES: usize = 1024 * 1024;
/// How often an idle stream sends a comment so that proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One frame waiting to be written.
enum Frame {
    /// A job event: `id` (job streams only), `event`, `data`, and whether it ends the stream.
    Event { id: Option<i64>, name: &'static str, data: String, last: bool },
    /// The workspace stream's first frame.
    Snapshot(String),
}

/// The stored types of a job's terminal status event.
const TERMINAL_TYPES: [EventType; 3] = [EventType::JobCompleted, EventType::JobFailed, EventType::JobCancelled];

/// The stream's side of the hub: frames go into a bounded channel.
struct SseOutlet {
    tx: mpsc::Sender<Frame>,
    /// Bytes in the channel, shared with the body that drains it.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Job streams end after the job's terminal status event; workspace streams do not.
    job_stream: bool,
}

impl Outlet for SseOutlet {
    fn try_send(&self, committed: &Committed) -> Result<(), OutletError> {
        let event = &committed.event;
        let last = self.job_stream && TERMINAL_TYPES.contains(&event.event_type);
        let size = committed.json.get().len();
        if self.queued.load(std::sync::atomic::Ordering::Acquire) >= STREAM_BUFFER_BYTES {
            return Err(OutletError::Full);
        }
        let frame = Frame::Event {
            id: self.job_stream.then_some(event.seq),
            name: event.socket_event().as_str(),
            data: committed.json.get().to_owned(),
            last,
        };
        self.tx.try_send(frame).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => OutletError::Full,
            mpsc::error::TrySendError::Closed(_) => OutletError::Closed,
        })?;
        self.queued.fetch_add(size, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    fn close(&self) {
        // Dropping the subscriber (with the stream) closes the channel; nothing to do here.
    }
}

/// What a stream body holds: the subscriber (dropped with the connection),
/// its frames, and what ends it early.
struct BodyState {
    /// Held for the life of the body: dropping it ends the subscription.
    _subscriber: Subscriber,
    rx: mpsc::Receiver<Frame>,
    /// Bytes in the channel (see [`STREAM_BUFFER_BYTES`]).
    queued: Arc<std::sync::atomic::AtomicUsize>,
    stopping: tokio::sync::watch::Receiver<bool>,
    /// The token's expiry: the stream ends then.
    expired: Pin<Box<tokio::time::Sleep>>,
}

/// Turns the channel into an SSE body that owns the subscriber.
fn body(
    subscriber: Subscriber,
    (rx, queued): (mpsc::Receiver<Frame>, Arc<std::sync::atomic::AtomicUsize>),
    stopping: tokio::sync::watch::Receiver<bool>,
    expires: Expiry,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let state = BodyState {
        _subscriber: subscriber,
        rx,
        queued,
        stopping,
        expired: Box::pin(tokio::time::sleep_until(expires.deadline())),
    };
    futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        // The stream ends when the server stops or the token expires; the
        // client resumes with Last-Event-ID (with a fresh token after an expiry).
        let frame = tokio::select! {
            frame = state.rx.recv() => frame?,
            _ = state.stopping.wait_for(|stop| *stop) => return None,
            () = &mut state.expired => return None,
        };
        let (event, last) = match frame {
            Frame::Snapshot(data) => (SseEvent::default().event("snapshot").data(data), false),
            Frame::Event { id, name, data, last } => {
                state.queued.fetch_sub(data.len(), std::sync::atomic::Ordering::AcqRel);
                let mut event = SseEvent::default().event(name).data(data);
                if let Some(id) = id {
                    event = event.id(id.to_string());
                }
                (event, last)
            }
        };
        let next = if last { None } else { Some(state) };
        Some((Ok(event), next))
    })
}

/// A stream response. Its headers keep proxies from caching, transforming
/// (compressing) or buffering it: `no-transform` for caches and compressing
/// proxies, `X-Accel-Buffering: no` for nginx and the proxies that follow it.
fn sse_response(stream: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static) -> Response {
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

/// Every answer of the stream routes (the stream, its 204 end, its errors)
/// tells caches and proxies not to store, transform or buffer it.
pub async fn stream_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-transform"));
    headers.insert(header::HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
    response
}

/// The answer to a job stream that has nothing more to send, ever: `204 No
/// Content`, on which `EventSource` stops reconnecting (the HTML standard's
/// way of ending a stream for good).
fn finished_stream() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The seq of a job's terminal status event (the end of its stream), if it has one.
async fn terminal_seq(store: &EventStore, job_id: Uuid) -> Result<Option<i64>, ReadError> {
    // Reads the job's events newest first through the (job_id, seq) index; the
    // terminal event is the last one but for `job:event`s written after it.
    Ok(job_events::Entity::find()
        .select_only()
        .column(job_events::Column::Seq)
        .filter(job_events::Column::JobId.eq(job_id))
        .filter(job_events::Column::EventType.is_in(TERMINAL_TYPES.map(EventType::as_str)))
        .order_by_desc(job_events::Column::Seq)
        .limit(1)
        .into_tuple::<i64>()
        .one(store.connection())
        .await?)
}

/// The resume point: `Last-Event-ID`, else `?since=`, else 0 (the whole history).
/// Answers the seq and where it came from (`Last-Event-ID` or `since`), for
/// the refusals to name what the client sent.
fn resume_point(parts: &Parts, params: &HashMap<String, String>) -> Result<(i64, &'static str), ApiError> {
    let header =
        parts.headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    // The refusal names where the value came from: the header wins when both are sent.
    let (source, value) = match header {
        Some(text) => ("Last-Event-ID", Some(text.to_owned())),
        None => ("since", params.get("since").cloned()),
    };
    match value {
        None => Ok((0, source)),
        Some(text) => text.parse::<i64>().ok().filter(|n| *n >= 0).map(|n| (n, source)).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidPayload, format!("{source}: must be an integer ≥ 0, got {text:?}"))
        }),
    }
}

/// `GET /api/v1/jobs/{jobId}/events/stream`.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{job_id}/events/stream",
    tag = "events",
    security(("bearer" = []), ("queryToken" = [])),
    params(
        ("job_id" = uuid::Uuid, Path, description = "The job id"),
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, description = "Resume after this seq (set by `EventSource` on reconnect); wins over `since`"),
        ("since" = Option<i64>, Query, minimum = 0, description = "Resume after this seq (default 0: the whole history)"),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = String, headers(
            ("Cache-Control" = String, description = "`no-cache, no-transform`"),
            ("X-Accel-Buffering" = String, description = "`no`"),
        ), description = "Server-Sent Events: `id: <seq>`, `event: <Socket.IO event name>`, `data: <Event JSON>` \
            (schema `Event`), in `seq` order, each once; keep-alive comments; the stream ends after the job's \
            terminal event, and at the token's `exp`"),
        (status = 204, description = "The job has finished and the resume point is at or after its terminal event: \
            nothing more will ever come (`EventSource` stops reconnecting)"),
        (status = 404, description = "No such job, or one the token may not read"),
        (status = 422, description = "`since` or `Last-Event-ID` is not an integer ≥ 0 (`invalid_payload`), or is beyond \
            the newest event of a running job (`invalid_cursor`)"),
    ),
)]
pub async fn job_stream(
    State(app): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    parts: Parts,
) -> Result<Response, ApiError> {
    auth.require_scope(Action::Read)?;
    let job_id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::job_not_found(&id))?;
    let (since, source) = resume_point(&parts, &params)?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let outlet = SseOutlet { tx, queued: queued.clone(), job_stream: true };
    let subscriber = app.hub.subscriber(Arc::new(outlet));
    // The job as the subscription saw it: finished or not, and its newest seq.
    let mut seen: Option<(bool, i64)> = None;
    let check = |job: &JobSnapshot| {
        seen = Some((job.status.is_terminal(), job.last_seq));
        if auth.allows(Action::Read, &job.workspace_id) {
            Ok(())
        } else {
            Err(())
        }
    };
    let announce = |_: JobSnapshot| -> Announce { Box::new(|| Ok(())) };
    let result = subscriber.subscribe_job(job_id, Some(since), check, announce).await;
    let finished = matches!(seen, Some((true, _)));
    match result {
        Ok(()) => {}
        Err(SubscribeError::NotFound | SubscribeError::Refused(())) => return Err(ApiError::job_not_found(job_id)),
        // Beyond the newest event of a finished job is beyond its end.
        Err(SubscribeError::InvalidCursor { .. }) if finished => return Ok(finished_stream()),
        Err(SubscribeError::InvalidCursor { since, last_seq }) => {
            return Err(ApiError::new(
                ErrorCode::InvalidCursor,
                format!("{source} {since} is beyond the job's last seq {last_seq}"),
            ));
        }
        Err(SubscribeError::Read(err)) => return Err(err.into()),
        // An SSE stream is one subscription: no room limit applies.
        Err(SubscribeError::TooManyRooms { .. }) => return Err(ApiError::new(ErrorCode::Internal, "internal error")),
    }
    if let Some((true, last_seq)) = seen {
        // A finished job: the stream ends with its terminal event. Resuming at
        // or after it leaves nothing to send, now or later.
        let end = if since >= last_seq {
            last_seq
        } else {
            let started = std::time::Instant::now();
            let end = terminal_seq(&app.store, job_id).await?;
            app.metrics.db_read.since(started);
            end.unwrap_or(last_seq)
        };
        if since >= end {
            return Ok(finished_stream());
        }
    }
    Ok(sse_response(body(subscriber, (rx, queued), app.stopping.clone(), auth.expires)))
}

/// `GET /api/v1/workspaces/{workspaceId}/events/stream`.
#[utoipa::path(
    get,
    path = "/api/v1/workspaces/{workspace_id}/events/stream",
    tag = "events",
    security(("bearer" = []), ("queryToken" = [])),
    params(("workspace_id" = String, Path, description = "The workspace id")),
    responses(
        (status = 200, content_type = "text/event-stream", body = String, headers(
            ("Cache-Control" = String, description = "`no-cache, no-transform`"),
            ("X-Accel-Buffering" = String, description = "`no`"),
        ), description = "Server-Sent Events, with the rule of `subscribe:workspace:jobs`: a first `event: snapshot` \
            frame `{ \"jobs\": [JobSnapshot] }` (the live jobs), then the events of the workspace's jobs, per job in \
            `seq` order, each once (`id: <seq>`, `event: <Socket.IO event name>`, `data: <Event JSON>`); ends at the \
            token's `exp`"),
        (status = 422, description = "The workspace id is not valid"),
    ),
)]
pub async fn workspace_stream(
    State(app): State<AppState>,
    auth: Auth,
    Path(workspace_id): Path<String>,
) -> Result<Response, ApiError> {
    jobstream_protocol::requests::check_workspace_id("workspaceId", &workspace_id)?;
    auth.require(Action::Read, &workspace_id)?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let snapshot_tx = tx.clone();
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let outlet = SseOutlet { tx, queued: queued.clone(), job_stream: false };
    let subscriber = app.hub.subscriber(Arc::new(outlet));
    let announce = move |jobs: Vec<JobSnapshot>| -> Announce {
        let data =
            serde_json::to_string(&serde_json::json!({ "jobs": jobs })).unwrap_or_else(|_| "{\"jobs\":[]}".into());
        Box::new(move || {
            snapshot_tx.try_send(Frame::Snapshot(data.clone())).map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => OutletError::Full,
                mpsc::error::TrySendError::Closed(_) => OutletError::Closed,
            })
        })
    };
    subscriber.subscribe_workspace(&workspace_id, announce).await.map_err(|err| match err {
        SubscribeError::Read(err) => ApiError::from(err),
        _ => ApiError::new(ErrorCode::Internal, "internal error"),
    })?;
    Ok(sse_response(body(subscriber, (rx, queued), app.stopping.clone(), auth.expires)))
}
