//! The event object: one shape in Socket.IO payloads, HTTP answers and SSE frames.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::enums::{JobStatus, OutputStream, StepPhase, StepStatus, StepType};
use crate::snapshot::JobSnapshot;
use crate::time::Timestamp;

/// The Socket.IO event names clients listen to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketEvent {
    /// `job:created`
    JobCreated,
    /// `job:status`
    JobStatus,
    /// `job:progress`
    JobProgress,
    /// `step:started`
    StepStarted,
    /// `step:progress`
    StepProgress,
    /// `step:output`
    StepOutput,
    /// `step:completed`
    StepCompleted,
    /// `job:event`
    JobEvent,
}

impl SocketEvent {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobCreated => "job:created",
            Self::JobStatus => "job:status",
            Self::JobProgress => "job:progress",
            Self::StepStarted => "step:started",
            Self::StepProgress => "step:progress",
            Self::StepOutput => "step:output",
            Self::StepCompleted => "step:completed",
            Self::JobEvent => "job:event",
        }
    }
}

/// Stored event types (the `type` field).
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EventType {
    #[serde(rename = "job.created")]
    JobCreated,
    #[serde(rename = "job.queued")]
    JobQueued,
    #[serde(rename = "job.started")]
    JobStarted,
    #[serde(rename = "job.completed")]
    JobCompleted,
    #[serde(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "job.cancelled")]
    JobCancelled,
    #[serde(rename = "job.progress")]
    JobProgress,
    #[serde(rename = "step.started")]
    StepStarted,
    #[serde(rename = "step.progress")]
    StepProgress,
    #[serde(rename = "step.output")]
    StepOutput,
    #[serde(rename = "step.completed")]
    StepCompleted,
    #[serde(rename = "step.failed")]
    StepFailed,
    #[serde(rename = "ai.tool_called")]
    AiToolCalled,
    #[serde(rename = "ai.tokens_used")]
    AiTokensUsed,
    #[serde(rename = "ai.artifact_created")]
    AiArtifactCreated,
    #[serde(rename = "gate.started")]
    GateStarted,
    #[serde(rename = "gate.passed")]
    GatePassed,
    #[serde(rename = "gate.failed")]
    GateFailed,
}

impl EventType {
    /// Every type, in the order of the contract's table.
    pub const ALL: [EventType; 18] = [
        Self::JobCreated,
        Self::JobQueued,
        Self::JobStarted,
        Self::JobCompleted,
        Self::JobFailed,
        Self::JobCancelled,
        Self::JobProgress,
        Self::StepStarted,
        Self::StepProgress,
        Self::StepOutput,
        Self::StepCompleted,
        Self::StepFailed,
        Self::AiToolCalled,
        Self::AiTokensUsed,
        Self::AiArtifactCreated,
        Self::GateStarted,
        Self::GatePassed,
        Self::GateFailed,
    ];

    /// The stored name (`"step.output"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobCreated => "job.created",
            Self::JobQueued => "job.queued",
            Self::JobStarted => "job.started",
            Self::JobCompleted => "job.completed",
            Self::JobFailed => "job.failed",
            Self::JobCancelled => "job.cancelled",
            Self::JobProgress => "job.progress",
            Self::StepStarted => "step.started",
            Self::StepProgress => "step.progress",
            Self::StepOutput => "step.output",
            Self::StepCompleted => "step.completed",
            Self::StepFailed => "step.failed",
            Self::AiToolCalled => "ai.tool_called",
            Self::AiTokensUsed => "ai.tokens_used",
            Self::AiArtifactCreated => "ai.artifact_created",
            Self::GateStarted => "gate.started",
            Self::GatePassed => "gate.passed",
            Self::GateFailed => "gate.failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// The Socket.IO event that carries this type.
    pub fn socket_event(self) -> SocketEvent {
        match self {
            Self::JobCreated => SocketEvent::JobCreated,
            Self::JobQueued | Self::JobStarted | Self::JobCompleted | Self::JobFailed | Self::JobCancelled => {
                SocketEvent::JobStatus
            }
            Self::JobProgress => SocketEvent::JobProgress,
            Self::StepStarted => SocketEvent::StepStarted,
            Self::StepProgress => SocketEvent::StepProgress,
            Self::StepOutput => SocketEvent::StepOutput,
            Self::StepCompleted | Self::StepFailed => SocketEvent::StepCompleted,
            Self::AiToolCalled
            | Self::AiTokensUsed
            | Self::AiArtifactCreated
            | Self::GateStarted
            | Self::GatePassed
            | Self::GateFailed => SocketEvent::JobEvent,
        }
    }

    /// The types a producer may append with `POST /jobs/{id}/events` (the `job:event` ones).
    pub fn is_custom(self) -> bool {
        self.socket_event() == SocketEvent::JobEvent
    }

