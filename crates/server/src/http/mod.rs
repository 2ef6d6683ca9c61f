//! The HTTP API (`/api/v1`), health endpoints and the JSON fallback.

pub mod error;
pub mod extract;
pub mod log;
pub mod openapi;
pub mod sse;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jobstream_job_events::{Applied, JobQuery};
use jobstream_protocol::requests::Request as _;
use jobstream_protocol::{
    BatchItem, BatchRequest, CompleteStep, CreateJob, CustomEventRequest, ErrorCode, JobStatus, ProgressRequest,
    StartStep, StatusRequest, StepOutputRequest, StepSnapshot, ValidationError,
};
use jobstream_rooms::Action;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use uuid::Uuid;

use crate::app::AppState;
use error::ApiError;
use extract::{Auth, JsonBody};

/// The routes of the HTTP API, health checks and the OpenAPI document
/// ([`openapi::ApiDoc`] describes each of them).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .route("/api/v1/jobs", post(create_job).get(list_jobs))
        .route("/api/v1/jobs/{job_id}", get(get_job))
        .route("/api/v1/jobs/{job_id}/status", post(set_status))
        .route("/api/v1/jobs/{job_id}/progress", post(job_progress))
        .route("/api/v1/jobs/{job_id}/steps", post(start_step))
        .route("/api/v1/jobs/{job_id}/steps/{step_id}/progress", post(step_progress))
        .route("/api/v1/jobs/{job_id}/steps/{step_id}/output", post(step_output))
        .route("/api/v1/jobs/{job_id}/steps/{step_id}/complete", post(complete_step))
        .route("/api/v1/jobs/{job_id}/events", post(custom_event).get(job_events))
        // The two routes that also take `?token=` (see `extract::request_token`).
        .route(
            extract::JOB_STREAM_ROUTE,
            get(sse::job_stream).layer(axum::middleware::map_response(sse::stream_headers)),
        )
        .route(
            extract::WORKSPACE_STREAM_ROUTE,
            get(sse::workspace_stream).layer(axum::middleware::map_response(sse::stream_headers)),
        )
        .route("/api/v1/events/batch", post(batch))
        .merge(log::router())
}

/// The answer for paths that match no route.
pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint; the API lives under /api/v1")
}

/// A route asked with a method it does not take: 405 `method_not_allowed`
/// with the contract's error body (the router adds `Allow`).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take this method; the Allow header lists those it does",
    )
}

/// `GET /healthz`: the process serves.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The process serves", body = openapi::Health)),
)]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: the database answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "The database answers", body = openapi::Ready),
        (status = 503, description = "The database does not answer"),
    ),
)]
pub async fn readyz(State(app): State<AppState>) -> Response {
    match app.store.ping().await {
        Ok(()) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check: database does not answer");
            ApiError::new(ErrorCode::Unavailable, "the database does not answer").into_response()
        }
    }
}

/// Takes one write from the token subject's allowance (`crate::limits`):
/// past it, 429 `rate_limited` with `Retry-After`.
fn check_rate(app: &AppState, auth: &Auth) -> Result<(), ApiError> {
    app.admission.check_write(&auth.claims.subject).map_err(ApiError::rate_limited)
}

/// A path id: anything that is not a UUID names no job (404).
fn job_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::job_not_found(text))
}

fn step_id(job: Uuid, text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::new(ErrorCode::NotFound, format!("step {text} not found in job {job}")))
}

/// An integer query parameter within `range`, or its default.
fn int_param(
    params: &HashMap<String, String>,
    name: &str,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64, ApiError> {
    match params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(text) => match text.parse::<i64>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(ApiError::new(
                ErrorCode::InvalidPayload,
                format!("{name}: must be an integer from {} to {}, got {text:?}", range.start(), range.end()),
            )),
        },
    }
}

/// `POST /api/v1/jobs`: creates a job (appends `job.created`, seq 1).
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "jobs",
    request_body = jobstream_protocol::CreateJob,
    responses(
        (status = 201, description = "Created; the job's first event is `job.created`", body = jobstream_protocol::JobSnapshot),
        (status = 200, description = "A job with this `id` already exists in this workspace: it is answered as it is now", body = jobstream_protocol::JobSnapshot),
        (status = 409, description = "The `id` is taken by a job of another workspace"),
    ),
)]
pub async fn create_job(
    State(app): State<AppState>,
    auth: Auth,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    auth.require_scope(Action::Write)?;
    check_rate(&app, &auth)?;
    let request = CreateJob::parse(body)?;
    auth.require(Action::Write, &request.workspace_id)?;
    let started = std::time::Instant::now();
    let (job, created) = app.writer.create_job(request).await?;
    app.metrics.db_write.since(started);
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(job)).into_response())
}

