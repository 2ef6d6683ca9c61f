//! Request extractors: the bearer token and JSON bodies, with the contract's errors.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::Method;
use jobstream_protocol::ErrorCode;
use jobstream_rooms::{authorize, Action, Claims, Decision};
use serde_json::Value;

use super::error::ApiError;
use crate::app::AppState;
use crate::auth;

/// The verified claims of the request's bearer token, and its expiry.
#[derive(Debug, Clone)]
pub struct Auth {
    /// What the token allows.
    pub claims: Claims,
    /// When it expires (streams end then).
    pub expires: auth::Expiry,
}

/// The route of the job's SSE stream: with the workspace stream, the only
/// routes that take `?token=` (`EventSource` cannot set headers).
pub const JOB_STREAM_ROUTE: &str = "/api/v1/jobs/{job_id}/events/stream";
/// The route of the workspace's SSE stream (see [`JOB_STREAM_ROUTE`]).
pub const WORKSPACE_STREAM_ROUTE: &str = "/api/v1/workspaces/{workspace_id}/events/stream";

/// Whether the request may carry its token in `?token=`: a `GET` of one of the
/// two SSE streams. Elsewhere a query token is ignored, so that tokens stay
/// out of the URLs (and logs, histories, `Referer`s) of every other route.
fn takes_query_token(parts: &Parts) -> bool {
    parts.method == Method::GET
        && parts
            .extensions
            .get::<MatchedPath>()
            .is_some_and(|route| [JOB_STREAM_ROUTE, WORKSPACE_STREAM_ROUTE].contains(&route.as_str()))
}

/// The token of a request: `Authorization: Bearer …`, else, on the SSE
/// streams only, `?token=` (for `EventSource`).
pub fn request_token(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let value = value.trim();
        return match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token.trim().to_owned()),
            _ => Some(String::new()),
        };
    }
    if takes_query_token(parts) {
        query_param(parts.uri.query(), "token")
    } else {
        None
    }
}

/// A query parameter's decoded value.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let query = query?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 2;
            }
            (byte, _) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = request_token(parts).filter(|t| !t.is_empty());
        let Some(token) = token else {
            let message = if query_param(parts.uri.query(), "token").is_some() {
                "missing token: send `Authorization: Bearer <token>` (`?token=` is taken only by the SSE streams)"
            } else {
                "missing token: send `Authorization: Bearer <token>`"
            };
            return Err(ApiError::new(ErrorCode::Unauthorized, message));
        };
        auth::verify_token(&state.keys, &token)
            .map(|verified| Auth { claims: verified.claims, expires: verified.expires })
            .map_err(|err| ApiError::new(ErrorCode::Unauthorized, format!("unauthorized: {err}")))
    }
}

impl Auth {
    /// Checks an action on a workspace: 403 with the rule's reason when denied.
    pub fn require(&self, action: Action, workspace: &str) -> Result<(), ApiError> {
        match authorize(&self.claims, action, workspace) {
            Decision::Allowed(_) => Ok(()),
            Decision::Denied(denial) => Err(ApiError::new(ErrorCode::Forbidden, denial.reason)),
        }
    }

    /// Checks the scope alone (403 without it).
    pub fn require_scope(&self, action: Action) -> Result<(), ApiError> {
        let scope = match action {
            Action::Read => jobstream_rooms::Scope::Subscribe,
            Action::Write => jobstream_rooms::Scope::Publish,
        };
        if self.claims.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::new(ErrorCode::Forbidden, format!("the token lacks the `{}` scope", scope.as_str())))
        }
    }

    /// Whether the token may do `action` on `workspace`.
    pub fn allows(&self, action: Action, workspace: &str) -> bool {
        authorize(&self.claims, action, workspace).is_allowed()
    }

    /// [`Auth::allows`] for `action`, as an owned check a write task can keep.
    pub fn may(&self, action: Action) -> impl Fn(&str) -> bool + Send + Sync + 'static {
        let claims = self.claims.clone();
        move |workspace| authorize(&claims, action, workspace).is_allowed()
    }
}

