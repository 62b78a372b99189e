//! What keeps a pod's `/readyz` honest while it runs: coordination it
//! cannot do without (Redis away and no fallback), and storage that cannot
//! take a write (a lost mount, a full disk). Each watcher only reports into
//! [`Health`]; none decides anything about work.

use crate::api::Health;
use crate::coord::Coordinator;
use crate::storage::Storage;
use crate::sync::lock;
use crate::worker::{FailureKind, WorkerEvent};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How often storage is checked for `/readyz` (a small file is written).
const STORAGE_CHECK_EVERY: Duration = Duration::from_secs(10);
/// How often a storage marked full is checked for freed space.
const FREE_SPACE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a unit that failed for lack of space keeps `/readyz` failing
/// when no space is freed and no other unit fails that way.
const DISK_FULL_HOLD: Duration = Duration::from_secs(300);
/// How often the coordination backend is checked for `/readyz`.
const COORDINATION_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Keeps `/readyz` honest about coordination: without the fallback, a pod
/// that cannot reach Redis cannot take work and says so (it keeps retrying).
pub(super) async fn watch_coordination(
    coord: Arc<dyn Coordinator>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    loop {
        let problem = coord.check().await;
        *lock(&health.coordination_problem) = problem;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(COORDINATION_CHECK_EVERY) => {}
        }
    }
}

/// Keeps `/readyz` honest about storage: a folder that cannot be written (a
/// full disk, a lost mount) takes the pod out of rotation.
///
/// The write check's few bytes can fit on a disk that has no room left for
/// a segment (a failed encode removes its partial file, freeing what it
/// took), so a unit that failed for lack of space also marks the storage
/// full, until space is freed or [`DISK_FULL_HOLD`] passes without another
/// such failure.
pub(super) async fn watch_storage(
    storage: Storage,
    health: Arc<Health>,
    mut events: broadcast::Receiver<WorkerEvent>,
    stop: CancellationToken,
) {
    let mut write_problem = None;
    let mut next_write_check = Instant::now();
    let mut full: Option<DiskFull> = None;
    let mut events_open = true;
    loop {
        if Instant::now() >= next_write_check {
            write_problem = match storage.check_writable() {
                Ok(()) => None,
                Err(err) if err.is_disk_full() => Some(format!("storage full: {err}")),
                Err(err) => Some(format!("storage not writable: {err}")),
            };
            next_write_check = Instant::now() + STORAGE_CHECK_EVERY;
        }
        if full.as_ref().is_some_and(|f| f.is_over(&storage)) {
            tracing::info!("storage has room again");
            full = None;
        }
        *lock(&health.storage_problem) = write_problem
            .clone()
            .or_else(|| full.as_ref().map(|f| f.problem.clone()));
        tokio::select! {
            _ = stop.cancelled() => return,
            event = events.recv(), if events_open => match event {
                Ok(WorkerEvent::UnitFailed { failure, .. }) if failure.kind == FailureKind::DiskFull => {
                    full = Some(DiskFull::now(&storage));
                }
                Err(broadcast::error::RecvError::Closed) => events_open = false,
                _ => {}
            },
            _ = tokio::time::sleep(FREE_SPACE_CHECK_EVERY) => {}
        }
    }
}

/// A unit failed because the storage was full: when, and how much room
/// there was just after (its partial output removed).
struct DiskFull {
    at: Instant,
    available: Option<u64>,
    problem: String,
}

impl DiskFull {
    fn now(storage: &Storage) -> DiskFull {
        let space = storage.free_space().ok();
        let free = space
            .map(|s| format!("{} bytes free", s.available))
            .unwrap_or_else(|| "free space unknown".to_string());
        DiskFull {
            at: Instant::now(),
            available: space.map(|s| s.available),
            problem: format!(
                "storage full: a unit could not be written to {} (no space left or quota exceeded; {free})",
                storage.root().display()
            ),
        }
    }

    /// True once clearly more room exists than at the failure (at least
    /// 1 MiB or 1 % of the file system more), or the mark is old.
    fn is_over(&self, storage: &Storage) -> bool {
        if self.at.elapsed() > DISK_FULL_HOLD {
            return true;
        }
        match (self.available, storage.free_space()) {
            (Some(before), Ok(now)) => {
                let margin = (now.total / 100).max(1 << 20);
                now.available > before.saturating_add(margin)
            }
            _ => false,
        }
    }
}
