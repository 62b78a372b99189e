//! `segswarm transcode`: one job on this machine, into a folder of its own.
//!
//! The same pipeline as a pod's (the same [`prepare`], [`Worker`] and
//! coordinator trait, here a [`LocalCoordinator`]); only the user-facing
//! side (progress bar, messages, exit codes) is the binary's. Nobody else
//! writes into the output folder, so leftovers of a killed run are removed
//! before work starts.

use crate::config::{EncodeSettings, RunSettings};
use crate::coord::{Coordinator, LocalCoordinator};
use crate::egress::EgressPolicy;
use crate::fetch::SourceFetch;
use crate::ffmpeg::RunError;
use crate::metrics::Metrics;
use crate::prepare::{prepare, PrepareError};
use crate::source::{Source, SourceError};
use crate::storage::{JobLayout, StorageError};
use crate::worker::{
    JobOptions, JobOutcome, JobRun, Worker, WorkerError, WorkerEvent, WorkerSettings,
};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::broadcast;

/// What one `segswarm transcode` run is asked to do.
#[derive(Debug, Clone)]
pub struct TranscodeConfig {
    /// A local file or an `http(s)` URL.
    pub input: String,
    pub out_dir: PathBuf,
    pub settings: EncodeSettings,
    pub run: RunSettings,
    /// Accept a source URL on a loopback, private or link-local address.
    pub allow_private_urls: bool,
}

/// Why a transcode could not start.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Ffmpeg(#[from] RunError),
    #[error("creating output folder: {0}")]
    OutDir(StorageError),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// A running transcode.
pub struct Transcode {
    worker: Worker,
    fetch: SourceFetch,
    job: Arc<JobRun>,
    resumed: bool,
}

impl Transcode {
    /// Checks the source and ffmpeg, prepares the job (probe and plan, or
    /// read `job.json` back to resume) and starts encoding. Returns the run
    /// and its worker's events, subscribed before the first unit starts.
    pub async fn start(
        config: TranscodeConfig,
    ) -> Result<(Transcode, broadcast::Receiver<WorkerEvent>), TranscodeError> {
        let source = Source::parse(&config.input, None)?;
        let egress = EgressPolicy::from_allow_private(config.allow_private_urls);
        source.check_egress(egress).await?;
        crate::ffmpeg::check_installed().await?;
        std::fs::create_dir_all(&config.out_dir).map_err(|e| {
            TranscodeError::OutDir(StorageError::new("creating", &config.out_dir, e))
        })?;
        let layout = JobLayout::new(&config.out_dir);
        let fetch = SourceFetch::new(egress);
        let prepared = prepare(
            &layout,
            source,
            config.settings,
            uuid::Uuid::new_v4(),
            &fetch,
        )
        .await?;
        // Nobody else writes into this folder: leftovers of a killed run are
        // safe to remove.
        let _ = std::fs::remove_dir_all(layout.tmp_dir());
        let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new(config.run.claim_ttl));
        let metrics = Arc::new(Metrics::new()?);
        let worker = Worker::start(
            WorkerSettings::new("local", config.run),
            coord,
            metrics,
            fetch.clone(),
        );
        let events = worker.subscribe();
        let job = worker
            .add_job(Arc::new(prepared.plan), layout, JobOptions::default())
            .await?;
        let transcode = Transcode {
            worker,
            fetch,
            job,
            resumed: prepared.resumed,
        };
        Ok((transcode, events))
    }

    /// The job: plan, progress, units skipped on resume.
    pub fn job(&self) -> &JobRun {
        &self.job
    }

    /// Whether an earlier run's `job.json` was picked up.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The master playlist's path.
    pub fn master_playlist(&self) -> PathBuf {
        self.job.layout.master_playlist()
    }

    /// Waits for the job to end.
    pub async fn wait(&self) -> JobOutcome {
        self.job.wait().await
    }

    /// Stops: kills ffmpeg, gives claims back, waits for the slots. After an
    /// interruption, running the same command again resumes.
    pub async fn stop(&self) {
        self.worker.shutdown().await;
        self.fetch.shutdown();
        // Nothing is in progress any more; an empty .tmp/ is just clutter
        // (one that still holds files is left for the next run to clear).
        let _ = std::fs::remove_dir(self.job.layout.tmp_dir());
    }
}
