//! The HTTP API (`/api/v1`), health endpoints and the JSON fallback.

pub mod error;
pub mod extract;
pub mod log;
pub mod sse;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
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

/// The routes of the HTTP API and health checks.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/jobs", post(create_job).get(list_jobs))
        .route("/api/v1/jobs/{job_id}", get(get_job))
        .route(
            "/api/v1/jobs/{job_id}/status",
            job_write(|id, b| Ok(BatchItem::Status(id, StatusRequest::parse(b)?)), OK),
        )
        .route(
            "/api/v1/jobs/{job_id}/progress",
            job_write(|id, b| Ok(BatchItem::Progress(id, ProgressRequest::parse(b)?)), OK),
        )
        .route(
            "/api/v1/jobs/{job_id}/steps",
            job_write(|id, b| Ok(BatchItem::Step(id, StartStep::parse(b)?)), CREATED_WITH_STEP),
        )
        .route(
            "/api/v1/jobs/{job_id}/steps/{step_id}/progress",
            step_write(|id, step, b| Ok(BatchItem::StepProgress(id, step, ProgressRequest::parse(b)?)), OK),
        )
        .route(
            "/api/v1/jobs/{job_id}/steps/{step_id}/output",
            step_write(|id, step, b| Ok(BatchItem::Output(id, step, StepOutputRequest::parse(b)?)), OK),
        )
        .route(
            "/api/v1/jobs/{job_id}/steps/{step_id}/complete",
            step_write(|id, step, b| Ok(BatchItem::StepComplete(id, step, CompleteStep::parse(b)?)), OK_WITH_STEP),
        )
        .route(
            "/api/v1/jobs/{job_id}/events",
            job_write(|id, b| Ok(BatchItem::Event(id, CustomEventRequest::parse(b)?)), CREATED).get(job_events),
        )
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

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(app): State<AppState>) -> Response {
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

async fn create_job(State(app): State<AppState>, auth: Auth, JsonBody(body): JsonBody) -> Result<Response, ApiError> {
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

async fn list_jobs(
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

async fn get_job(State(app): State<AppState>, auth: Auth, Path(id): Path<String>) -> Result<Response, ApiError> {
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

async fn job_events(
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
    let started = std::time::Instant::now();
    let events = app.store.events_after(id, since, limit as u64).await?;
    app.metrics.db_read.since(started);
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Page<'a> {
        events: Vec<&'a RawValue>,
        last_seq: i64,
    }
    Ok(Json(Page { events: events.iter().map(|e| &*e.json).collect(), last_seq }).into_response())
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
fn job_write(make: JobWrite, answer: Answer) -> MethodRouter<AppState> {
    post(move |State(app): State<AppState>, auth: Auth, Path(id): Path<String>, JsonBody(body): JsonBody| async move {
        auth.require_scope(Action::Write)?;
        check_rate(&app, &auth)?;
        let id = job_id(&id)?;
        let event_id = jobstream_protocol::requests::event_id(&body)?;
        write(&app, &auth, (make(id, body)?, event_id), answer).await
    })
}

/// `POST /api/v1/jobs/{jobId}/steps/{stepId}/…`.
fn step_write(make: StepWrite, answer: Answer) -> MethodRouter<AppState> {
    post(
        move |State(app): State<AppState>,
              auth: Auth,
              Path((id, step)): Path<(String, String)>,
              JsonBody(body): JsonBody| async move {
            auth.require_scope(Action::Write)?;
            check_rate(&app, &auth)?;
            let id = job_id(&id)?;
            let step = step_id(id, &step)?;
            let event_id = jobstream_protocol::requests::event_id(&body)?;
            write(&app, &auth, (make(id, step, body)?, event_id), answer).await
        },
    )
}

async fn batch(State(app): State<AppState>, auth: Auth, JsonBody(body): JsonBody) -> Result<Response, ApiError> {
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
