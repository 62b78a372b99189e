//! The slot loop: each slot claims the next batch (jobs by priority then
//! age, units by [`super::schedule`]), runs it, and sleeps until woken when
//! nothing is ready. Spare slots start a batch only while the running
//! batches leave cores to spare ([`super::load::CoreLoad`]); every slot
//! waits while the failure circuit is open.

use super::batch::Claimed;
use super::schedule::reserve_next;
use super::Shared;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How often a spare slot asks whether the cores have room.
const SPARE_RECHECK: Duration = Duration::from_millis(250);
/// How long an idle slot sleeps when no wake-up comes.
const IDLE_RECHECK: Duration = Duration::from_millis(250);

/// Starts the worker's fixed and spare slots.
pub(super) fn start(shared: &Arc<Shared>) -> JoinSet<()> {
    let mut slots = JoinSet::new();
    let fixed = shared.settings.run.slots.fixed.max(1);
    for index in 0..fixed + shared.settings.run.slots.spare {
        let shared = shared.clone();
        let spare = index >= fixed;
        slots.spawn(async move { shared.slot_loop(spare).await });
    }
    slots
}

impl Shared {
    /// Claims and runs batches until shutdown. A `spare` slot claims only
    /// while the running batches leave cores to spare.
    async fn slot_loop(self: Arc<Self>, spare: bool) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shutdown.is_cancelled() {
                return;
            }
            if let Some(until) = self.circuit.paused_until() {
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = self.shutdown.cancelled() => return,
                }
                continue;
            }
            let spare_start = if spare {
                let Some(start) = self.load.admit_spare() else {
                    tokio::select! {
                        _ = tokio::time::sleep(SPARE_RECHECK) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                    continue;
                };
                Some(start)
            } else {
                None
            };
            match self.next_claimed().await {
                Some(claimed) => {
                    let _busy = self.capacity.busy();
                    // The batch's own tracking takes over (run_claimed).
                    if let Some(start) = spare_start {
                        start.hand_over();
                    }
                    self.run_claimed(claimed).await
                }
                None => {
                    drop(spare_start);
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(IDLE_RECHECK) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Finds the next ready units, reserves them locally, then claims them.
    async fn next_claimed(&self) -> Option<Claimed> {
        for job in self.running_jobs() {
            if job.cancel.is_cancelled() {
                continue;
            }
            loop {
                let policy = job.policy(self.cluster_slots());
                let units = reserve_next(&mut job.book(), &job.plan, policy, Instant::now());
                let Some(units) = units else { break };
                if let Some(claimed) = self.claim(&job, units).await {
                    return Some(claimed);
                }
            }
        }
        None
    }
}
