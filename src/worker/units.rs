//! The state of every unit of one job on this pod, and the only ways it
//! changes: a state machine with one method per transition.
//!
//! ```text
//! Pending{not_before} --reserve--> Running --mark_done--> Done
//!        ^   |                       |
//!        |   +------fail_rendition---+--fail--> Failed(reason)
//!        +------------retry_at-------+
//! ```
//! `Done` and `Failed` are final: no transition leaves them, except that a
//! unit found done on storage is done whatever this pod believed. Plain
//! data and logic, no clock reads and no tasks, so every rule is unit
//! tested below.

use super::JobOutcome;
use crate::plan::{Plan, Unit};
use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum UnitState {
    Pending {
        not_before: Instant,
    },
    /// Reserved by a slot or a request of this pod (claiming or encoding).
    Running,
    Done,
    Failed(String),
}

/// Every unit of one job and what this pod knows of it.
#[derive(Debug)]
pub(super) struct UnitBook {
    states: HashMap<Unit, UnitState>,
    /// Units in the order work should be done.
    order: Vec<Unit>,
    /// Index in `order` before which every unit is done or failed.
    cursor: usize,
    done: usize,
    failed_renditions: BTreeSet<String>,
    failures: Vec<String>,
    /// Units asked for ahead of the normal order (prefetch after a request).
    wanted: BTreeSet<Unit>,
    /// Units whose batch failed: from now on they are encoded alone, so one
    /// broken rendition cannot fail its neighbours.
    solo: BTreeSet<Unit>,
    finished: bool,
}

impl UnitBook {
    /// Every unit of `plan`, done when `is_done` says its output exists,
    /// else pending from `now`.
    pub(super) fn new(plan: &Plan, is_done: impl Fn(&Unit) -> bool, now: Instant) -> UnitBook {
        let order = plan.units();
        let states: HashMap<Unit, UnitState> = order
            .iter()
            .map(|unit| {
                let state = if is_done(unit) {
                    UnitState::Done
                } else {
                    UnitState::Pending { not_before: now }
                };
                (unit.clone(), state)
            })
            .collect();
        let done = states.values().filter(|s| **s == UnitState::Done).count();
        UnitBook {
            states,
            order,
            cursor: 0,
            done,
            failed_renditions: BTreeSet::new(),
            failures: Vec::new(),
            wanted: BTreeSet::new(),
            solo: BTreeSet::new(),
            finished: false,
        }
    }

    // ------------------------------------------------------------ reading

    pub(super) fn state(&self, unit: &Unit) -> Option<&UnitState> {
        self.states.get(unit)
    }

    pub(super) fn is_done(&self, unit: &Unit) -> bool {
        self.state(unit) == Some(&UnitState::Done)
    }

    /// Done or failed for good: nothing more will happen to it here.
    pub(super) fn is_settled(&self, unit: &Unit) -> bool {
        matches!(
            self.state(unit),
            Some(UnitState::Done | UnitState::Failed(_))
        )
    }

    /// Pending and past its backoff at `now`.
    pub(super) fn is_ready(&self, unit: &Unit, now: Instant) -> bool {
        matches!(self.state(unit), Some(UnitState::Pending { not_before }) if *not_before <= now)
    }

    pub(super) fn is_solo(&self, unit: &Unit) -> bool {
        self.solo.contains(unit)
    }

    /// (done, total) units.
    pub(super) fn progress(&self) -> (usize, usize) {
        (self.done, self.order.len())
    }

    /// Units done so far.
    pub(super) fn done_units(&self) -> impl Iterator<Item = &Unit> {
        self.states
            .iter()
            .filter(|(_, s)| **s == UnitState::Done)
            .map(|(unit, _)| unit)
    }

    /// Units reserved by this pod right now, sorted.
    pub(super) fn running_units(&self) -> Vec<Unit> {
        let mut units: Vec<Unit> = self
            .states
            .iter()
            .filter(|(_, s)| **s == UnitState::Running)
            .map(|(unit, _)| unit.clone())
            .collect();
        units.sort();
        units
    }

    pub(super) fn failed_renditions(&self) -> impl Iterator<Item = &String> {
        self.failed_renditions.iter()
    }

    /// Every unit is done or failed.
    pub(super) fn all_settled(&self) -> bool {
        self.states
            .values()
            .all(|s| matches!(s, UnitState::Done | UnitState::Failed(_)))
    }

    pub(super) fn is_finished(&self) -> bool {
        self.finished
    }

    /// Units not yet known settled, in work order. Call
    /// [`UnitBook::skip_settled`] first to keep the scan short.
    pub(super) fn remaining(&self) -> impl Iterator<Item = &Unit> {
        self.order[self.cursor..].iter()
    }

