//! `/v1/jobs` handlers: submit, list, get, cancel and the SSE event stream,
//! each with its OpenAPI description.

use super::{ApiError, AppState, ErrorBody, MAX_BODY_BYTES};
use crate::jobs::{JobEvent, JobEventKind, JobStatus, JobView, SubmitRequest};
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
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};

/// Most jobs one list page returns.
const MAX_PAGE: usize = 500;
/// Jobs a list page returns when `limit` is not given.
const DEFAULT_PAGE: usize = 50;

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
pub(super) struct DeclaredLengthWithinLimit;

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

/// Submits a job. It is queued at once; follow it with
/// `GET /v1/jobs/{id}/events`.
#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs", security(("bearer" = [])),
    request_body(content = SubmitRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The job, queued", body = JobView),
        (status = 400, description = "The body is not JSON (`invalid_json`, `invalid_body`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB", body = ErrorBody),
        (status = 422, description = "A field is wrong (`invalid_request`, `invalid_source`, `invalid_settings`, `invalid_callback_url`)", body = ErrorBody),
        (status = 503, description = "The pod is shutting down", body = ErrorBody),
    ),
)]
pub(super) async fn submit(
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

/// The query of `GET /v1/jobs`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// Only jobs with this status.
    status: Option<JobStatus>,
    /// Jobs per page (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// Jobs skipped, newest first (default 0).
    offset: Option<usize>,
}

impl ListParams {
    /// Reads the query string with errors in the API's format (axum's
    /// `Query` rejection is plain text).
    fn parse(query: &HashMap<String, String>) -> Result<ListParams, ApiError> {
        let bad =
            |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message);
        let status = match query.get("status") {
            None => None,
            Some(text) => Some(JobStatus::parse(text).ok_or_else(|| {
                bad(format!(
                    "unknown status {text:?} (one of queued, processing, playable, done, partial, failed, canceled)"
                ))
            })?),
        };
        let number = |name: &str| -> Result<Option<usize>, ApiError> {
            query
                .get(name)
                .map(|text| {
                    text.parse()
                        .map_err(|_| bad(format!("{name} must be a non-negative integer")))
                })
                .transpose()
        };
        let limit = number("limit")?;
        if limit.is_some_and(|limit| limit == 0 || limit > MAX_PAGE) {
            return Err(bad(format!("limit must be between 1 and {MAX_PAGE}")));
        }
        Ok(ListParams {
            status,
            limit,
            offset: number("offset")?,
        })
    }
}

/// One page of `GET /v1/jobs`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct JobList {
    jobs: Vec<JobView>,
    /// Jobs matching the filter, on every page.
    total: usize,
    offset: usize,
    limit: usize,
}

/// Lists the jobs this pod knows (every job of the cluster with Redis),
/// newest first.
#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs", security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "One page of jobs", body = JobList),
        (status = 400, description = "A query parameter is wrong (`invalid_query`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    ),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let params = ListParams::parse(&query)?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    let offset = params.offset.unwrap_or(0);
    let (jobs, total) = state.manager.list(params.status, offset, limit);
    Ok(Json(JobList {
        jobs,
        total,
        offset,
        limit,
    }))
}

/// A job.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "The id is not a UUID (`invalid_id`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    ),
)]
pub(super) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(state.manager.get(id)?))
}

/// The query of `DELETE /v1/jobs/{id}`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read from the query string by hand; this is its description
pub(super) struct CancelParams {
    /// Also remove the job's files (allowed for an ended job too).
    purge: Option<bool>,
}

/// Cancels a job (its encodes stop on every pod), and with `purge=true`
/// removes its files.
#[utoipa::path(
    delete, path = "/v1/jobs/{id}", tag = "jobs", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The job's id"), CancelParams),
    responses(
        (status = 200, description = "The job, canceled (or purged)", body = JobView),
        (status = 400, description = "The id is not a UUID, or `purge` is not a boolean", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job has already ended (add `purge=true`)", body = ErrorBody),
        (status = 503, description = "The pod is shutting down", body = ErrorBody),
    ),
)]
pub(super) async fn cancel(
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

/// One Server-Sent Event of `GET /v1/jobs/{id}/events`, as a client parses
/// it (`id:`, `event:` and `data:` lines).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: the stream is written with axum's `Event`
pub(super) struct JobEventFrame {
    /// The event's sequence number; send it back as `Last-Event-ID` to
    /// resume after it.
    id: String,
    event: JobEventKind,
    /// The job (a `JobView`, as JSON) when the event happened.
    data: String,
}

/// Server-Sent Events: the job's history (after `Last-Event-ID`), then live
/// events; the stream ends after the terminal event.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/events", tag = "jobs", security(("bearer" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "The job's id"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id"),
    ),
    responses(
        (status = 200, description = "One event per job event: `id: <seq>`, `event: <kind>`, `data: <the job as JSON>`; the stream ends after the terminal event", body = JobEventFrame, content_type = "text/event-stream"),
        (status = 400, description = "The id is not a UUID (`invalid_id`), or `Last-Event-ID` is not an event id (`invalid_last_event_id`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    ),
)]
pub(super) async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let after = last_event_id(&headers)?;
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

/// The `Last-Event-ID` header: 0 without one. Event ids are non-negative
/// 64-bit integers (below 2^63, as the document's `int64` says); anything
/// else is refused rather than read as "from the start".
fn last_event_id(headers: &HeaderMap) -> Result<u64, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(0);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|id| i64::try_from(*id).is_ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_last_event_id",
                "Last-Event-ID must be the id of an event (a non-negative integer below 2^63)",
            )
        })
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
