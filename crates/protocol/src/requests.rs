//! Requests: Socket.IO subscribe payloads and the bodies of the HTTP write routes,
//! each with its validation, so that every front door refuses bad input the same way.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::enums::{JobStatus, OutputStream, StepPhase, StepStatus, StepType};
use crate::event::EventType;
use crate::MAX_BATCH_EVENTS;

/// A request that does not fit its schema: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The JSON path of the field (`progress`, `events[3].status`), or `body`.
    pub field: String,
    /// What is wrong, for people.
    pub message: String,
}

/// The most bytes of a field path or a message in a [`ValidationError`]:
/// longer ones (a parser's message quotes the value it refused, whatever its
/// size) keep their start and end around `…`, so a refusal is never the size
/// of the input that caused it.
pub const MAX_ERROR_TEXT: usize = 240;

/// `text`, or its first and last bytes (at character boundaries) around `…`
/// when it is longer than [`MAX_ERROR_TEXT`].
pub(crate) fn bounded(text: String) -> String {
    bounded_to(text, MAX_ERROR_TEXT)
}

/// `text`, or its first and last bytes (at character boundaries) around `…`
/// when it is longer than `max` bytes.
pub(crate) fn bounded_to(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let half = max / 2 - 2;
    let mut head = half;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - half;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}…{}", &text[..head], &text[tail..])
}

impl ValidationError {
    /// A problem with one field (each text bounded: [`MAX_ERROR_TEXT`]).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: bounded(field.into()), message: bounded(message.into()) }
    }

    /// The same problem, under a parent path (`events[3]`).
    pub fn within(self, parent: &str) -> Self {
        let field = if self.field == "body" { parent.to_owned() } else { format!("{parent}.{}", self.field) };
        Self { field, message: self.message }
    }
}

/// A request type: parsed from JSON, then checked for what types cannot say.
pub trait Request: DeserializeOwned {
    /// Range and consistency checks after parsing.
    fn validate(&self) -> Result<(), ValidationError> {
        Ok(())
    }

