//! `/hls/{id}/...`: a job's HLS files, with the right content types, cache
//! headers, Range support and CORS. A request for a planned file that does
//! not exist yet makes it (on demand), and one that comes before the job is
//! planned waits for the plan ([`crate::jobs::JobManager::ready_file`]
//! decides; 503 with `Retry-After` when it is not there in time). Nothing outside the job's folder is
//! reachable: names are checked, `.tmp` and dot files are refused, and the
//! resolved path must stay inside the folder (symlinks).

use super::openapi::FileBytes;
use super::{ApiError, AppState, ErrorBody};
use crate::jobs::FileError;
use crate::worker::RequestError;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower::ServiceExt;
use tower_http::cors::{Any, CorsLayer};
use tower_http::services::ServeFile;

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const NO_CACHE: &str = "no-cache";

pub fn routes() -> Router<AppState> {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::HEAD, Method::OPTIONS])
        .allow_headers([header::RANGE])
        .expose_headers([
            header::CONTENT_LENGTH,
            header::CONTENT_RANGE,
            header::ACCEPT_RANGES,
        ]);
    Router::new()
        .route("/hls/{id}/{*path}", get(serve))
        .layer(cors)
}

/// The content type of a servable file, or None if it may not be served.
fn content_type(name: &str) -> Option<&'static str> {
    match name.rsplit_once('.')?.1 {
        "m3u8" => Some("application/vnd.apple.mpegurl"),
        "ts" => Some("video/mp2t"),
        "webp" => Some("image/webp"),
        _ => None,
    }
}

/// True for a relative path of plain names: no `..`, no dot files, no
/// empty parts, no control characters.
fn is_safe_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    parts.len() <= 3
        && parts.iter().all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        })
}

/// A file of a job's HLS package. A planned file that does not exist yet
/// is made first (on demand), or waited for while another pod makes it.
#[utoipa::path(
    get, path = "/hls/{id}/{path}", tag = "hls",
    params(
        ("id" = String, Path, description = "The job's id"),
        ("path" = String, Path, description = "A file below the job's folder: `master.m3u8`, `thumbnail.webp`, `<rendition>/index.m3u8`, `<rendition>/seg_00000.ts`, `audio/<track>/...` (slashes allowed)"),
        ("Range" = Option<String>, Header, description = "Bytes of the file"),
    ),
    responses(
        (status = 200, description = "The file", content(
            (String = "application/vnd.apple.mpegurl"),
            (FileBytes = "video/mp2t"),
            (FileBytes = "image/webp"),
        )),
        (status = 206, description = "The requested range", content(
            (String = "application/vnd.apple.mpegurl"),
            (FileBytes = "video/mp2t"),
            (FileBytes = "image/webp"),
        )),
        (status = 304, description = "Not modified (If-None-Match, If-Modified-Since)"),
        (status = 404, description = "No such job or file, or a name that is not served", body = ErrorBody),
        (status = 416, description = "The range is outside the file"),
        (status = 502, description = "Making the file failed (`encode_failed`)", body = ErrorBody),
        (status = 503, description = "The pod is paused or shutting down: try another pod", body = ErrorBody),
        (status = 504, description = "The file was not ready in time (`not_ready`): try again", body = ErrorBody),
    ),
)]
pub(super) async fn serve(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("no such file");
    let id = crate::JobId::parse_str(&id).map_err(|_| not_found())?;
    let kind = content_type(&path).ok_or_else(not_found)?;
    if !is_safe_path(&path) {
        return Err(not_found());
    }
    let file = match state.manager.ready_file(id, &path).await {
        Ok(file) => file,
        Err(err) if err.is_retryable() => return Ok(try_again(err.to_string())),
        Err(err) => return Err(file_error(&path, err)),
    };
    let dir = state.manager.job_dir(id);
    let inside = match (dir.canonicalize(), file.canonicalize()) {
        (Ok(dir), Ok(file)) => file.starts_with(dir).then_some(file),
        _ => None,
    };
    let file = inside.ok_or_else(not_found)?;
    let mut response = ServeFile::new(&file)
        .oneshot(request)
        .await
        .map_err(|err| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "io_error",
                err.to_string(),
            )
        })?
        .map(Body::new);
    let cache = if !path.ends_with(".m3u8") || state.manager.is_final(id) {
        IMMUTABLE
    } else {
        NO_CACHE
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Ok(response.into_response())
}

/// Seconds a client is told to wait before asking again for a file that
/// is not there yet.
const RETRY_AFTER_SECONDS: &str = "2";

/// 503 `not_ready` with `Retry-After`: the job exists, its file is not
/// there yet (not planned yet, or not written in time).
fn try_again(message: String) -> Response {
    let mut response =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message).into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECONDS),
    );
    response
}

/// The answer to a file that cannot be served.
fn file_error(path: &str, err: FileError) -> ApiError {
    let request = match err {
        FileError::Request(request) => request,
        _ => return ApiError::not_found("no such file"),
    };
    match request {
        RequestError::NotRunning(_) | RequestError::NotPlanned(_) | RequestError::Canceled => {
            ApiError::not_found("no such file")
        }
        RequestError::Timeout(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "not_ready",
            format!("{path} was not ready in time; try again"),
        ),
        RequestError::Paused(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "paused",
            format!("{request}; try another pod"),
        ),
        RequestError::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the pod is shutting down; try another pod",
        ),
        RequestError::Failed { .. } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "encode_failed",
            request.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_checks() {
        assert!(is_safe_path("240p/seg_00001.ts"));
        assert!(is_safe_path("audio/0/index.m3u8"));
        for bad in [
            "../x.ts",
            "240p/../../x.ts",
            ".tmp/a.ts",
            "a//b.ts",
            "/etc/passwd",
            "a\0.ts",
            "job.json/../x",
        ] {
            assert!(!is_safe_path(bad) || content_type(bad).is_none(), "{bad}");
        }
        assert_eq!(content_type("job.json"), None);
        assert_eq!(content_type("status.json"), None);
    }
}