    /// The status event type for a job entering `status` (none for `pending`).
    pub fn for_status(status: JobStatus) -> Option<Self> {
        match status {
            JobStatus::Pending => None,
            JobStatus::Queued => Some(Self::JobQueued),
            JobStatus::Running => Some(Self::JobStarted),
            JobStatus::Completed => Some(Self::JobCompleted),
            JobStatus::Failed => Some(Self::JobFailed),
            JobStatus::Cancelled => Some(Self::JobCancelled),
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored event. `seq` is per job, from 1, without gaps.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "RawEvent")]
pub struct Event {
    /// Unique id of the event (UUID v7).
    pub event_id: Uuid,
    /// Position in the job's stream: the job's n-th committed event has `seq = n`.
    pub seq: i64,
    /// The stored type; decides which fields follow and which Socket.IO event carries it.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The job.
    pub job_id: Uuid,
    /// The job's workspace.
    pub workspace_id: String,
    /// The step the event is about, or null for job-level events.
    pub step_id: Option<Uuid>,
    /// When the event was committed (server clock).
    pub timestamp: Timestamp,
    /// The type-specific fields.
    #[serde(flatten)]
    pub body: EventBody,
}

/// The event as read off the wire, before its `type` picks the body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEvent {
    event_id: Uuid,
    seq: i64,
    #[serde(rename = "type")]
    event_type: EventType,
    job_id: Uuid,
    workspace_id: String,
    step_id: Option<Uuid>,
    timestamp: Timestamp,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

impl TryFrom<RawEvent> for Event {
    type Error = serde_json::Error;

    fn try_from(raw: RawEvent) -> Result<Self, Self::Error> {
        Ok(Event {
            body: EventBody::from_stored(raw.event_type, Value::Object(raw.rest))?,
            event_id: raw.event_id,
            seq: raw.seq,
            event_type: raw.event_type,
            job_id: raw.job_id,
            workspace_id: raw.workspace_id,
            step_id: raw.step_id,
            timestamp: raw.timestamp,
        })
    }
}

impl Event {
    /// The Socket.IO event that carries this event.
    pub fn socket_event(&self) -> SocketEvent {
        self.event_type.socket_event()
    }
}

/// The type-specific fields of an event. Which variant goes with which
/// [`EventType`] is fixed by [`EventBody::fits`]; it is read with
/// [`EventBody::from_stored`], since two bodies can have the same fields.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EventBody {
    /// `job.created`
    JobCreated(JobCreated),
    /// `job.queued` … `job.cancelled`
    Status(StatusChanged),
    /// `step.started`
    StepStarted(StepStarted),
    /// `step.completed`, `step.failed`
    StepFinished(StepFinished),
    /// `step.output`
    StepOutput(StepOutput),
    /// `job.progress`
    JobProgress(JobProgress),
    /// `step.progress`
    StepProgress(StepProgress),
    /// `ai.*`, `gate.*`
    Custom(CustomEvent),
}

impl EventBody {
    /// Whether this body is the one that goes with `event_type`.
    pub fn fits(&self, event_type: EventType) -> bool {
        use EventType as T;
        match self {
            Self::JobCreated(_) => event_type == T::JobCreated,
            Self::Status(_) => event_type.socket_event() == SocketEvent::JobStatus,
            Self::JobProgress(_) => event_type == T::JobProgress,
            Self::StepStarted(_) => event_type == T::StepStarted,
            Self::StepProgress(_) => event_type == T::StepProgress,
            Self::StepOutput(_) => event_type == T::StepOutput,
            Self::StepFinished(_) => matches!(event_type, T::StepCompleted | T::StepFailed),
            Self::Custom(_) => event_type.is_custom(),
        }
    }

    /// Reads the stored fields of an event of `event_type`.
    pub fn from_stored(event_type: EventType, data: Value) -> Result<Self, serde_json::Error> {
        Self::read_stored(event_type, data)
    }

    /// Reads the stored fields of an event of `event_type` from their JSON
    /// text, without building a [`Value`] on the way (the replay path).
    pub fn from_stored_json(event_type: EventType, data: &str) -> Result<Self, serde_json::Error> {
        let mut reader = serde_json::Deserializer::from_str(data);
        let body = Self::read_stored(event_type, &mut reader)?;
        reader.end()?;
        Ok(body)
    }

    fn read_stored<'de, D: serde::Deserializer<'de>>(event_type: EventType, data: D) -> Result<Self, D::Error> {
        use SocketEvent as S;
        Ok(match event_type.socket_event() {
            S::JobCreated => Self::JobCreated(Deserialize::deserialize(data)?),
            S::JobStatus => Self::Status(Deserialize::deserialize(data)?),
            S::JobProgress => Self::JobProgress(Deserialize::deserialize(data)?),
            S::StepStarted => Self::StepStarted(Deserialize::deserialize(data)?),
            S::StepProgress => Self::StepProgress(Deserialize::deserialize(data)?),
            S::StepOutput => Self::StepOutput(Deserialize::deserialize(data)?),
            S::StepCompleted => Self::StepFinished(Deserialize::deserialize(data)?),
            S::JobEvent => Self::Custom(Deserialize::deserialize(data)?),
        })
    }
}

/// `job:created`: the job as it was created.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct JobCreated {
    /// The snapshot right after creation, without `steps`.
    pub job: JobSnapshot,
}