    /// Parses and validates `value`, naming the offending field on failure.
    fn parse(value: Value) -> Result<Self, ValidationError> {
        if !value.is_object() {
            return Err(ValidationError::new("body", "must be a JSON object"));
        }
        let parsed: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let parent = if path == "." || path.is_empty() { None } else { Some(path) };
            let message = plain_words(&e.into_inner().to_string());
            // A missing field is named by its own path: `type: is required`.
            if let Some(name) = message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`')) {
                let field = parent.map_or_else(|| name.to_owned(), |p| format!("{p}.{name}"));
                return ValidationError::new(field, "is required");
            }
            ValidationError::new(parent.unwrap_or_else(|| "body".to_owned()), message)
        })?;
        parsed.validate()?;
        Ok(parsed)
    }
}

/// serde's message with its Rust type names in a client's words:
/// `expected u8` → `expected an integer from 0 to 255`, `expected a formatted
/// UUID string` → `expected a UUID`, `floating point `1e+20`` → `number `1e+20``.
fn plain_words(message: &str) -> String {
    const EXPECTED: [(&str, &str); 11] = [
        ("expected i64", "expected an integer from -9223372036854775808 to 9223372036854775807"),
        ("expected u64", "expected an integer from 0 to 18446744073709551615"),
        ("expected i32", "expected an integer from -2147483648 to 2147483647"),
        ("expected u32", "expected an integer from 0 to 4294967295"),
        ("expected i16", "expected an integer from -32768 to 32767"),
        ("expected u16", "expected an integer from 0 to 65535"),
        ("expected i8", "expected an integer from -128 to 127"),
        ("expected u8", "expected an integer from 0 to 255"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a formatted UUID string", "expected a UUID"),
    ];
    // Only serde's own words: the value it quotes back is the client's text.
    let mut plain = message.to_owned();
    for kind in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = plain.strip_prefix(kind).and_then(|rest| rest.strip_prefix("floating point `")) {
            plain = format!("{kind}number `{rest}");
        }
    }
    // The uuid crate's refusal of a string names itself, not what was expected.
    if let Some(rest) = plain.strip_prefix("UUID parsing failed: ") {
        plain = format!("expected a UUID ({rest})");
    }
    // serde ends its message with what it expected.
    if let Some((rust, words)) = EXPECTED.iter().find(|(rust, _)| plain.ends_with(rust)) {
        plain.truncate(plain.len() - rust.len());
        plain.push_str(words);
    }
    plain
}

/// Reads an integer field with the field's own range in serde's refusal
/// (`6.5` in `progress`: `expected an integer from 0 to 100`, not the range
/// of an `i64`). The range itself is checked by the request's `validate`.
struct Integer(&'static str);

impl<'de> serde::de::Visitor<'de> for Integer {
    type Value = i64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
    }
}

/// [`Integer`] of an optional field: `null` is absent.
struct OptionalInteger(&'static str);

impl<'de> serde::de::Visitor<'de> for OptionalInteger {
    type Value = Option<i64>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Option<i64>, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Option<i64>, E> {
        Ok(None)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<i64>, D::Error> {
        d.deserialize_i64(Integer(self.0)).map(Some)
    }
}

fn percent<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_i64(Integer("an integer from 0 to 100"))
}

fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    d.deserialize_option(OptionalInteger("an integer ≥ 0"))
}

fn check_progress(progress: i64) -> Result<(), ValidationError> {
    if (0..=100).contains(&progress) {
        Ok(())
    } else {
        Err(ValidationError::new("progress", format!("must be an integer from 0 to 100, got {progress}")))
    }
}

fn check_text(field: &str, text: &str, max: usize) -> Result<(), ValidationError> {
    if text.trim().is_empty() {
        Err(ValidationError::new(field, "must not be empty"))
    } else if text.len() > max {
        Err(ValidationError::new(field, format!("must be at most {max} bytes")))
    } else {
        Ok(())
    }
}

/// The optional client-chosen `eventId` of a write body (CONTRACT §7,
/// idempotent writes): a UUID, or absent.
pub fn event_id(body: &Value) -> Result<Option<Uuid>, ValidationError> {
    match body.get("eventId") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Uuid::parse_str(text)
            .map(Some)
            .map_err(|_| ValidationError::new("eventId", format!("must be a UUID, got {text:?}"))),
        Some(_) => Err(ValidationError::new("eventId", "must be a UUID string")),
    }
}

/// In a token's `workspaces`, every workspace (CONTRACT §4); never a workspace id.
pub const ALL_WORKSPACES: &str = "*";

/// Checks a workspace id: non-empty, at most 200 bytes, no control
/// characters, not [`ALL_WORKSPACES`] (a workspace named `*` could be reached
/// by no token but a token for every workspace, and a request naming it would
/// read as "all").
pub fn check_workspace_id(field: &str, id: &str) -> Result<(), ValidationError> {
    check_text(field, id, 200)?;
    if id.chars().any(char::is_control) {
        return Err(ValidationError::new(field, "must not contain control characters"));
    }
    if id == ALL_WORKSPACES {
        return Err(ValidationError::new(
            field,
            "must not be \"*\": it is no workspace id (in a token's workspaces it means every workspace)",
        ));
    }
    Ok(())
}

fn check_count(field: &str, value: Option<i64>) -> Result<(), ValidationError> {
    match value {
        Some(n) if n < 0 => Err(ValidationError::new(field, "must be an integer ≥ 0")),
        _ => Ok(()),
    }
}

/// `subscribe:workspace:jobs` `{ workspaceId }`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeWorkspace {
    /// The workspace to follow.
    pub workspace_id: String,
}

impl Request for SubscribeWorkspace {
    fn validate(&self) -> Result<(), ValidationError> {
        check_workspace_id("workspaceId", &self.workspace_id)
    }
}

/// `unsubscribe:workspace:jobs` `{ workspaceId }`.
pub type UnsubscribeWorkspace = SubscribeWorkspace;

/// `subscribe:job` `{ jobId, since? }`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeJob {
    /// The job to follow.
    pub job_id: Uuid,
    /// Replay every event with `seq > since` first.
    #[serde(default, deserialize_with = "count")]
    pub since: Option<i64>,
}

