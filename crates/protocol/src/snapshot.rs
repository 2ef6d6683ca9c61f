//! Job and step snapshots: the current state of a job, as acks and GETs return it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::enums::{JobStatus, StepPhase, StepStatus, StepType};
use crate::time::Timestamp;

/// The state of a job after its event `lastSeq`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct JobSnapshot {
    /// The job id.
    pub id: Uuid,
    /// Its workspace.
    pub workspace_id: String,
    /// The producer's kind of job (`"build"`, `"deploy"`, …).
    #[serde(rename = "type")]
    pub job_type: String,
    /// Current status.
    pub status: JobStatus,
    /// The producer's priority (default 0).
    pub priority: i32,
    /// Last reported progress, 0–100.
    pub progress: u8,
    /// The producer's object, as given at creation.
    pub metadata: Value,
    /// The result given on completion, else null.
    pub result: Option<Value>,
    /// The error given on failure or cancellation, else null.
    pub error: Option<String>,
    /// When the job was created.
    pub created_at: Timestamp,
    /// When its newest event was committed.
    pub updated_at: Timestamp,
    /// When it became `running`.
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal status.
    pub completed_at: Option<Timestamp>,
    /// The seq of its newest event: a subscriber with this snapshot needs `seq > lastSeq` next.
    pub last_seq: i64,
    /// Its steps in creation order, where the answer includes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(optional))]
    pub steps: Option<Vec<StepSnapshot>>,
}

/// The state of one step.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StepSnapshot {
    /// The step id.
    pub id: Uuid,
    /// Its job.
    pub job_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its phase.
    pub phase: StepPhase,
    /// Its type.
    pub step_type: StepType,
    /// Current status.
    pub status: StepStatus,
    /// When it started.
    pub started_at: Option<Timestamp>,
    /// When it finished.
    pub completed_at: Option<Timestamp>,
    /// From start to finish, once finished.
    pub duration_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// AI input tokens.
    pub tokens_input: Option<i64>,
    /// AI output tokens.
    pub tokens_output: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_job_snapshot_round_trips_through_its_literal_json() {
        let json = json!({
            "id": "0193b0a4-3c1e-7c3a-9f00-0000000000aa",
            "workspaceId": "ws-1",
            "type": "build",
            "status": "running",
            "priority": 0,
            "progress": 40,
            "metadata": { "branch": "main" },
            "result": null,
            "error": null,
            "createdAt": "2026-11-24T10:00:00.000Z",
            "updatedAt": "2026-11-24T10:00:05.250Z",
            "startedAt": "2026-11-24T10:00:01.000Z",
            "completedAt": null,
            "lastSeq": 6,
            "steps": [{
                "id": "0193b0a4-3c1e-7c3a-9f00-0000000000bb",
                "jobId": "0193b0a4-3c1e-7c3a-9f00-0000000000aa",
                "name": "compile",
                "phase": "execution",
                "stepType": "command",
                "status": "running",
                "startedAt": "2026-11-24T10:00:02.000Z",
                "completedAt": null,
                "durationMs": null,
                "error": null,
                "tokensInput": null,
                "tokensOutput": null
            }]
        });
        let snapshot: JobSnapshot = serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(snapshot.last_seq, 6);
        assert_eq!(serde_json::to_value(&snapshot).ok(), Some(json));
    }
}
