//! The dashboard: static assets embedded in the binary at compile time, and the
//! small config document the page reads first.

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::app::AppState;

/// What the page needs to know before asking for a token.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DashboardConfig {
    /// Whether the demo producer runs.
    pub demo: bool,
    /// The demo workspace, in demo mode.
    pub workspace_id: Option<String>,
    /// A subscribe token for the demo workspace, in demo mode.
    pub token: Option<String>,
}

/// One embedded file: its bytes and content type.
fn asset(body: &'static str, content_type: &'static str) -> impl IntoResponse {
    ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")], body)
}

/// `/`, `/assets/*` and `/dashboard/config.json`. The scripts are ES modules,
/// served as they are (no build step): `app.js` imports the others.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { asset(include_str!("../assets/index.html"), "text/html; charset=utf-8") }))
        .route("/assets/app.css", get(|| async { asset(include_str!("../assets/app.css"), "text/css; charset=utf-8") }))
        .route(
            "/assets/app.js",
            get(|| async { asset(include_str!("../assets/app.js"), "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/ansi.js",
            get(|| async { asset(include_str!("../assets/ansi.js"), "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/groups.js",
            get(|| async { asset(include_str!("../assets/groups.js"), "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/logmodel.js",
            get(|| async { asset(include_str!("../assets/logmodel.js"), "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/reducer.js",
            get(|| async { asset(include_str!("../assets/reducer.js"), "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/viewer.js",
            get(|| async { asset(include_str!("../assets/viewer.js"), "text/javascript; charset=utf-8") }),
        )
        .route("/assets/favicon.svg", get(|| async { asset(include_str!("../assets/favicon.svg"), "image/svg+xml") }))
        .route("/dashboard/config.json", get(|State(app): State<AppState>| async move { Json(app.dashboard.clone()) }))
}