/// A JSON request body: 400 if it is not JSON, 413 over the size limit.
#[derive(Debug)]
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "expected a JSON body with `Content-Type: application/json`",
            ));
        }
        let limit = state.limits.max_body_bytes;
        let bytes: Bytes = axum::body::to_bytes(request.into_body(), limit).await.map_err(|err| {
            let err = err.into_inner();
            if crate::limits::is_body_timeout(&*err) {
                // A body sent too slowly (`crate::limits::limit_body_time`).
                ApiError::new(ErrorCode::RequestTimeout, format!("the request body did not arrive in time: {err}"))
            } else {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the request body is over the limit of {limit} bytes"),
                )
            }
        })?;
        let parsed = serde_json::from_slice(&bytes);
        // What could be written but not read back as sent is refused, naming
        // the field (numbers, nesting, NUL: see `jobstream_protocol::json`).
        // A body too deep for the parser gets the same 422 as one too deep to store.
        let deep = matches!(&parsed, Err(err) if err.to_string().starts_with("recursion limit exceeded"));
        if parsed.is_ok() || deep {
            jobstream_protocol::json::check_body(&bytes)?;
        }
        parsed
            .map(JsonBody)
            .map_err(|err| ApiError::new(ErrorCode::BadRequest, format!("the body is not valid JSON: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_percent_decoded() {
        assert_eq!(query_param(Some("a=1&token=x%2Ey+z"), "token").as_deref(), Some("x.y z"));
        assert_eq!(query_param(Some("token=%zz"), "token").as_deref(), Some("%zz"));
        assert_eq!(query_param(Some("a=1"), "token"), None);
        assert_eq!(query_param(None, "token"), None);
    }

    #[tokio::test]
    async fn a_query_token_is_taken_on_the_sse_streams_only() {
        use axum::routing::{get, post};
        async fn token(parts: Parts) -> String {
            request_token(&parts).unwrap_or_else(|| "(none)".into())
        }
        let mut router = axum::Router::new()
            .route(JOB_STREAM_ROUTE, get(token))
            .route(WORKSPACE_STREAM_ROUTE, get(token))
            .route("/api/v1/jobs/{job_id}", get(token))
            .route("/api/v1/jobs/{job_id}/status", post(token))
            .into_service::<axum::body::Body>();
        let job = "0190a3c4-0000-7000-8000-000000000000";
        for (method, path, bearer, expected) in [
            (Method::GET, format!("/api/v1/jobs/{job}/events/stream?since=1&token=q"), None, "q"),
            (Method::GET, "/api/v1/workspaces/w/events/stream?token=q".into(), None, "q"),
            (Method::GET, "/api/v1/workspaces/w/events/stream?token=q".into(), Some("h"), "h"),
            (Method::GET, format!("/api/v1/jobs/{job}?token=q"), None, "(none)"),
            (Method::POST, format!("/api/v1/jobs/{job}/status?token=q"), None, "(none)"),
            (Method::POST, format!("/api/v1/jobs/{job}/status?token=q"), Some("h"), "h"),
        ] {
            let mut request = axum::http::Request::builder().method(method.clone()).uri(&path);
            if let Some(bearer) = bearer {
                request = request.header(AUTHORIZATION, format!("Bearer {bearer}"));
            }
            let request = request.body(axum::body::Body::empty()).unwrap_or_default();
            let response = tower::Service::call(&mut router, request).await;
            let body = match response {
                Ok(response) => axum::body::to_bytes(response.into_body(), 1024).await.unwrap_or_default(),
                Err(never) => match never {},
            };
            assert_eq!(std::str::from_utf8(&body).ok(), Some(expected), "{method} {path} bearer {bearer:?}");
        }
    }
}
