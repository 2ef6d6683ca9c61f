//! Socket.IO ack bodies: `{ ok: true, … }` or `{ ok: false, error: { code, message } }`.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorBody, ErrorCode};
use crate::snapshot::JobSnapshot;

/// `{ ok: false, error }`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckError {
    /// Always false.
    #[cfg_attr(feature = "ts", ts(type = "false"))]
    pub ok: bool,
    /// What went wrong.
    pub error: ErrorBody,
}

impl AckError {
    /// A refusal with a code and a message for people.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { ok: false, error: ErrorBody::new(code, message) }
    }
}

/// The ok ack of `subscribe:workspace:jobs`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceSubscribed {
    /// Always true.
    #[cfg_attr(feature = "ts", ts(type = "true"))]
    pub ok: bool,
    /// `workspace:{id}:jobs`.
    pub room: String,
    /// Up to 100 most recently updated jobs, newest first, without steps.
    pub jobs: Vec<JobSnapshot>,
}

/// The ok ack of `subscribe:job`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSubscribed {
    /// Always true.
    #[cfg_attr(feature = "ts", ts(type = "true"))]
    pub ok: bool,
    /// `job:{id}`.
    pub room: String,
    /// The job with its steps.
    pub job: JobSnapshot,
}

/// The ok ack of the unsubscribe events: `{ ok: true }`.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unsubscribed {
    /// Always true.
    #[cfg_attr(feature = "ts", ts(type = "true"))]
    pub ok: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_refusal_ack_has_ok_false_and_a_coded_error() {
        let ack = AckError::new(ErrorCode::Forbidden, "workspace ws-2 is not in your token");
        assert_eq!(
            serde_json::to_value(ack).ok(),
            Some(
                json!({ "ok": false, "error": { "code": "forbidden", "message": "workspace ws-2 is not in your token" } })
            )
        );
    }
}