impl Request for SubscribeJob {
    fn validate(&self) -> Result<(), ValidationError> {
        match self.since {
            Some(since) if since < 0 => Err(ValidationError::new("since", "must be an integer ≥ 0")),
            _ => Ok(()),
        }
    }
}

/// `unsubscribe:job` `{ jobId }`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnsubscribeJob {
    /// The job to stop following.
    pub job_id: Uuid,
}

impl Request for UnsubscribeJob {}

/// `POST /api/v1/jobs`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CreateJob {
    /// A client-chosen id (creation is then idempotent); else the server makes a v7 UUID.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// The workspace the job belongs to.
    pub workspace_id: String,
    /// The producer's kind of job.
    #[serde(rename = "type")]
    pub job_type: String,
    /// Default 0.
    #[serde(default)]
    pub priority: Option<i32>,
    /// Any JSON object; default `{}`.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

impl Request for CreateJob {
    fn validate(&self) -> Result<(), ValidationError> {
        check_workspace_id("workspaceId", &self.workspace_id)?;
        check_text("type", &self.job_type, 200)
    }
}

/// `POST /api/v1/jobs/{jobId}/status`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StatusRequest {
    /// The status to move to.
    pub status: JobStatus,
    /// With `completed` only.
    #[serde(default)]
    pub result: Option<Value>,
    /// With `failed` or `cancelled` only.
    #[serde(default)]
    pub error: Option<String>,
}

impl Request for StatusRequest {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.result.as_ref().is_some_and(|r| !r.is_null()) && self.status != JobStatus::Completed {
            return Err(ValidationError::new("result", "is only accepted with status `completed`"));
        }
        if self.error.is_some() && !matches!(self.status, JobStatus::Failed | JobStatus::Cancelled) {
            return Err(ValidationError::new("error", "is only accepted with status `failed` or `cancelled`"));
        }
        Ok(())
    }
}

/// `POST …/progress` of a job or a step.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ProgressRequest {
    /// 0–100.
    #[serde(deserialize_with = "percent")]
    pub progress: i64,
    /// What is happening, for people.
    #[serde(default)]
    pub message: Option<String>,
}

impl Request for ProgressRequest {
    fn validate(&self) -> Result<(), ValidationError> {
        check_progress(self.progress)
    }
}

/// `POST /api/v1/jobs/{jobId}/steps`: starts a step.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StartStep {
    /// A client-chosen id; else a v7 UUID.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// The step's name.
    pub name: String,
    /// Its phase.
    pub phase: StepPhase,
    /// Its type.
    pub step_type: StepType,
}

impl Request for StartStep {
    fn validate(&self) -> Result<(), ValidationError> {
        check_text("name", &self.name, 500)
    }
}

/// `POST …/steps/{stepId}/output`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StepOutputRequest {
    /// The text. Its size limit is the server's (`413` over it).
    pub chunk: String,
    /// Default `stdout`.
    #[serde(default)]
    pub stream: Option<OutputStream>,
}

impl Request for StepOutputRequest {}

/// `POST …/steps/{stepId}/complete`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CompleteStep {
    /// `completed`, `failed` or `skipped`.
    pub status: StepStatus,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// AI input tokens.
    #[serde(default, deserialize_with = "count")]
    pub tokens_input: Option<i64>,
    /// AI output tokens.
    #[serde(default, deserialize_with = "count")]
    pub tokens_output: Option<i64>,
}

impl Request for CompleteStep {
    fn validate(&self) -> Result<(), ValidationError> {
        if !self.status.is_finished() {
            return Err(ValidationError::new("status", "must be `completed`, `failed` or `skipped`"));
        }
        check_count("tokensInput", self.tokens_input)?;
        check_count("tokensOutput", self.tokens_output)
    }
}

/// `POST /api/v1/jobs/{jobId}/events`: a `job:event` type.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(optional_fields))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CustomEventRequest {
    /// One of `ai.tool_called`, `ai.tokens_used`, `ai.artifact_created`, `gate.started`, `gate.passed`, `gate.failed`.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The step it is about, if any.
    #[serde(default)]
    pub step_id: Option<Uuid>,
    /// Any JSON object; default `{}`.
    #[serde(default)]
    pub payload: Option<Map<String, Value>>,
}