/// `job:status`: a status transition.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StatusChanged {
    /// The new status.
    pub status: JobStatus,
    /// The status before.
    pub previous_status: JobStatus,
    /// The job's result, on `completed` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub result: Option<Value>,
    /// Why, on `failed` and `cancelled` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub error: Option<String>,
}

/// `job:progress`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct JobProgress {
    /// 0–100.
    pub progress: u8,
    /// What is happening, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub message: Option<String>,
}

/// `step:started`. The step id is the event's `stepId`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StepStarted {
    /// The step's name.
    pub name: String,
    /// Its phase.
    pub phase: StepPhase,
    /// Its type.
    pub step_type: StepType,
}

/// `step:progress`. The step id is the event's `stepId`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StepProgress {
    /// 0–100.
    pub progress: u8,
    /// What is happening, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub message: Option<String>,
}

/// `step:output`: a chunk of a step's live output.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StepOutput {
    /// The text, as the producer sent it (it may hold ANSI escapes and partial lines).
    pub chunk: String,
    /// Which stream it came from.
    #[serde(default)]
    pub stream: OutputStream,
}

/// `step:completed`: a step finished (completed, failed or skipped).
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StepFinished {
    /// `completed`, `failed` or `skipped`.
    pub status: StepStatus,
    /// From the step's start to its end.
    pub duration_ms: i64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub error: Option<String>,
    /// AI input tokens used by the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub tokens_input: Option<i64>,
    /// AI output tokens used by the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub tokens_output: Option<i64>,
}

/// `job:event`: a free-form event (`ai.*`, `gate.*`).
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CustomEvent {
    /// The producer's object.
    pub payload: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(json: Value) -> Event {
        let event: Event = serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serde_json::to_value(&event).ok(), Some(json), "round trip");
        event
    }

    #[test]
    fn a_step_output_event_round_trips_through_its_literal_json() {
        let event = parse(json!({
            "eventId": "0193b0a4-3c1e-7c3a-9f00-000000000001",
            "seq": 7,
            "type": "step.output",
            "jobId": "0193b0a4-3c1e-7c3a-9f00-0000000000aa",
            "workspaceId": "ws-1",
            "stepId": "0193b0a4-3c1e-7c3a-9f00-0000000000bb",
            "timestamp": "2026-11-24T10:00:00.123Z",
            "chunk": "\u{1b}[32mok\u{1b}[0m\n",
            "stream": "stderr"
        }));
        assert_eq!(event.socket_event().as_str(), "step:output");
        assert!(matches!(event.body, EventBody::StepOutput(StepOutput { stream: OutputStream::Stderr, .. })));
    }

    #[test]
    fn a_status_event_carries_previous_status_and_result_only_when_completed() {
        let event = parse(json!({
            "eventId": "0193b0a4-3c1e-7c3a-9f00-000000000002",
            "seq": 4,
            "type": "job.completed",
            "jobId": "0193b0a4-3c1e-7c3a-9f00-0000000000aa",
            "workspaceId": "ws-1",
            "stepId": null,
            "timestamp": "2026-11-24T10:00:01.000Z",
            "status": "completed",
            "previousStatus": "running",
            "result": { "artifacts": 2 }
        }));
        assert_eq!(event.socket_event().as_str(), "job:status");
        assert!(event.body.fits(event.event_type));
    }

    #[test]
    fn a_step_completed_event_round_trips_with_tokens() {
        parse(json!({
            "eventId": "0193b0a4-3c1e-7c3a-9f00-000000000003",
            "seq": 9,
            "type": "step.failed",
            "jobId": "0193b0a4-3c1e-7c3a-9f00-0000000000aa",
            "workspaceId": "ws-1",
            "stepId": "0193b0a4-3c1e-7c3a-9f00-0000000000bb",
            "timestamp": "2026-11-24T10:00:02.500Z",
            "status": "failed",
            "durationMs": 1500,
            "error": "exit code 2",
            "tokensInput": 10,
            "tokensOutput": 20
        }));
    }

    #[test]
    fn job_and_step_progress_read_back_as_what_their_type_says() {
        let data = json!({ "progress": 40, "message": "half" });
        let job = EventBody::from_stored(EventType::JobProgress, data.clone()).ok();
        let step = EventBody::from_stored(EventType::StepProgress, data).ok();
        assert!(matches!(job, Some(EventBody::JobProgress(_))));
        assert!(matches!(step, Some(EventBody::StepProgress(_))));
    }

    #[test]
    fn every_event_type_maps_to_the_contract_socket_event() {
        let names: Vec<_> =
            EventType::ALL.iter().map(|t| format!("{}={}", t.as_str(), t.socket_event().as_str())).collect();
        assert_eq!(
            names.join(" "),
            "job.created=job:created job.queued=job:status job.started=job:status \
             job.completed=job:status job.failed=job:status job.cancelled=job:status \
             job.progress=job:progress step.started=step:started step.progress=step:progress \
             step.output=step:output step.completed=step:completed step.failed=step:completed \
             ai.tool_called=job:event ai.tokens_used=job:event ai.artifact_created=job:event \
             gate.started=job:event gate.passed=job:event gate.failed=job:event"
        );
    }
}
