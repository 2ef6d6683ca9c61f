//! HTTP error answers: `{ "error": { "code", "message" } }` with the status of the code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use jobstream_job_events::{ReadError, WriteError};
use jobstream_protocol::{ErrorBody, ErrorCode, ValidationError};

/// An error answer. Its message is for people and never holds internal error text.
#[derive(Debug)]
pub struct ApiError(pub ErrorBody, RetryAfter);

/// When to try again, in seconds (RFC 9110 §10.2.3), if the answer says.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryAfter(Option<u64>);

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(ErrorBody::new(code, message), RetryAfter::default())
    }

    /// 429 `rate_limited` for a write over the subject's rate; try again after `wait`.
    pub fn rate_limited(wait: std::time::Duration) -> Self {
        let seconds = crate::limits::retry_after_secs(wait);
        let message = format!("too many writes with this token's subject; try again in {seconds} s");
        Self(ErrorBody::new(ErrorCode::RateLimited, message), RetryAfter(Some(seconds)))
    }

    /// 404 for a job (also used for jobs the token may not see).
    pub fn job_not_found(id: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("job {id} not found"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        #[derive(serde::Serialize)]
        struct Envelope {
            error: ErrorBody,
        }
        // Every 503 says when to try again (RFC 9110 §10.2.3: in seconds), as does a 429.
        let retry_after = match self.1 {
            RetryAfter(Some(seconds)) => Some(seconds),
            RetryAfter(None) => (self.0.code == ErrorCode::Unavailable).then_some(1),
        };
        let mut response = (status, Json(Envelope { error: self.0 })).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
        }
        response
    }
}

impl From<ValidationError> for ApiError {
    fn from(err: ValidationError) -> Self {
        Self::new(ErrorCode::InvalidPayload, err.to_string())
    }
}

impl From<WriteError> for ApiError {
    fn from(err: WriteError) -> Self {
        let code = err.code();
        match &err {
            WriteError::Unavailable(source) => {
                tracing::warn!(error = %source, "write refused: database unavailable");
                Self::new(code, "the database is unavailable; nothing was written, try again")
            }
            WriteError::Internal(source) => {
                tracing::error!(error = %source, "write failed");
                Self::new(code, "internal error; nothing was written")
            }
            _ => Self::new(code, err.to_string()),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(err: ReadError) -> Self {
        match &err {
            ReadError::Unavailable(source) => {
                tracing::warn!(error = %source, "read failed: database unavailable");
                Self::new(err.code(), "the database is unavailable; try again")
            }
            ReadError::Invalid(source) => {
                tracing::warn!(error = %source, "read refused by the database for the request's data");
                Self::new(err.code(), "a value in the request cannot be used")
            }
            ReadError::Internal(source) => {
                tracing::error!(error = %source, "read failed");
                Self::new(err.code(), "internal error")
            }
        }
    }
}
