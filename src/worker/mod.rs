//! The worker: slots that claim units and run them through the pipeline.
//!
//! The same for `segswarm transcode` and for a pod; the coordinator behind
//! it decides whether other pods share the work. One room per concept:
//! - [`units`]: a job's units as a state machine; [`schedule`]: what to
//!   claim next (playable first, then segment batches);
//! - [`slots`]: the slot loop and spare-slot admission; [`batch`]: claim a
//!   batch and run it under a [`lease::LeaseGuard`];
//! - [`publish`]: outputs into place, the audio track while it is encoded;
//!   [`outcome`]: done, failed, retried, playlists, the job's end;
//! - [`health`]: the failure circuit; [`request`]: on-demand units;
//!   [`notices`]: what other pods finished or gave back; [`tmp_sweep`]: an
//!   ended job's `.tmp/` swept by claim; [`unseen`]: units done elsewhere
//!   that this pod's storage does not show yet;
//! - [`warnings`]: what a damaged source made the outputs fill.
//!
//! It never parses requests or prints anything for a user.

mod batch;
mod capacity;
mod encoder;
mod failure;
mod health;
mod job_run;
mod lease;
mod load;
mod notices;
mod outcome;
mod pieces;
mod publish;
mod request;
mod schedule;
mod slots;
mod tmp_sweep;
mod units;
mod unseen;
mod warnings;

pub use encoder::{Encoder, Ffmpeg};
pub use failure::{FailureKind, UnitFailure};
pub use job_run::JobRun;
pub use request::RequestError;

use crate::config::RunSettings;
use crate::coord::Coordinator;
use crate::fetch::SourceFetch;
use crate::metrics::Metrics;
use crate::plan::{Plan, Unit};
use crate::playlists::Listing;
use crate::storage::{JobLayout, StorageError};
use crate::sync::lock;
use crate::warning::JobWarning;
use crate::JobId;
use health::FailureCircuit;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Name of this worker in claims (hostname or pod name).
    pub worker_id: String,
    /// Slots, attempts, backoff, stall timeout.
    pub run: RunSettings,
    /// How soon a unit held by another worker is looked at again.
    pub held_recheck: Duration,
}

impl WorkerSettings {
    pub fn new(worker_id: impl Into<String>, run: RunSettings) -> Self {
        WorkerSettings {
            worker_id: worker_id.into(),
            run,
            held_recheck: Duration::from_secs(1),
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum JobOutcome {
    Done,
    /// Some renditions failed; a complete lower one plays.
    Partial {
        reason: String,
    },
    Failed {
        reason: String,
    },
    Canceled,
}

/// What the worker tells whoever listens (the CLI's progress bar, the pod's
/// job events and readiness).
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    UnitDone {
        job: JobId,
        unit: Unit,
    },
    UnitFailed {
        job: JobId,
        unit: Unit,
        failure: UnitFailure,
        attempts: u32,
        permanent: bool,
    },
    ThumbnailReady {
        job: JobId,
    },
    Playable {
        job: JobId,
    },
    /// New warnings of the job (what this pod's outputs filled for a
    /// damaged source, or the plan's own when the job is added).
    Warnings {
        job: JobId,
        warnings: Vec<JobWarning>,
    },
    Finished {
        job: JobId,
        outcome: JobOutcome,
    },
}

/// Errors of the worker's own bookkeeping (not of a unit).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("job {0} is already running")]
    AlreadyRunning(JobId),
    #[error("the worker is shutting down")]
    ShuttingDown,
    #[error("preparing job {job}: {source}")]
    Storage { job: JobId, source: StorageError },
}

/// Options of one job run.
#[derive(Debug, Clone, Copy)]
pub struct JobOptions {
    /// Higher runs first.
    pub priority: i32,
    pub listing: Listing,
    /// Encode every video unit in the background (ingest). When false
    /// (on-demand), only audio, the thumbnail and requested or prefetched
    /// segments are made.
    pub eager_video: bool,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            priority: 0,
            listing: Listing::Progressive,
            eager_video: true,
        }
    }
}

/// What the slots, requests and notices of one worker share.
struct Shared {
    settings: WorkerSettings,
    coord: Arc<dyn Coordinator>,
    metrics: Arc<Metrics>,
    /// Running jobs, by priority then age.
    jobs: Mutex<Vec<Arc<JobRun>>>,
    /// Wakes idle slots: new work, units given back.
    wake: Notify,
    shutdown: CancellationToken,
    events: broadcast::Sender<WorkerEvent>,
    sequence: AtomicU64,
    /// Encodes started by requests rather than slots.
    tasks: TaskTracker,
    circuit: FailureCircuit,
    /// Tells spare slots whether the running batches leave cores to spare.
    load: load::CoreLoad,
    /// Makes a batch's outputs (ffmpeg, or a simulation's sleep).
    encoder: Arc<dyn Encoder>,
    /// This pod's slots and the cluster's, from the heartbeats.
    capacity: capacity::Capacity,
}

impl Shared {
    fn running_jobs(&self) -> Vec<Arc<JobRun>> {
        lock(&self.jobs).clone()
    }

    /// Slots of every live pod (this pod's own without a cluster).
    fn cluster_slots(&self) -> usize {
        self.capacity.cluster_slots()
    }

    fn running_job(&self, id: JobId) -> Option<Arc<JobRun>> {
        lock(&self.jobs).iter().find(|j| j.id() == id).cloned()
    }
}

/// Slots that claim and run units of the jobs added to it.
pub struct Worker {
    shared: Arc<Shared>,
    slots: tokio::sync::Mutex<JoinSet<()>>,
}

