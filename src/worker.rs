//! The worker: slots that claim units and run them through the pipeline.
//!
//! Owns the order of work (audio, the lowest rendition's segment 0 and the
//! thumbnail first, then segment by segment with every free rendition of a
//! segment in one batch, across jobs
//! by priority then age), lease renewal while ffmpeg makes progress, retries
//! with backoff, publishing outputs and deciding when a job has ended. It is
//! the same for `segswarm transcode` and for a pod; the coordinator behind it
//! decides whether other pods share the work. It never parses requests or
//! prints anything for a user.

use crate::coord::{ClaimOutcome, Completion, Coordinator, Lease, UnitNotice, WaitOutcome};
use crate::cpu::CpuGauge;
use crate::encode::{Batch, VideoOutput};
use crate::ffmpeg::RunControl;
use crate::hls::{self, Availability, Listing, Packager};
use crate::metrics::Metrics;
use crate::plan::{Plan, Unit};
use crate::storage::{self, JobLayout, StorageError};
use crate::JobId;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest wait between retries of a failed unit.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// After this many failed units in a row (all different), the pod is taken
/// to be broken and stops claiming for [`SICK_PAUSE`], so one bad node
/// cannot drain the queue by failing everything it touches.
const SICK_AFTER: usize = 5;
const SICK_PAUSE: Duration = Duration::from_secs(30);
/// How often a spare slot asks whether the CPU has room.
const SPARE_RECHECK: Duration = Duration::from_millis(250);
/// How often a running audio encode is looked at for finished segments.
const AUDIO_TRICKLE_INTERVAL: Duration = Duration::from_millis(100);

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Name of this worker in claims (hostname or pod name).
    pub worker_id: String,
    /// Batches run at the same time, always.
    pub slots: usize,
    /// Further batches run only while the CPU has idle time (see
    /// [`crate::cpu::CpuGauge`]).
    pub spare_slots: usize,
    /// An ffmpeg that prints no progress for this long is killed.
    pub stall_timeout: Duration,
    /// Attempts per unit before it fails for good.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles with each further attempt.
    pub retry_backoff: Duration,
    /// How soon a unit held by another worker is looked at again.
    pub held_recheck: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            worker_id: "local".into(),
            slots: default_slots(),
            spare_slots: DEFAULT_SPARE_SLOTS,
            stall_timeout: Duration::from_secs(60),
            max_attempts: 3,
            retry_backoff: Duration::from_secs(1),
            held_recheck: Duration::from_secs(1),
        }
    }
}

/// One slot per core, plus [`DEFAULT_SPARE_SLOTS`] that run only on idle
/// CPU. How many cores one batch keeps busy depends on the source: with a
/// 720p source the filter graph and the one-thread encoders share ffmpeg's
/// main thread (about one core, with gaps while it seeks and decodes), with
/// a 1080p ladder the threaded 720p and 1080p encoders fill two. Measured on
/// 2 cores (docs/benchmarks.md, figure 1): 720p source, 2 slots 55 s, 4 slots
/// 34 s; 1080p source, 2 slots 64 s, 4 slots 69 s (4 busy batches on 2
/// cores cost 8 % more CPU). Spare slots take the first case's idle CPU
/// without crowding the second.
pub fn default_slots() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Spare slots of a worker whose slot count was not set.
pub const DEFAULT_SPARE_SLOTS: usize = 2;

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
/// job events).
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    UnitDone {
        job: JobId,
        unit: Unit,
    },
    UnitFailed {
        job: JobId,
        unit: Unit,
        error: String,
        attempts: u32,
        permanent: bool,
    },
    ThumbnailReady {
        job: JobId,
    },
    Playable {
        job: JobId,
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

/// Why a request for one unit could not be answered with its file.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("job {0} is not running on this pod")]
    NotRunning(JobId),
    #[error("{0} is not part of the job's plan")]
    NotPlanned(Unit),
    #[error("{unit} failed: {reason}")]
    Failed { unit: Unit, reason: String },
    #[error("{0} was not ready in time")]
    Timeout(Unit),
    #[error("the job was canceled")]
    Canceled,
    #[error("the pod is shutting down")]
    ShuttingDown,
    #[error("this pod is not encoding right now ({0})")]
    Paused(String),
}

#[derive(Debug, Clone, PartialEq)]
enum UnitState {
    Pending {
        not_before: Instant,
    },
    /// Reserved by a slot of this worker (claiming or encoding).
    Running,
    Done,
    Failed(String),
}

struct RunState {
    units: HashMap<Unit, UnitState>,
    /// Units in the order work should be done.
    order: Vec<Unit>,
    /// Index in `order` before which every unit is done or failed.
    cursor: usize,
    done: usize,
    /// Per rendition: segments from 0 done without a hole.
    contiguous: HashMap<String, usize>,
    failed_renditions: BTreeSet<String>,
    failures: Vec<String>,
    /// Units asked for ahead of the normal order (prefetch after a request).
    wanted: BTreeSet<Unit>,
    /// Units whose batch failed: from now on they are encoded alone, so one
    /// broken rendition cannot fail its neighbours.
    solo: BTreeSet<Unit>,
    finished: bool,
}

/// A job the worker is running: its plan, its folder and its progress.
pub struct JobRun {
    pub plan: Arc<Plan>,
    pub layout: JobLayout,
    options: JobOptions,
    sequence: u64,
    skipped: usize,
    cancel: CancellationToken,
    packager: Packager,
    /// Serialises playlist updates so a later snapshot never loses to an
    /// earlier one.
    publishing: tokio::sync::Mutex<()>,
    /// The master playlist plays (set once, by this pod's packager).
    plays: AtomicBool,
    state: Mutex<RunState>,
    outcome: watch::Sender<Option<JobOutcome>>,
}