/// `GET /api/v1/jobs`: the jobs the token may read, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    params(
        ("workspaceId" = Option<String>, Query, description = "Only this workspace (default: every workspace of the token)"),
        ("status" = Option<jobstream_protocol::JobStatus>, Query, description = "Only jobs in this status"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "At most this many jobs (default 50)"),
    ),
    responses(
        (status = 200, description = "The jobs, newest first, without `steps`", body = openapi::JobList),
        (status = 422, description = "A parameter is out of range or unknown"),
    ),
)]
pub async fn list_jobs(
    State(app): State<AppState>,
    auth: Auth,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    auth.require_scope(Action::Read)?;
    let limit = int_param(&params, "limit", 50, 1..=500)?;
    let status = match params.get("status").filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(JobStatus::parse(text).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidPayload,
                format!(
                    "status: unknown status {text:?}; use pending, queued, running, completed, failed or cancelled"
                ),
            )
        })?),
    };
    let workspaces = match params.get("workspaceId").filter(|s| !s.is_empty()) {
        Some(workspace) => {
            jobstream_protocol::requests::check_workspace_id("workspaceId", workspace)?;
            auth.require(Action::Read, workspace)?;
            Some(vec![workspace.clone()])
        }
        None if auth.claims.all_workspaces() => None,
        None => Some(auth.claims.workspaces.iter().cloned().collect()),
    };
    let started = std::time::Instant::now();
    let jobs = app.store.jobs(JobQuery { workspaces, status, limit: limit as u64 }).await?;
    app.metrics.db_read.since(started);
    Ok(Json(serde_json::json!({ "jobs": jobs })).into_response())
}

/// `GET /api/v1/jobs/{job_id}`: the job with its steps.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{job_id}",
    tag = "jobs",
    params(JobPath),
    responses(
        (status = 200, description = "The job with `steps`", body = jobstream_protocol::JobSnapshot),
        (status = 404, description = "No such job, or one the token may not read"),
    ),
)]
pub async fn get_job(State(app): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<Response, ApiError> {
    auth.require_scope(Action::Read)?;
    let id = job_id(&id)?;
    let started = std::time::Instant::now();
    let job = app.store.job(id).await?;
    app.metrics.db_read.since(started);
    match job {
        Some(job) if auth.allows(Action::Read, &job.workspace_id) => Ok(Json(job).into_response()),
        _ => Err(ApiError::job_not_found(id)),
    }
}

/// About the most bytes of events read from the database at a time while a
/// history page is written: the page (`limit` events, as asked) is streamed
/// in reads of this size, so its memory is bounded whatever its events weigh
/// (docs/behaviour.md, "History pages").
pub const HISTORY_READ_BYTES: usize = 1024 * 1024;

/// `GET /api/v1/jobs/{job_id}/events`: a page of the job's history.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{job_id}/events",
    tag = "events",
    params(
        JobPath,
        ("since" = Option<i64>, Query, minimum = 0, description = "Only events with `seq > since` (default 0)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 10000, description = "At most this many events (default 1000)"),
    ),
    responses(
        (status = 200, description = "The events after `since`, ascending, and the job's newest seq", body = openapi::EventPage),
        (status = 404, description = "No such job, or one the token may not read"),
        (status = 422, description = "A parameter is out of range"),
    ),
)]
pub async fn job_events(
    State(app): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    auth.require_scope(Action::Read)?;
    let id = job_id(&id)?;
    let since = int_param(&params, "since", 0, 0..=i64::MAX)?;
    let limit = int_param(&params, "limit", 1000, 1..=10_000)?;
    let last_seq = match app.store.job(id).await? {
        Some(job) if auth.allows(Action::Read, &job.workspace_id) => job.last_seq,
        _ => return Err(ApiError::job_not_found(id)),
    };
    // The first read is made before answering, so that an unavailable
    // database is a 503 rather than a cut body; the rest is streamed.
    let started = std::time::Instant::now();
    let first = app.store.events_page(id, since, limit as u64, HISTORY_READ_BYTES).await?;
    app.metrics.db_read.since(started);
    let state = HistoryStream { store: app.store.clone(), job: id, left: limit as u64, next: Some(first), sent: 0 };
    let head = futures::stream::once(async { Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"events\":[")) });
    let events = futures::stream::unfold(state, |mut state| async move {
        let page = state.next.take()?;
        let mut out = String::with_capacity(page.events.iter().map(|e| e.json.get().len() + 1).sum::<usize>());
        for event in &page.events {
            if state.sent > 0 {
                out.push(',');
            }
            state.sent += 1;
            out.push_str(event.json.get());
        }
        state.left = state.left.saturating_sub(page.events.len() as u64);
        if let (true, Some(last)) = (page.more && state.left > 0, page.events.last()) {
            match state.store.events_page(state.job, last.event.seq, state.left, HISTORY_READ_BYTES).await {
                Ok(next) => state.next = Some(next),
                Err(err) => {
                    tracing::warn!(error = %err, job = %state.job, "history: read failed; the answer is cut");
                    return Some((Err(std::io::Error::other("history read failed")), state));
                }
            }
        }
        Some((Ok(bytes::Bytes::from(out)), state))
    });
    let tail = futures::stream::once(async move { Ok(bytes::Bytes::from(format!("],\"lastSeq\":{last_seq}}}"))) });
    let body = futures::StreamExt::chain(futures::StreamExt::chain(head, events), tail);
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], axum::body::Body::from_stream(body)).into_response())
}

