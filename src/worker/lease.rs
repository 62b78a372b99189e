//! The leases of one running batch, kept alive while its ffmpeg makes
//! progress, and the one signal that says they were lost.
//!
//! [`LeaseGuard`] renews every lease each TTL/3, but only while the encoder
//! printed progress within the stall timeout (a hung encoder does not keep
//! its claims). A renewal or a [`LeaseGuard::confirm`] that finds a lease
//! held by someone else marks the batch lost and cancels its run at once.
//! It never releases or completes a lease; the batch does.

use crate::coord::{Coordinator, Lease, LeaseCheck};
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The leases of one batch while it runs.
pub(super) struct LeaseGuard {
    coord: Arc<dyn Coordinator>,
    metrics: Arc<Metrics>,
    leases: Vec<Lease>,
    /// Cancelled once a lease is known lost.
    lost: CancellationToken,
    /// Cancelled when the run must stop: lease lost, job canceled, shutdown.
    run: CancellationToken,
    renewer: JoinHandle<()>,
}

impl LeaseGuard {
    /// Starts renewing `leases`. The run's cancel token is a child of
    /// `job_cancel`. Returns the guard and the sender the encoder reports
    /// progress on.
    pub(super) fn start(
        coord: Arc<dyn Coordinator>,
        metrics: Arc<Metrics>,
        leases: Vec<Lease>,
        job_cancel: &CancellationToken,
        stall_timeout: Duration,
    ) -> (LeaseGuard, watch::Sender<Instant>) {
        let (progress_tx, progress) = watch::channel(Instant::now());
        let lost = CancellationToken::new();
        let run = job_cancel.child_token();
        let renewer = tokio::spawn(renew(Renewal {
            coord: coord.clone(),
            metrics: metrics.clone(),
            leases: leases.clone(),
            progress,
            stall_timeout,
            lost: lost.clone(),
            run: run.clone(),
        }));
        let guard = LeaseGuard {
            coord,
            metrics,
            leases,
            lost,
            run,
            renewer,
        };
        (guard, progress_tx)
    }

    pub(super) fn leases(&self) -> &[Lease] {
        &self.leases
    }

    /// Stops the renewals (the run ended).
    pub(super) fn stop_renewing(&self) {
        self.renewer.abort();
    }

    /// What the encoder must stop on.
    pub(super) fn run_token(&self) -> CancellationToken {
        self.run.clone()
    }

    /// True once a lease was found held by someone else.
    pub(super) fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Checks every lease once, now, right before publishing: a pod frozen
    /// past its TTL (SIGSTOP, a paused VM) resumes with ffmpeg finished and
    /// the taker's output possibly published, and its renewer may not have
    /// run since. [`LeaseCheck::Lost`] (one lease held by someone else:
    /// the batch is lost) drops the outputs. A lease that cannot be
    /// confirmed (Redis away, claims made locally during a fallback) is
    /// [`LeaseCheck::Unconfirmed`], not held: the outputs are published
    /// anyway, since a publish never replaces a file, and counted. The
    /// leases are asked at once, and the coordinator bounds each answer, so
    /// this never waits for a Redis timeout per file.
    pub(super) async fn confirm(&self) -> LeaseCheck {
        if self.is_lost() {
            return LeaseCheck::Lost;
        }
        let checks =
            futures_util::future::join_all(self.leases.iter().map(|l| self.coord.confirm(l))).await;
        for (lease, check) in self.leases.iter().zip(&checks) {
            if *check == LeaseCheck::Lost {
                tracing::warn!(unit = %lease.unit, "lease lost before publishing; dropping the output");
                mark_lost(&self.metrics, &self.lost, &self.run);
                return LeaseCheck::Lost;
            }
        }
        if checks.contains(&LeaseCheck::Unconfirmed) {
            LeaseCheck::Unconfirmed
        } else {
            LeaseCheck::Held
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

fn mark_lost(metrics: &Metrics, lost: &CancellationToken, run: &CancellationToken) {
    if !lost.is_cancelled() {
        metrics.leases_lost.inc();
    }
    lost.cancel();
    run.cancel();
}

/// What the renewal task holds.
struct Renewal {
    coord: Arc<dyn Coordinator>,
    metrics: Arc<Metrics>,
    leases: Vec<Lease>,
    progress: watch::Receiver<Instant>,
    stall_timeout: Duration,
    lost: CancellationToken,
    run: CancellationToken,
}

/// Renews every lease each TTL/3 while the encoder makes progress, until
/// the run ends or a lease is found lost.
async fn renew(task: Renewal) {
    let period = (task.coord.claim_ttl() / 3).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = task.run.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        // A stalled encoder does not keep its lease alive; the runner kills
        // it, and if it cannot, the lease expires and others take over.
        if task.progress.borrow().elapsed() > task.stall_timeout {
            continue;
        }
        for lease in &task.leases {
            match task.coord.renew(lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(unit = %lease.unit, "lease lost; stopping its encode");
                    mark_lost(&task.metrics, &task.lost, &task.run);
                    return;
                }
                Err(err) => tracing::warn!(unit = %lease.unit, "renewing lease: {err}"),
            }
        }
    }
}
