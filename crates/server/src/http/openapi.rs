//! The OpenAPI 3.1 document of the HTTP API, served at `GET /api/v1/openapi.json`
//! (contract §7).
//!
//! It is generated with utoipa from the handlers' `#[utoipa::path]`
//! annotations and the wire types of `jobstream-protocol` (their
//! `utoipa::ToSchema` derives, feature `openapi`). This module adds what the
//! handlers do not say themselves:
//!
//! - the request bodies with `eventId` (contract §7) and the batch item,
//!   whose fields depend on its `kind`;
//! - the answer envelopes (`{ event }`, `{ jobs }`, …);
//! - the security schemes: a bearer JWT (contract §4), and `?token=` on the
//!   two SSE streams;
//! - the error answers: the common ones of every route (401 and 403 where a
//!   token is needed; 400, 408, 413, 422 and 429 on writes; 500 and 503
//!   wherever the database is read), each with the `{ error: { code, message } }`
//!   body whose `code` is limited to the codes of that status (the stable
//!   code table, `ErrorCode::http_status`), and `Retry-After` on 429 and 503.

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use jobstream_protocol::{
    BatchKind, CompleteStep, CustomEventRequest, ErrorBody, ErrorCode, Event, JobSnapshot, ProgressRequest, StartStep,
    StatusRequest, StepOutputRequest, StepSnapshot,
};
use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{AllOfBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Ref, SchemaFormat};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, Schema, Type};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};
use uuid::Uuid;

/// The name of the bearer JWT security scheme.
pub const BEARER: &str = "bearer";
/// The name of the `?token=` security scheme (the SSE streams only).
pub const QUERY_TOKEN: &str = "queryToken";

/// The paths that need no token: health, metrics and this document.
pub const PUBLIC_PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"];

/// The whole document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "jobstream HTTP API",
        description = "Producers write job events; readers list jobs, read history and follow Server-Sent Events streams. \
            The same events reach Socket.IO subscribers (not described here: see the wire contract). \
            A 2xx answer to a write means the event is committed. Errors are `{ \"error\": { \"code\", \"message\" } }` \
            with a stable `code`.",
        license(name = "MIT"),
    ),
    paths(
        super::healthz,
        super::readyz,
        crate::metrics::render,
        openapi_json,
        super::create_job,
        super::list_jobs,
        super::get_job,
        super::set_status,
        super::job_progress,
        super::start_step,
        super::step_progress,
        super::step_output,
        super::complete_step,
        super::custom_event,
        super::job_events,
        super::batch,
        super::log::raw_log,
        super::log::log_lines,
        super::log::log_search,
        super::sse::job_stream,
        super::sse::workspace_stream,
    ),
    components(schemas(ErrorEnvelope, BatchBody, BatchItemSchema)),
    modifiers(&Security, &Errors),
    security(("bearer" = [])),
    tags(
        (name = "jobs", description = "Create, list and read jobs"),
        (name = "writes", description = "Append events to a job; every write takes an optional `eventId` that makes it idempotent"),
        (name = "events", description = "Event history and Server-Sent Events streams"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    ),
)]
pub struct ApiDoc;

/// The document as JSON, built once.
pub fn document() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        ApiDoc::openapi().to_json().unwrap_or_else(|err| {
            tracing::error!(%err, "serialising the OpenAPI document");
            String::from("{}")
        })
    })
}

/// `GET /api/v1/openapi.json`: this API's OpenAPI 3.1 document. No token needed.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json() -> axum::response::Response {
    ([(CONTENT_TYPE, "application/json")], document()).into_response()
}

/// An error answer: `{ "error": { "code", "message" } }`. The `code` is stable
/// (the table of contract §5 and §7); the `message` is for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// Request bodies of the write routes: the route's fields and an optional `eventId`.
macro_rules! with_event_id {
    ($($(#[$doc:meta])* $name:ident => $request:ty;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, serde::Deserialize, ToSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            #[serde(flatten)]
            pub request: $request,
            /// A UUID chosen by the client: the same `eventId` with the same body again answers
            /// 200 with the event already stored and appends nothing; with another body, 409
            /// `conflict` (contract §7).
            pub event_id: Option<Uuid>,
        }
    )*};
}

with_event_id! {
    /// `POST /api/v1/jobs/{job_id}/status`.
    StatusBody => StatusRequest;
    /// `POST …/progress` of a job or a step.
    ProgressBody => ProgressRequest;
    /// `POST /api/v1/jobs/{job_id}/steps`.
    StartStepBody => StartStep;
    /// `POST …/steps/{step_id}/output`.
    OutputBody => StepOutputRequest;
    /// `POST …/steps/{step_id}/complete`.
    CompleteStepBody => CompleteStep;
    /// `POST /api/v1/jobs/{job_id}/events`.
    CustomEventBody => CustomEventRequest;
}

