//! The failure circuit of a pod: after [`SICK_AFTER`] different units failed
//! in a row, the pod takes itself to be broken (a bad node, a missing
//! codec, a full disk) and stops claiming for [`SICK_PAUSE`], so one bad
//! node cannot drain the queue by failing everything it touches. Any
//! success closes the circuit again. It only counts and answers; the slots
//! decide to wait.

use crate::plan::Unit;
use crate::sync::lock;
use crate::JobId;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Different units failed in a row before the pod pauses.
pub(super) const SICK_AFTER: usize = 5;
/// How long a pod that looks broken stops claiming.
pub(super) const SICK_PAUSE: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub(super) struct FailureCircuit {
    /// Distinct units that failed since the last success.
    streak: Mutex<BTreeSet<(JobId, Unit)>>,
    /// While set and in the future, slots do not claim.
    paused_until: Mutex<Option<Instant>>,
}

impl FailureCircuit {
    /// Counts a failed unit; pauses the pod when the streak is long enough.
    pub(super) fn record_failure(&self, job: JobId, unit: &Unit) {
        let mut streak = lock(&self.streak);
        streak.insert((job, unit.clone()));
        if streak.len() >= SICK_AFTER {
            streak.clear();
            tracing::warn!(
                "{SICK_AFTER} different units failed in a row: not claiming for {SICK_PAUSE:?}"
            );
            *lock(&self.paused_until) = Some(Instant::now() + SICK_PAUSE);
        }
    }

    pub(super) fn record_success(&self) {
        lock(&self.streak).clear();
    }

    /// When the pause ends, while the pod is paused.
    pub(super) fn paused_until(&self) -> Option<Instant> {
        lock(&self.paused_until).filter(|until| *until > Instant::now())
    }

    /// Why the pod should not receive traffic, while it is paused.
    pub(super) fn problem(&self) -> Option<String> {
        self.paused_until().map(|until| {
            format!(
                "paused for {} s after {SICK_AFTER} failed units in a row",
                until.saturating_duration_since(Instant::now()).as_secs()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_different_failures_pause_and_a_success_resets() {
        let circuit = FailureCircuit::default();
        let job = JobId::nil();
        let unit = |index| Unit::Video {
            rendition: "240p".into(),
            index,
        };
        for _ in 0..10 {
            circuit.record_failure(job, &unit(0)); // the same unit again and again
        }
        assert!(circuit.problem().is_none());
        for index in 1..SICK_AFTER - 1 {
            circuit.record_failure(job, &unit(index));
        }
        assert!(
            circuit.problem().is_none(),
            "{} different so far",
            SICK_AFTER - 1
        );
        circuit.record_success();
        circuit.record_failure(job, &unit(99));
        assert!(circuit.problem().is_none(), "a success resets the streak");
        for index in 0..SICK_AFTER {
            circuit.record_failure(job, &unit(index));
        }
        assert!(circuit.problem().is_some());
    }
}
