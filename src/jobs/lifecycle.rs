//! A job's life on this pod: submission, start (probe and plan, or take
//! the submitting pod's plan from the registry), status changes, the end
//! with its event and webhook, and cancellation.
//!
//! Every status change goes through the registry's compare-and-set first
//! ([`JobManager::decide`]), so exactly one pod announces it; the order of
//! statuses and the once-only end are the rules of `state.rs`. It
//! starts work only through [`prepare`] and the worker; it never runs ffmpeg
//! and never deletes files but through a purge the user asked for.

use super::model::{JobEventKind, JobMode, JobRecord, JobStatus};
use super::progress::percent;
use super::request::SubmitRequest;
use super::state::{may_move, Decision};
use super::view::JobView;
use super::{now_ms, JobEntry, JobError, JobManager};
use crate::plan::Plan;
use crate::playlists::Listing;
use crate::prepare::prepare;
use crate::storage::StorageError;
use crate::sync::{lock, write};
use crate::worker::{JobOptions, JobOutcome, WorkerError};
use crate::JobId;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long an adopted job waits for the submitting pod's plan.
const ADOPT_PLAN_WAIT: Duration = Duration::from_secs(30);
/// How often that wait looks again when no notice comes (one was missed).
const PLAN_RECHECK: Duration = Duration::from_millis(500);

