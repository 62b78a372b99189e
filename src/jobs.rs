//! Jobs of a pod: submission, lifecycle, progress events and persistence.
//!
//! Owns each job's record (spec, status, error) and its event stream:
//! queued → processing → playable → done | partial | failed | canceled, with
//! `thumbnail_ready` and throttled `progress` events in between. Records are
//! persisted as `status.json` in the job's folder on every status change, so
//! a restarted pod resumes unfinished jobs from storage. It starts work
//! through [`crate::transcode::prepare`] and the [`Worker`]; it never runs
//! ffmpeg itself and never formats HTTP responses.

use crate::config::{validate_segment_duration, ConfigError, EncodeSettings, Ladder};
use crate::egress::{EgressError, EgressPolicy};
use crate::plan::{Plan, Unit};
use crate::playlists::Listing;
use crate::prepare::prepare;
use crate::registry::{Incoming, Registry};
use crate::source::{Source, SourceError};
use crate::storage::{read_plan, Storage, StorageError};
use crate::webhook::Webhooks;
use crate::worker::{JobOptions, JobOutcome, JobRun, RequestError, Worker, WorkerEvent};
use crate::JobId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// Most events kept per job for late subscribers (progress is throttled to
/// 50 steps, so this holds a whole job's history).
const HISTORY_LIMIT: usize = 256;
/// Sources probed and planned at once.
const PREPARE_CONCURRENCY: usize = 2;
/// Name of the record file in a job's folder.
const STATUS_FILE: &str = "status.json";
/// How long an adopted job waits for the submitting pod's `job.json`.
const ADOPT_PLAN_WAIT: Duration = Duration::from_secs(30);
/// How often a clustered pod looks on storage for jobs it missed.
const STORAGE_RESCAN: Duration = Duration::from_secs(5);

/// How a job is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum JobMode {
    /// Encode everything now, lowest rendition first; playlists grow.
    #[default]
    Ingest,
    /// List the whole plan at once; encode segments when they are requested.
    OnDemand,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Processing,
    Playable,
    Done,
    Partial,
    Failed,
    Canceled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Queued,
        JobStatus::Processing,
        JobStatus::Playable,
        JobStatus::Done,
        JobStatus::Partial,
        JobStatus::Failed,
        JobStatus::Canceled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Partial | JobStatus::Failed | JobStatus::Canceled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Playable => "playable",
            JobStatus::Done => "done",
            JobStatus::Partial => "partial",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }

    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A ladder given as `["240p","360p"]` or `"240p,360p"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum LadderInput {
    List(Vec<String>),
    Text(String),
}

/// The body of `POST /v1/jobs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub source: String,
    pub ladder: Option<LadderInput>,
    pub segment_duration: Option<u32>,
    pub priority: Option<i32>,
    pub mode: Option<JobMode>,
    pub callback_url: Option<String>,
}

/// What a job was asked to do (validated).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub source: Source,
    pub settings: EncodeSettings,
    pub priority: i32,
    pub mode: JobMode,
    pub callback_url: Option<String>,
}

/// The persisted record of a job (`status.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub spec: JobSpec,
    pub status: JobStatus,
    pub error: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub playable: bool,
    /// Percentage of units done when last recorded.
    pub progress: f64,
}

/// Per-rendition progress in a [`JobView`].
#[derive(Debug, Clone, Serialize)]
pub struct RenditionView {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub done: usize,
    pub total: usize,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: JobId,
    pub status: JobStatus,
    pub source: String,
    pub mode: JobMode,
    pub priority: i32,
    pub ladder: Vec<String>,
    pub segment_duration: u32,
    pub callback_url: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub progress: f64,
    pub playable: bool,
    pub master_url: String,
    pub thumbnail_url: String,
    pub duration: Option<f64>,
    pub audio_tracks: Option<usize>,
    pub renditions: Vec<RenditionView>,
    pub error: Option<String>,
}

/// One entry of a job's event stream.
#[derive(Debug, Clone, Serialize)]
pub struct JobEvent {
    /// Increasing per job; the SSE `id`.
    pub seq: u64,
    /// `queued`, `processing`, `thumbnail_ready`, `progress`, `playable`,
    /// `done`, `partial`, `failed` or `canceled`.
    pub event: String,
    pub job: JobView,
}

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