/// Where a streamed history page is.
struct HistoryStream {
    store: jobstream_job_events::EventStore,
    job: Uuid,
    /// Events still to send.
    left: u64,
    /// The next read, if any.
    next: Option<jobstream_job_events::EventPage>,
    /// Events sent so far.
    sent: u64,
}

/// The answer of a write route: `{ event }` or `{ step, event }`.
#[derive(Serialize)]
struct WriteAnswer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<&'a StepSnapshot>,
    event: &'a RawValue,
}

/// Refuses a `step:output` chunk over the configured size (413).
fn check_chunk(item: &BatchItem, limit: usize) -> Result<(), ApiError> {
    match item {
        BatchItem::Output(_, _, output) if output.chunk.len() > limit => Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "chunk is {} bytes; the limit is {limit} bytes: split the output into smaller chunks",
                output.chunk.len()
            ),
        )),
        _ => Ok(()),
    }
}

/// Applies one write for the token and answers as the route says.
async fn write(
    app: &AppState,
    auth: &Auth,
    (item, event_id): (BatchItem, Option<Uuid>),
    answer: Answer,
) -> Result<Response, ApiError> {
    let Answer { status, with_step } = answer;
    check_chunk(&item, app.limits.max_chunk_bytes)?;
    let started = std::time::Instant::now();
    let Applied { event, step, repeated } = app.writer.write_with_id(item, event_id, auth.may(Action::Write)).await?;
    app.metrics.db_write.since(started);
    let step = if with_step { step.as_ref() } else { None };
    // A repeat (same eventId, same write) answers 200 with the stored event.
    let status = if repeated { StatusCode::OK } else { status };
    Ok((status, Json(WriteAnswer { step, event: &event.json })).into_response())
}

/// How a write route answers: its status, and whether the step is included.
#[derive(Clone, Copy)]
struct Answer {
    status: StatusCode,
    with_step: bool,
}

const OK: Answer = Answer { status: StatusCode::OK, with_step: false };
const OK_WITH_STEP: Answer = Answer { status: StatusCode::OK, with_step: true };
const CREATED: Answer = Answer { status: StatusCode::CREATED, with_step: false };
const CREATED_WITH_STEP: Answer = Answer { status: StatusCode::CREATED, with_step: true };

/// Builds a job-addressed write from the job id and the body.
type JobWrite = fn(Uuid, serde_json::Value) -> Result<BatchItem, ValidationError>;
/// Builds a step-addressed write from the job id, the step id and the body.
type StepWrite = fn(Uuid, Uuid, serde_json::Value) -> Result<BatchItem, ValidationError>;