impl JobRun {
    pub fn id(&self) -> JobId {
        self.plan.job_id
    }

    /// Units found already done on storage when the job was added.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// (done, total) units.
    pub fn progress(&self) -> (usize, usize) {
        let state = self.lock();
        (state.done, state.order.len())
    }

    /// Per rendition: (done, total) segments.
    pub fn rendition_progress(&self) -> Vec<(String, usize, usize)> {
        let state = self.lock();
        self.plan
            .renditions
            .iter()
            .map(|r| {
                let done = (0..self.plan.segments.len())
                    .filter(|&index| {
                        let unit = Unit::Video {
                            rendition: r.name.clone(),
                            index,
                        };
                        state.units.get(&unit) == Some(&UnitState::Done)
                    })
                    .count();
                (r.name.clone(), done, self.plan.segments.len())
            })
            .collect()
    }

    /// Waits for the job to end.
    pub async fn wait(&self) -> JobOutcome {
        let mut outcome = self.outcome.subscribe();
        loop {
            if let Some(outcome) = outcome.borrow_and_update().clone() {
                return outcome;
            }
            if outcome.changed().await.is_err() {
                return JobOutcome::Canceled;
            }
        }
    }

    pub fn outcome(&self) -> Option<JobOutcome> {
        self.outcome.borrow().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn availability(&self) -> Availability {
        let state = self.lock();
        // A track's playlist is on storage from its first segment on,
        // whichever pod encodes it.
        let audio_listed = self.plan.audio.iter().all(|a| {
            state.units.get(&Unit::Audio { track: a.track }) == Some(&UnitState::Done)
                || self.layout.audio_playlist(a.track).is_file()
        });
        Availability {
            contiguous: state.contiguous.clone(),
            failed: state.failed_renditions.iter().cloned().collect(),
            audio_listed,
        }
    }
}

struct Shared {
    settings: WorkerSettings,
    coord: Arc<dyn Coordinator>,
    metrics: Arc<Metrics>,
    jobs: Mutex<Vec<Arc<JobRun>>>,
    wake: Notify,
    shutdown: CancellationToken,
    events: broadcast::Sender<WorkerEvent>,
    sequence: AtomicU64,
    /// Encodes started by requests rather than slots.
    tasks: TaskTracker,
    /// Distinct units that failed since the last success.
    failure_streak: Mutex<BTreeSet<(JobId, Unit)>>,
    /// While set and in the future, slots do not claim.
    paused_until: Mutex<Option<Instant>>,
    /// Tells spare slots whether the CPU has room.
    cpu: CpuGauge,
}

/// Slots that claim and run units of the jobs added to it.
pub struct Worker {
    shared: Arc<Shared>,
    slots: tokio::sync::Mutex<JoinSet<()>>,
}

/// A batch a slot has claimed.
struct Claimed {
    job: Arc<JobRun>,
    leases: Vec<Lease>,
}

impl Worker {
    /// Creates the worker and starts its slots.
    pub fn start(
        settings: WorkerSettings,
        coord: Arc<dyn Coordinator>,
        metrics: Arc<Metrics>,
    ) -> Worker {
        let (events, _) = broadcast::channel(4096);
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
            failure_streak: Mutex::new(BTreeSet::new()),
            paused_until: Mutex::new(None),
            cpu: CpuGauge::new(),
        });
        if let Some(notices) = shared.coord.unit_notices() {
            tokio::spawn(follow_unit_notices(Arc::downgrade(&shared), notices));
        }
        let mut slots = JoinSet::new();
        let fixed = shared.settings.slots.max(1);
        for index in 0..fixed + shared.settings.spare_slots {
            let shared = shared.clone();
            let spare = index >= fixed;
            slots.spawn(async move { shared.slot_loop(spare).await });
        }
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
        if shared.lock_jobs().iter().any(|job| job.id() == id) {
            return Err(WorkerError::AlreadyRunning(id));
        }
        layout
            .create_dirs(&plan)
            .map_err(|source| WorkerError::Storage { job: id, source })?;
        let swept = layout.sweep_tmp(shared.settings.stall_timeout * 2);
        if swept > 0 {
            tracing::info!(job = %id, "removed {swept} stale in-progress file(s)");
        }
        let order = plan.units();
        let now = Instant::now();
        let mut units = HashMap::new();
        let mut skipped = 0;
        for unit in &order {
            let state = if layout.is_done(unit) {
                skipped += 1;
                UnitState::Done
            } else {
                UnitState::Pending { not_before: now }
            };
            units.insert(unit.clone(), state);
        }
        let mut state = RunState {
            units,
            order,
            cursor: 0,
            done: skipped,
            contiguous: HashMap::new(),
            failed_renditions: BTreeSet::new(),
            failures: Vec::new(),
            wanted: BTreeSet::new(),
            solo: BTreeSet::new(),
            finished: false,
        };
        for rendition in &plan.renditions {
            advance_contiguous(&mut state, &rendition.name);
        }
        let (outcome, _) = watch::channel(None);
        let job = Arc::new(JobRun {
            packager: Packager::new(plan.clone(), layout.clone(), options.listing),
            plan,
            layout,
            options,
            sequence: shared.sequence.fetch_add(1, Ordering::Relaxed),
            skipped,
            cancel: shared.shutdown.child_token(),
            publishing: tokio::sync::Mutex::new(()),
            plays: AtomicBool::new(false),
            state: Mutex::new(state),
            outcome,
        });
        shared.metrics.units_skipped.inc_by(skipped as u64);
        let found: Vec<Unit> = job
            .lock()
            .units
            .iter()
            .filter(|(_, state)| **state == UnitState::Done)
            .map(|(unit, _)| unit.clone())
            .collect();
        for unit in found {
            if let Err(err) = shared.coord.mark_done(id, &unit).await {
                tracing::warn!(job = %id, unit = %unit, "recording a unit found on storage: {err}");
            }
        }
        {
            let mut jobs = shared.lock_jobs();
            jobs.push(job.clone());
            jobs.sort_by_key(|job| (std::cmp::Reverse(job.options.priority), job.sequence));
        }
        shared.publish_playlists(&job).await;
        shared.maybe_finish(&job).await;
        shared.wake.notify_waiters();
        Ok(job)
    }

    /// The running job with this id, if any.
    pub fn job(&self, id: JobId) -> Option<Arc<JobRun>> {
        self.shared
            .lock_jobs()
            .iter()
            .find(|j| j.id() == id)
            .cloned()
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
        let jobs = self.shared.lock_jobs().clone();
        let mut running = Vec::new();
        for job in jobs {
            let state = job.lock();
            let mut units: Vec<Unit> = state
                .units
                .iter()
                .filter(|(_, s)| **s == UnitState::Running)
                .map(|(unit, _)| unit.clone())
                .collect();
            units.sort();
            running.extend(units.into_iter().map(|unit| (job.id(), unit)));
        }
        running
    }

    /// Ids of the jobs this worker is running.
    pub fn job_ids(&self) -> Vec<JobId> {
        self.shared.lock_jobs().iter().map(|j| j.id()).collect()
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
        self.shared.paused_until().map(|until| {
            format!(
                "paused for {} s after {SICK_AFTER} failed units in a row",
                until.saturating_duration_since(Instant::now()).as_secs()
            )
        })
    }

    /// Makes sure `unit` of a running job exists on storage, ahead of
    /// background work: claims it now if it is free, or waits for whoever is
    /// making it. Concurrent requests for one unit start one encode. The
    /// next `prefetch` segments of the same rendition are queued first.
    pub async fn request(
        &self,
        id: JobId,
        unit: &Unit,
        prefetch: usize,
        timeout: Duration,
    ) -> Result<(), RequestError> {
        let shared = &self.shared;
        let job = self.job(id).ok_or(RequestError::NotRunning(id))?;
        if !job.plan.contains(unit) {
            return Err(RequestError::NotPlanned(unit.clone()));
        }
        let deadline = Instant::now() + timeout;
        // Subscribe before looking, so a completion in between is seen.
        let mut events = shared.events.subscribe();
        if let Unit::Video { rendition, index } = unit {
            let mut state = job.lock();
            for next in index + 1..(index + 1 + prefetch).min(job.plan.segments.len()) {
                state.wanted.insert(Unit::Video {
                    rendition: rendition.clone(),
                    index: next,
                });
            }
        }
        shared.wake.notify_waiters();
        loop {
            if job.layout.is_done(unit) {
                return Ok(());
            }
            let state = job.lock().units.get(unit).cloned();
            match state {
                Some(UnitState::Done) => return Ok(()),
                Some(UnitState::Failed(reason)) => {
                    return Err(RequestError::Failed {
                        unit: unit.clone(),
                        reason,
                    })
                }
                Some(UnitState::Pending { .. }) => {
                    if let Some(problem) = self.health_problem() {
                        return Err(RequestError::Paused(problem));
                    }
                    job.lock().units.insert(unit.clone(), UnitState::Running);
                    if let Some(claimed) = shared.claim(&job, vec![unit.clone()]).await {
                        // Runs on its own task: a requester that goes away
                        // does not abandon the encode.
                        let owner = shared.clone();
                        shared
                            .tasks
                            .spawn(async move { owner.run_claimed(claimed).await });
                    } else if matches!(job.lock().units.get(unit), Some(UnitState::Pending { .. }))
                    {
                        // Another pod holds it: wake on its completion notice
                        // or when its claim expires, not on a poll.
                        let wait = deadline
                            .saturating_duration_since(Instant::now())
                            .min(shared.coord.claim_ttl());
                        tokio::select! {
                            outcome = shared.coord.wait_for(id, unit, wait) => match outcome {
                                Ok(WaitOutcome::Done) => shared.confirm_done(id, unit).await,
                                Ok(_) => {}
                                Err(err) => {
                                    tracing::warn!(job = %id, unit = %unit, "waiting for another pod: {err}");
                                    tokio::time::sleep(shared.settings.held_recheck).await;
                                }
                            },
                            _ = job.cancel.cancelled() => {}
                        }
                        let mut state = job.lock();
                        if let Some(UnitState::Pending { .. }) = state.units.get(unit) {
                            state.units.insert(
                                unit.clone(),
                                UnitState::Pending {
                                    not_before: Instant::now(),
                                },
                            );
                        }
                        drop(state);
                        continue;
                    }
                }
                Some(UnitState::Running) | None => {}
            }
            if job.cancel.is_cancelled() {
                return Err(if shared.shutdown.is_cancelled() {
                    RequestError::ShuttingDown
                } else {
                    RequestError::Canceled
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RequestError::Timeout(unit.clone()));
            }
            let wait = (deadline - now).min(shared.settings.held_recheck);
            tokio::select! {
                event = events.recv() => {
                    if let Err(broadcast::error::RecvError::Closed) = event {
                        return Err(RequestError::ShuttingDown);
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = job.cancel.cancelled() => {}
            }
        }
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

impl Shared {
    fn lock_jobs(&self) -> std::sync::MutexGuard<'_, Vec<Arc<JobRun>>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims and runs batches until shutdown. A `spare` slot claims only
    /// while the CPU has idle time.
    async fn slot_loop(self: Arc<Self>, spare: bool) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shutdown.is_cancelled() {
                return;
            }
            if spare && !self.cpu.take_spare() {
                tokio::select! {
                    _ = tokio::time::sleep(SPARE_RECHECK) => {}
                    _ = self.shutdown.cancelled() => return,
                }
                continue;
            }
            if let Some(until) = self.paused_until() {
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = self.shutdown.cancelled() => return,
                }
                continue;
            }
            match self.next_claimed().await {
                Some(claimed) => self.run_claimed(claimed).await,
                None => {
                    let idle = Duration::from_millis(250);
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(idle) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// After a wait ends with the unit done, claims it once more as the
    /// protocol says (the answer is `done`, counted as such); a claim won
    /// instead (the done mark vanished) is given back, and storage decides.
    async fn confirm_done(&self, id: JobId, unit: &Unit) {
        let claimed = self
            .coord
            .claim(id, std::slice::from_ref(unit), &self.settings.worker_id)
            .await;
        if let Ok(outcomes) = claimed {
            for outcome in outcomes {
                if let ClaimOutcome::Won { lease, .. } = outcome {
                    let _ = self.coord.release(&lease, false).await;
                }
            }
        }
    }

    fn paused_until(&self) -> Option<Instant> {
        let paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        paused.filter(|until| *until > Instant::now())
    }

    /// Counts a failed unit towards the streak that pauses a broken pod.
    fn record_failure(&self, job: JobId, unit: &Unit) {
        let mut streak = self
            .failure_streak
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        streak.insert((job, unit.clone()));
        if streak.len() >= SICK_AFTER {
            streak.clear();
            tracing::warn!(
                "{SICK_AFTER} different units failed in a row: not claiming for {SICK_PAUSE:?}"
            );
            *self.paused_until.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Instant::now() + SICK_PAUSE);
        }
    }

    fn record_success(&self) {
        self.failure_streak
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Finds the next ready units, reserves them locally, then claims them.
    async fn next_claimed(&self) -> Option<Claimed> {
        let jobs: Vec<Arc<JobRun>> = self.lock_jobs().clone();
        for job in jobs {
            if job.cancel.is_cancelled() {
                continue;
            }
            while let Some(units) = reserve_next(&job) {
                if let Some(claimed) = self.claim(&job, units).await {
                    return Some(claimed);
                }
            }
        }
        None
    }

    /// Claims reserved units; those not won go back to their state.
    async fn claim(&self, job: &Arc<JobRun>, units: Vec<Unit>) -> Option<Claimed> {
        let id = job.id();
        // Storage is the truth: a unit whose output appeared (another pod,
        // an earlier run) is done without a claim.
        let mut to_claim = Vec::new();
        for unit in units {
            if job.layout.is_done(&unit) {
                let _ = self.coord.mark_done(id, &unit).await;
                self.unit_done(job, &unit).await;
            } else {
                to_claim.push(unit);
            }
        }
        if to_claim.is_empty() {
            return None;
        }
        let outcomes = match self
            .coord
            .claim(id, &to_claim, &self.settings.worker_id)
            .await
        {
            Ok(outcomes) => outcomes,
            Err(err) => {
                tracing::warn!(job = %id, "claiming units: {err}");
                let retry = Instant::now() + Duration::from_secs(1);
                let mut state = job.lock();
                for unit in &to_claim {
                    state
                        .units
                        .insert(unit.clone(), UnitState::Pending { not_before: retry });
                }
                return None;
            }
        };
        let mut leases = Vec::new();
        for (unit, outcome) in to_claim.iter().zip(outcomes) {
            match outcome {
                ClaimOutcome::Won { lease, .. } => leases.push(lease),
                ClaimOutcome::Held { .. } => {
                    let recheck = Instant::now() + self.settings.held_recheck;
                    job.lock().units.insert(
                        unit.clone(),
                        UnitState::Pending {
                            not_before: recheck,
                        },
                    );
                }
                ClaimOutcome::Done => {
                    if job.layout.is_done(unit) {
                        self.unit_done(job, unit).await;
                    } else {
                        // Marked done but its file is missing: storage wins,
                        // the unit is made again.
                        tracing::warn!(job = %id, unit = %unit, "marked done but its output is missing: redoing it");
                        if let Err(err) = self.coord.unmark_done(id, unit).await {
                            tracing::warn!(job = %id, unit = %unit, "unmarking: {err}");
                        }
                        let recheck = Instant::now();
                        job.lock().units.insert(
                            unit.clone(),
                            UnitState::Pending {
                                not_before: recheck,
                            },
                        );
                    }
                }
            }
        }
        if leases.is_empty() {
            None
        } else {
            Some(Claimed {
                job: job.clone(),
                leases,
            })
        }
    }

    /// Encodes a claimed batch while renewing its leases, then publishes.
    async fn run_claimed(&self, claimed: Claimed) {
        let Claimed { job, leases } = claimed;
        let plan = job.plan.clone();
        let batch = match build_batch(&job, &leases) {
            Ok(batch) => batch,
            Err(err) => {
                self.fail_leases(&job, &leases, &err.to_string()).await;
                return;
            }
        };
        let run_cancel = job.cancel.child_token();
        let (progress_tx, progress_rx) = watch::channel(Instant::now());
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renewer = tokio::spawn(renew_leases(
            self.coord.clone(),
            self.metrics.clone(),
            leases.clone(),
            progress_rx,
            self.settings.stall_timeout,
            run_cancel.clone(),
            lost.clone(),
        ));
        let kind = leases[0].unit.kind();
        self.metrics.units_in_flight.add(leases.len() as i64);
        let started = Instant::now();
        let control = RunControl {
            cancel: run_cancel.clone(),
            stall_timeout: self.settings.stall_timeout,
            progress: Some(progress_tx),
        };
        let result = match &batch {
            Batch::Audio { track, tmp_dir } => {
                let encoded = CancellationToken::new();
                let run = async {
                    let result = batch.run(&plan, control).await;
                    encoded.cancel();
                    result
                };
                let trickle =
                    self.trickle_audio(&job, &leases[0], *track, tmp_dir, &lost, &encoded);
                tokio::join!(run, trickle).0
            }
            _ => batch.run(&plan, control).await,
        };
        renewer.abort();
        self.metrics.units_in_flight.sub(leases.len() as i64);
        self.metrics
            .unit_encode_seconds
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        // The renewer may not have run since the lease was lost: a pod frozen
        // past its TTL (SIGSTOP, a paused VM) resumes with ffmpeg finished
        // and another pod's output of the unit already published. Asking
        // once more before the rename keeps a lost lease from publishing
        // over the taker's file; the renewal it makes also covers the
        // rename itself.
        if result.is_ok() && !self.leases_still_held(&leases).await {
            lost.store(true, Ordering::Relaxed);
        }
        match result {
            Ok(()) if !lost.load(Ordering::Relaxed) => self.publish(&job, &batch, &leases).await,
            result => {
                remove_outputs(&batch);
                let err = result.err();
                if lost.load(Ordering::Relaxed) || err.as_ref().is_some_and(|e| e.is_canceled()) {
                    // Not the unit's fault: give the leases back so others
                    // (or this pod later) take them now, not after the TTL.
                    for lease in &leases {
                        if let Err(e) = self.coord.release(lease, false).await {
                            tracing::warn!(unit = %lease.unit, "releasing lease: {e}");
                        }
                        let mut state = job.lock();
                        if state.units.get(&lease.unit) == Some(&UnitState::Running) {
                            state.units.insert(
                                lease.unit.clone(),
                                UnitState::Pending {
                                    not_before: Instant::now() + self.settings.held_recheck,
                                },
                            );
                        }
                    }
                    self.wake.notify_waiters();
                } else if let Some(err) = err {
                    self.fail_leases(&job, &leases, &err.to_string()).await;
                }
            }
        }
    }

    /// Renews every lease once; false (counted as a lost lease) when one is
    /// held by someone else now. A coordinator error says nothing about the
    /// lease, so it counts as held: publishing is safe, only wasteful.
    async fn leases_still_held(&self, leases: &[Lease]) -> bool {
        for lease in leases {
            if let Ok(false) = self.coord.renew(lease).await {
                tracing::warn!(unit = %lease.unit, "lease lost before publishing; dropping the output");
                self.metrics.leases_lost.inc();
                return false;
            }
        }
        true
    }

    /// Moves verified outputs into place and completes their leases.
    async fn publish(&self, job: &Arc<JobRun>, batch: &Batch, leases: &[Lease]) {
        match batch {
            Batch::Video { segment, outputs } => {
                for (output, lease) in outputs.iter().zip(leases) {
                    let target = job.layout.segment(&output.rendition.name, segment.index);
                    match self.publish_file(&output.tmp_path, &target) {
                        Ok(()) => self.complete(job, lease).await,
                        Err(err) => {
                            let _ = std::fs::remove_file(&output.tmp_path);
                            self.fail_leases(job, std::slice::from_ref(lease), &err.to_string())
                                .await
                        }
                    }
                }
            }
            Batch::Thumbnail { tmp_path } => {
                match self.publish_file(tmp_path, &job.layout.thumbnail()) {
                    Ok(()) => self.complete(job, &leases[0]).await,
                    Err(err) => self.fail_leases(job, leases, &err.to_string()).await,
                }
            }
            Batch::Audio { track, tmp_dir } => {
                let result = self.publish_audio(job, *track, tmp_dir);
                let _ = std::fs::remove_dir_all(tmp_dir);
                match result {
                    Ok(()) => self.complete(job, &leases[0]).await,
                    Err(err) => self.fail_leases(job, leases, &err).await,
                }
            }
        }
    }

    fn publish_file(
        &self,
        from: &std::path::Path,
        to: &std::path::Path,
    ) -> Result<(), StorageError> {
        let bytes = std::fs::metadata(from).map(|m| m.len()).unwrap_or(0);
        let seconds = storage::publish(from, to)?;
        self.metrics.storage_write_seconds.observe(seconds);
        self.metrics.bytes_written.inc_by(bytes);
        Ok(())
    }

    /// Publishes an audio rendition: every segment, then its playlist (the
    /// playlist's existence marks the unit done).
    fn publish_audio(
        &self,
        job: &JobRun,
        track: usize,
        tmp_dir: &std::path::Path,
    ) -> Result<(), String> {
        let playlist =
            hls::read_media_playlist(&tmp_dir.join("index.m3u8")).map_err(|e| e.to_string())?;
        let dir = job.layout.audio_dir(track);
        for segment in &playlist.segments {
            let name = hls::file_name(&segment.uri);
            self.publish_file(&tmp_dir.join(&name), &dir.join(&name))
                .map_err(|e| e.to_string())?;
        }
        job.layout
            .write_atomic(
                &job.layout.audio_playlist(track),
                &hls::audio_playlist(&playlist, true),
            )
            .map_err(|e| e.to_string())
    }

    /// While an audio track is encoded, publishes each segment ffmpeg has
    /// finished and a growing (EVENT) playlist, so the job plays after the
    /// track's first segment instead of after the whole track (minutes for
    /// a long source). Stops when the encode ends or the lease is lost; the
    /// unit is done only when `publish_audio` writes the final playlist.
    async fn trickle_audio(
        &self,
        job: &Arc<JobRun>,
        lease: &Lease,
        track: usize,
        tmp_dir: &std::path::Path,
        lost: &AtomicBool,
        encoded: &CancellationToken,
    ) {
        let mut published = 0;
        loop {
            tokio::select! {
                _ = encoded.cancelled() => return,
                _ = tokio::time::sleep(AUDIO_TRICKLE_INTERVAL) => {}
            }
            if lost.load(Ordering::Relaxed) {
                return;
            }
            // ffmpeg rewrites its playlist after each segment (whole, by
            // rename); one that has ENDLIST is left to the final publish.
            let Ok(playlist) = hls::read_media_playlist(&tmp_dir.join("index.m3u8")) else {
                continue;
            };
            if playlist.end_list || playlist.segments.len() <= published {
                continue;
            }
            // As before the final publish: a pod resumed after its lease
            // expired must not publish over the taker's files (the renewer
            // stops ffmpeg at its next renewal).
            if !self.leases_still_held(std::slice::from_ref(lease)).await {
                lost.store(true, Ordering::Relaxed);
                return;
            }
            match self.publish_audio_so_far(job, track, tmp_dir, &playlist, published) {
                Ok(()) => {
                    published = playlist.segments.len();
                    self.publish_playlists(job).await;
                }
                // Not fatal: the final publish after the encode decides.
                Err(err) => {
                    tracing::debug!(job = %job.id(), track, "publishing audio so far: {err}")
                }
            }
        }
    }

    /// Publishes the segments of ffmpeg's growing `playlist` beyond the
    /// first `published` (copies: ffmpeg's folder stays whole for the final
    /// check), then our EVENT playlist listing them all.
    fn publish_audio_so_far(
        &self,
        job: &JobRun,
        track: usize,
        tmp_dir: &std::path::Path,
        playlist: &m3u8_rs::MediaPlaylist,
        published: usize,
    ) -> Result<(), String> {
        let dir = job.layout.audio_dir(track);
        for segment in &playlist.segments[published..] {
            let name = hls::file_name(&segment.uri);
            let from = tmp_dir.join(&name);
            let bytes =
                std::fs::read(&from).map_err(|e| format!("reading {}: {e}", from.display()))?;
            job.layout
                .write_atomic(&dir.join(&name), &bytes)
                .map_err(|e| e.to_string())?;
            self.metrics.bytes_written.inc_by(bytes.len() as u64);
        }
        let target = job.layout.audio_playlist(track);
        // Another pod may have finished the track (after a takeover): never
        // replace a final playlist with a growing one.
        if !hls::is_finished_playlist(&target) {
            job.layout
                .write_atomic(&target, &hls::audio_playlist(playlist, false))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn complete(&self, job: &Arc<JobRun>, lease: &Lease) {
        match self.coord.complete(lease).await {
            Ok(Completion::Completed) => {}
            Ok(Completion::CompletedAfterLoss) => self.metrics.completed_after_loss.inc(),
            Err(err) => tracing::warn!(unit = %lease.unit, "completing lease: {err}"),
        }
        self.record_success();
        let rendition = lease.unit.rendition().unwrap_or("");
        self.metrics
            .units_completed
            .with_label_values(&[lease.unit.kind(), rendition])
            .inc();
        self.unit_done(job, &lease.unit).await;
    }

    /// Records a failed attempt for each lease: retry later with backoff, or
    /// fail the unit for good after `max_attempts`.
    async fn fail_leases(&self, job: &Arc<JobRun>, leases: &[Lease], error: &str) {
        if leases.len() > 1 {
            let mut state = job.lock();
            state
                .solo
                .extend(leases.iter().map(|lease| lease.unit.clone()));
        }
        for lease in leases {
            let attempts = match self.coord.release(lease, true).await {
                Ok(attempts) => attempts,
                Err(err) => {
                    // The count is unknown; a coordination outage must not
                    // fail the unit for good, so retry it with backoff.
                    tracing::warn!(unit = %lease.unit, "releasing failed lease: {err}");
                    1
                }
            };
            let rendition = lease.unit.rendition().unwrap_or("");
            self.metrics
                .units_failed
                .with_label_values(&[lease.unit.kind(), rendition])
                .inc();
            self.record_failure(job.id(), &lease.unit);
            let permanent = attempts >= self.settings.max_attempts;
            tracing::warn!(job = %job.id(), unit = %lease.unit, attempts, permanent, "unit failed: {error}");
            {
                let mut state = job.lock();
                if permanent {
                    mark_failed(&mut state, &lease.unit, error);
                } else {
                    let backoff = self
                        .settings
                        .retry_backoff
                        .saturating_mul(1 << (attempts.saturating_sub(1)).min(16))
                        .min(MAX_BACKOFF);
                    state.units.insert(
                        lease.unit.clone(),
                        UnitState::Pending {
                            not_before: Instant::now() + backoff,
                        },
                    );
                }
            }
            let _ = self.events.send(WorkerEvent::UnitFailed {
                job: job.id(),
                unit: lease.unit.clone(),
                error: error.to_string(),
                attempts,
                permanent,
            });
        }
        self.maybe_finish(job).await;
        self.wake.notify_waiters();
    }

    async fn unit_done(&self, job: &Arc<JobRun>, unit: &Unit) {
        {
            let mut state = job.lock();
            if state.units.get(unit) == Some(&UnitState::Done) {
                return;
            }
            state.units.insert(unit.clone(), UnitState::Done);
            state.done += 1;
            if let Unit::Video { rendition, .. } = unit {
                advance_contiguous(&mut state, rendition);
            }
        }
        let _ = self.events.send(WorkerEvent::UnitDone {
            job: job.id(),
            unit: unit.clone(),
        });
        if *unit == Unit::Thumbnail {
            let _ = self
                .events
                .send(WorkerEvent::ThumbnailReady { job: job.id() });
        }
        self.publish_playlists(job).await;
        self.maybe_finish(job).await;
    }

    /// Rewrites the job's playlists from the current availability; sends
    /// `Playable` the first time the master playlist plays.
    async fn publish_playlists(&self, job: &Arc<JobRun>) {
        let _serial = job.publishing.lock().await;
        let availability = job.availability();
        let complete = job.lock().finished;
        match job.packager.update(&availability, complete).await {
            Ok(true) if !job.plays.swap(true, Ordering::Relaxed) => {
                let _ = self.events.send(WorkerEvent::Playable { job: job.id() });
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(job = %job.id(), "writing playlists: {err}"),
        }
    }

    /// Ends the job when every unit is done or failed.
    async fn maybe_finish(&self, job: &Arc<JobRun>) {
        let outcome = {
            let state = job.lock();
            if state.finished
                || state
                    .units
                    .values()
                    .any(|s| !matches!(s, UnitState::Done | UnitState::Failed(_)))
            {
                return;
            }
            outcome_of(&job.plan, &state)
        };
        self.finish(job, outcome).await;
    }

    async fn finish(&self, job: &Arc<JobRun>, outcome: JobOutcome) {
        {
            let mut state = job.lock();
            if state.finished {
                return;
            }
            state.finished = true;
        }
        if outcome != JobOutcome::Canceled {
            self.publish_playlists(job).await;
        }
        self.lock_jobs().retain(|j| j.id() != job.id());
        if let Err(err) = self.coord.forget(job.id()).await {
            tracing::warn!(job = %job.id(), "forgetting job state: {err}");
        }
        // send_replace stores the value even when nobody is waiting yet.
        job.outcome.send_replace(Some(outcome.clone()));
        let _ = self.events.send(WorkerEvent::Finished {
            job: job.id(),
            outcome,
        });
    }
}

/// Learns what other pods did: a unit announced done whose output is on
/// storage is done here too (progress, playlists, the job's end); a unit
/// given back (a pod shutting down, a failure) is claimable now, not after
/// the next recheck.
async fn follow_unit_notices(
    shared: std::sync::Weak<Shared>,
    mut notices: broadcast::Receiver<UnitNotice>,
) {
    loop {
        let notice = match notices.recv().await {
            Ok(notice) => notice,
            // Missed notices are found when the units are next looked at
            // (storage is checked before every claim).
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let job = shared
            .lock_jobs()
            .iter()
            .find(|j| j.id() == notice.job)
            .cloned();
        let Some(job) = job else {
            continue;
        };
        if !job.plan.contains(&notice.unit) {
            continue;
        }
        if notice.done {
            if job.layout.is_done(&notice.unit) {
                shared.unit_done(&job, &notice.unit).await;
            }
        } else {
            let mut state = job.lock();
            if let Some(UnitState::Pending { .. }) = state.units.get(&notice.unit) {
                state.units.insert(
                    notice.unit.clone(),
                    UnitState::Pending {
                        not_before: Instant::now(),
                    },
                );
            }
            drop(state);
            shared.wake.notify_waiters();
        }
    }
}

/// Reserves the next ready unit of `job` (and, for a video segment, every
/// other ready rendition of the same segment) for this worker.
fn reserve_next(job: &JobRun) -> Option<Vec<Unit>> {
    let now = Instant::now();
    let mut state = job.lock();
    // Move the cursor past the finished prefix so scans stay short.
    while state.cursor < state.order.len()
        && matches!(
            state.units.get(&state.order[state.cursor]),
            Some(UnitState::Done | UnitState::Failed(_))
        )
    {
        state.cursor += 1;
    }
    let ready = |state: &RunState, unit: &Unit| matches!(state.units.get(unit), Some(UnitState::Pending { not_before }) if *not_before <= now);
    // Prefetched units come first and alone: they exist for latency.
    let RunState { units, wanted, .. } = &mut *state;
    wanted.retain(|unit| {
        matches!(
            units.get(unit),
            Some(UnitState::Pending { .. } | UnitState::Running)
        )
    });
    if let Some(unit) = state
        .wanted
        .iter()
        .find(|unit| ready(&state, unit))
        .cloned()
    {
        state.wanted.remove(&unit);
        state.units.insert(unit.clone(), UnitState::Running);
        return Some(vec![unit]);
    }
    let eager = job.options.eager_video;
    // Until the job plays (audio and the lowest rendition's segment 0 are
    // on storage), nothing else starts: on a busy machine the rest of the
    // ladder would only slow down the few encodes a player is waiting for.
    let lowest_first = job.plan.renditions.first().map(|r| Unit::Video {
        rendition: r.name.clone(),
        index: 0,
    });
    // A unit that failed for good opens the gate too: the job goes on.
    let settled = |unit: &Unit| {
        matches!(
            state.units.get(unit),
            Some(UnitState::Done | UnitState::Failed(_))
        )
    };
    let playable = job.plays.load(Ordering::Relaxed)
        || (lowest_first.as_ref().is_none_or(settled)
            && job
                .plan
                .audio
                .iter()
                .all(|a| settled(&Unit::Audio { track: a.track })));
    let first = state.order[state.cursor..]
        .iter()
        .find(|unit| {
            let wanted_now = match unit {
                Unit::Video { .. } => eager && (playable || Some(*unit) == lowest_first.as_ref()),
                _ => true,
            };
            wanted_now && ready(&state, unit)
        })?
        .clone();
    let lowest = job.plan.renditions.first().map(|r| r.name.as_str());
    let units = match &first {
        Unit::Video { .. } if state.solo.contains(&first) => vec![first],
        // The lowest rendition's first segment is all a player needs to
        // start: encode it alone so the job is playable after one small
        // encode, not after the whole ladder's first segment.
        Unit::Video {
            rendition,
            index: 0,
        } if Some(rendition.as_str()) == lowest => vec![first],
        Unit::Video { index, .. } => job
            .plan
            .renditions
            .iter()
            .map(|r| Unit::Video {
                rendition: r.name.clone(),
                index: *index,
            })
            .filter(|unit| ready(&state, unit) && !state.solo.contains(unit))
            .collect(),
        _ => vec![first],
    };
    for unit in &units {
        state.units.insert(unit.clone(), UnitState::Running);
    }
    Some(units)
}

fn advance_contiguous(state: &mut RunState, rendition: &str) {
    let mut count = state.contiguous.get(rendition).copied().unwrap_or(0);
    loop {
        let unit = Unit::Video {
            rendition: rendition.to_string(),
            index: count,
        };
        if state.units.get(&unit) != Some(&UnitState::Done) {
            break;
        }
        count += 1;
    }
    state.contiguous.insert(rendition.to_string(), count);
}

/// Marks a unit failed for good; a failed video unit fails its rendition,
/// so the rest of that rendition is not attempted.
fn mark_failed(state: &mut RunState, unit: &Unit, error: &str) {
    state
        .units
        .insert(unit.clone(), UnitState::Failed(error.to_string()));
    state.failures.push(format!("{unit}: {error}"));
    if let Unit::Video { rendition, .. } = unit {
        state.failed_renditions.insert(rendition.clone());
        let reason = format!("rendition {rendition} failed");
        for (other, status) in state.units.iter_mut() {
            if matches!(other, Unit::Video { rendition: r, .. } if r == rendition)
                && matches!(status, UnitState::Pending { .. })
            {
                *status = UnitState::Failed(reason.clone());
            }
        }
    }
}

/// The outcome of a job whose units are all done or failed.
fn outcome_of(plan: &Plan, state: &RunState) -> JobOutcome {
    if state.failures.is_empty() {
        return JobOutcome::Done;
    }
    let reason = state.failures.join("; ");
    let audio_failed = plan.audio.iter().any(|a| {
        matches!(
            state.units.get(&Unit::Audio { track: a.track }),
            Some(UnitState::Failed(_))
        )
    });
    // DESIGN: a failed rendition leaves the job partial only if a complete
    // rendition below it exists (players start low); otherwise it failed.
    let lowest_failed = plan
        .renditions
        .iter()
        .find(|r| state.failed_renditions.contains(&r.name));
    let complete_below = match lowest_failed {
        None => true,
        Some(failed) => plan
            .renditions
            .iter()
            .take_while(|r| r.name != failed.name)
            .any(|r| !state.failed_renditions.contains(&r.name)),
    };
    if audio_failed || !complete_below {
        JobOutcome::Failed { reason }
    } else {
        JobOutcome::Partial { reason }
    }
}

/// The batch for a set of leases, with in-progress paths named per token.
fn build_batch(job: &JobRun, leases: &[Lease]) -> Result<Batch, StorageError> {
    let layout = &job.layout;
    let tmp_dir = layout.tmp_dir();
    std::fs::create_dir_all(&tmp_dir).map_err(|e| StorageError::new("creating", &tmp_dir, e))?;
    match &leases[0].unit {
        Unit::Audio { track } => {
            let dir = layout.tmp_path(&leases[0].token, &format!("audio-{track}"));
            std::fs::create_dir_all(&dir).map_err(|e| StorageError::new("creating", &dir, e))?;
            Ok(Batch::Audio {
                track: *track,
                tmp_dir: dir,
            })
        }
        Unit::Thumbnail => Ok(Batch::Thumbnail {
            tmp_path: layout.tmp_path(&leases[0].token, "thumbnail.webp"),
        }),
        Unit::Video { index, .. } => {
            let segment = job.plan.segments[*index].clone();
            let outputs = leases
                .iter()
                .filter_map(|lease| match &lease.unit {
                    Unit::Video { rendition, index } => Some(VideoOutput {
                        rendition: job.plan.rendition(rendition)?.clone(),
                        tmp_path: layout.tmp_path(
                            &lease.token,
                            &format!("{rendition}-{}", storage::segment_name(*index)),
                        ),
                    }),
                    _ => None,
                })
                .collect();
            Ok(Batch::Video { segment, outputs })
        }
    }
}

/// Removes a failed batch's in-progress files.
fn remove_outputs(batch: &Batch) {
    match batch {
        Batch::Video { outputs, .. } => {
            for output in outputs {
                let _ = std::fs::remove_file(&output.tmp_path);
            }
        }
        Batch::Audio { tmp_dir, .. } => {
            let _ = std::fs::remove_dir_all(tmp_dir);
        }
        Batch::Thumbnail { tmp_path } => {
            let _ = std::fs::remove_file(tmp_path);
        }
    }
}

/// Renews every lease each TTL/3 while ffmpeg makes progress. A lease found
/// lost cancels the run at once.
async fn renew_leases(
    coord: Arc<dyn Coordinator>,
    metrics: Arc<Metrics>,
    leases: Vec<Lease>,
    progress: watch::Receiver<Instant>,
    stall_timeout: Duration,
    run: CancellationToken,
    lost: Arc<std::sync::atomic::AtomicBool>,
) {
    let period = (coord.claim_ttl() / 3).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = run.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        // A stalled encoder does not keep its lease alive; the runner kills
        // it, and if it cannot, the lease expires and others take over.
        if progress.borrow().elapsed() > stall_timeout {
            continue;
        }
        for lease in &leases {
            match coord.renew(lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(unit = %lease.unit, "lease lost; stopping its encode");
                    metrics.leases_lost.inc();
                    lost.store(true, Ordering::Relaxed);
                    run.cancel();
                    return;
                }
                Err(err) => tracing::warn!(unit = %lease.unit, "renewing lease: {err}"),
            }
        }
    }
}
