//! A request for one of a job's files (`/hls/<id>/...`), on any pod: the
//! job is adopted if only the cluster knows it yet, the request waits for
//! the job's plan and start when it has none yet, for a playlist to be
//! written, or for its unit to be encoded (here, or by another pod), and
//! files are looked up past a network file system's cached "no such file".
//! Every wait ends at the pod's segment wait (`SEGSWARM_SEGMENT_WAIT`).
//!
//! It decides only whether and when a file can be served; the worker
//! encodes, the API builds the response.

use super::model::JobStatus;
use super::{JobEntry, JobManager};
use crate::plan::Plan;
use crate::storage::{read_plan, revalidate, JobLayout};
use crate::sync::lock;
use crate::worker::RequestError;
use crate::JobId;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often a request looks for a file that should appear.
const LOOK_AGAIN: Duration = Duration::from_millis(100);

/// Why a job's file cannot be served (yet).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Neither this pod nor the cluster knows the job.
    #[error("job {0} not found")]
    UnknownJob(JobId),
    /// Not a file of the job's plan, or one that will never exist (the job
    /// failed or was canceled before it was made).
    #[error("no such file")]
    NoSuchFile,
    /// The job has no plan yet (its source is still being probed); the
    /// client should try again.
    #[error("job {0} is not planned yet; try again")]
    NotPlanned(JobId),
    /// A planned file that was not there in time; the client should try
    /// again.
    #[error("{0} is not written yet; try again")]
    NotWritten(String),
    #[error(transparent)]
    Request(#[from] RequestError),
}

impl FileError {
    /// True for the answers that mean "try again soon" (503 with
    /// `Retry-After`).
    pub fn is_retryable(&self) -> bool {
        matches!(self, FileError::NotPlanned(_) | FileError::NotWritten(_))
    }
}

impl JobManager {
    /// The path of the job's file `path` (relative to the job folder, as
    /// `/hls/<id>/<path>` names it) once it exists: made now if it is a
    /// missing unit, waited for if it is a playlist not written yet or the
    /// job is not planned yet.
    pub async fn ready_file(self: &Arc<Self>, id: JobId, path: &str) -> Result<PathBuf, FileError> {
        let deadline = Instant::now() + self.settings.segment_wait;
        let entry = self
            .find_or_adopt(id)
            .await
            .ok_or(FileError::UnknownJob(id))?;
        let layout = self.storage.job(id);
        let file = layout.dir().join(path);
        if revalidate(&file) {
            return Ok(file);
        }
        let plan = self.wait_started(&entry, deadline).await?;
        if JobLayout::is_playlist_path(&plan, path) {
            return self.wait_visible(&entry, file, path, deadline).await;
        }
        let unit = JobLayout::unit_for_path(&plan, path).ok_or(FileError::NoSuchFile)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let requested = self
            .worker
            .request(id, &unit, self.settings.prefetch_segments, remaining)
            .await;
        match requested {
            Ok(()) => {}
            // Finished before this request (here or elsewhere): the file is
            // on storage, maybe not visible to this pod yet.
            Err(RequestError::NotRunning(_)) if is_complete(&entry) => {}
            Err(RequestError::NotRunning(_) | RequestError::NotPlanned(_)) => {
                return Err(FileError::NoSuchFile)
            }
            Err(err) => return Err(err.into()),
        }
        self.wait_visible(&entry, file, path, deadline).await
    }

    /// Waits until the job runs here (planned and handed to the worker) or
    /// has ended; returns its plan.
    async fn wait_started(
        &self,
        entry: &JobEntry,
        deadline: Instant,
    ) -> Result<Arc<Plan>, FileError> {
        let id = entry.record().id;
        loop {
            let started = entry.started.notified();
            tokio::pin!(started);
            started.as_mut().enable();
            let ended = entry.record().status.is_terminal();
            let running = lock(&entry.run).is_some();
            if running || ended {
                return self.plan_of(entry).ok_or(FileError::NoSuchFile);
            }
            tokio::select! {
                _ = started => {}
                _ = tokio::time::sleep(LOOK_AGAIN) => {}
                _ = tokio::time::sleep_until(deadline) => return Err(FileError::NotPlanned(id)),
            }
        }
    }

    /// The job's plan: this pod's, or `job.json` for a job that ended
    /// before this pod ran it.
    fn plan_of(&self, entry: &JobEntry) -> Option<Arc<Plan>> {
        if let Some(plan) = lock(&entry.plan).clone() {
            return Some(plan);
        }
        let plan = read_plan(&self.storage.job(entry.record().id)).ok()??;
        let plan = Arc::new(plan);
        *lock(&entry.plan) = Some(plan.clone());
        Some(plan)
    }

    /// Waits until `file` is visible here (looked up past the cache every
    /// [`LOOK_AGAIN`]), while the job may still make it.
    async fn wait_visible(
        &self,
        entry: &JobEntry,
        file: PathBuf,
        path: &str,
        deadline: Instant,
    ) -> Result<PathBuf, FileError> {
        loop {
            if revalidate(&file) {
                return Ok(file);
            }
            // A job that failed or was canceled will not make it, nor will
            // a partial one (the file of a failed rendition); a fresh
            // lookup above found nothing.
            let status = entry.record().status;
            if matches!(
                status,
                JobStatus::Failed | JobStatus::Canceled | JobStatus::Partial
            ) {
                return Err(FileError::NoSuchFile);
            }
            if Instant::now() + LOOK_AGAIN > deadline {
                return Err(FileError::NotWritten(path.to_string()));
            }
            tokio::time::sleep(LOOK_AGAIN).await;
        }
    }
}

/// True when every output of the job exists somewhere (done or partial).
fn is_complete(entry: &JobEntry) -> bool {
    matches!(entry.record().status, JobStatus::Done | JobStatus::Partial)
}