/// `POST /api/v1/jobs/{jobId}/…`: scope check, path, body, then the write.
async fn job_write(
    app: &AppState,
    auth: &Auth,
    (id, body): (&str, serde_json::Value),
    make: JobWrite,
    answer: Answer,
) -> Result<Response, ApiError> {
    auth.require_scope(Action::Write)?;
    check_rate(app, auth)?;
    let id = job_id(id)?;
    let event_id = jobstream_protocol::requests::event_id(&body)?;
    write(app, auth, (make(id, body)?, event_id), answer).await
}

/// `POST /api/v1/jobs/{jobId}/steps/{stepId}/…`.
async fn step_write(
    app: &AppState,
    auth: &Auth,
    (id, step, body): (&str, &str, serde_json::Value),
    make: StepWrite,
    answer: Answer,
) -> Result<Response, ApiError> {
    auth.require_scope(Action::Write)?;
    check_rate(app, auth)?;
    let id = job_id(id)?;
    let step = step_id(id, step)?;
    let event_id = jobstream_protocol::requests::event_id(&body)?;
    write(app, auth, (make(id, step, body)?, event_id), answer).await
}

/// The `{job_id}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct JobPath {
    /// The job id (a UUID; anything else names no job: 404).
    job_id: Uuid,
}

/// The `{job_id}` and `{step_id}` path parameters.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct StepPath {
    /// The job id.
    job_id: Uuid,
    /// The step id, a step of that job.
    step_id: Uuid,
}

/// `POST /api/v1/jobs/{job_id}/status`: moves the job to a status.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{job_id}/status",
    tag = "writes",
    params(JobPath),
    request_body = openapi::StatusBody,
    responses(
        (status = 200, description = "The `job.<status>` event appended (or the one stored for a repeated `eventId`)", body = openapi::EventAnswer),
        (status = 404, description = "No such job, or one the token may not write"),
        (status = 409, description = "The transition is refused (`invalid_transition`), or the `eventId` was used with another body (`conflict`)"),
    ),
)]
pub async fn set_status(
    State(app): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    job_write(&app, &auth, (&id, body), |id, b| Ok(BatchItem::Status(id, StatusRequest::parse(b)?)), OK).await
}

/// `POST /api/v1/jobs/{job_id}/progress`: reports the job's progress.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{job_id}/progress",
    tag = "writes",
    params(JobPath),
    request_body = openapi::ProgressBody,
    responses(
        (status = 200, description = "The `job.progress` event", body = openapi::EventAnswer),
        (status = 404, description = "No such job, or one the token may not write"),
        (status = 409, description = "The job has finished, or the `eventId` was used with another body"),
    ),
)]
pub async fn job_progress(
    State(app): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    job_write(&app, &auth, (&id, body), |id, b| Ok(BatchItem::Progress(id, ProgressRequest::parse(b)?)), OK).await
}

/// `POST /api/v1/jobs/{job_id}/steps`: starts a step.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{job_id}/steps",
    tag = "writes",
    params(JobPath),
    request_body = openapi::StartStepBody,
    responses(
        (status = 201, description = "The running step and its `step.started` event", body = openapi::StepEventAnswer),
        (status = 200, description = "A repeated `eventId`: the step and the event stored", body = openapi::StepEventAnswer),
        (status = 404, description = "No such job, or one the token may not write"),
        (status = 409, description = "The job has finished, the step `id` is taken, or the `eventId` was used with another body"),
    ),
)]
pub async fn start_step(
    State(app): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    job_write(&app, &auth, (&id, body), |id, b| Ok(BatchItem::Step(id, StartStep::parse(b)?)), CREATED_WITH_STEP).await
}

