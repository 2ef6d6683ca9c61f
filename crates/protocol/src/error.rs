//! The stable error codes, the one table that maps them to HTTP statuses, and the error body.

use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes, shared by HTTP answers and Socket.IO acks.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Unparseable JSON or a wrong content type.
    BadRequest,
    /// No token, or a malformed, badly signed or expired one.
    Unauthorized,
    /// The token lacks the scope or the workspace.
    Forbidden,
    /// No such job or step (or one the token cannot read).
    NotFound,
    /// The route exists but not with this method (the `Allow` header lists
    /// the methods it takes; RFC 9110 §15.5.6).
    MethodNotAllowed,
    /// A status transition the rules refuse, or a write to a finished job.
    InvalidTransition,
    /// The write conflicts with the current state (a step that is not running, an id taken).
    Conflict,
    /// The body or a chunk is larger than the configured limit.
    PayloadTooLarge,
    /// A field is missing, of the wrong type, out of range or an unknown enum value.
    InvalidPayload,
    /// A `since` beyond the job's newest event.
    InvalidCursor,
    /// A limit on how much one client may do was reached: writes per second,
    /// connections per token subject, subscriptions per socket.
    RateLimited,
    /// The request body did not arrive in time.
    RequestTimeout,
    /// The database cannot be reached; nothing was written.
    Unavailable,
    /// Anything else; details are in the server log.
    Internal,
}

impl ErrorCode {
    /// The HTTP status that goes with the code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::InvalidTransition | Self::Conflict => 409,
            Self::RequestTimeout => 408,
            Self::PayloadTooLarge => 413,
            Self::InvalidPayload | Self::InvalidCursor => 422,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InvalidTransition => "invalid_transition",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InvalidPayload => "invalid_payload",
            Self::InvalidCursor => "invalid_cursor",
            Self::RateLimited => "rate_limited",
            Self::RequestTimeout => "request_timeout",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// The longest error message, in bytes: a field's path and its problem, each
/// at most [`MAX_ERROR_TEXT`](crate::requests::MAX_ERROR_TEXT), and `: `
/// between them.
pub const MAX_ERROR_MESSAGE: usize = 2 * crate::requests::MAX_ERROR_TEXT + 2;

/// `{ "code": "…", "message": "…" }`: what a client is told of an error.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The stable code.
    pub code: ErrorCode,
    /// A sentence a person can act on; never internal error text.
    pub message: String,
}

impl ErrorBody {
    /// An error body. A message longer than [`MAX_ERROR_MESSAGE`] bytes
    /// keeps its start and end around `…`, so that no refusal grows with the
    /// input that caused it (a header, a quoted value).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: crate::requests::bounded_to(message.into(), MAX_ERROR_MESSAGE) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_maps_to_its_contract_status() {
        let table = [
            ("bad_request", 400),
            ("unauthorized", 401),
            ("forbidden", 403),
            ("not_found", 404),
            ("method_not_allowed", 405),
            ("invalid_transition", 409),
            ("conflict", 409),
            ("payload_too_large", 413),
            ("invalid_payload", 422),
            ("invalid_cursor", 422),
            ("request_timeout", 408),
            ("rate_limited", 429),
            ("unavailable", 503),
            ("internal", 500),
        ];
        for (name, status) in table {
            let code: ErrorCode = serde_json::from_value(serde_json::json!(name)).unwrap_or(ErrorCode::Internal);
            assert_eq!((code.as_str(), code.http_status()), (name, status));
        }
    }

    #[test]
    fn an_error_message_is_bounded_whatever_it_quotes() {
        let body = ErrorBody::new(ErrorCode::MethodNotAllowed, "X".repeat(60_000));
        assert!(body.message.len() <= MAX_ERROR_MESSAGE, "{} bytes", body.message.len());
        assert!(body.message.contains('…'));
        assert_eq!(ErrorBody::new(ErrorCode::NotFound, "short").message, "short");
    }
}
