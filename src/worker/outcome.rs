//! What follows a unit's attempt: completing its lease, or counting a
//! failed attempt (retry with backoff, or fail for good); then the job's
//! playlists and, once every unit is settled, the job's end.

use super::job_run::JobRun;
use super::{JobOutcome, Shared, UnitFailure, WorkerEvent};
use crate::coord::{Completion, Lease};
use crate::plan::Unit;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait between retries of a failed unit.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl Shared {
    /// Completes a published unit's lease and records the unit done; one
    /// `info` line per unit this pod made (`seconds`: its batch's encode),
    /// so `docker-compose logs` / `kubectl logs` show who did what.
    pub(super) async fn complete(&self, job: &Arc<JobRun>, lease: &Lease, seconds: f64) {
        match self.coord.complete(lease).await {
            Ok(Completion::Completed) => {}
            Ok(Completion::CompletedAfterLoss) => self.metrics.completed_after_loss.inc(),
            Err(err) => tracing::warn!(unit = %lease.unit, "completing lease: {err}"),
        }
        tracing::info!(
            job = %job.id(),
            unit = %lease.unit,
            seconds = (seconds * 1000.0).round() / 1000.0,
            worker = %lease.worker_id,
            "unit done"
        );
        self.circuit.record_success();
        let rendition = lease.unit.rendition().unwrap_or("");
        self.metrics
            .units_completed
            .with_label_values(&[lease.unit.kind(), rendition])
            .inc();
        self.unit_done(job, &lease.unit).await;
    }

    /// Records a failed attempt for each lease: retry later with backoff, or
    /// fail the unit for good after `max_attempts` (at once for a failure
    /// no retry can mend, such as a source with no decodable frame there).
    pub(super) async fn fail_leases(
        &self,
        job: &Arc<JobRun>,
        leases: &[Lease],
        failure: &UnitFailure,
    ) {
        if leases.len() > 1 {
            job.book()
                .make_solo(leases.iter().map(|lease| lease.unit.clone()));
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
            // A source that cannot be decoded says nothing about this pod.
            if !failure.kind.is_source_fault() {
                self.circuit.record_failure(job.id(), &lease.unit);
            }
            let permanent =
                failure.kind.is_source_fault() || attempts >= self.settings.run.max_attempts;
            tracing::warn!(job = %job.id(), unit = %lease.unit, attempts, permanent, kind = ?failure.kind, "unit failed: {failure}");
            if permanent {
                job.book().fail(&lease.unit, &failure.message);
            } else {
                let backoff = self
                    .settings
                    .run
                    .retry_backoff
                    .saturating_mul(1 << (attempts.saturating_sub(1)).min(16))
                    .min(MAX_BACKOFF);
                job.book().retry_at(&lease.unit, Instant::now() + backoff);
            }
            let _ = self.events.send(WorkerEvent::UnitFailed {
                job: job.id(),
                unit: lease.unit.clone(),
                failure: failure.clone(),
                attempts,
                permanent,
            });
        }
        self.maybe_finish(job).await;
        self.wake.notify_waiters();
    }

    /// Records a unit done (by this pod or another): events, playlists, and
    /// the job's end if it was the last.
    pub(super) async fn unit_done(&self, job: &Arc<JobRun>, unit: &Unit) {
        if !job.book().mark_done(unit) {
            return;
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
    pub(super) async fn publish_playlists(&self, job: &Arc<JobRun>) {
        let _serial = job.publishing.lock().await;
        let availability = job.availability();
        let complete = job.book().is_finished();
        match job.packager.update(&availability, complete).await {
            Ok(true) if !job.plays.swap(true, Ordering::Relaxed) => {
                let _ = self.events.send(WorkerEvent::Playable { job: job.id() });
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(job = %job.id(), "writing playlists: {err}"),
        }
    }

    /// Ends the job when every unit is done or failed.
    pub(super) async fn maybe_finish(&self, job: &Arc<JobRun>) {
        let outcome = {
            let book = job.book();
            if book.is_finished() || !book.all_settled() {
                return;
            }
            book.outcome(&job.plan)
        };
        self.finish(job, outcome).await;
    }

    /// Ends the job with `outcome`, once: final playlists (unless
    /// canceled), off the worker's list, the coordinator's state forgotten,
    /// the outcome announced.
    pub(super) async fn finish(&self, job: &Arc<JobRun>, outcome: JobOutcome) {
        if !job.book().finish() {
            return;
        }
        if outcome != JobOutcome::Canceled {
            self.publish_playlists(job).await;
        }
        crate::sync::lock(&self.jobs).retain(|j| j.id() != job.id());
        if let Err(err) = self.coord.forget(job.id()).await {
            tracing::warn!(job = %job.id(), "forgetting job state: {err}");
        }
        tokio::spawn(
            super::tmp_sweep::FinishedSweep {
                coord: self.coord.clone(),
                layout: job.layout.clone(),
                job: job.id(),
                min_age: self.settings.run.stall_timeout,
                shutdown: self.shutdown.clone(),
            }
            .run(),
        );
        // send_replace stores the value even when nobody is waiting yet.
        job.outcome.send_replace(Some(outcome.clone()));
        let _ = self.events.send(WorkerEvent::Finished {
            job: job.id(),
            outcome,
        });
    }
}