/// `POST /api/v1/events/batch`: 1 to 1000 writes, applied all or nothing.
#[derive(Debug, serde::Deserialize, ToSchema)]
pub struct BatchBody {
    /// The writes, in order.
    #[schema(min_items = 1, max_items = 1000)]
    pub events: Vec<BatchItemSchema>,
}

/// One item of a batch: `{ jobId, kind, stepId?, eventId?, …body of the route }`.
#[derive(Debug, serde::Deserialize)]
pub struct BatchItemSchema;

/// The route body of each batch `kind`, and whether it needs `stepId`.
fn batch_kinds() -> [(BatchKind, RefOr<Schema>, bool); 7] {
    let body = |name: std::borrow::Cow<'static, str>| RefOr::from(Ref::from_schema_name(name));
    [
        (BatchKind::Status, body(StatusRequest::name()), false),
        (BatchKind::Progress, body(ProgressRequest::name()), false),
        (BatchKind::Step, body(StartStep::name()), false),
        (BatchKind::StepProgress, body(ProgressRequest::name()), true),
        (BatchKind::Output, body(StepOutputRequest::name()), true),
        (BatchKind::StepComplete, body(CompleteStep::name()), true),
        (BatchKind::Event, body(CustomEventRequest::name()), false),
    ]
}

fn uuid_schema() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
}

impl PartialSchema for BatchItemSchema {
    fn schema() -> RefOr<Schema> {
        let mut items = OneOfBuilder::new();
        for (kind, body, needs_step) in batch_kinds() {
            let kind_name = serde_json::to_value(kind).unwrap_or_default();
            let mut head = ObjectBuilder::new()
                .schema_type(Type::Object)
                .property("jobId", uuid_schema())
                .required("jobId")
                .property("kind", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([kind_name.clone()])))
                .required("kind")
                .property("stepId", uuid_schema())
                .property("eventId", uuid_schema().description(Some("as `eventId` of the route (contract §7)")));
            if needs_step {
                head = head.required("stepId");
            }
            let kind_name = kind_name.as_str().unwrap_or_default().to_owned();
            items = items.item(AllOfBuilder::new().item(head).item(body).title(Some(kind_name)));
        }
        items
            .description(Some(
                "One write of a batch: `jobId`, `kind`, `stepId` for the step kinds, an optional `eventId`, \
                 and the body of the route the kind names.",
            ))
            .into()
    }
}

impl ToSchema for BatchItemSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("BatchItem")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        fn add<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
            schemas.push((T::name().into_owned(), T::schema()));
            T::schemas(schemas);
        }
        add::<StatusRequest>(schemas);
        add::<ProgressRequest>(schemas);
        add::<StartStep>(schemas);
        add::<StepOutputRequest>(schemas);
        add::<CompleteStep>(schemas);
        add::<CustomEventRequest>(schemas);
    }
}

/// `GET /api/v1/jobs`: newest first.
#[derive(Debug, ToSchema)]
pub struct JobList {
    /// The jobs, without `steps`.
    pub jobs: Vec<JobSnapshot>,
}

/// `GET /api/v1/jobs/{job_id}/events`.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    /// The events with `seq > since`, ascending.
    pub events: Vec<Event>,
    /// The seq of the job's newest event (ask again with `since` = the last seq read).
    pub last_seq: i64,
}

/// The answer of a write: the event it appended (or, for a repeated `eventId`, the one stored).
#[derive(Debug, ToSchema)]
pub struct EventAnswer {
    /// The event.
    pub event: Event,
}

/// The answer of starting or completing a step: the step after the write, and the event.
#[derive(Debug, ToSchema)]
pub struct StepEventAnswer {
    /// The step after the write.
    pub step: StepSnapshot,
    /// The event.
    pub event: Event,
}

/// `POST /api/v1/events/batch`: the events in request order.
#[derive(Debug, ToSchema)]
pub struct BatchAnswer {
    /// One event per item, in request order.
    pub events: Vec<Event>,
}

/// `GET /healthz`.
#[derive(Debug, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(pattern = "^ok$")]
    pub status: String,
}

/// `GET /readyz`.
#[derive(Debug, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    #[schema(pattern = "^ready$")]
    pub status: String,
}

/// The security schemes.
struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "`Authorization: Bearer <token>`: a JWT (HS256 with the server's secret, or RS256/ES256 \
                         with its public keys) with `sub`, `workspaces` and `scope` (`subscribe` to read, \
                         `publish` to write); contract §4",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            QUERY_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "the same JWT in `?token=`, for `EventSource`, which cannot set headers; taken by the two SSE \
                 streams only",
            ))),
        );
    }
}

