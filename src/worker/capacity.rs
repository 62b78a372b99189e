//! This pod's part in the cluster's capacity: a heartbeat every second
//! with its slots and how many run a batch, and the cluster's slots it
//! hears back. The schedule compares a job's open segments with those slots
//! to choose between whole segments and pieces. Without a cluster (local
//! mode, Redis away) the capacity is this pod's own slots.
//!
//! It only counts and reports; it never decides what a slot claims.

use super::Shared;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Weak;
use std::time::Duration;

/// How often a pod beats.
const BEAT: Duration = Duration::from_secs(1);
/// How long a beat counts: three missed beats and the pod is gone.
const BEAT_TTL: Duration = Duration::from_secs(3);

/// This pod's slots, how many are busy, and the cluster's slots.
#[derive(Debug)]
pub(super) struct Capacity {
    own: usize,
    busy: AtomicUsize,
    cluster: AtomicUsize,
}

impl Capacity {
    pub(super) fn new(own: usize) -> Capacity {
        Capacity {
            own,
            busy: AtomicUsize::new(0),
            cluster: AtomicUsize::new(own),
        }
    }

    /// Slots of every live pod, as last heard (never fewer than this pod's).
    pub(super) fn cluster_slots(&self) -> usize {
        self.cluster.load(Ordering::Relaxed).max(self.own)
    }

    /// A slot starts running a batch; the returned guard ends it.
    pub(super) fn busy(&self) -> BusySlot<'_> {
        self.busy.fetch_add(1, Ordering::Relaxed);
        BusySlot(self)
    }

    fn hear(&self, cluster_slots: Option<usize>) -> usize {
        let slots = cluster_slots.unwrap_or(self.own).max(self.own);
        self.cluster.store(slots, Ordering::Relaxed);
        slots
    }
}

/// A slot running a batch, counted until dropped.
pub(super) struct BusySlot<'a>(&'a Capacity);

impl Drop for BusySlot<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Beats until the worker is gone or shuts down.
pub(super) async fn beat(shared: Weak<Shared>) {
    let mut ticks = tokio::time::interval(BEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.shutdown.is_cancelled() {
            return;
        }
        let capacity = &shared.capacity;
        let busy = capacity.busy.load(Ordering::Relaxed);
        let heard = match shared
            .coord
            .heartbeat(&shared.settings.worker_id, capacity.own, busy, BEAT_TTL)
            .await
        {
            Ok(heard) => heard.map(|c| c.slots),
            Err(err) => {
                tracing::debug!("heartbeat: {err}");
                None
            }
        };
        let slots = capacity.hear(heard);
        shared.metrics.cluster_slots.set(slots as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_never_has_fewer_slots_than_this_pod() {
        let capacity = Capacity::new(2);
        assert_eq!(capacity.cluster_slots(), 2);
        assert_eq!(capacity.hear(Some(6)), 6);
        assert_eq!(capacity.cluster_slots(), 6);
        // A beat that counted only some pods, or none heard: our own.
        assert_eq!(capacity.hear(Some(1)), 2);
        assert_eq!(capacity.hear(None), 2);
        let busy = capacity.busy();
        assert_eq!(capacity.busy.load(Ordering::Relaxed), 1);
        drop(busy);
        assert_eq!(capacity.busy.load(Ordering::Relaxed), 0);
    }
}
