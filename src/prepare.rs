//! Preparing a job for the worker: read `job.json` if it exists (resume),
//! otherwise probe the source, plan it and write `job.json`.
//!
//! `segswarm transcode` and the pod both start jobs through [`prepare`], so
//! there is one way a plan comes into being. It never encodes anything.

use crate::config::EncodeSettings;
use crate::fetch::SourceFetch;
use crate::plan::{Plan, PlanError};
use crate::probe::{probe, ProbeError};
use crate::source::Source;
use crate::storage::{read_plan, write_plan, JobLayout, PlanFileError, Published, StorageError};
use crate::JobId;
use std::path::PathBuf;

/// Why a job could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("planning {source_name}: {error}")]
    Plan {
        source_name: String,
        error: PlanError,
    },
    #[error(transparent)]
    PlanFile(#[from] PlanFileError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{dir} already holds a job for another source or other settings ({existing}); use an empty folder")]
    OtherJob { dir: PathBuf, existing: String },
}

/// A prepared job: its plan, and whether it was read back from storage.
pub struct Prepared {
    pub plan: Plan,
    pub resumed: bool,
}

/// Reads the job in `layout` if it is the same source and settings,
/// otherwise probes it (a URL through `fetch`), plans it and writes
/// `job.json`.
pub async fn prepare(
    layout: &JobLayout,
    source: Source,
    settings: EncodeSettings,
    new_id: JobId,
    fetch: &SourceFetch,
) -> Result<Prepared, PrepareError> {
    if let Some(plan) = stored_plan(layout, &source, &settings)? {
        return Ok(Prepared {
            plan,
            resumed: true,
        });
    }
    let info = probe(&source, fetch).await?;
    let source_name = source.to_string();
    let plan = Plan::new(new_id, source, settings, &info)
        .map_err(|error| PrepareError::Plan { source_name, error })?;
    layout.create_dirs(&plan)?;
    if write_plan(layout, &plan)? == Published::AlreadyThere {
        // Another writer planned this folder first: `job.json` is never
        // replaced, so its plan is the job's.
        if let Some(stored) = stored_plan(layout, &plan.source, &plan.settings)? {
            return Ok(Prepared {
                plan: stored,
                resumed: true,
            });
        }
    }
    Ok(Prepared {
        plan,
        resumed: false,
    })
}

/// The plan in `layout`'s `job.json`, if there is one for `source` and
/// `settings`; an error if it is another job's.
fn stored_plan(
    layout: &JobLayout,
    source: &Source,
    settings: &EncodeSettings,
) -> Result<Option<Plan>, PrepareError> {
    let Some(plan) = read_plan(layout)? else {
        return Ok(None);
    };
    if plan.source == *source && plan.settings == *settings {
        return Ok(Some(plan));
    }
    Err(PrepareError::OtherJob {
        dir: layout.dir().to_path_buf(),
        existing: format!(
            "source {}, ladder {}, {} s segments",
            plan.source, plan.settings.ladder, plan.settings.segment_duration
        ),
    })
}
