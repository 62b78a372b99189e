//! The HTTP interface every pod serves: the jobs API under `/v1`, HLS files
//! under `/hls`, the dashboard at `/`, `/metrics`, `/healthz` and `/readyz`.
//!
//! Owns routing, authentication, request parsing and the JSON error format
//! `{"error": {"code", "message"}}`. Handlers translate; the decisions are
//! made by [`crate::jobs::JobManager`] and the worker behind it. Each
//! handler carries its OpenAPI description (`#[utoipa::path]`), gathered
//! into the document served at `/v1/openapi.json` by [`openapi`].

mod cluster;
mod files;
mod jobs;
mod openapi;
mod ui;

use crate::jobs::{JobError, JobManager, JobStatus};
use crate::metrics::Metrics;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// Largest request body accepted (a job spec is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub manager: Arc<JobManager>,
    pub metrics: Arc<Metrics>,
    pub api_token: Option<String>,
    pub health: Arc<Health>,
    /// Cancelled when the pod begins to shut down (ends event streams).
    pub shutdown: CancellationToken,
}

/// What `/readyz` reports: problems that should take the pod out of a load
/// balancer without restarting it.
#[derive(Default)]
pub struct Health {
    pub shutting_down: AtomicBool,
    pub storage_problem: Mutex<Option<String>>,
    pub coordination_problem: Mutex<Option<String>>,
}

impl Health {
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.shutting_down.load(Ordering::Relaxed) {
            problems.push("shutting down".to_string());
        }
        for slot in [&self.storage_problem, &self.coordination_problem] {
            if let Some(problem) = crate::sync::lock(slot).clone() {
                problems.push(problem);
            }
        }
        problems
    }
}

/// An API error: a status code and `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `not_found`, `invalid_source`.
    pub code: String,
    /// For a person.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JobError> for ApiError {
    fn from(err: JobError) -> Self {
        let message = err.to_string();
        match err {
            JobError::NotFound(_) => ApiError::not_found(message),
            JobError::Source(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_source", message)
            }
            JobError::Config(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_settings",
                message,
            ),
            JobError::BadCallback { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_callback_url",
                message,
            ),
            JobError::AlreadyEnded { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            JobError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
            }
            JobError::Storage(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", message)
            }
        }
    }
}

/// The whole router of a pod.
pub fn router(state: AppState) -> Router {
    let api = jobs::routes()
        .merge(cluster::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(api)
        .merge(files::routes())
        .merge(ui::routes())
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            track_requests,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found(State(state): State<AppState>) -> ApiError {
    state
        .metrics
        .http_requests
        .with_label_values(&["unmatched", "404"])
        .inc();
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// Counts requests by route and status and times them.
async fn track_requests(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let route = matched
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    state
        .metrics
        .http_request_seconds
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// With `SEGSWARM_API_TOKEN` set, `/v1/*` needs `Authorization: Bearer`.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.api_token.as_deref() else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        next.run(request).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        )
        .into_response()
    }
}

/// Compares without an early exit, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Prometheus metrics of this pod.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain")),
)]
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let counts = state.manager.counts();
    for status in JobStatus::ALL {
        state
            .metrics
            .jobs
            .with_label_values(&[status.as_str()])
            .set(counts.get(&status).copied().unwrap_or(0) as i64);
    }
    let ready = state.health.problems().is_empty() && state.manager.worker_problem().is_none();
    state.metrics.ready.set(if ready { 1.0 } else { 0.0 });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// What `/healthz` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `ok`.
    pub status: String,
}

/// What `/readyz` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// Why the pod is not ready (only when it is not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// Liveness: the process answers HTTP. Independent of Redis and storage.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Liveness)),
)]
pub(super) async fn healthz() -> Json<Liveness> {
    Json(Liveness {
        status: "ok".to_string(),
    })
}

/// Readiness: storage usable, not shutting down, not paused after
/// failures, coordination possible (when there is no fallback).
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready for traffic", body = Readiness),
        (status = 503, description = "Not ready, with the reasons", body = Readiness),
    ),
)]
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let mut problems = state.health.problems();
    problems.extend(state.manager.worker_problem());
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let readiness = Readiness {
        ready: problems.is_empty(),
        problems,
    };
    (status, Json(readiness)).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_compare() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
    }
}
