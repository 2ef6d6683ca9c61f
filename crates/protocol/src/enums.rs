//! The enumerations of the contract and the job status transition rules.

use serde::{Deserialize, Serialize};

/// The life of a job. Transitions are checked by [`JobStatus::can_become`].
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Created, not yet queued.
    Pending,
    /// Waiting for a worker.
    Queued,
    /// A worker is running it.
    Running,
    /// Finished successfully (terminal).
    Completed,
    /// Finished with an error (terminal).
    Failed,
    /// Stopped before it finished (terminal).
    Cancelled,
}

impl JobStatus {
    /// Every status, in life order.
    pub const ALL: [JobStatus; 6] =
        [Self::Pending, Self::Queued, Self::Running, Self::Completed, Self::Failed, Self::Cancelled];

    /// The wire name (`"running"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// `completed`, `failed` and `cancelled` end a job.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Whether a job in `self` may move to `next`: `pending→queued`,
    /// `queued→running`, `running→completed`, and any non-terminal status to
    /// `failed` or `cancelled`. Everything else is refused.
    pub fn can_become(self, next: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, next),
            (Pending, Queued)
                | (Queued, Running)
                | (Running, Completed)
                | (Pending | Queued | Running, Failed | Cancelled)
        )
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of a job a step belongs to.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepPhase {
    /// Preparing the work.
    Setup,
    /// Doing the work.
    Execution,
    /// Checking the work.
    Validation,
    /// Tidying up.
    Cleanup,
}

/// What kind of work a step does.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepType {
    /// A shell command.
    Command,
    /// An AI agent action.
    AiAction,
    /// A gate that must pass.
    Gate,
    /// Producing an artifact.
    Artifact,
}

/// The life of a step.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Started and not finished: only a running step takes output, progress and completion.
    Running,
    /// Finished successfully.
    Completed,
    /// Finished with an error.
    Failed,
    /// Not run.
    Skipped,
}

impl StepStatus {
    /// Whether a step in this status has finished.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Skipped)
    }
}

/// The output stream a `step:output` chunk came from.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output (the default).
    #[default]
    Stdout,
    /// Standard error.
    Stderr,
}

/// Serde's name for a unit enum variant, for storing enums as text.
macro_rules! wire_text {
    ($($ty:ty),*) => {$(
        impl $ty {
            /// The wire name of this value.
            pub fn wire_name(self) -> String {
                match serde_json::to_value(self) {
                    Ok(serde_json::Value::String(s)) => s,
                    _ => String::new(),
                }
            }
            /// Parses a wire name.
            pub fn from_wire_name(text: &str) -> Option<Self> {
                serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
            }
        }
    )*};
}
wire_text!(StepPhase, StepType, StepStatus, OutputStream);

#[cfg(test)]
mod tests {
    use super::JobStatus::{self, *};

    #[test]
    fn only_the_contract_transitions_are_allowed() {
        let allowed = [
            (Pending, Queued),
            (Queued, Running),
            (Running, Completed),
            (Pending, Failed),
            (Queued, Failed),
            (Running, Failed),
            (Pending, Cancelled),
            (Queued, Cancelled),
            (Running, Cancelled),
        ];
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                assert_eq!(from.can_become(to), allowed.contains(&(from, to)), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn terminal_statuses_are_completed_failed_and_cancelled() {
        let terminal: Vec<_> = JobStatus::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, vec![Completed, Failed, Cancelled]);
    }

    #[test]
    fn enum_values_are_snake_case_strings() {
        assert_eq!(super::StepType::AiAction.wire_name(), "ai_action");
        assert_eq!(super::StepPhase::from_wire_name("cleanup"), Some(super::StepPhase::Cleanup));
        assert_eq!(JobStatus::parse("cancelled"), Some(Cancelled));
        assert_eq!(JobStatus::parse("Cancelled"), None);
    }
}