/// `POST /api/v1/jobs/{job_id}/steps/{step_id}/progress`: reports a running step's progress.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{job_id}/steps/{step_id}/progress",
    tag = "writes",
    params(StepPath),
    request_body = openapi::ProgressBody,
    responses(
        (status = 200, description = "The `step.progress` event", body = openapi::EventAnswer),
        (status = 404, description = "No such job or step"),
        (status = 409, description = "The step is not running, the job has finished, or the `eventId` was used with another body"),
    ),
)]
pub async fn step_progress(
    State(app): State<AppState>,
    auth: Auth,
    Path((id, step)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let make: StepWrite = |id, step, b| Ok(BatchItem::StepProgress(id, step, ProgressRequest::parse(b)?));
    step_write(&app, &auth, (&id, &step, body), make, OK).await
}

/// `POST /api/v1/jobs/{job_id}/steps/{step_id}/output`: appends a chunk of a running step's output.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{job_id}/steps/{step_id}/output",
    tag = "writes",
    params(StepPath),
    request_body = openapi::OutputBody,
    responses(
        (status = 200, description = "The `step.output` event", body = openapi::EventAnswer),
        (status = 404, description = "No such job or step"),
        (status = 409, description = "The step is not running, the job has finished, or the `eventId` was used with another body"),
        (status = 413, description = "The body, or the `chunk` (default limit 64 KiB), is over its limit"),
    ),
)]
pub async fn step_output(
    State(app): State<AppState>,
    auth: Auth,
    Path((id, step)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let make: StepWrite = |id, step, b| Ok(BatchItem::Output(id, step, StepOutputRequest::parse(b)?));
    step_write(&app, &auth, (&id, &step, body), make, OK).await
}

/// `POST /api/v1/jobs/{job_id}/steps/{step_id}/complete`: finishes a running step.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{job_id}/steps/{step_id}/complete",
    tag = "writes",
    params(StepPath),
    request_body = openapi::CompleteStepBody,
    responses(
        (status = 200, description = "The finished step and its `step.completed` or `step.failed` event", body = openapi::StepEventAnswer),
        (status = 404, description = "No such job or step"),
        (status = 409, description = "The step is not running, the job has finished, or the `eventId` was used with another body"),
    ),
)]
pub async fn complete_step(
    State(app): State<AppState>,
    auth: Auth,
    Path((id, step)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let make: StepWrite = |id, step, b| Ok(BatchItem::StepComplete(id, step, CompleteStep::parse(b)?));
    step_write(&app, &auth, (&id, &step, body), make, OK_WITH_STEP).await
}

/// `POST /api/v1/jobs/{job_id}/events`: appends a `job:event` (`ai.*`, `gate.*`), also to a finished job.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{job_id}/events",
    tag = "writes",
    params(JobPath),
    request_body = openapi::CustomEventBody,
    responses(
        (status = 201, description = "The event", body = openapi::EventAnswer),
        (status = 200, description = "A repeated `eventId`: the event stored", body = openapi::EventAnswer),
        (status = 404, description = "No such job (or step), or one the token may not write"),
        (status = 409, description = "The `eventId` was used with another body"),
    ),
)]
pub async fn custom_event(
    State(app): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    job_write(&app, &auth, (&id, body), |id, b| Ok(BatchItem::Event(id, CustomEventRequest::parse(b)?)), CREATED).await
}

/// `POST /api/v1/events/batch`: several writes, all or nothing.
#[utoipa::path(
    post,
    path = "/api/v1/events/batch",
    tag = "writes",
    request_body = openapi::BatchBody,
    responses(
        (status = 200, description = "Every write was applied; the events in request order", body = openapi::BatchAnswer),
        (status = 404, description = "A job or step of the batch does not exist (nothing was written)"),
        (status = 409, description = "A write of the batch is refused by the job's state (nothing was written)"),
    ),
)]
pub async fn batch(State(app): State<AppState>, auth: Auth, JsonBody(body): JsonBody) -> Result<Response, ApiError> {
    auth.require_scope(Action::Write)?;
    check_rate(&app, &auth)?;
    let event_ids = match body.get("events") {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                jobstream_protocol::requests::event_id(item).map_err(|e| e.within(&format!("events[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    let batch = BatchRequest::parse(body)?;
    for (i, item) in batch.events.iter().enumerate() {
        check_chunk(item, app.limits.max_chunk_bytes)
            .map_err(|e| ApiError::new(e.0.code, format!("events[{i}]: {}", e.0.message)))?;
    }
    let started = std::time::Instant::now();
    let items = batch.events.into_iter().zip(event_ids.into_iter().chain(std::iter::repeat(None))).collect();
    let applied = app.writer.write_batch_with_ids(items, auth.may(Action::Write)).await?;
    app.metrics.db_write.since(started);
    #[derive(Serialize)]
    struct Answer<'a> {
        events: Vec<&'a RawValue>,
    }
    Ok(Json(Answer { events: applied.iter().map(|a| &*a.event.json).collect() }).into_response())
}