/// The common error answers, added to every operation (see the module docs).
struct Errors;

/// What each error status means here.
fn error_description(status: u16) -> &'static str {
    match status {
        400 => "The body is not JSON, or not sent as `application/json`",
        401 => "No token, or a malformed, badly signed or expired one",
        403 => "The token lacks the scope or the workspace",
        404 => "No such job or step, or one the token may not read",
        408 => "The request body did not arrive in time",
        409 => "The write conflicts with the job's state, or repeats an `eventId` with another body",
        413 => "The body (default limit 1 MiB) or an output `chunk` (64 KiB) is over its limit",
        422 => "A field or parameter is missing, of the wrong type, out of range or an unknown value",
        429 => "Too many writes with this token's subject; try again after `Retry-After` seconds",
        500 => "Internal error; details are logged, never sent",
        503 => "The database cannot be reached; nothing was written; try again after `Retry-After` seconds",
        _ => "Error",
    }
}

/// The error codes of the stable table, read from the `ErrorCode` schema (so from the type).
fn error_codes() -> Vec<ErrorCode> {
    let schema = serde_json::to_value(ErrorCode::schema()).unwrap_or_default();
    let values = schema.get("enum").and_then(|v| v.as_array()).cloned().unwrap_or_default();
    values.into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect()
}

/// The body of an error answer with `status`: the envelope, its `code` one of that status's codes.
fn error_schema(status: u16) -> RefOr<Schema> {
    let codes: Vec<&str> =
        error_codes().into_iter().filter(|c| c.http_status() == status).map(ErrorCode::as_str).collect();
    let code = ObjectBuilder::new().schema_type(Type::String).enum_values(Some(codes));
    AllOfBuilder::new()
        .item(Ref::from_schema_name(ErrorEnvelope::name()))
        .item(ObjectBuilder::new().property("error", ObjectBuilder::new().property("code", code)))
        .into()
}

fn retry_after() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))
        .description(Some("seconds to wait before trying again (RFC 9110 §10.2.3)"))
        .build()
}

fn error_response(status: u16, description: Option<String>) -> RefOr<utoipa::openapi::Response> {
    let mut response = ResponseBuilder::new()
        .description(description.unwrap_or_else(|| error_description(status).to_owned()))
        .content("application/json", ContentBuilder::new().schema(Some(error_schema(status))).build());
    if status == 429 || status == 503 {
        response = response.header("Retry-After", retry_after());
    }
    response.build().into()
}

impl Errors {
    /// The error statuses every operation of `path` with `method` can answer.
    fn common(path: &str, method: &str) -> Vec<u16> {
        let mut statuses = Vec::new();
        if !PUBLIC_PATHS.contains(&path) {
            statuses.extend([401, 403, 500, 503]);
        }
        if method == "post" {
            statuses.extend([400, 408, 413, 422, 429]);
        }
        statuses
    }

    fn fill(path: &str, method: &str, operation: &mut Operation) {
        let responses = &mut operation.responses.responses;
        for status in Self::common(path, method) {
            responses.entry(status.to_string()).or_insert_with(|| error_response(status, None));
        }
        // Error answers the handler named without a body get the envelope.
        for (status, response) in responses.iter_mut() {
            let Ok(status) = status.parse::<u16>() else { continue };
            if status < 400 {
                continue;
            }
            if let RefOr::T(existing) = response {
                if existing.content.is_empty() {
                    *response = error_response(status, Some(existing.description.clone()));
                }
            }
        }
    }
}

impl Modify for Errors {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        for (path, item) in api.paths.paths.iter_mut() {
            for (method, operation) in [("get", &mut item.get), ("post", &mut item.post)] {
                if let Some(operation) = operation {
                    Self::fill(path, method, operation);
                }
            }
        }
        // The table of codes, in the envelope's description.
        let table: Vec<String> =
            error_codes().iter().map(|c| format!("`{}` {}", c.as_str(), c.http_status())).collect();
        if let Some(components) = api.components.as_mut() {
            if let Some(RefOr::T(Schema::Object(envelope))) = components.schemas.get_mut(ErrorEnvelope::name().as_ref())
            {
                envelope.description = Some(format!(
                    "An error answer. Its `error.code` is stable and sets the HTTP status: {}. \
                     `error.message` is a sentence for people, never internal error text.",
                    table.join(", ")
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_is_in_the_document_with_its_status() {
        let codes = error_codes();
        assert_eq!(codes.len(), 14, "{codes:?}");
        let document: serde_json::Value = serde_json::from_str(document()).unwrap_or_default();
        assert_eq!(document["openapi"], "3.1.0");
        let text = document.to_string();
        for code in codes {
            assert!(text.contains(&format!("`{}` {}", code.as_str(), code.http_status())), "{code:?}");
        }
    }
}