impl Request for CustomEventRequest {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.event_type.is_custom() {
            Ok(())
        } else {
            Err(ValidationError::new(
                "type",
                "must be one of ai.tool_called, ai.tokens_used, ai.artifact_created, gate.started, gate.passed, gate.failed",
            ))
        }
    }
}

/// The kinds of write a batch item can be.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BatchKind {
    /// Like `POST /jobs/{id}/status`.
    Status,
    /// Like `POST /jobs/{id}/progress`.
    Progress,
    /// Like `POST /jobs/{id}/steps`.
    Step,
    /// Like `POST …/steps/{stepId}/progress`.
    StepProgress,
    /// Like `POST …/steps/{stepId}/output`.
    Output,
    /// Like `POST …/steps/{stepId}/complete`.
    StepComplete,
    /// Like `POST /jobs/{id}/events`.
    Event,
}

/// One parsed batch item: which job, and the write with its route's body.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchItem {
    /// Status change of `job_id`.
    Status(Uuid, StatusRequest),
    /// Job progress.
    Progress(Uuid, ProgressRequest),
    /// Start a step.
    Step(Uuid, StartStep),
    /// Step progress of (job, step).
    StepProgress(Uuid, Uuid, ProgressRequest),
    /// Step output of (job, step).
    Output(Uuid, Uuid, StepOutputRequest),
    /// Step completion of (job, step).
    StepComplete(Uuid, Uuid, CompleteStep),
    /// A `job:event`.
    Event(Uuid, CustomEventRequest),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemHead {
    job_id: Uuid,
    kind: BatchKind,
    #[serde(default)]
    step_id: Option<Uuid>,
}

impl Request for ItemHead {}

impl BatchItem {
    /// Parses one item of a batch: `{ jobId, kind, stepId?, …body of the route }`.
    pub fn parse(value: Value) -> Result<Self, ValidationError> {
        let head = ItemHead::parse(value.clone())?;
        let step = || head.step_id.ok_or_else(|| ValidationError::new("stepId", "is required for this kind"));
        let job = head.job_id;
        Ok(match head.kind {
            BatchKind::Status => Self::Status(job, StatusRequest::parse(value)?),
            BatchKind::Progress => Self::Progress(job, ProgressRequest::parse(value)?),
            BatchKind::Step => Self::Step(job, StartStep::parse(value)?),
            BatchKind::StepProgress => Self::StepProgress(job, step()?, ProgressRequest::parse(value)?),
            BatchKind::Output => Self::Output(job, step()?, StepOutputRequest::parse(value)?),
            BatchKind::StepComplete => Self::StepComplete(job, step()?, CompleteStep::parse(value)?),
            BatchKind::Event => Self::Event(job, CustomEventRequest::parse(value)?),
        })
    }

    /// The job the item writes to.
    pub fn job_id(&self) -> Uuid {
        match self {
            Self::Status(j, _) | Self::Progress(j, _) | Self::Step(j, _) | Self::Event(j, _) => *j,
            Self::StepProgress(j, ..) | Self::Output(j, ..) | Self::StepComplete(j, ..) => *j,
        }
    }
}

/// `POST /api/v1/events/batch` `{ events: [...] }`, at most [`MAX_BATCH_EVENTS`] items.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRequest {
    /// The items, in request order.
    pub events: Vec<BatchItem>,
}