struct JobEntry {
    record: Mutex<JobRecord>,
    plan: Mutex<Option<Arc<Plan>>>,
    run: Mutex<Option<Arc<JobRun>>>,
    history: Mutex<Vec<JobEvent>>,
    events: broadcast::Sender<JobEvent>,
    /// The highest event id seen for this job.
    last_seq: AtomicU64,
    /// Last 2 % step a progress event was sent for.
    progress_step: AtomicU64,
    /// Progress of the last `progress` event handed to subscribers here.
    delivered_progress: Mutex<f64>,
    /// Submitted to this pod (it probes and plans); an adopted job waits for
    /// the submitting pod's `job.json` first.
    created_here: bool,
}

impl JobEntry {
    fn new(record: JobRecord, created_here: bool) -> Arc<JobEntry> {
        let (events, _) = broadcast::channel(HISTORY_LIMIT);
        Arc::new(JobEntry {
            record: Mutex::new(record),
            plan: Mutex::new(None),
            run: Mutex::new(None),
            history: Mutex::new(Vec::new()),
            events,
            last_seq: AtomicU64::new(0),
            progress_step: AtomicU64::new(0),
            delivered_progress: Mutex::new(-1.0),
            created_here,
        })
    }

    /// An id for an event made here without the registry: above every id
    /// seen and above the clock (ms × 1000), so ids keep growing across pod
    /// restarts and a client's Last-Event-ID from before one skips nothing.
    fn next_local_seq(&self) -> u64 {
        let floor = now_ms() * 1000;
        let previous = self.last_seq.load(Ordering::Relaxed);
        let seq = floor.max(previous + 1);
        self.last_seq.fetch_max(seq, Ordering::Relaxed);
        seq
    }

