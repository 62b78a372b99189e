//! After a job ends on this pod: its `.tmp/` swept by claim
//! (`storage/sweep.rs`), so what a killed pod left there does not stay
//! forever (a finished job is never started again, and the sweep at start
//! never runs for it). Every pod that ends the job does this; removals are
//! idempotent. Entries too recent, or named by a claim still held, are
//! looked at again a few times, then left to the next start of the job.

use crate::coord::Coordinator;
use crate::storage::JobLayout;
use crate::JobId;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How many times a job's `.tmp/` is looked at after it ended.
const ROUNDS: usize = 4;

/// What a sweep after a job's end needs.
pub(super) struct FinishedSweep {
    pub coord: Arc<dyn Coordinator>,
    pub layout: JobLayout,
    pub job: JobId,
    /// An entry not modified for this long has no live writer (the stall
    /// timeout).
    pub min_age: Duration,
    pub shutdown: CancellationToken,
}

impl FinishedSweep {
    /// Sweeps now, then again when the entries kept could be removed
    /// (old enough, or their claim expired), up to [`ROUNDS`] looks.
    pub(super) async fn run(self) {
        let ttl = self.coord.claim_ttl();
        for _ in 0..ROUNDS {
            // Listed first, claims read second (see storage/sweep.rs).
            let listed = self.layout.tmp_entries();
            if listed.is_empty() {
                return;
            }
            let wait = match self.coord.claim_tokens(self.job).await {
                Ok(Some(held)) => {
                    let report = self
                        .layout
                        .sweep_unclaimed_tmp(&listed, &held, self.min_age);
                    if report.removed > 0 {
                        tracing::info!(job = %self.job, removed = report.removed, "removed stale in-progress files of an ended job");
                    }
                    let held_wait = (report.held > 0).then_some(ttl);
                    match (report.next_look, held_wait) {
                        (None, None) => return,
                        (a, b) => a.into_iter().chain(b).min().unwrap_or(ttl),
                    }
                }
                // Claims cannot be seen now (Redis away): look again later.
                Ok(None) => self.min_age,
                Err(err) => {
                    tracing::debug!(job = %self.job, "reading claims for the .tmp sweep: {err}");
                    self.min_age
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait + Duration::from_millis(500)) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }
}
