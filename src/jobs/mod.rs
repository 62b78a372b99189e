//! Jobs of a pod: submission, lifecycle, progress events and persistence.
//!
//! Owns each job's record (spec, status, error) and its event stream:
//! queued → processing → playable → done | partial | failed | canceled, with
//! `thumbnail_ready` and throttled `progress` events in between. Records are
//! persisted as `status.json` in the job's folder on every status change, so
//! a restarted pod resumes unfinished jobs from storage. It starts work
//! through [`crate::prepare::prepare`] and the [`Worker`]; it never runs
//! ffmpeg itself and never formats HTTP responses.
//!
//! This file holds the [`JobManager`] and its read-only queries; the rest is
//! one concept per module:
//!
//! | module            | owns                                                       |
//! |-------------------|------------------------------------------------------------|
//! | `model`           | status, mode, spec, record, event kinds                    |
//! | `request`         | a submit request, its validation and egress check          |
//! | `view`            | the job as the API shows it                                |
//! | `events`          | the event type and a job's event log on this pod           |
//! | `progress`        | the progress value and the 2 % throttle                    |
//! | `state`           | the status order and the once-only end (`Ending`)          |
//! | `lifecycle`       | submit, start, status changes, end, cancel, webhooks       |
//! | `serving`         | a request for a job's file: wait for plan, playlist, unit  |
//! | `worker_events`   | the worker's events turned into statuses and events        |
//! | `cluster`         | what this pod tells and hears from the other pods          |
//! | `persist`         | `status.json`, and resuming jobs from storage              |
//! | [`registry`]      | the cluster's job registry in Redis                        |

mod cluster;
mod events;
mod lifecycle;
mod model;
mod persist;
mod progress;
pub mod registry;
mod request;
mod serving;
mod state;
mod view;
mod worker_events;

pub use events::JobEvent;
pub use model::{JobEventKind, JobMode, JobRecord, JobStatus};
pub use request::{JobSettings, SubmitRequest};
pub use serving::FileError;
pub use view::JobView;