    fn record(&self) -> JobRecord {
        lock(&self.record).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Settings of the manager that come from the pod's configuration.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub defaults: EncodeSettings,
    pub source_roots: Vec<PathBuf>,
    pub prefetch_segments: usize,
    pub segment_wait: Duration,
    /// Which addresses source and callback URLs may point at.
    pub egress: EgressPolicy,
}

impl SubmitRequest {
    /// Checks the request against the pod's settings and makes it a job
    /// spec: everything but the address checks of its URLs, which need DNS
    /// ([`JobSpec::check_egress`]). It reads nothing but the metadata of a
    /// local source.
    pub fn validate(self, settings: &JobSettings) -> Result<JobSpec, JobError> {
        let source = Source::parse(&self.source, Some(&settings.source_roots))?;
        let defaults = &settings.defaults;
        let ladder = match self.ladder {
            None => defaults.ladder.clone(),
            Some(LadderInput::List(names)) => Ladder::from_names(&names)?,
            Some(LadderInput::Text(text)) => text.parse()?,
        };
        let segment_duration = match self.segment_duration {
            None => defaults.segment_duration,
            Some(seconds) => validate_segment_duration(seconds)?,
        };
        // Kept in the normalised form that `check_egress` and the webhook
        // sender look at.
        let callback_url = match self.callback_url {
            None => None,
            Some(url) => Some(
                crate::egress::parse_http_url(&url)
                    .map_err(|error| JobError::BadCallback { url, error })?
                    .to_string(),
            ),
        };
        Ok(JobSpec {
            source,
            settings: EncodeSettings {
                ladder,
                segment_duration,
                ..defaults.clone()
            },
            priority: self.priority.unwrap_or(0),
            mode: self.mode.unwrap_or_default(),
            callback_url,
        })
    }
}

impl JobSpec {
    /// Checks that the source URL and the callback URL point at addresses
    /// `policy` allows (resolving their hosts).
    pub async fn check_egress(&self, policy: EgressPolicy) -> Result<(), JobError> {
        self.source.check_egress(policy).await?;
        if let Some(url) = &self.callback_url {
            let bad = |error| JobError::BadCallback {
                url: url.clone(),
                error,
            };
            let parsed = crate::egress::parse_http_url(url).map_err(bad)?;
            crate::egress::check_url(&parsed, policy)
                .await
                .map_err(bad)?;
        }
        Ok(())
    }
}

/// The jobs this pod knows.
pub struct JobManager {
    storage: Storage,
    worker: Arc<Worker>,
    settings: JobSettings,
    webhooks: Webhooks,
    jobs: RwLock<HashMap<JobId, Arc<JobEntry>>>,
    prepare_slots: Semaphore,
    shutting_down: std::sync::atomic::AtomicBool,
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
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            registry,
        });
        let events = manager.worker.subscribe();
        tokio::spawn(follow_worker(Arc::downgrade(&manager), events));
        if let Some(registry) = manager.registry.clone() {
            let (sink, incoming) = mpsc::unbounded_channel();
            let listen_stop = stop.clone();
            tokio::spawn(async move { registry.listen(sink, listen_stop).await });
            tokio::spawn(follow_cluster(Arc::downgrade(&manager), incoming, stop));
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

    pub fn source_roots(&self) -> &[PathBuf] {
        &self.settings.source_roots
    }

    /// Marks the manager as stopping: no new jobs are accepted.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    fn entry(&self, id: JobId) -> Option<Arc<JobEntry>> {
        self.jobs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Validates and queues a job; work starts in the background.
    pub async fn submit(self: &Arc<Self>, request: SubmitRequest) -> Result<JobView, JobError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(JobError::ShuttingDown);
        }
        let spec = request.validate(&self.settings)?;
        spec.check_egress(self.settings.egress).await?;
        let now = now_ms();
        let record = JobRecord {
            id: JobId::new_v4(),
            spec,
            status: JobStatus::Queued,
            error: None,
            created_at_ms: now,
            updated_at_ms: now,
            playable: false,
            progress: 0.0,
        };
        let layout = self.storage.job(record.id);
        std::fs::create_dir_all(layout.dir())
            .map_err(|e| StorageError::new("creating", layout.dir(), e))?;
        self.persist(&record)?;
        let entry = JobEntry::new(record.clone(), true);
        self.jobs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.id, entry.clone());
        if let Some(registry) = &self.registry {
            let announced = match serde_json::to_string(&record) {
                Ok(json) => registry
                    .announce(record.id, &json, record.spec.priority, record.created_at_ms)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(err) = announced {
                // Other pods find it on storage at their next scan.
                tracing::warn!(job = %record.id, "announcing the job: {err}");
            }
        }
        self.emit(&entry, "queued").await;
        self.spawn_start(entry.clone());
        Ok(self.view(&entry))
    }

    fn spawn_start(self: &Arc<Self>, entry: Arc<JobEntry>) {
        let manager = self.clone();
        tokio::spawn(async move { manager.start_job(entry).await });
    }

    /// Probes and plans (or reads `job.json`), then hands the job to the
    /// worker.
    async fn start_job(self: Arc<Self>, entry: Arc<JobEntry>) {
        if !entry.created_here {
            self.wait_for_plan(&entry).await;
        }
        let Ok(_permit) = self.prepare_slots.acquire().await else {
            return;
        };
        let record = entry.record();
        if record.status.is_terminal() {
            return;
        }
        let layout = self.storage.job(record.id);
        let prepared = prepare(
            &layout,
            record.spec.source.clone(),
            record.spec.settings.clone(),
            record.id,
        )
        .await;
        let plan = match prepared {
            Ok(prepared) => Arc::new(prepared.plan),
            Err(err) => {
                self.end(&entry, JobStatus::Failed, Some(err.to_string()))
                    .await;
                return;
            }
        };
        *lock(&entry.plan) = Some(plan.clone());
        if entry.record().status.is_terminal() {
            return; // canceled while probing
        }
        let options = JobOptions {
            priority: record.spec.priority,
            listing: match record.spec.mode {
                JobMode::Ingest => Listing::Progressive,
                JobMode::OnDemand => Listing::Full,
            },
            eager_video: record.spec.mode == JobMode::Ingest,
        };
        self.set_status(&entry, JobStatus::Processing, "processing")
            .await;
        match self.worker.add_job(plan, layout, options).await {
            Ok(run) => {
                *lock(&entry.run) = Some(run.clone());
                // The worker may have finished it at once (everything was
                // on storage already).
                if let Some(outcome) = run.outcome() {
                    self.on_finished(&entry, outcome).await;
                }
            }
            Err(err) => {
                self.end(&entry, JobStatus::Failed, Some(err.to_string()))
                    .await
            }
        }
    }

    /// An adopted job's plan is made by the pod it was submitted to: wait a
    /// while for its `job.json` rather than probe the source again (if that
    /// pod died first, probe after all; the plan is deterministic).
    async fn wait_for_plan(&self, entry: &JobEntry) {
        let path = self.storage.job(entry.record().id).job_json();
        let deadline = std::time::Instant::now() + ADOPT_PLAN_WAIT;
        while !path.is_file()
            && std::time::Instant::now() < deadline
            && !entry.record().status.is_terminal()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Loads every job folder's `status.json`; unfinished jobs start again
    /// (units already on storage are skipped).
    pub fn resume_from_storage(self: &Arc<Self>) -> Result<usize, StorageError> {
        let dir = self.storage.jobs_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StorageError::new("listing", &dir, e)),
        };
        let mut resumed = 0;
        for dir_entry in entries.flatten() {
            let known = dir_entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<JobId>().ok())
                .is_some_and(|id| self.entry(id).is_some());
            if known {
                continue;
            }
            let path = dir_entry.path().join(STATUS_FILE);
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let record: JobRecord = match serde_json::from_slice(&bytes) {
                Ok(record) => record,
                Err(err) => {
                    tracing::warn!("skipping {}: {err}", path.display());
                    continue;
                }
            };
            let unfinished = !record.status.is_terminal();
            let entry = JobEntry::new(record.clone(), false);
            if let Ok(Some(plan)) = read_plan(&self.storage.job(record.id)) {
                *lock(&entry.plan) = Some(Arc::new(plan));
            }
            self.jobs
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(record.id, entry.clone());
            if unfinished {
                resumed += 1;
                self.spawn_start(entry);
            }
        }
        Ok(resumed)
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
            .jobs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|e| status.is_none_or(|s| lock(&e.record).status == s))
            .cloned()
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
        for entry in self.jobs.read().unwrap_or_else(|p| p.into_inner()).values() {
            *counts.entry(lock(&entry.record).status).or_insert(0) += 1;
        }
        counts
    }

    /// Cancels a job (its ffmpeg processes are killed, no new units start);
    /// with `purge`, also removes its files. Purging a finished job is
    /// allowed; canceling one is a conflict.
    pub async fn cancel(&self, id: JobId, purge: bool) -> Result<JobView, JobError> {
        let entry = self.entry(id).ok_or(JobError::NotFound(id))?;
        let status = entry.record().status;
        if status.is_terminal() && !purge {
            return Err(JobError::AlreadyEnded {
                id,
                status: status.as_str(),
            });
        }
        if !status.is_terminal() {
            self.end(&entry, JobStatus::Canceled, None).await;
            if let Some(registry) = &self.registry {
                if let Err(err) = registry.cancel(id).await {
                    tracing::warn!(job = %id, "telling other pods to cancel: {err}");
                }
            }
            self.worker.cancel_job(id).await;
        }
        let view = self.view(&entry);
        if purge {
            self.jobs
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            self.storage.job(id).remove_all()?;
        }
        Ok(view)
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
        let receiver = entry.events.subscribe();
        let mut history: Vec<JobEvent> = lock(&entry.history)
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect();
        let view = self.view(&entry);
        // A job that ended before this pod started has no history here:
        // give its final state as one event.
        if history.is_empty() && view.status.is_terminal() && after == 0 {
            history.push(JobEvent {
                seq: entry.last_seq.load(Ordering::Relaxed).max(1),
                event: view.status.as_str().to_string(),
                job: view.clone(),
            });
        }
        Ok((history, receiver, view))
    }

    /// For `/hls`: makes the file at `path` (relative to the job folder)
    /// exist if it is a planned output, encoding it now if needed.
    pub async fn ensure_file(&self, id: JobId, path: &str) -> Result<(), RequestError> {
        let entry = self.entry(id).ok_or(RequestError::NotRunning(id))?;
        let plan = lock(&entry.plan)
            .clone()
            .ok_or(RequestError::NotRunning(id))?;
        let unit = unit_for_path(&plan, path).ok_or_else(|| {
            RequestError::NotPlanned(Unit::Video {
                rendition: path.to_string(),
                index: 0,
            })
        })?;
        self.worker
            .request(
                id,
                &unit,
                self.settings.prefetch_segments,
                self.settings.segment_wait,
            )
            .await
    }

    /// True when a job's playlists will not change any more.
    pub fn is_final(&self, id: JobId) -> bool {
        self.entry(id)
            .map(|e| matches!(e.record().status, JobStatus::Done | JobStatus::Partial))
            .unwrap_or(false)
    }

    pub fn knows(&self, id: JobId) -> bool {
        self.entry(id).is_some()
    }

    pub fn job_dir(&self, id: JobId) -> PathBuf {
        self.storage.job(id).dir().to_path_buf()
    }

    fn view(&self, entry: &JobEntry) -> JobView {
        let record = entry.record();
        let plan = lock(&entry.plan).clone();
        let run = lock(&entry.run).clone();
        let live = run.as_ref().filter(|_| !record.status.is_terminal());
        // What this pod saw done, or what the cluster reported if more: the
        // pods' views of a job lag each other a little, and a reader must
        // never see progress go back.
        let progress = match live {
            Some(run) => percent(run.progress()).max(record.progress),
            None => record.progress,
        };
        let renditions = match (&plan, &run) {
            (Some(plan), Some(run)) => run
                .rendition_progress()
                .into_iter()
                .filter_map(|(name, done, total)| {
                    let r = plan.rendition(&name)?;
                    Some(RenditionView {
                        name,
                        width: r.width,
                        height: r.height,
                        done,
                        total,
                    })
                })
                .collect(),
            (Some(plan), None) => {
                let layout = self.storage.job(record.id);
                plan.renditions
                    .iter()
                    .map(|r| RenditionView {
                        name: r.name.clone(),
                        width: r.width,
                        height: r.height,
                        done: plan
                            .segments
                            .iter()
                            .filter(|s| layout.segment(&r.name, s.index).is_file())
                            .count(),
                        total: plan.segments.len(),
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        JobView {
            id: record.id,
            status: record.status,
            source: record.spec.source.to_string(),
            mode: record.spec.mode,
            priority: record.spec.priority,
            ladder: record
                .spec
                .settings
                .ladder
                .0
                .iter()
                .map(|r| r.name())
                .collect(),
            segment_duration: record.spec.settings.segment_duration,
            callback_url: record.spec.callback_url.clone(),
            created_at: rfc3339(record.created_at_ms),
            updated_at: rfc3339(record.updated_at_ms),
            progress,
            playable: record.playable,
            master_url: format!("/hls/{}/master.m3u8", record.id),
            thumbnail_url: format!("/hls/{}/thumbnail.webp", record.id),
            duration: plan.as_ref().map(|p| p.duration),
            audio_tracks: plan.as_ref().map(|p| p.audio.len()),
            renditions,
            error: record.error.clone(),
        }
    }

    fn persist(&self, record: &JobRecord) -> Result<(), StorageError> {
        let layout = self.storage.job(record.id);
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        layout.write_atomic(&layout.dir().join(STATUS_FILE), &bytes)
    }

    fn update(&self, entry: &JobEntry, change: impl FnOnce(&mut JobRecord)) {
        let record = {
            let mut record = lock(&entry.record);
            change(&mut record);
            record.updated_at_ms = now_ms();
            record.clone()
        };
        if let Err(err) = self.persist(&record) {
            tracing::warn!(job = %record.id, "saving job status: {err}");
        }
    }

    /// Emits an event: through the registry when there is one (every pod's
    /// subscribers get it, with a cluster-wide id), else locally.
    async fn emit(&self, entry: &JobEntry, event: &'static str) {
        self.emit_view(entry, event, self.view(entry)).await;
    }

    async fn emit_view(&self, entry: &JobEntry, event: &'static str, job: JobView) {
        let mut seq = None;
        if let Some(registry) = &self.registry {
            let floor = now_ms() * 1000;
            match serde_json::to_string(&job) {
                Ok(json) => match registry.publish_event(job.id, event, &json, floor).await {
                    Ok(published) => seq = Some(published),
                    Err(err) => tracing::warn!(job = %job.id, "publishing {event}: {err}"),
                },
                Err(err) => tracing::warn!(job = %job.id, "encoding {event}: {err}"),
            }
        }
        let seq = seq.unwrap_or_else(|| entry.next_local_seq());
        self.deliver(
            entry,
            JobEvent {
                seq,
                event: event.to_string(),
                job,
            },
        );
    }

    /// Hands an event to this pod's subscribers, once, in id order.
    fn deliver(&self, entry: &JobEntry, event: JobEvent) {
        entry.last_seq.fetch_max(event.seq, Ordering::Relaxed);
        if event.event == "progress" {
            // Pods report steps concurrently; one that was overtaken on its
            // way adds nothing, and a stream's progress never goes back.
            let mut delivered = lock(&entry.delivered_progress);
            if event.job.progress <= *delivered {
                return;
            }
            *delivered = event.job.progress;
        }
        {
            let mut history = lock(&entry.history);
            if history.iter().any(|e| e.seq == event.seq) {
                return;
            }
            history.push(event.clone());
            history.sort_by_key(|e| e.seq);
            if history.len() > HISTORY_LIMIT {
                history.remove(0);
            }
        }
        let _ = entry.events.send(event);
    }

    /// Whether this pod is the one to make a status change cluster-wide
    /// (always, without a registry or while it is unreachable).
    async fn wins_transition(&self, next: &JobRecord) -> bool {
        let Some(registry) = &self.registry else {
            return true;
        };
        let json = match serde_json::to_string(next) {
            Ok(json) => json,
            Err(_) => return true,
        };
        match registry
            .transition(next.id, next.status.as_str(), &json)
            .await
        {
            Ok(won) => won,
            Err(err) => {
                tracing::warn!(job = %next.id, "job registry: {err}; deciding locally");
                true
            }
        }
    }

    /// Takes over the registry's record of a job another pod changed.
    async fn follow_registry_record(&self, entry: &JobEntry) {
        let Some(registry) = &self.registry else {
            return;
        };
        let id = entry.record().id;
        if let Ok(Some(json)) = registry.record(id).await {
            if let Ok(remote) = serde_json::from_str::<JobRecord>(&json) {
                let mut record = lock(&entry.record);
                record.status = remote.status;
                record.error = remote.error;
                record.playable |= remote.playable;
                record.progress = record.progress.max(remote.progress);
                record.updated_at_ms = remote.updated_at_ms;
            }
        }
    }

    async fn set_status(&self, entry: &JobEntry, status: JobStatus, event: &'static str) {
        let mut next = entry.record();
        if next.status.is_terminal() || next.status == status {
            return;
        }
        next.status = status;
        next.updated_at_ms = now_ms();
        if !self.wins_transition(&next).await {
            return; // another pod announced it; its event updates us
        }
        self.update(entry, |r| r.status = status);
        self.emit(entry, event).await;
    }

    /// Moves a job to a terminal status, once cluster-wide, with its event
    /// and webhook.
    async fn end(&self, entry: &JobEntry, status: JobStatus, error: Option<String>) {
        let progress = lock(&entry.run).as_ref().map(|run| percent(run.progress()));
        let mut next = entry.record();
        if next.status.is_terminal() {
            return;
        }
        next.status = status;
        next.error = error.clone();
        if let Some(progress) = progress {
            next.progress = progress;
        }
        next.updated_at_ms = now_ms();
        if !self.wins_transition(&next).await {
            self.follow_registry_record(entry).await;
            return;
        }
        self.update(entry, |r| {
            r.status = status;
            r.error = error;
            if let Some(progress) = progress {
                r.progress = progress;
            }
        });
        self.emit(entry, status.as_str()).await;
        if status != JobStatus::Canceled {
            self.notify_webhook(entry, status.as_str());
        }
        if let Some(registry) = &self.registry {
            if let Err(err) = registry.finished(next.id).await {
                tracing::warn!(job = %next.id, "job registry: {err}");
            }
        }
    }

    async fn on_finished(&self, entry: &JobEntry, outcome: JobOutcome) {
        match outcome {
            JobOutcome::Done => self.end(entry, JobStatus::Done, None).await,
            JobOutcome::Partial { reason } => {
                self.end(entry, JobStatus::Partial, Some(reason)).await
            }
            JobOutcome::Failed { reason } => self.end(entry, JobStatus::Failed, Some(reason)).await,
            JobOutcome::Canceled => self.end(entry, JobStatus::Canceled, None).await,
        }
    }

    fn notify_webhook(&self, entry: &JobEntry, event: &'static str) {
        if let Some(url) = entry.record().spec.callback_url {
            self.webhooks.deliver(url, event, self.view(entry));
        }
    }

    /// True for the one pod that reports a one-off event of a job.
    async fn first_to_report(&self, id: JobId, flag: &str) -> bool {
        match &self.registry {
            None => true,
            Some(registry) => registry.once(id, flag).await.unwrap_or(true),
        }
    }

    async fn on_worker_event(&self, event: WorkerEvent) {
        let id = match &event {
            WorkerEvent::UnitDone { job, .. }
            | WorkerEvent::UnitFailed { job, .. }
            | WorkerEvent::ThumbnailReady { job }
            | WorkerEvent::Playable { job }
            | WorkerEvent::Finished { job, .. } => *job,
        };
        let Some(entry) = self.entry(id) else {
            return;
        };
        match event {
            WorkerEvent::UnitDone { .. } => {
                let Some(run) = lock(&entry.run).clone() else {
                    return;
                };
                let progress = percent(run.progress());
                let step = (progress / 2.0).floor() as u64;
                if step > entry.progress_step.fetch_max(step, Ordering::Relaxed)
                    && !entry.record().status.is_terminal()
                {
                    let report = match &self.registry {
                        None => Some(progress),
                        Some(registry) => registry
                            .advance_progress(id, step, progress)
                            .await
                            .unwrap_or(Some(progress)),
                    };
                    if let Some(value) = report {
                        self.update(&entry, |r| r.progress = r.progress.max(value));
                        // The value the cluster agreed on, so that progress
                        // events never go back whichever pod sends them.
                        let mut view = self.view(&entry);
                        view.progress = value;
                        self.emit_view(&entry, "progress", view).await;
                    }
                }
            }
            WorkerEvent::UnitFailed { .. } => {}
            WorkerEvent::ThumbnailReady { .. } => {
                if !entry.record().status.is_terminal()
                    && self.first_to_report(id, "thumbnail_ready").await
                {
                    self.emit(&entry, "thumbnail_ready").await;
                }
            }
            WorkerEvent::Playable { .. } => {
                if entry.record().status.is_terminal() {
                    // Finished in the same breath: say it plays anyway.
                    self.update(&entry, |r| r.playable = true);
                    return;
                }
                // A resumed job was announced playable before the restart:
                // its subscribers hear it again, its webhook does not.
                let announced = entry.record().playable;
                let mut next = entry.record();
                next.playable = true;
                next.status = JobStatus::Playable;
                next.updated_at_ms = now_ms();
                if !self.wins_transition(&next).await {
                    lock(&entry.record).playable = true;
                    return;
                }
                self.update(&entry, |r| {
                    r.playable = true;
                    r.status = JobStatus::Playable;
                });
                self.emit(&entry, "playable").await;
                if !announced {
                    self.notify_webhook(&entry, "playable");
                }
            }
            WorkerEvent::Finished { outcome, .. } => self.on_finished(&entry, outcome).await,
        }
    }

    /// Joins a job another pod announced (or that was found on storage).
    async fn adopt(self: &Arc<Self>, id: JobId) {
        if self.entry(id).is_some() {
            return;
        }
        let mut record: Option<JobRecord> = None;
        if let Some(registry) = &self.registry {
            if let Ok(Some(json)) = registry.record(id).await {
                record = serde_json::from_str(&json).ok();
            }
        }
        if record.is_none() {
            let path = self.storage.job(id).dir().join(STATUS_FILE);
            record = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        }
        let Some(record) = record else {
            return;
        };
        let entry = JobEntry::new(record.clone(), false);
        {
            let mut jobs = self.jobs.write().unwrap_or_else(|p| p.into_inner());
            if jobs.contains_key(&id) {
                return;
            }
            jobs.insert(id, entry.clone());
        }
        if let Some(registry) = &self.registry {
            for event in registry.history(id).await.unwrap_or_default() {
                self.apply_remote_event(&entry, event);
            }
        }
        if !record.status.is_terminal() {
            self.spawn_start(entry);
        }
    }

    /// Mirrors another pod's event: the record follows its status, and this
    /// pod's subscribers get it.
    /// Returns true when the event says the job was canceled (the caller
    /// stops this pod's work on it: a missed `cancel` notice is caught up).
    fn apply_remote_event(&self, entry: &JobEntry, event: Incoming) -> bool {
        let Incoming::Event {
            seq,
            name,
            job_json,
            ..
        } = event
        else {
            return false;
        };
        let canceled = name == JobStatus::Canceled.as_str();
        let mut remote_progress = None;
        if let Ok(remote) = serde_json::from_str::<serde_json::Value>(&job_json) {
            remote_progress = remote["progress"].as_f64();
            let mut record = lock(&entry.record);
            let status = remote["status"].as_str().and_then(JobStatus::parse);
            if let Some(status) = status {
                if !record.status.is_terminal() {
                    record.status = status;
                }
            }
            if remote["playable"].as_bool() == Some(true) {
                record.playable = true;
            }
            if let Some(error) = remote["error"].as_str() {
                record.error = Some(error.to_string());
            }
            if let Some(progress) = remote["progress"].as_f64() {
                record.progress = record.progress.max(progress);
            }
        }
        // The event says what its sender saw; this pod's own view may be
        // further along, and re-rendering with it would make a stream's
        // progress values repeat or jump.
        let mut job = self.view(entry);
        if let Some(progress) = remote_progress {
            job.progress = progress;
        }
        self.deliver(
            entry,
            JobEvent {
                seq,
                event: name,
                job,
            },
        );
        canceled
    }

    /// Catches up on events this pod may have missed (pub/sub drops what is
    /// sent while a subscriber reconnects): for every job whose stream here
    /// has not ended, the registry's history is applied again; events
    /// already seen are skipped by id.
    async fn catch_up(&self) {
        let Some(registry) = &self.registry else {
            return;
        };
        let entries: Vec<Arc<JobEntry>> = self
            .jobs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for entry in entries {
            let ended = lock(&entry.history)
                .last()
                .is_some_and(|e| JobStatus::parse(&e.event).is_some_and(JobStatus::is_terminal));
            let record = entry.record();
            // Jobs that ended before this pod knew them have nothing to
            // catch up on.
            let ended_earlier = record.status.is_terminal() && lock(&entry.history).is_empty();
            if ended || ended_earlier {
                continue;
            }
            let id = record.id;
            let Ok(history) = registry.history(id).await else {
                return; // Redis away: try at the next tick
            };
            for event in history {
                if self.apply_remote_event(&entry, event) {
                    self.worker.cancel_job(id).await;
                }
            }
        }
    }

    async fn on_incoming(self: &Arc<Self>, incoming: Incoming) {
        match incoming {
            Incoming::New(id) => self.adopt(id).await,
            Incoming::Cancel(id) => {
                self.worker.cancel_job(id).await;
                if let Some(entry) = self.entry(id) {
                    self.follow_registry_record(&entry).await;
                }
            }
            Incoming::Event { job, .. } => {
                if self.entry(job).is_none() {
                    self.adopt(job).await;
                }
                if let Some(entry) = self.entry(job) {
                    if self.apply_remote_event(&entry, incoming) {
                        self.worker.cancel_job(job).await;
                    }
                }
            }
            Incoming::Resync => {
                if let Err(err) = self.resume_from_storage() {
                    tracing::warn!("scanning storage for jobs: {err}");
                }
                self.catch_up().await;
            }
        }
    }
}

/// Follows what other pods say, and rescans storage now and then for jobs
/// whose announcement was missed (pub/sub does not queue for absent
/// listeners).
async fn follow_cluster(
    manager: std::sync::Weak<JobManager>,
    mut incoming: mpsc::UnboundedReceiver<Incoming>,
    stop: CancellationToken,
) {
    let mut rescan = tokio::time::interval(STORAGE_RESCAN);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            message = incoming.recv() => match message {
                Some(message) => message,
                None => return,
            },
            _ = rescan.tick() => Incoming::Resync,
        };
        let Some(manager) = manager.upgrade() else {
            return;
        };
        manager.on_incoming(message).await;
    }
}

/// Follows the worker's events for as long as the manager lives.
async fn follow_worker(
    manager: std::sync::Weak<JobManager>,
    mut events: broadcast::Receiver<WorkerEvent>,
) {
    loop {
        match events.recv().await {
            Ok(event) => match manager.upgrade() {
                Some(manager) => manager.on_worker_event(event).await,
                None => return,
            },
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!("job events lagged behind by {missed} worker events");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn percent((done, total): (usize, usize)) -> f64 {
    if total == 0 {
        return 100.0;
    }
    ((done as f64 / total as f64) * 1000.0).round() / 10.0
}

/// The unit that produces the file at `path` in a job folder, if any.
pub fn unit_for_path(plan: &Plan, path: &str) -> Option<Unit> {
    let parts: Vec<&str> = path.split('/').collect();
    let unit = match parts.as_slice() {
        ["thumbnail.webp"] => Unit::Thumbnail,
        ["audio", track, _] => Unit::Audio {
            track: track.parse().ok()?,
        },
        [rendition, name] => {
            let index = name
                .strip_prefix("seg_")?
                .strip_suffix(".ts")?
                .parse()
                .ok()?;
            Unit::Video {
                rendition: rendition.to_string(),
                index,
            }
        }
        _ => return None,
    };
    plan.contains(&unit).then_some(unit)
}
