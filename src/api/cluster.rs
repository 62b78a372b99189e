//! `GET /v1/cluster`: what this pod sees of the cluster, for the dashboard:
//! the coordination mode, its worker id, and who holds which unit now.
//!
//! This pod's own units come from its worker. In distributed mode the
//! claims of every pod are read from Redis as well (a SCAN of each active
//! job's claim keys); in local mode there are no other pods to list.

use super::{AppState, ErrorBody};
use crate::coord::Mode;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::collections::BTreeSet;
use utoipa::ToSchema;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/cluster", get(cluster))
}

/// One unit and the worker that holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
pub(super) struct Holder {
    worker_id: String,
    /// The job's id.
    job: String,
    /// `video/<rendition>/<index>`, `audio/<track>` or `thumbnail`.
    unit: String,
}

/// The coordination mode.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum ModeName {
    /// Alone: no Redis, or Redis away with the fallback on.
    Local,
    /// Claims shared through Redis.
    Distributed,
}

/// What this pod sees of the cluster.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ClusterView {
    mode: ModeName,
    /// This pod's name in claims.
    worker_id: String,
    /// Who holds which unit now (this pod's own units; every pod's in
    /// distributed mode).
    holders: Vec<Holder>,
    /// Why other pods' claims could not be read, if they could not.
    error: Option<String>,
}

/// What this pod sees of the cluster: its mode, its worker id and who holds
/// which unit.
#[utoipa::path(
    get, path = "/v1/cluster", tag = "cluster", security(("bearer" = [])),
    responses(
        (status = 200, description = "The cluster as this pod sees it", body = ClusterView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    ),
)]
pub(super) async fn cluster(State(state): State<AppState>) -> Json<ClusterView> {
    let worker = state.manager.worker();
    let worker_id = worker.settings().worker_id.clone();
    let mode = worker.mode();
    let mut holders: BTreeSet<Holder> = worker
        .running_units()
        .into_iter()
        .map(|(job, unit)| Holder {
            worker_id: worker_id.clone(),
            job: job.to_string(),
            unit: unit.to_string(),
        })
        .collect();
    let mut problem = None;
    if mode == Mode::Distributed {
        for job in worker.job_ids() {
            match worker.claim_holders(job).await {
                Ok(claims) => holders.extend(claims.into_iter().map(|(unit, holder)| Holder {
                    worker_id: holder,
                    job: job.to_string(),
                    unit,
                })),
                Err(err) => {
                    problem = Some(err.to_string());
                    break;
                }
            }
        }
    }
    Json(ClusterView {
        mode: match mode {
            Mode::Local => ModeName::Local,
            Mode::Distributed => ModeName::Distributed,
        },
        worker_id,
        holders: holders.into_iter().collect(),
        error: problem,
    })
}
