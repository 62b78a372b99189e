//! Claiming reserved units through the coordinator, and running what was
//! won as one ffmpeg batch under a [`LeaseGuard`]; then publishing it, or
//! giving it back, or counting a failed attempt.
//!
//! Storage is checked before claiming (a unit whose output exists is done
//! without a claim); a unit the coordinator says is done but that storage
//! does not show goes to `unseen.rs`. A run stopped on purpose (lease lost, job canceled,
//! shutdown) is released at once without counting an attempt.

use super::job_run::JobRun;
use super::lease::LeaseGuard;
use super::{Shared, UnitFailure};
use crate::coord::{ClaimOutcome, Lease, LeaseCheck};
use crate::encode::{Batch, VideoOutput};
use crate::ffmpeg::RunControl;
use crate::plan::Unit;
use crate::storage::StorageError;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long units whose claim failed (coordinator error) wait to be tried
/// again.
const CLAIM_ERROR_RETRY: Duration = Duration::from_secs(1);

/// A batch this pod has claimed.
pub(super) struct Claimed {
    pub(super) job: Arc<JobRun>,
    pub(super) leases: Vec<Lease>,
}

impl Shared {
    /// Claims reserved units; those not won go back to pending.
    pub(super) async fn claim(&self, job: &Arc<JobRun>, units: Vec<Unit>) -> Option<Claimed> {
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
                let retry = Instant::now() + CLAIM_ERROR_RETRY;
                let mut book = job.book();
                for unit in &to_claim {
                    book.retry_at(unit, retry);
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
                    job.book().retry_at(unit, recheck);
                }
                ClaimOutcome::Done if job.layout.is_done(unit) => self.unit_done(job, unit).await,
                // Done on another pod, not visible here (yet): never
                // encoded again while it may just be this pod's cache.
                ClaimOutcome::Done => self.done_elsewhere(job, unit).await,
            }
        }
        (!leases.is_empty()).then(|| Claimed {
            job: job.clone(),
            leases,
        })
    }

    /// Encodes a claimed batch while renewing its leases, then publishes.
    pub(super) async fn run_claimed(&self, claimed: Claimed) {
        let Claimed { job, leases } = claimed;
        let batch = match build_batch(&job, &leases) {
            Ok(batch) => batch,
            Err(err) => {
                self.fail_leases(&job, &leases, &UnitFailure::from(&err))
                    .await;
                return;
            }
        };
        let (guard, progress) = LeaseGuard::start(
            self.coord.clone(),
            self.metrics.clone(),
            leases,
            &job.cancel,
            self.settings.run.stall_timeout,
        );
        let kind = guard.leases()[0].unit.kind();
        let count = guard.leases().len() as i64;
        self.metrics.units_in_flight.add(count);
        let started = Instant::now();
        let control = RunControl {
            cancel: guard.run_token(),
            stall_timeout: self.settings.run.stall_timeout,
            progress: Some(progress),
            pid: Some(self.load.track(&batch)),
        };
        let result = match &batch {
            Batch::Audio { track, work } => {
                self.run_audio(&job, &guard, &batch, *track, work, control)
                    .await
            }
            _ => self.encoder.encode(&batch, &job.plan, control).await,
        };
        // Nothing renews a lease once its run ended: the confirmation below
        // renews it for the publish, and a completed lease would only be
        // found gone.
        guard.stop_renewing();
        self.metrics.units_in_flight.sub(count);
        let seconds = started.elapsed().as_secs_f64();
        self.metrics
            .unit_encode_seconds
            .with_label_values(&[kind])
            .observe(seconds);
        let err = match result {
            Ok(verified) => {
                // Lost: someone else makes the unit, drop ours. Held or
                // unconfirmed: publish (a publish never replaces a file).
                let check = guard.confirm().await;
                if check != LeaseCheck::Lost {
                    job.packager.learn_codecs(&verified.codecs);
                    // Before publishing: no pod sees the unit done without it.
                    if let Some(filled) = &verified.filled {
                        self.record_filled(&job, &batch, guard.leases(), filled)
                            .await;
                    }
                    return self
                        .publish(&job, &batch, guard.leases(), check, seconds)
                        .await;
                }
                None
            }
            Err(err) => Some(err),
        };
        batch.remove_outputs();
        match err {
            Some(err) if !guard.is_lost() && !err.is_canceled() => {
                self.fail_leases(&job, guard.leases(), &UnitFailure::from(&err))
                    .await
            }
            // Not the unit's fault: give the leases back so others (or this
            // pod later) take them now, not after the TTL.
            _ => self.give_back(&job, guard.leases()).await,
        }
    }

    /// Releases leases of a run stopped on purpose (lost, canceled, shut
    /// down) without counting an attempt.
    async fn give_back(&self, job: &JobRun, leases: &[Lease]) {
        let retry = Instant::now() + self.settings.held_recheck;
        for lease in leases {
            if let Err(e) = self.coord.release(lease, false).await {
                tracing::warn!(unit = %lease.unit, "releasing lease: {e}");
            }
            job.book().unreserve(&lease.unit, retry);
        }
        self.wake.notify_waiters();
    }
}

/// The batch for a set of leases, with in-progress paths named per token.
fn build_batch(job: &JobRun, leases: &[Lease]) -> Result<Batch, StorageError> {
    let layout = &job.layout;
    let tmp_dir = layout.tmp_dir();
    std::fs::create_dir_all(&tmp_dir).map_err(|e| StorageError::new("creating", &tmp_dir, e))?;
    let first = &leases[0];
    match &first.unit {
        Unit::Audio { track } => {
            let work = layout.audio_work_dir(&first.token, *track);
            std::fs::create_dir_all(work.path())
                .map_err(|e| StorageError::new("creating", work.path(), e))?;
            Ok(Batch::Audio {
                track: *track,
                work,
            })
        }
        Unit::Thumbnail => Ok(Batch::Thumbnail {
            tmp_path: layout.thumbnail_tmp(&first.token),
        }),
        Unit::Video { index, .. } => {
            let segment = job.plan.segments[*index].clone();
            let outputs = leases
                .iter()
                .filter_map(|lease| match &lease.unit {
                    Unit::Video { rendition, index } => Some(VideoOutput {
                        rendition: job.plan.rendition(rendition)?.clone(),
                        tmp_path: layout.segment_tmp(&lease.token, rendition, *index),
                    }),
                    _ => None,
                })
                .collect();
            Ok(Batch::Video { segment, outputs })
        }
    }
}