impl JobManager {
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
            warnings: Vec::new(),
        };
        let layout = self.storage.job(record.id);
        std::fs::create_dir_all(layout.dir())
            .map_err(|e| StorageError::new("creating", layout.dir(), e))?;
        self.persist(&record)?;
        let entry = JobEntry::new(record.clone(), true);
        write(&self.jobs).insert(record.id, entry.clone());
        self.announce(&record).await;
        self.emit(&entry, JobEventKind::Queued).await;
        self.spawn_start(entry.clone());
        Ok(self.view(&entry))
    }

    pub(super) fn spawn_start(self: &Arc<Self>, entry: Arc<JobEntry>) {
        let manager = self.clone();
        tokio::spawn(async move { manager.start_job(entry).await });
    }

    /// Probes and plans (or reads `job.json`, or takes the plan its planner
    /// published), then hands the job to the worker.
    async fn start_job(self: Arc<Self>, entry: Arc<JobEntry>) {
        let shared_plan = if entry.created_here {
            None
        } else {
            self.wait_for_plan(&entry).await
        };
        let Ok(_permit) = self.prepare_slots.acquire().await else {
            return;
        };
        let record = entry.record();
        if record.status.is_terminal() {
            return;
        }
        let layout = self.storage.job(record.id);
        let plan = match shared_plan {
            Some(plan) => Arc::new(plan),
            None => {
                let prepared = prepare(
                    &layout,
                    record.spec.source.clone(),
                    record.spec.settings.clone(),
                    record.id,
                    &self.settings.fetch,
                )
                .await;
                match prepared {
                    Ok(prepared) => {
                        if entry.created_here && !prepared.resumed {
                            self.share_plan(&prepared.plan).await;
                        }
                        Arc::new(prepared.plan)
                    }
                    Err(err) => {
                        self.end(&entry, JobStatus::Failed, Some(err.to_string()))
                            .await;
                        return;
                    }
                }
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
        self.set_status(&entry, JobStatus::Processing).await;
        match self.worker.add_job(plan, layout, options).await {
            Ok(run) => {
                *lock(&entry.run) = Some(run.clone());
                entry.started.notify_waiters();
                // The worker may have finished it at once (everything was
                // on storage already).
                if let Some(outcome) = run.outcome() {
                    self.on_finished(&entry, outcome).await;
                }
            }
            // Started here already (a second start is a bug, not the job's
            // failure): that run goes on.
            Err(err @ WorkerError::AlreadyRunning(_)) => {
                tracing::warn!(job = %record.id, "{err}");
            }
            Err(err) => {
                self.end(&entry, JobStatus::Failed, Some(err.to_string()))
                    .await
            }
        }
    }

    /// An adopted job's plan is made by the pod it was submitted to: wait a
    /// while for it rather than probe the source again. The planner's
    /// `planned` notice wakes the wait, and the plan is read from the
    /// registry; `job.json` on storage is looked for too (the planner's
    /// Redis write may have failed). `None` means: prepare from storage,
    /// which probes after all if the planner died first (the same source
    /// and settings give the same plan, and `job.json` is published
    /// no-replace: the first plan written is the job's).
    async fn wait_for_plan(&self, entry: &JobEntry) -> Option<Plan> {
        let id = entry.record().id;
        let path = self.storage.job(id).job_json();
        let deadline = tokio::time::Instant::now() + ADOPT_PLAN_WAIT;
        loop {
            let notified = entry.planned.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(plan) = self.published_plan(id).await {
                return Some(plan);
            }
            if path.is_file() || entry.record().status.is_terminal() {
                return None;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(PLAN_RECHECK) => {}
                _ = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    /// The plan the job's planner published in the registry, if it did.
    async fn published_plan(&self, id: JobId) -> Option<Plan> {
        let registry = self.registry.as_ref()?;
        let json = registry.plan(id).await.ok()??;
        match serde_json::from_str::<Plan>(&json) {
            Ok(plan) if plan.job_id == id => Some(plan),
            Ok(_) => None,
            Err(err) => {
                tracing::warn!(job = %id, "the published plan does not read: {err}");
                None
            }
        }
    }

    /// Publishes a plan this pod just made, so the pods that adopted the job
    /// start on it within one notice.
    async fn share_plan(&self, plan: &Plan) {
        let Some(registry) = &self.registry else {
            return;
        };
        let published = match serde_json::to_string(plan) {
            Ok(json) => registry
                .publish_plan(plan.job_id, &json)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(err) = published {
            // The others find job.json on storage instead.
            tracing::warn!(job = %plan.job_id, "publishing the plan: {err}");
        }
    }

    /// Moves a job to a non-terminal status, once cluster-wide, with its
    /// event.
    async fn set_status(&self, entry: &JobEntry, status: JobStatus) {
        let mut next = entry.record();
        if !may_move(next.status, status) {
            return;
        }
        next.status = status;
        next.updated_at_ms = now_ms();
        if self.decide(&next).await == Decision::Lost {
            return; // another pod announced it; its event updates us
        }
        self.update(entry, |r| {
            r.advance(status);
        });
        self.emit(entry, status.into()).await;
    }

    /// Moves a job to a terminal status with its event and webhook, once:
    /// once on this pod (its [`Ending`](super::state::Ending)), and once
    /// cluster-wide (the registry's compare-and-set picks the pod that
    /// announces it). While the registry cannot be asked, the end is this
    /// pod's own: its streams get the end event now, and the webhook waits
    /// until the registry says which pod ended the job
    /// ([`JobManager::confirm_ends`]).
    pub(super) async fn end(&self, entry: &JobEntry, status: JobStatus, error: Option<String>) {
        let progress = lock(&entry.run).as_ref().map(|run| percent(run.progress()));
        if entry.record().status.is_terminal() {
            return;
        }
        // Every pod's worker keeps its warnings in Redis before it
        // publishes the filled unit, so once every unit is done they are
        // all there: the terminal event and webhook carry every warning,
        // whichever pod ends the job (while Redis is reachable).
        self.gather_warnings(entry).await;
        let mut next = entry.record();
        if next.status.is_terminal() || !lock(&entry.ending).begin() {
            return;
        }
        next.status = status;
        next.error = error.clone();
        if let Some(progress) = progress {
            next.progress = progress;
        }
        next.updated_at_ms = now_ms();
        let decision = self.decide(&next).await;
        if decision == Decision::Lost {
            lock(&entry.ending).decided(decision);
            self.follow_registry_record(entry).await;
            // The winner's end event may have gone by while this pod was
            // not listening: the registry's history has it.
            self.catch_up_job(entry).await;
            entry.started.notify_waiters();
            return;
        }
        let moved = {
            let mut moved = false;
            self.update(entry, |r| {
                moved = r.advance(status);
                if moved {
                    r.error = error;
                    if let Some(progress) = progress {
                        r.progress = progress;
                    }
                }
            });
            moved
        };
        if !moved && decision == Decision::Unknown {
            // Another pod's end event arrived meanwhile: it was the end.
            lock(&entry.ending).abandon();
            return;
        }
        // Won: the registry records this pod's end, which the other pods
        // hear from this pod's event, whatever arrived here meanwhile.
        lock(&entry.ending).decided(decision);
        entry.started.notify_waiters();
        self.emit(entry, status.into()).await;
        if decision == Decision::Won {
            if status != JobStatus::Canceled {
                self.notify_webhook(entry, status.into());
            }
            self.retire(next.id).await;
        }
    }

    pub(super) async fn on_finished(&self, entry: &JobEntry, outcome: JobOutcome) {
        match outcome {
            JobOutcome::Done => self.end(entry, JobStatus::Done, None).await,
            JobOutcome::Partial { reason } => {
                self.end(entry, JobStatus::Partial, Some(reason)).await
            }
            JobOutcome::Failed { reason } => self.end(entry, JobStatus::Failed, Some(reason)).await,
            JobOutcome::Canceled => self.end(entry, JobStatus::Canceled, None).await,
        }
    }

    /// Starts the webhook of `event` if the job has a callback URL.
    pub(super) fn notify_webhook(&self, entry: &JobEntry, event: JobEventKind) {
        if let Some(url) = entry.record().spec.callback_url {
            self.webhooks
                .deliver(url, event.as_str(), &self.view(entry));
        }
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
            self.tell_cancel(id).await;
            self.worker.cancel_job(id).await;
        }
        let view = self.view(&entry);
        if purge {
            write(&self.jobs).remove(&id);
            self.storage.job(id).remove_all()?;
        }
        Ok(view)
    }
}
