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
        Self::of_class(classify(&err), err)
    }
}

/// A write's error from SQLite's extended result code (`None` when the
/// error is not SQLite's own), classified as sqlx's errors are.
pub(crate) fn sqlite_write_error(extended_code: Option<i32>, err: DbErr) -> WriteError {
    let code = extended_code.map(|code| code.to_string());
    let class = match code.as_deref() {
        Some(code) if storage_code(true, code) => Some(Class::Storage),
        Some(code) if data_code(true, code) => Some(Class::Data),
        _ => None,
    };
    WriteError::of_class(class, err)
}

impl WriteError {
    fn of_class(class: Option<Class>, err: DbErr) -> Self {
        match class {
            Some(Class::Storage) => Self::Unavailable(err),
            Some(Class::Data) => {
                // The request's own data (checked at the front doors; this is the
                // last line for in-process producers): a 422, never a 500.
                tracing::warn!(error = %err, "a write was refused by the database for its data");
                Self::Invalid(ValidationError::new("body", "a value in the request cannot be stored"))
            }
            None => Self::Internal(err),
        }
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The database could not be reached.
    #[error("the database is unavailable")]
    Unavailable(#[source] DbErr),
    /// A value of the request that the database refuses (a 422, never a 500).
    #[error("a value in the request cannot be used")]
    Invalid(#[source] DbErr),
    /// Anything else; logged, never shown.
    #[error("internal error")]
    Internal(#[source] DbErr),
}

impl ReadError {
    /// The stable code for clients.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Invalid(_) => ErrorCode::InvalidPayload,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<DbErr> for ReadError {
    fn from(err: DbErr) -> Self {
        match classify(&err) {
            Some(Class::Storage) => Self::Unavailable(err),
            Some(Class::Data) => Self::Invalid(err),
            None => Self::Internal(err),
        }
    }
}

/// What kind of database error, where it is not a bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// The storage, rather than the request: the database cannot be reached,
    /// or cannot take writes for now (disk full, I/O error, lock timeout,
    /// shutting down, a serialization failure). Nothing was written; the client
    /// may try again, so these are answered 503 `unavailable`.
    Storage,
    /// The request's data cannot be stored (PostgreSQL data exceptions and
    /// program limits, SQLite's too big / mismatch / range): 422.
    Data,
}

fn classify(err: &DbErr) -> Option<Class> {
    use sea_orm::sqlx::Error as Sqlx;
    let sqlx = match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return Some(Class::Storage),
        DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) | DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e)) => e,
        _ => return None,
    };
    match sqlx {
        Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed => Some(Class::Storage),
        Sqlx::Database(db) => {
            let sqlite = db.try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>().is_some();
            let code = db.code()?;
            if storage_code(sqlite, &code) {
                Some(Class::Storage)
            } else if data_code(sqlite, &code) {
                Some(Class::Data)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// SQLITE_TOOBIG 18, SQLITE_MISMATCH 20, SQLITE_RANGE 25; PostgreSQL class 22
/// (data exception) and 54 (program limit exceeded).
fn data_code(sqlite: bool, code: &str) -> bool {
    if sqlite {
        code.parse::<u32>().is_ok_and(|code| matches!(code & 0xff, 18 | 20 | 25))
    } else {
        code.starts_with("22") || code.starts_with("54")
    }
}

/// SQLite result codes (primary code in the low byte of the extended one) and
/// PostgreSQL SQLSTATEs that mean "the storage cannot do it now".
fn storage_code(sqlite: bool, code: &str) -> bool {
    if sqlite {
        // SQLITE_BUSY 5, SQLITE_LOCKED 6, SQLITE_NOMEM 7, SQLITE_READONLY 8,
        // SQLITE_IOERR 10, SQLITE_FULL 13, SQLITE_CANTOPEN 14, SQLITE_PROTOCOL 15.
        return code.parse::<u32>().is_ok_and(|code| matches!(code & 0xff, 5 | 6 | 7 | 8 | 10 | 13 | 14 | 15));
    }
    // 08 connection exception, 53 insufficient resources (disk full, out of
    // memory, too many connections), 57 operator intervention (shutdown,
    // statement timeout), 58 system error (I/O), 40001/40P01 serialization
    // failure and deadlock, 55P03 lock not available.
    ["08", "53", "57", "58"].iter().any(|class| code.starts_with(class)) || matches!(code, "40001" | "40P01" | "55P03")
}

#[cfg(test)]
mod tests {
    use super::{data_code, storage_code};

    #[test]
    fn storage_failures_are_told_apart_from_bad_requests() {
        assert!(storage_code(true, "13")); // SQLITE_FULL
        assert!(storage_code(true, "266")); // SQLITE_IOERR_READ
        assert!(storage_code(true, "5")); // SQLITE_BUSY
        assert!(!storage_code(true, "19")); // SQLITE_CONSTRAINT
        assert!(!storage_code(true, "2067")); // SQLITE_CONSTRAINT_UNIQUE
        assert!(storage_code(false, "53100")); // disk_full
        assert!(storage_code(false, "57P01")); // admin_shutdown
        assert!(storage_code(false, "40001")); // serialization_failure
        assert!(!storage_code(false, "23505")); // unique_violation
        assert!(!storage_code(false, "22021")); // character_not_in_repertoire
        assert!(data_code(false, "22021"));
        assert!(data_code(false, "22P05")); // untranslatable_character
        assert!(!data_code(false, "23505"));
    }
}