impl Worker {
    /// Creates the worker with the real encoder (ffmpeg, reading URL
    /// sources through `fetch`) and starts its slots.
    pub fn start(
        settings: WorkerSettings,
        coord: Arc<dyn Coordinator>,
        metrics: Arc<Metrics>,
        fetch: SourceFetch,
    ) -> Worker {
        Worker::with_encoder(settings, coord, metrics, Arc::new(Ffmpeg::new(fetch)))
    }

    /// Creates the worker with `encoder` making the outputs and starts its
    /// slots.
    pub fn with_encoder(
        settings: WorkerSettings,
        coord: Arc<dyn Coordinator>,
        metrics: Arc<Metrics>,
        encoder: Arc<dyn Encoder>,
    ) -> Worker {
        let (events, _) = broadcast::channel(4096);
        let own_slots = settings.run.slots.fixed.max(1);
        let shared = Arc::new(Shared {
            settings,
            coord,
            metrics,
            jobs: Mutex::new(Vec::new()),
            wake: Notify::new(),
            shutdown: CancellationToken::new(),
            events,
            sequence: AtomicU64::new(0),
            tasks: TaskTracker::new(),
            circuit: FailureCircuit::default(),
            load: load::CoreLoad::new(),
            encoder,
            capacity: capacity::Capacity::new(own_slots),
        });
        tokio::spawn(capacity::beat(Arc::downgrade(&shared)));
        if let Some(notices) = shared.coord.unit_notices() {
            tokio::spawn(notices::follow(Arc::downgrade(&shared), notices));
        }
        let slots = slots::start(&shared);
        Worker {
            shared,
            slots: tokio::sync::Mutex::new(slots),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<WorkerEvent> {
        self.shared.events.subscribe()
    }

    pub fn settings(&self) -> &WorkerSettings {
        &self.shared.settings
    }

    /// Adds a job: units whose outputs exist on storage count as done
    /// (resume), the rest are queued.
    pub async fn add_job(
        &self,
        plan: Arc<Plan>,
        layout: JobLayout,
        options: JobOptions,
    ) -> Result<Arc<JobRun>, WorkerError> {
        let shared = &self.shared;
        if shared.shutdown.is_cancelled() {
            return Err(WorkerError::ShuttingDown);
        }
        let id = plan.job_id;
        if shared.running_job(id).is_some() {
            return Err(WorkerError::AlreadyRunning(id));
        }
        layout
            .create_dirs(&plan)
            .map_err(|source| WorkerError::Storage { job: id, source })?;
        let swept = layout.sweep_tmp(shared.settings.run.stall_timeout * 2);
        if swept > 0 {
            tracing::info!(job = %id, "removed {swept} stale in-progress file(s)");
        }
        let job = Arc::new(JobRun::new(
            plan,
            layout,
            options,
            shared.sequence.fetch_add(1, Ordering::Relaxed),
            shared.shutdown.child_token(),
        ));
        shared.metrics.units_skipped.inc_by(job.skipped() as u64);
        let found: Vec<Unit> = job.book().done_units().cloned().collect();
        for unit in found {
            if let Err(err) = shared.coord.mark_done(id, &unit).await {
                tracing::warn!(job = %id, unit = %unit, "recording a unit found on storage: {err}");
            }
        }
        {
            let mut jobs = lock(&shared.jobs);
            jobs.push(job.clone());
            jobs.sort_by_key(|job| (std::cmp::Reverse(job.options.priority), job.sequence));
        }
        let warnings = job.warnings();
        if !warnings.is_empty() {
            let _ = shared
                .events
                .send(WorkerEvent::Warnings { job: id, warnings });
        }
        shared.publish_playlists(&job).await;
        shared.maybe_finish(&job).await;
        shared.wake.notify_waiters();
        Ok(job)
    }

    /// The running job with this id, if any.
    pub fn job(&self, id: JobId) -> Option<Arc<JobRun>> {
        self.shared.running_job(id)
    }

    /// Cancels a job: its ffmpeg processes are killed, its leases given
    /// back, no new units start. Returns false when the job is not running.
    pub async fn cancel_job(&self, id: JobId) -> bool {
        let Some(job) = self.job(id) else {
            return false;
        };
        job.cancel.cancel();
        self.shared.finish(&job, JobOutcome::Canceled).await;
        true
    }

    /// Units this worker holds right now (claiming or encoding), with their
    /// job: a read-only view for the dashboard.
    pub fn running_units(&self) -> Vec<(JobId, Unit)> {
        self.shared
            .running_jobs()
            .into_iter()
            .flat_map(|job| {
                let units = job.book().running_units();
                units.into_iter().map(move |unit| (job.id(), unit))
            })
            .collect()
    }

    /// Ids of the jobs this worker is running.
    pub fn job_ids(&self) -> Vec<JobId> {
        lock(&self.shared.jobs).iter().map(|j| j.id()).collect()
    }

    /// Which kind of coordination is in force now.
    pub fn mode(&self) -> crate::coord::Mode {
        self.shared.coord.mode()
    }

    /// Claims of `job` held by any pod, as the coordinator lists them
    /// (`(unit, worker_id)`; empty when it cannot, as in local mode).
    pub async fn claim_holders(
        &self,
        job: JobId,
    ) -> Result<Vec<(String, String)>, crate::coord::CoordError> {
        self.shared.coord.holders(job).await
    }

    /// A reason this pod should not receive traffic, if any (it is pausing
    /// after a run of failures).
    pub fn health_problem(&self) -> Option<String> {
        self.shared.circuit.problem()
    }

    /// Stops claiming, kills every ffmpeg, gives held leases back and waits
    /// for the slots to end.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.shared.wake.notify_waiters();
        let mut slots = self.slots.lock().await;
        while slots.join_next().await.is_some() {}
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}
