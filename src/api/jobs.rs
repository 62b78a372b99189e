//! `/v1/jobs` handlers: submit, list, get, cancel and the SSE event stream.

use super::{ApiError, AppState, MAX_BODY_BYTES};
use crate::jobs::{JobEvent, JobStatus, SubmitRequest};
use crate::JobId;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Most jobs one list page returns.
const MAX_PAGE: usize = 500;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", get(list).post(submit))
        .route("/v1/jobs/{id}", get(show).delete(cancel))
        .route("/v1/jobs/{id}/events", get(events))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

pub fn parse_id(text: &str) -> Result<JobId, ApiError> {
    JobId::parse_str(text).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("{text:?} is not a job id (a UUID)"),
        )
    })
}

fn body_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request body is larger than {MAX_BODY_BYTES} bytes"),
    )
}

/// Refuses a request whose `Content-Length` already says the body is too
/// large, before the body is read: a client that sent `Expect:
/// 100-continue` (curl does for large bodies) then gets 413 without being
/// asked for the body. Bodies without the header are cut by the limit.
struct DeclaredLengthWithinLimit;

impl<S: Send + Sync> FromRequestParts<S> for DeclaredLengthWithinLimit {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok());
        match declared {
            Some(length) if length > MAX_BODY_BYTES as u64 => Err(body_too_large()),
            _ => Ok(DeclaredLengthWithinLimit),
        }
    }
}

async fn submit(
    State(state): State<AppState>,
    _: DeclaredLengthWithinLimit,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            body_too_large()
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                rejection.body_text(),
            )
        }
    })?;
    let request: SubmitRequest = serde_json::from_slice(&body).map_err(|err| {
        use serde_json::error::Category;
        match err.classify() {
            Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                err.to_string(),
            ),
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("body is not valid JSON: {err}"),
            ),
        }
    })?;
    let job = state.manager.submit(request).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

async fn list(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message);
    let status = match query.get("status") {
        None => None,
        Some(text) => Some(JobStatus::parse(text).ok_or_else(|| {
            bad(format!(
                "unknown status {text:?} (one of queued, processing, playable, done, partial, failed, canceled)"
            ))
        })?),
    };
    let number = |name: &str, default: usize| -> Result<usize, ApiError> {
        match query.get(name) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| bad(format!("{name} must be a non-negative integer"))),
        }
    };
    let limit = number("limit", 50)?;
    if limit == 0 || limit > MAX_PAGE {
        return Err(bad(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let offset = number("offset", 0)?;
    let (jobs, total) = state.manager.list(status, offset, limit);
    Ok(Json(serde_json::json!({
        "jobs": jobs,
        "total": total,
        "offset": offset,
        "limit": limit,
    })))
}

async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(state.manager.get(id)?))
}

async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let purge = match query.get("purge").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("purge must be true or false, not {other:?}"),
            ))
        }
    };
    Ok(Json(state.manager.cancel(id, purge).await?))
}

/// Server-Sent Events: the job's history (after `Last-Event-ID`), then live
/// events; the stream ends after the terminal event.
async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (history, receiver, view) = state.manager.subscribe(id, after)?;
    let ended = view.status.is_terminal() && history.is_empty();
    let stream = event_stream(EventStream {
        pending: history.into(),
        receiver,
        last_seq: after,
        ended,
        shutdown: state.shutdown.clone(),
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

struct EventStream {
    pending: VecDeque<JobEvent>,
    receiver: broadcast::Receiver<JobEvent>,
    last_seq: u64,
    ended: bool,
    shutdown: CancellationToken,
}

fn event_stream(state: EventStream) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(state, |mut state| async move {
        if state.ended {
            return None;
        }
        let event = loop {
            if let Some(event) = state.pending.pop_front() {
                if event.seq > state.last_seq || state.last_seq == 0 {
                    break event;
                }
                continue;
            }
            tokio::select! {
                received = state.receiver.recv() => match received {
                    Ok(event) if event.seq <= state.last_seq => continue,
                    Ok(event) => break event,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = state.shutdown.cancelled() => return None,
            }
        };
        state.last_seq = event.seq;
        state.ended = event.event.is_terminal();
        let sse = Event::default()
            .id(event.seq.to_string())
            .event(event.event.as_str())
            .json_data(&event.job)
            .unwrap_or_else(|_| Event::default().event(event.event.as_str()));
        Some((Ok(sse), state))
    })
}