    // -------------------------------------------------------- transitions

    /// Moves the scan start past the settled prefix of the work order.
    pub(super) fn skip_settled(&mut self) {
        while self.cursor < self.order.len() && self.is_settled(&self.order[self.cursor]) {
            self.cursor += 1;
        }
    }

    /// Pending → Running: this pod is about to claim it.
    pub(super) fn reserve(&mut self, unit: &Unit) {
        if let Some(state @ UnitState::Pending { .. }) = self.states.get_mut(unit) {
            *state = UnitState::Running;
        }
    }

    /// Back to pending, claimable from `not_before` (a claim that did not
    /// win, a failed attempt's backoff). Done and failed units stay so.
    pub(super) fn retry_at(&mut self, unit: &Unit, not_before: Instant) {
        if let Some(state @ (UnitState::Pending { .. } | UnitState::Running)) =
            self.states.get_mut(unit)
        {
            *state = UnitState::Pending { not_before };
        }
    }

    /// A reserved unit goes back to pending (its lease was lost or given
    /// back); a unit in any other state is left alone.
    pub(super) fn unreserve(&mut self, unit: &Unit, not_before: Instant) {
        if let Some(state @ UnitState::Running) = self.states.get_mut(unit) {
            *state = UnitState::Pending { not_before };
        }
    }

    /// A pending unit becomes claimable at once (its holder gave it back);
    /// a unit in any other state is left alone.
    pub(super) fn wake(&mut self, unit: &Unit, now: Instant) {
        if let Some(state @ UnitState::Pending { .. }) = self.states.get_mut(unit) {
            *state = UnitState::Pending { not_before: now };
        }
    }

    /// The unit is done (by this pod or another). False when it already was.
    pub(super) fn mark_done(&mut self, unit: &Unit) -> bool {
        let Some(state) = self.states.get_mut(unit) else {
            return false;
        };
        if *state == UnitState::Done {
            return false;
        }
        *state = UnitState::Done;
        self.done += 1;
        true
    }

    /// The unit failed for good. A failed video unit fails its rendition:
    /// the rendition's pending units are not attempted.
    pub(super) fn fail(&mut self, unit: &Unit, error: &str) {
        self.states
            .insert(unit.clone(), UnitState::Failed(error.to_string()));
        self.failures.push(format!("{unit}: {error}"));
        if let Unit::Video { rendition, .. } = unit {
            self.failed_renditions.insert(rendition.clone());
            let reason = format!("rendition {rendition} failed");
            for (other, status) in self.states.iter_mut() {
                if matches!(other, Unit::Video { rendition: r, .. } if r == rendition)
                    && matches!(status, UnitState::Pending { .. })
                {
                    *status = UnitState::Failed(reason.clone());
                }
            }
        }
    }

    /// From now on these units are encoded alone, not in a batch.
    pub(super) fn make_solo(&mut self, units: impl IntoIterator<Item = Unit>) {
        self.solo.extend(units);
    }

    /// These units are wanted soon (prefetch): they go ahead of the order.
    pub(super) fn want(&mut self, units: impl IntoIterator<Item = Unit>) {
        self.wanted.extend(units);
    }

    /// The first wanted unit that is ready at `now`, taken off the wanted
    /// set; wanted units that are settled are dropped from it.
    pub(super) fn take_wanted(&mut self, now: Instant) -> Option<Unit> {
        let states = &self.states;
        self.wanted.retain(|unit| {
            matches!(
                states.get(unit),
                Some(UnitState::Pending { .. } | UnitState::Running)
            )
        });
        let unit = self
            .wanted
            .iter()
            .find(|unit| self.is_ready(unit, now))
            .cloned()?;
        self.wanted.remove(&unit);
        Some(unit)
    }

    /// Marks the job finished here; false when it already was.
    pub(super) fn finish(&mut self) -> bool {
        !std::mem::replace(&mut self.finished, true)
    }

