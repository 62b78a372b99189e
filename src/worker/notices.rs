//! What other pods did, from the coordinator's unit notices: a unit
//! announced done whose output is on storage is done here too (progress,
//! playlists, the job's end); a unit given back (a pod shutting down, a
//! failure) is claimable now, not after the next recheck. Missed notices
//! cost only time: storage is checked before every claim.

use super::Shared;
use crate::coord::UnitNotice;
use std::sync::Weak;
use std::time::Instant;
use tokio::sync::broadcast;

/// Follows the notices until the worker is gone or the channel closes.
pub(super) async fn follow(shared: Weak<Shared>, mut notices: broadcast::Receiver<UnitNotice>) {
    loop {
        let notice = match notices.recv().await {
            Ok(notice) => notice,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(job) = shared.running_job(notice.job) else {
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
            job.book().wake(&notice.unit, Instant::now());
            shared.wake.notify_waiters();
        }
    }
}