impl BatchRequest {
    /// Parses a whole batch; the first bad item refuses it all, naming `events[i].field`.
    pub fn parse(value: Value) -> Result<Self, ValidationError> {
        let Value::Object(mut body) = value else {
            return Err(ValidationError::new("body", "must be a JSON object"));
        };
        let Some(Value::Array(items)) = body.remove("events") else {
            return Err(ValidationError::new("events", "must be an array of events"));
        };
        if items.is_empty() {
            return Err(ValidationError::new("events", "must hold at least one event"));
        }
        if items.len() > MAX_BATCH_EVENTS {
            return Err(ValidationError::new(
                "events",
                format!("must hold at most {MAX_BATCH_EVENTS} events, got {}", items.len()),
            ));
        }
        let events = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| BatchItem::parse(item).map_err(|e| e.within(&format!("events[{i}]"))))
            .collect::<Result<_, _>>()?;
        Ok(Self { events })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_refusal_quotes_a_huge_value_by_its_start_and_end_only() {
        let huge = "é".repeat(30_000);
        let Err(err) = SubscribeJob::parse(json!({ "jobId": "00000000-0000-7000-8000-000000000001", "since": huge }))
        else {
            panic!("a string since is refused")
        };
        assert!(err.message.len() <= MAX_ERROR_TEXT, "{} bytes", err.message.len());
        assert!(err.message.starts_with("invalid type: string \"éé"), "{}", err.message);
        assert!(err.message.contains('…'), "{}", err.message);
        assert!(err.message.ends_with("expected an integer ≥ 0"), "{}", err.message);
        let Err(short) = SubscribeJob::parse(json!({ "jobId": "00000000-0000-7000-8000-000000000001", "since": "x" }))
        else {
            panic!("a string since is refused")
        };
        assert_eq!(short.message, "invalid type: string \"x\", expected an integer ≥ 0");
    }

    #[test]
    fn a_refusal_names_types_in_a_clients_words_not_rusts() {
        let cases = [
            (
                "invalid type: string \"50\", expected u64",
                "invalid type: string \"50\", expected an integer from 0 to 18446744073709551615",
            ),
            (
                "invalid type: floating point `1e20`, expected i32",
                "invalid type: number `1e20`, expected an integer from -2147483648 to 2147483647",
            ),
            (
                "invalid value: integer `300`, expected u8",
                "invalid value: integer `300`, expected an integer from 0 to 255",
            ),
            (
                "invalid type: integer `5`, expected a formatted UUID string",
                "invalid type: integer `5`, expected a UUID",
            ),
            ("unknown variant `x`, expected one of `a`, `b`", "unknown variant `x`, expected one of `a`, `b`"),
            ("UUID parsing failed: invalid length: found 1", "expected a UUID (invalid length: found 1)"),
            // The client's own text, quoted back, is left as sent.
            (
                "invalid type: string \"floating point `9`, expected i8\", expected f64",
                "invalid type: string \"floating point `9`, expected i8\", expected a number",
            ),
        ];
        for (serde, plain) in cases {
            assert_eq!(plain_words(serde), plain);
        }
        let Err(err) = SubscribeJob::parse(json!({ "jobId": 5, "since": 0 })) else {
            panic!("a number jobId is refused")
        };
        assert!(!err.message.contains("formatted UUID"), "{}", err.message);
        let Err(err) = ProgressRequest::parse(json!({ "progress": 6.5 })) else { panic!("6.5 is refused") };
        assert_eq!(err.to_string(), "progress: invalid type: number `6.5`, expected an integer from 0 to 100");
        let Err(err) = SubscribeJob::parse(json!({ "jobId": Uuid::nil(), "since": 1.5 })) else { panic!("1.5") };
        assert_eq!(err.to_string(), "since: invalid type: number `1.5`, expected an integer ≥ 0");
        let Err(err) = CompleteStep::parse(json!({ "status": "completed", "tokensInput": "3" })) else {
            panic!("\"3\"")
        };
        assert_eq!(err.to_string(), "tokensInput: invalid type: string \"3\", expected an integer ≥ 0");
        let Ok(done) = CompleteStep::parse(json!({ "status": "completed", "tokensInput": null })) else {
            panic!("null")
        };
        assert_eq!(done.tokens_input, None);
        let Ok(sub) = SubscribeJob::parse(json!({ "jobId": Uuid::nil() })) else { panic!("no since") };
        assert_eq!(sub.since, None);
        let Err(err) = SubscribeJob::parse(json!({ "jobId": "a" })) else { panic!("jobId \"a\" is refused") };
        assert!(err.message.starts_with("expected a UUID ("), "{}", err.message);
    }

    #[test]
    fn a_workspace_id_is_refused_when_empty_blank_too_long_with_control_characters_or_the_wildcard() {
        for bad in ["", "  ", "a\nb", "\u{7f}", "*"] {
            assert!(check_workspace_id("workspaceId", bad).is_err(), "{bad:?} is refused");
        }
        assert!(check_workspace_id("workspaceId", &"w".repeat(201)).is_err());
        for good in ["w", "**", "*a", "a*", " * ", "team-1", &"w".repeat(200)] {
            assert!(check_workspace_id("workspaceId", good).is_ok(), "{good:?} is a workspace id");
        }
    }

