//! `job.json`: the plan as it is kept on storage, published once (no-replace,
//! like every output) and read back by every pod that works on the job
//! (resume, adoption).

use super::{JobLayout, Published, StorageError};
use crate::plan::Plan;
use std::path::PathBuf;

/// Errors reading or writing `job.json`.
#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{path} is not a valid job file: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Reads and parses `job.json`; `None` when there is none yet.
pub fn read_plan(layout: &JobLayout) -> Result<Option<Plan>, PlanFileError> {
    let path = layout.job_json();
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::new("reading", &path, e).into()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| PlanFileError::Corrupt { path, source })
}

/// Publishes `job.json` unless one exists: [`Published::AlreadyThere`]
/// means another writer's plan is the job's (read it back).
pub fn write_plan(layout: &JobLayout, plan: &Plan) -> Result<Published, PlanFileError> {
    let bytes = serde_json::to_vec_pretty(plan).map_err(|source| PlanFileError::Corrupt {
        path: layout.job_json(),
        source,
    })?;
    Ok(layout.publish_bytes(&layout.job_json(), &bytes)?.published)
}
