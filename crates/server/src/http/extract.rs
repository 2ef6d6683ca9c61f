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
    // Another scheme (`Basic`, which a browser sends by itself on a site
    // behind HTTP authentication) is not jobstream's: it is passed over.
    if let Some(value) = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some((scheme, token)) = value.trim().split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") {
                return Some(token.trim().to_owned());
            }
        }
    }
    if takes_query_token(parts) {
        query_param(parts.uri.query(), "token").map(|token| auth::without_bearer(&token).to_owned())
    } else {
        None
    }
}

/// A query parameter's decoded value (`application/x-www-form-urlencoded`,
/// as URLs' queries are written; the first of repeated names).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

/// Why a URL is refused before any route sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// A percent-encoded path segment is not UTF-8 once decoded.
    #[error("the URL's path is not UTF-8 once percent-decoded")]
    Path,
    /// A percent-encoded query name or value is not UTF-8 once decoded.
    #[error("the URL's query is not UTF-8 once percent-decoded")]
    Query,
    /// A query parameter is given more than once (no route takes a list), so
    /// which one counts would otherwise depend on the reader.
    #[error("query parameter {0:?} is given more than once; give it once")]
    Repeated(String),
}

/// Checks that every percent-encoded part of a URL decodes to UTF-8
/// (RFC 3986 §2.5: URIs carry UTF-8 text). Routes take ids and search
/// terms as text; without this, `%FF` would reach them as U+FFFD.
pub fn check_url(uri: &axum::http::Uri) -> Result<(), UrlError> {
    use percent_encoding::percent_decode;
    let utf8 = |part: &[u8]| std::str::from_utf8(&percent_decode(part).collect::<Vec<u8>>()).is_ok();
    if !uri.path().split('/').all(|segment| utf8(segment.as_bytes())) {
        return Err(UrlError::Path);
    }
    let query = uri.query().unwrap_or_default();
    if !query.split(['&', '=']).all(|part| utf8(part.as_bytes())) {
        return Err(UrlError::Query);
    }
    let mut names = std::collections::HashSet::new();
    for (name, _) in form_urlencoded::parse(query.as_bytes()) {
        if !names.insert(name.clone()) {
            let shown: String = name.chars().take(64).collect();
            return Err(UrlError::Repeated(shown));
        }
    }
    Ok(())
}

/// Middleware: 400 `bad_request` for a URL that [`check_url`] refuses.
pub async fn reject_invalid_url(request: Request, next: axum::middleware::Next) -> axum::response::Response {
    match check_url(request.uri()) {
        Ok(()) => next.run(request).await,
        Err(err) => axum::response::IntoResponse::into_response(ApiError::new(ErrorCode::BadRequest, err.to_string())),
    }
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

/// A parameter of a `Content-Type` value (`charset` of
/// `application/json; charset=utf-8`), unquoted.
fn content_type_param(content_type: &str, name: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// A JSON request body: 400 if it is not JSON, 413 over the size limit.
#[derive(Debug)]
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let content_type = request.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let is_json = content_type.split(';').next().is_some_and(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
        if !is_json {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "expected a JSON body with `Content-Type: application/json`",
            ));
        }
        // JSON is UTF-8 (RFC 8259 §8.1): a `charset` other than that is refused
        // rather than read as something else.
        let charset = content_type_param(content_type, "charset");
        let utf8 = |c: &String| ["utf-8", "utf8", "us-ascii", "ascii"].iter().any(|u| c.eq_ignore_ascii_case(u));
        if let Some(charset) = charset.filter(|c| !utf8(c)) {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("charset {charset:?} is not taken: a JSON body is UTF-8 (RFC 8259 §8.1)"),
            ));
        }
        // Bodies are taken as sent: a compressed one would be read as JSON
        // and refused for that, or worse, taken if it happened to parse.
        // Every header and every coding in it (`Content-Encoding: identity, gzip`).
        let encodings = request.headers().get_all(axum::http::header::CONTENT_ENCODING);
        let mut codings = encodings.iter().flat_map(|v| v.to_str().unwrap_or("?").split(',')).map(str::trim);
        if let Some(encoding) = codings.find(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity")) {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("Content-Encoding {encoding:?} is not taken: send the body uncompressed"),
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
        // the field (numbers, nesting, NUL, repeated keys: see
        // `jobstream_protocol::json`). The parser stops at the first problem:
        // when that is a value it cannot hold — nesting too deep, a number
        // beyond a double (`1e400`) — the refusal names it with the same 422
        // as a value that cannot be stored, not the 400 of text that is not JSON.
        // So is half a UTF-16 surrogate pair in a string (`"\ud83d"`: an emoji
        // cut in two), which JSON's grammar allows and no Rust string holds.
        let unholdable = matches!(&parsed, Err(err) if {
            let text = err.to_string();
            text.starts_with("recursion limit exceeded")
                || text.starts_with("number out of range")
                || jobstream_protocol::json::is_surrogate_error(&text)
        });
        if parsed.is_ok() || unholdable {
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
    fn a_url_whose_percent_encoding_is_not_utf8_is_refused_where_it_is() {
        let check = |url: &str| url.parse::<axum::http::Uri>().map_err(|_| ()).map(|uri| check_url(&uri));
        assert_eq!(check("/api/v1/jobs/%FF"), Ok(Err(UrlError::Path)));
        assert_eq!(check("/api/v1/jobs/a%C3/steps"), Ok(Err(UrlError::Path)));
        assert_eq!(check("/api/v1/jobs/j/steps/s/log/search?q=%FF"), Ok(Err(UrlError::Query)));
        assert_eq!(check("/api/v1/jobs?%FE=1"), Ok(Err(UrlError::Query)));
        assert_eq!(check("/api/v1/jobs?status=running&cursor=%ED%A0%80"), Ok(Err(UrlError::Query)));
        assert_eq!(check("/api/v1/jobs/%C3%A9t%C3%A9?q=%E2%9C%93+x&flag"), Ok(Ok(())));
        // A `%` that starts no escape is kept as it is, as browsers do.
        assert_eq!(check("/api/v1/jobs?q=100%"), Ok(Ok(())));
        // A name given twice, however it is spelled, is refused whatever its values.
        assert_eq!(check("/api/v1/jobs/j/events?since=1&since=9"), Ok(Err(UrlError::Repeated("since".into()))));
        assert_eq!(
            check("/api/v1/jobs/j/events/stream?token=a&to%6Ben=b"),
            Ok(Err(UrlError::Repeated("token".into())))
        );
        assert_eq!(check("/api/v1/jobs?flag&flag"), Ok(Err(UrlError::Repeated("flag".into()))));
        assert_eq!(check("/api/v1/jobs?a=1&&b=2&A=3"), Ok(Ok(())));
    }

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
