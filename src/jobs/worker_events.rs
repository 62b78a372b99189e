//! The worker's events turned into job statuses and job events: a unit done
//! becomes (at most one per 2 % step, cluster-wide) a `progress` event, the
//! thumbnail `thumbnail_ready`, the first playable package `playable`, new
//! warnings the record's and (once cluster-wide) a `warning` event, the
//! worker's outcome the job's end.
//!
//! It reads what the worker reports and never drives the worker; a unit's
//! failure is the worker's to retry and count, and reaches the job only
//! through the worker's outcome.

use super::model::{JobEventKind, JobStatus};
use super::progress::{percent, step_to_report};
use super::registry::ProgressStep;
use super::state::Decision;
use super::{now_ms, JobEntry, JobManager};
use crate::sync::lock;
use crate::warning::{self, JobWarning};
use crate::worker::WorkerEvent;
use std::sync::Weak;
use tokio::sync::broadcast;

impl JobManager {
    async fn on_worker_event(&self, event: WorkerEvent) {
        let id = match &event {
            WorkerEvent::UnitDone { job, .. }
            | WorkerEvent::UnitFailed { job, .. }
            | WorkerEvent::ThumbnailReady { job }
            | WorkerEvent::Playable { job }
            | WorkerEvent::Warnings { job, .. }
            | WorkerEvent::Finished { job, .. } => *job,
        };
        let Some(entry) = self.entry(id) else {
            return;
        };
        match event {
            WorkerEvent::UnitDone { .. } => self.report_progress(&entry).await,
            // Retried or counted by the worker; the job hears the outcome.
            WorkerEvent::UnitFailed { .. } => {}
            WorkerEvent::ThumbnailReady { .. } => {
                if !entry.record().status.is_terminal()
                    && self.first_to_report(id, JobEventKind::ThumbnailReady).await
                {
                    self.emit(&entry, JobEventKind::ThumbnailReady).await;
                }
            }
            WorkerEvent::Playable { .. } => self.on_playable(&entry).await,
            WorkerEvent::Warnings { warnings, .. } => self.on_warnings(&entry, warnings).await,
            WorkerEvent::Finished { outcome, .. } => self.on_finished(&entry, outcome).await,
        }
    }

    /// Sends a `progress` event when this pod's progress entered a 2 % step
    /// above the highest progress known and the cluster lets it report it.
    async fn report_progress(&self, entry: &JobEntry) {
        let Some(run) = lock(&entry.run).clone() else {
            return;
        };
        let own = percent(run.progress());
        let record = entry.record();
        if record.status.is_terminal() {
            return;
        }
        let Some(step) = step_to_report(own, record.progress) else {
            return;
        };
        let value = match &self.registry {
            None => own,
            Some(registry) => match registry.advance_progress(record.id, step, own).await {
                Ok(ProgressStep::Report(value)) => value,
                Ok(ProgressStep::Reported(value)) => {
                    // Another pod reported this step (its event brings it
                    // here too): known from now on, not asked again.
                    let mut record = lock(&entry.record);
                    record.progress = record.progress.max(value);
                    return;
                }
                // Redis away: this pod reports alone.
                Err(_) => own,
            },
        };
        self.update(entry, |r| r.progress = r.progress.max(value));
        // The value the cluster agreed on, so that progress events never go
        // back whichever pod sends them.
        let mut view = self.view(entry);
        view.progress = value;
        self.emit_view(entry, JobEventKind::Progress, view).await;
    }

    /// Warnings this pod's worker made (and kept in Redis itself): into
    /// the record (saved), then one `warning` event by whichever pod is
    /// first to announce them.
    async fn on_warnings(&self, entry: &JobEntry, warnings: Vec<JobWarning>) {
        let record = entry.record();
        let new: Vec<JobWarning> = warnings
            .into_iter()
            .filter(|w| !record.warnings.iter().any(|known| known.key() == w.key()))
            .collect();
        if new.is_empty() {
            return;
        }
        self.update(entry, |r| {
            warning::merge(&mut r.warnings, new.iter().cloned());
        });
        if record.status.is_terminal() {
            return;
        }
        // A batch's warnings come together: one flag for all of them (a
        // second pod that filled the same units, while Redis was away,
        // has the same first key).
        if self.first_to_warn(record.id, &new[0].key()).await {
            self.emit(entry, JobEventKind::Warning).await;
        }
    }

    async fn on_playable(&self, entry: &JobEntry) {
        if entry.record().status.is_terminal() {
            // Finished in the same breath: say it plays anyway.
            self.update(entry, |r| r.playable = true);
            return;
        }
        // A resumed job was announced playable before the restart: its
        // subscribers hear it again, its webhook does not.
        let announced = entry.record().playable;
        let mut next = entry.record();
        next.playable = true;
        next.status = JobStatus::Playable;
        next.updated_at_ms = now_ms();
        let decision = self.decide(&next).await;
        if decision == Decision::Lost {
            lock(&entry.record).playable = true;
            return;
        }
        self.update(entry, |r| {
            r.playable = true;
            r.advance(JobStatus::Playable);
        });
        self.emit(entry, JobEventKind::Playable).await;
        // Only the pod that recorded the change in the registry sends the
        // webhook: while Redis is away another pod may make the same change.
        if !announced && decision == Decision::Won {
            self.notify_webhook(entry, JobEventKind::Playable);
        }
    }
}

/// Follows the worker's events for as long as the manager lives.
pub(super) async fn follow_worker(
    manager: Weak<JobManager>,
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