use crate::config::ConfigError;
use crate::egress::EgressError;
use crate::plan::Plan;
use crate::source::SourceError;
use crate::storage::{Storage, StorageError};
use crate::sync::{lock, read};
use crate::webhook::Webhooks;
use crate::worker::{JobRun, Worker};
use crate::JobId;
use events::EventLog;
use registry::Registry;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;
use tokio::sync::{broadcast, mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// Sources probed and planned at once.
const PREPARE_CONCURRENCY: usize = 2;

/// Errors of job operations, each with a fitting kind for the API.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("callback_url {url:?}: {error}")]
    BadCallback { url: String, error: EgressError },
    #[error("job {id} is already {status}; add ?purge=true to remove its files")]
    AlreadyEnded { id: JobId, status: &'static str },
    #[error("the pod is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What this pod holds of one job: its record, its plan and run once known,
/// and its event log.
struct JobEntry {
    record: Mutex<JobRecord>,
    plan: Mutex<Option<Arc<Plan>>>,
    run: Mutex<Option<Arc<JobRun>>>,
    events: EventLog,
    /// Submitted to this pod (it probes and plans); an adopted job waits for
    /// the submitting pod's plan first.
    created_here: bool,
    /// Woken by the planner's `planned` notice.
    planned: Notify,
    /// Woken when the job starts running here or ends (requests for its
    /// files wait for that).
    started: Notify,
    /// How far this pod got with the job's end (once only).
    ending: Mutex<state::Ending>,
}

impl JobEntry {
    fn new(record: JobRecord, created_here: bool) -> Arc<JobEntry> {
        Arc::new(JobEntry {
            record: Mutex::new(record),
            plan: Mutex::new(None),
            run: Mutex::new(None),
            events: EventLog::new(),
            created_here,
            planned: Notify::new(),
            started: Notify::new(),
            ending: Mutex::new(state::Ending::default()),
        })
    }

    fn record(&self) -> JobRecord {
        lock(&self.record).clone()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The jobs this pod knows.
pub struct JobManager {
    storage: Storage,
    worker: Arc<Worker>,
    settings: JobSettings,
    webhooks: Webhooks,
    jobs: RwLock<HashMap<JobId, Arc<JobEntry>>>,
    prepare_slots: Semaphore,
    shutting_down: AtomicBool,
    /// The cluster's job registry (Redis); `None` in local mode.
    registry: Option<Arc<Registry>>,
}

impl JobManager {
    /// Creates the manager and starts following the worker's events.
    pub fn start(
        storage: Storage,
        worker: Arc<Worker>,
        settings: JobSettings,
        webhooks: Webhooks,
        registry: Option<Arc<Registry>>,
        stop: CancellationToken,
    ) -> Arc<JobManager> {
        // Webhooks follow the same address rule as source URLs.
        let webhooks = webhooks.with_egress(settings.egress);
        let manager = Arc::new(JobManager {
            storage,
            worker,
            settings,
            webhooks,
            jobs: RwLock::new(HashMap::new()),
            prepare_slots: Semaphore::new(PREPARE_CONCURRENCY),
            shutting_down: AtomicBool::new(false),
            registry,
        });
        let events = manager.worker.subscribe();
        tokio::spawn(worker_events::follow_worker(
            Arc::downgrade(&manager),
            events,
        ));
        if let Some(registry) = manager.registry.clone() {
            let (sink, incoming) = mpsc::unbounded_channel();
            let listen_stop = stop.clone();
            tokio::spawn(async move { registry.listen(sink, listen_stop).await });
            tokio::spawn(cluster::follow_cluster(
                Arc::downgrade(&manager),
                incoming,
                stop,
            ));
        }
        manager
    }

    /// The worker behind this manager (read-only views: mode, units held).
    pub fn worker(&self) -> &Arc<Worker> {
        &self.worker
    }

    /// A problem of the worker that should make the pod not ready.
    pub fn worker_problem(&self) -> Option<String> {
        self.worker.health_problem()
    }

    /// Marks the manager as stopping: no new jobs are accepted.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    fn entry(&self, id: JobId) -> Option<Arc<JobEntry>> {
        read(&self.jobs).get(&id).cloned()
    }

    fn entries(&self) -> Vec<Arc<JobEntry>> {
        read(&self.jobs).values().cloned().collect()
    }

    pub fn get(&self, id: JobId) -> Result<JobView, JobError> {
        let entry = self.entry(id).ok_or(JobError::NotFound(id))?;
        Ok(self.view(&entry))
    }

    /// Jobs newest first, optionally of one status; returns (page, total).
    pub fn list(
        &self,
        status: Option<JobStatus>,
        offset: usize,
        limit: usize,
    ) -> (Vec<JobView>, usize) {
        let mut entries: Vec<Arc<JobEntry>> = self
            .entries()
            .into_iter()
            .filter(|e| status.is_none_or(|s| lock(&e.record).status == s))
            .collect();
        entries.sort_by_key(|e| {
            let record = lock(&e.record);
            (std::cmp::Reverse(record.created_at_ms), record.id)
        });
        let total = entries.len();
        let page = entries
            .iter()
            .skip(offset)
            .take(limit)
            .map(|e| self.view(e))
            .collect();
        (page, total)
    }

    /// Counts of jobs by status (for metrics).
    pub fn counts(&self) -> HashMap<JobStatus, usize> {
        let mut counts = HashMap::new();
        for entry in read(&self.jobs).values() {
            *counts.entry(lock(&entry.record).status).or_insert(0) += 1;
        }
        counts
    }

    /// Subscribes to a job's events; returns the history after `after` and
    /// the live receiver (subscribed before the history was read, so no
    /// event falls between them; duplicates are filtered by `seq`).
    pub fn subscribe(
        &self,
        id: JobId,
        after: u64,
    ) -> Result<(Vec<JobEvent>, broadcast::Receiver<JobEvent>, JobView), JobError> {
        let entry = self.entry(id).ok_or(JobError::NotFound(id))?;
        let (mut history, receiver) = entry.events.subscribe(after);
        let view = self.view(&entry);
        // A job that ended before this pod started has no history here:
        // give its final state as one event.
        if history.is_empty() && view.status.is_terminal() && after == 0 {
            history.push(JobEvent {
                seq: entry.events.last_seq().max(1),
                event: view.status.into(),
                job: view.clone(),
            });
        }
        Ok((history, receiver, view))
    }

    /// True when a job's playlists will not change any more.
    pub fn is_final(&self, id: JobId) -> bool {
        self.entry(id)
            .map(|e| matches!(e.record().status, JobStatus::Done | JobStatus::Partial))
            .unwrap_or(false)
    }

    pub fn job_dir(&self, id: JobId) -> PathBuf {
        self.storage.job(id).dir().to_path_buf()
    }
}