    #[test]
    fn an_event_id_is_a_uuid_or_absent() {
        let id = Uuid::from_u128(7);
        assert_eq!(event_id(&json!({ "eventId": id.to_string() })), Ok(Some(id)));
        assert_eq!(event_id(&json!({})), Ok(None));
        assert_eq!(event_id(&json!({ "eventId": "abc" })).err().map(|e| e.field), Some("eventId".into()));
        assert_eq!(event_id(&json!({ "eventId": 5 })).err().map(|e| e.field), Some("eventId".into()));
    }

    #[test]
    fn a_missing_field_is_named() {
        let err = SubscribeJob::parse(json!({})).err();
        assert_eq!(err.map(|e| e.to_string()), Some("jobId: is required".to_owned()));
    }

    #[test]
    fn a_negative_or_textual_since_is_refused() {
        let job = Uuid::from_u128(1).to_string();
        assert_eq!(
            SubscribeJob::parse(json!({ "jobId": job, "since": -1 })).err().map(|e| e.field),
            Some("since".into())
        );
        assert_eq!(
            SubscribeJob::parse(json!({ "jobId": job, "since": "x" })).err().map(|e| e.field),
            Some("since".into())
        );
        assert!(SubscribeJob::parse(json!({ "jobId": job, "since": 0 })).is_ok());
    }

    #[test]
    fn progress_out_of_range_is_refused() {
        assert!(ProgressRequest::parse(json!({ "progress": 101 })).is_err());
        assert!(ProgressRequest::parse(json!({ "progress": -1 })).is_err());
        assert!(ProgressRequest::parse(json!({ "progress": 100, "message": "done" })).is_ok());
    }

    #[test]
    fn an_unknown_enum_value_is_refused_with_its_field() {
        let err = StartStep::parse(json!({ "name": "x", "phase": "warmup", "stepType": "command" })).err();
        assert_eq!(err.map(|e| e.field), Some("phase".into()));
    }

    #[test]
    fn a_result_with_a_failed_status_is_refused() {
        assert!(StatusRequest::parse(json!({ "status": "failed", "result": 1 })).is_err());
        assert!(StatusRequest::parse(json!({ "status": "completed", "result": { "a": 1 } })).is_ok());
    }

    #[test]
    fn a_batch_names_the_bad_item() {
        let job = Uuid::from_u128(1).to_string();
        let err = BatchRequest::parse(json!({ "events": [
            { "jobId": job, "kind": "progress", "progress": 5 },
            { "jobId": job, "kind": "output", "chunk": "x" }
        ] }))
        .err();
        assert_eq!(err.map(|e| e.field), Some("events[1].stepId".into()));
    }

    #[test]
    fn a_batch_parses_every_kind_in_order() {
        let job = Uuid::from_u128(1).to_string();
        let step = Uuid::from_u128(2).to_string();
        let batch = BatchRequest::parse(json!({ "events": [
            { "jobId": job, "kind": "status", "status": "queued" },
            { "jobId": job, "kind": "step", "id": step, "name": "a", "phase": "setup", "stepType": "command" },
            { "jobId": job, "kind": "step_progress", "stepId": step, "progress": 5 },
            { "jobId": job, "kind": "output", "stepId": step, "chunk": "x" },
            { "jobId": job, "kind": "step_complete", "stepId": step, "status": "completed" },
            { "jobId": job, "kind": "progress", "progress": 50 },
            { "jobId": job, "kind": "event", "type": "gate.passed", "payload": { "gate": "lint" } }
        ] }));
        assert_eq!(batch.map(|b| b.events.len()).ok(), Some(7));
    }

    #[test]
    fn a_custom_event_must_be_a_job_event_type() {
        assert!(CustomEventRequest::parse(json!({ "type": "job.completed" })).is_err());
        assert!(CustomEventRequest::parse(json!({ "type": "ai.tool_called", "payload": { "tool": "grep" } })).is_ok());
    }
}
