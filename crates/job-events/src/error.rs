//! The errors of the service's operations: one enum per kind of operation.

use jobstream_protocol::{ErrorCode, JobStatus, ValidationError};
use sea_orm::DbErr;
use uuid::Uuid;

/// Why a write (job creation or event append) was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The request does not fit its schema.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No such job, or one in a workspace the writer may not write.
    #[error("job {0} not found")]
    JobNotFound(Uuid),
    /// No such step in this job.
    #[error("step {step} not found in job {job}")]
    StepNotFound {
        /// The job.
        job: Uuid,
        /// The step asked for.
        step: Uuid,
    },
    /// The status rules refuse the transition.
    #[error("job {job} cannot go from {from} to {to}")]
    InvalidTransition {
        /// The job.
        job: Uuid,
        /// Its status.
        from: JobStatus,
        /// The status asked for.
        to: JobStatus,
    },
    /// The job is finished: only `job:event` types may still be appended.
    #[error("job {job} is {status}: only ai.* and gate.* events may still be appended")]
    JobFinished {
        /// The job.
        job: Uuid,
        /// Its terminal status.
        status: JobStatus,
    },
    /// The write conflicts with the current state (a step that is not running, an id taken).
    #[error("{0}")]
    Conflict(String),
    /// The database could not be reached.
    #[error("the database is unavailable")]
    Unavailable(#[source] DbErr),
    /// Anything else; logged, never shown.
    #[error("internal error")]
    Internal(#[source] DbErr),
    /// Item `index` of a batch was refused (nothing of the batch was written).
    #[error("events[{index}]: {source}")]
    InBatch {
        /// The item's position in the request.
        index: usize,
        /// Why it was refused.
        source: Box<WriteError>,
    },
}

impl WriteError {
    /// The stable code for clients.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InBatch { source, .. } => source.code(),
            Self::Invalid(_) => ErrorCode::InvalidPayload,
            Self::JobNotFound(_) | Self::StepNotFound { .. } => ErrorCode::NotFound,
            Self::InvalidTransition { .. } | Self::JobFinished { .. } => ErrorCode::InvalidTransition,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<DbErr> for WriteError {
    fn from(err: DbErr) -> Self {
        if is_unavailable(&err) {
            Self::Unavailable(err)
        } else {
            Self::Internal(err)
        }
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The database could not be reached.
    #[error("the database is unavailable")]
    Unavailable(#[source] DbErr),
    /// Anything else; logged, never shown.
    #[error("internal error")]
    Internal(#[source] DbErr),
}

impl ReadError {
    /// The stable code for clients.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<DbErr> for ReadError {
    fn from(err: DbErr) -> Self {
        if is_unavailable(&err) {
            Self::Unavailable(err)
        } else {
            Self::Internal(err)
        }
    }
}

/// A connection that could not be made or acquired, as opposed to a failing statement.
fn is_unavailable(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) | DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e)) => matches!(
            e,
            sea_orm::sqlx::Error::Io(_) | sea_orm::sqlx::Error::PoolTimedOut | sea_orm::sqlx::Error::PoolClosed
        ),
        _ => false,
    }
}
