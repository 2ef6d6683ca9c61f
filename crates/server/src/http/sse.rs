//! Server-Sent Events: a job's stream and a workspace's stream, through the
//! same delivery hub as Socket.IO, so they share its guarantee.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use jobstream_job_events::delivery::{Announce, Outlet, OutletError, SubscribeError, Subscriber};
use jobstream_job_events::Committed;
use jobstream_protocol::{ErrorCode, EventType, JobSnapshot};
use jobstream_rooms::Action;
use std::collections::HashMap;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::extract::Auth;
use crate::app::AppState;

/// Frames buffered per stream before the hub treats the reader as slow.
const STREAM_BUFFER: usize = 256;
/// How often an idle stream sends a comment so that proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One frame waiting to be written.
enum Frame {
    /// A job event: `id` (job streams only), `event`, `data`, and whether it ends the stream.
    Event { id: Option<i64>, name: &'static str, data: String, last: bool },
    /// The workspace stream's first frame.
    Snapshot(String),
}

/// The stream's side of the hub: frames go into a bounded channel.
struct SseOutlet {
    tx: mpsc::Sender<Frame>,
    /// Job streams end after the job's terminal status event; workspace streams do not.
    job_stream: bool,
}

impl Outlet for SseOutlet {
    fn try_send(&self, committed: &Committed) -> Result<(), OutletError> {
        let event = &committed.event;
        let last = self.job_stream
            && matches!(event.event_type, EventType::JobCompleted | EventType::JobFailed | EventType::JobCancelled);
        let frame = Frame::Event {
            id: self.job_stream.then_some(event.seq),
            name: event.socket_event().as_str(),
            data: committed.json.get().to_owned(),
            last,
        };
        self.tx.try_send(frame).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => OutletError::Full,
            mpsc::error::TrySendError::Closed(_) => OutletError::Closed,
        })
    }

    fn close(&self) {
        // Dropping the subscriber (with the stream) closes the channel; nothing to do here.
    }
}

/// Turns the channel into an SSE body that owns the subscriber (dropped with the connection).
fn body(
    subscriber: Subscriber,
    rx: mpsc::Receiver<Frame>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let subscriber = Arc::new(subscriber);
    futures::stream::unfold(Some((subscriber, rx, stopping)), |state| async move {
        let (subscriber, mut rx, mut stopping) = state?;
        // The stream ends when the server stops; the client resumes with Last-Event-ID.
        let frame = tokio::select! {
            frame = rx.recv() => frame?,
            _ = stopping.wait_for(|stop| *stop) => return None,
        };
        let (event, last) = match frame {
            Frame::Snapshot(data) => (SseEvent::default().event("snapshot").data(data), false),
            Frame::Event { id, name, data, last } => {
                let mut event = SseEvent::default().event(name).data(data);
                if let Some(id) = id {
                    event = event.id(id.to_string());
                }
                (event, last)
            }
        };
        let next = if last { None } else { Some((subscriber, rx, stopping)) };
        Some((Ok(event), next))
    })
}

fn sse_response(stream: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static) -> Response {
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}

/// The resume point: `Last-Event-ID`, else `?since=`, else 0 (the whole history).
fn resume_point(parts: &Parts, params: &HashMap<String, String>) -> Result<i64, ApiError> {
    let header =
        parts.headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    match header.map(str::to_owned).or_else(|| params.get("since").cloned()) {
        None => Ok(0),
        Some(text) => text.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidPayload, format!("since: must be an integer ≥ 0, got {text:?}"))
        }),
    }
}

/// `GET /api/v1/jobs/{jobId}/events/stream`.
pub async fn job_stream(
    State(app): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    parts: Parts,
) -> Result<Response, ApiError> {
    auth.require_scope(Action::Read)?;
    let job_id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::job_not_found(&id))?;
    let since = resume_point(&parts, &params)?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let subscriber = app.hub.subscriber(Arc::new(SseOutlet { tx, job_stream: true }));
    let mut finished = false;
    let check = |job: &JobSnapshot| {
        finished = job.status.is_terminal() && since >= job.last_seq;
        if auth.allows(Action::Read, &job.workspace_id) {
            Ok(())
        } else {
            Err(())
        }
    };
    let announce = |_: JobSnapshot| -> Announce { Box::new(|| Ok(())) };
    match subscriber.subscribe_job(job_id, Some(since), check, announce).await {
        Ok(()) => {}
        Err(SubscribeError::NotFound | SubscribeError::Refused(())) => return Err(ApiError::job_not_found(job_id)),
        Err(SubscribeError::InvalidCursor { since, last_seq }) => {
            return Err(ApiError::new(
                ErrorCode::InvalidCursor,
                format!("since {since} is beyond the job's last seq {last_seq}"),
            ));
        }
        Err(SubscribeError::Read(err)) => return Err(err.into()),
    }
    if finished {
        // Nothing more will come: an empty stream that ends at once.
        return Ok(sse_response(futures::stream::empty()));
    }
    Ok(sse_response(body(subscriber, rx, app.stopping.clone())))
}

/// `GET /api/v1/workspaces/{workspaceId}/events/stream`.
pub async fn workspace_stream(
    State(app): State<AppState>,
    auth: Auth,
    Path(workspace_id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Action::Read, &workspace_id)?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let snapshot_tx = tx.clone();
    let subscriber = app.hub.subscriber(Arc::new(SseOutlet { tx, job_stream: false }));
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
    Ok(sse_response(body(subscriber, rx, app.stopping.clone())))
}
