//! The dashboard: one plain HTML/CSS/JS page at `/`, embedded in the binary,
//! and the hls.js build it plays with at `/ui/hls.min.js`.
//!
//! The page is public (it holds no data); every call it makes to `/v1`
//! carries the token the user typed, so the API stays protected. Nothing is
//! fetched from another host: the script, the styles and hls.js all come
//! from the pod.

use super::AppState;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");
/// hls.js 1.7.4 (`dist/hls.min.js`, the version pinned in
/// `tests/browser/package-lock.json`). To update it, bump the pin there, run
/// `npm ci` in `tests/browser` and copy the file over this one.
const HLS_JS: &str = include_str!("ui/hls.min.js");

/// The page and its files change only with the binary, so `no-cache` (always
/// revalidate) is enough to never show a stale page after an upgrade.
const NO_CACHE: &str = "no-cache";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/ui/hls.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", HLS_JS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, NO_CACHE),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
