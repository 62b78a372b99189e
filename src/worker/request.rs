//! On-demand units: a player asked for a file that does not exist yet.
//!
//! [`Worker::request`] claims the unit now if it is free (ahead of the
//! slots' order) or waits for whoever makes it: woken by its completion
//! notice or its claim's expiry, never by a poll, and never giving up just
//! because the holder died. Concurrent requests for one unit start one
//! encode; the encode runs on its own task, so a requester that goes away
//! does not abandon it.

use super::units::UnitState;
use super::{Shared, Worker};
use crate::coord::{ClaimOutcome, WaitOutcome};
use crate::plan::Unit;
use crate::JobId;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

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

impl Worker {
    /// Makes sure `unit` of a running job exists on storage, ahead of
    /// background work: claims it now if it is free, or waits for whoever is
    /// making it. The next `prefetch` segments of the same rendition are
    /// queued first. `Ok` also when another pod published it but this pod's
    /// storage does not show it yet (a network file system's cache): the
    /// caller then looks the file up with
    /// [`revalidate`](crate::storage::revalidate).
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
            let next = index + 1..(index + 1 + prefetch).min(job.plan.segments.len());
            job.book().want(next.map(|index| Unit::Video {
                rendition: rendition.clone(),
                index,
            }));
        }
        shared.wake.notify_waiters();
        loop {
            if job.layout.is_done(unit) {
                return Ok(());
            }
            let state = job.book().state(unit).cloned();
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
                    job.book().reserve(unit);
                    if let Some(claimed) = shared.claim(&job, vec![unit.clone()]).await {
                        let owner = shared.clone();
                        shared
                            .tasks
                            .spawn(async move { owner.run_claimed(claimed).await });
                    } else if job.unseen.contains(unit) {
                        // Published by another pod, not visible here yet:
                        // the caller looks it up again until it is.
                        return Ok(());
                    } else if matches!(job.book().state(unit), Some(UnitState::Pending { .. })) {
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
                        job.book().wake(unit, Instant::now());
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
}

impl Shared {
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
}