    /// The outcome of a job whose units are all done or failed.
    pub(super) fn outcome(&self, plan: &Plan) -> JobOutcome {
        if self.failures.is_empty() {
            return JobOutcome::Done;
        }
        let reason = self.failures.join("; ");
        let audio_failed = plan.audio.iter().any(|a| {
            matches!(
                self.state(&Unit::Audio { track: a.track }),
                Some(UnitState::Failed(_))
            )
        });
        // DESIGN: a failed rendition leaves the job partial only if a
        // complete rendition below it exists (players start low); otherwise
        // it failed.
        let lowest_failed = plan
            .renditions
            .iter()
            .find(|r| self.failed_renditions.contains(&r.name));
        let complete_below = match lowest_failed {
            None => true,
            Some(failed) => plan
                .renditions
                .iter()
                .take_while(|r| r.name != failed.name)
                .any(|r| !self.failed_renditions.contains(&r.name)),
        };
        if audio_failed || !complete_below {
            JobOutcome::Failed { reason }
        } else {
            JobOutcome::Partial { reason }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) use crate::plan::fixture::plan;

    pub(crate) fn video(rendition: &str, index: usize) -> Unit {
        Unit::Video {
            rendition: rendition.into(),
            index,
        }
    }

    #[test]
    fn units_found_on_storage_start_done() {
        let now = Instant::now();
        let book = UnitBook::new(&plan(3), |u| *u == video("240p", 0), now);
        assert_eq!(book.progress(), (1, 8));
        assert!(book.is_done(&video("240p", 0)));
        assert!(book.is_ready(&video("240p", 1), now));
    }

    #[test]
    fn done_is_final_and_counted_once() {
        let now = Instant::now();
        let mut book = UnitBook::new(&plan(2), |_| false, now);
        let unit = video("240p", 1);
        book.reserve(&unit);
        assert_eq!(book.state(&unit), Some(&UnitState::Running));
        assert!(book.mark_done(&unit));
        assert!(!book.mark_done(&unit));
        assert_eq!(book.progress().0, 1);
        // A late failure or requeue of a unit another pod finished changes
        // nothing.
        book.retry_at(&unit, now);
        book.unreserve(&unit, now);
        book.wake(&unit, now);
        assert!(book.is_done(&unit));
    }

    #[test]
    fn retries_wait_for_their_backoff() {
        let now = Instant::now();
        let later = now + Duration::from_secs(2);
        let mut book = UnitBook::new(&plan(1), |_| false, now);
        let unit = video("360p", 0);
        book.reserve(&unit);
        book.retry_at(&unit, later);
        assert!(!book.is_ready(&unit, now));
        assert!(book.is_ready(&unit, later));
        book.wake(&unit, now);
        assert!(book.is_ready(&unit, now));
        // unreserve touches only reserved units.
        book.unreserve(&unit, later);
        assert!(book.is_ready(&unit, now));
    }

    #[test]
    fn a_failed_video_unit_fails_its_rendition() {
        let now = Instant::now();
        let mut book = UnitBook::new(&plan(3), |_| false, now);
        book.reserve(&video("360p", 2));
        book.fail(&video("360p", 0), "broken");
        assert!(matches!(
            book.state(&video("360p", 1)),
            Some(UnitState::Failed(reason)) if reason == "rendition 360p failed"
        ));
        // A unit of the rendition already running finishes its attempt.
        assert_eq!(book.state(&video("360p", 2)), Some(&UnitState::Running));
        assert!(book.is_ready(&video("240p", 0), now));
        assert_eq!(book.failed_renditions().count(), 1);
    }

    #[test]
    fn outcomes() {
        let now = Instant::now();
        let plan = plan(1);
        let mut book = UnitBook::new(&plan, |_| true, now);
        assert!(book.all_settled());
        assert_eq!(book.outcome(&plan), JobOutcome::Done);
        // The top rendition failed, a lower one is complete: partial.
        let mut partial = UnitBook::new(&plan, |u| *u != video("360p", 0), now);
        partial.fail(&video("360p", 0), "x");
        assert!(matches!(partial.outcome(&plan), JobOutcome::Partial { .. }));
        // The lowest rendition failed: nothing plays from the bottom.
        book = UnitBook::new(&plan, |u| *u != video("240p", 0), now);
        book.fail(&video("240p", 0), "x");
        assert!(matches!(book.outcome(&plan), JobOutcome::Failed { .. }));
        // Audio failed: failed.
        book = UnitBook::new(&plan, |u| *u != Unit::Audio { track: 0 }, now);
        book.fail(&Unit::Audio { track: 0 }, "x");
        assert!(matches!(book.outcome(&plan), JobOutcome::Failed { .. }));
    }

    #[test]
    fn wanted_units_are_taken_once_when_ready() {
        let now = Instant::now();
        let mut book = UnitBook::new(&plan(3), |u| *u == video("240p", 2), now);
        book.want([video("240p", 1), video("240p", 2)]);
        assert_eq!(book.take_wanted(now), Some(video("240p", 1)));
        // 240p/2 is done: dropped, not returned.
        assert_eq!(book.take_wanted(now), None);
    }

    #[test]
    fn finish_happens_once() {
        let mut book = UnitBook::new(&plan(1), |_| true, Instant::now());
        assert!(book.finish());
        assert!(!book.finish());
        assert!(book.is_finished());
    }
}
