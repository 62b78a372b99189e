//! What other pods did, from the coordinator's unit notices: a unit
//! announced done whose output is on storage is done here too (progress,
//! playlists, the job's end); a unit given back (a pod shutting down, a
//! failure) is claimable now, not after the next recheck. Missed notices
//! cost only time: storage is checked before every claim, and
//! [`Worker::catch_up_from_storage`] takes what storage holds as done (a
//! pod that was cut off from Redis, which carries the notices).

use super::{Shared, Worker};
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
            // Published by another pod: looked up past this pod's cache of
            // "no such file" (a network file system's), once.
            if job.layout.is_done_fresh(&notice.unit) {
                shared.unit_done(&job, &notice.unit).await;
            }
        } else {
            job.book().wake(&notice.unit, Instant::now());
            shared.wake.notify_waiters();
        }
    }
}

impl Worker {
    /// Takes every output found on storage as done, for each running job
    /// (found by listing its folders, see
    /// [`JobLayout::published_units`](crate::storage::JobLayout::published_units)):
    /// what other pods finished while their notices could not reach this
    /// pod. Progress, playlists and the job's end follow as for any unit
    /// done. Returns how many units it newly found.
    pub async fn catch_up_from_storage(&self) -> usize {
        let shared = &self.shared;
        let mut found = 0;
        for job in shared.running_jobs() {
            let published = job.layout.published_units(&job.plan);
            let new: Vec<_> = {
                let book = job.book();
                published
                    .into_iter()
                    .filter(|unit| !book.is_done(unit))
                    .collect()
            };
            for unit in new {
                found += 1;
                shared.unit_done(&job, &unit).await;
            }
        }
        found
    }
}
