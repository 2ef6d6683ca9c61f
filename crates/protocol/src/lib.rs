//! jobstream-protocol: the wire types of jobstream and nothing else.
//!
//! Everything a Socket.IO client, an HTTP producer or an SSE reader can observe
//! is defined here once, as serde types: event types and the Socket.IO event
//! that carries each, the event object and its type-specific fields, job and
//! step snapshots, subscribe requests and acks, room names, the status rules,
//! and the stable error codes. No I/O lives in this crate.

pub mod ack;
pub mod enums;
pub mod error;
pub mod event;
pub mod json;
#[cfg(feature = "openapi")]
mod openapi;
pub mod requests;
pub mod room;
pub mod snapshot;
pub mod time;

pub use ack::{AckError, JobSubscribed, Unsubscribed, WorkspaceSubscribed};
pub use enums::{JobStatus, OutputStream, StepPhase, StepStatus, StepType};
pub use error::{ErrorBody, ErrorCode};
pub use event::{
    CustomEvent, Event, EventBody, EventType, JobCreated, JobProgress, SocketEvent, StatusChanged, StepFinished,
    StepOutput, StepProgress, StepStarted,
};
pub use requests::{
    BatchItem, BatchKind, BatchRequest, CompleteStep, CreateJob, CustomEventRequest, ProgressRequest, StartStep,
    StatusRequest, StepOutputRequest, SubscribeJob, SubscribeWorkspace, UnsubscribeJob, UnsubscribeWorkspace,
    ValidationError,
};
pub use room::{Room, RoomParseError};
pub use snapshot::{JobSnapshot, StepSnapshot};
pub use time::Timestamp;

/// Upper bound on the workspace jobs sent in a `subscribe:workspace:jobs` ack.
pub const WORKSPACE_SNAPSHOT_LIMIT: u64 = 100;
/// Upper bound on events accepted in one `POST /api/v1/events/batch`.
pub const MAX_BATCH_EVENTS: usize = 1000;
