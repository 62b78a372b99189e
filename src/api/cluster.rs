//! `GET /v1/cluster`: what this pod sees of the cluster, for the dashboard:
//! the coordination mode, its worker id, and who holds which unit now.
//!
//! This pod's own units come from its worker. In distributed mode the
//! claims of every pod are read from Redis as well (a SCAN of each active
//! job's claim keys); in local mode there are no other pods to list.

use super::AppState;
use crate::coord::Mode;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::collections::BTreeSet;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/cluster", get(cluster))
}

/// One unit and the worker that holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
struct Holder {
    worker_id: String,
    job: String,
    unit: String,
}

async fn cluster(State(state): State<AppState>) -> Json<serde_json::Value> {
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
    Json(serde_json::json!({
        "mode": mode.as_str(),
        "worker_id": worker_id,
        "holders": holders.into_iter().collect::<Vec<_>>(),
        "error": problem,
    }))
}
