//! The rules of a job's status on this pod: a status only moves forward
//! (queued → processing → playable → an end), an end is final, and the
//! end is announced (its event, its webhook) once.
//!
//! The registry's `TRANSITION` script applies the same order cluster-wide;
//! here it guards what this pod's record takes over from other pods' events
//! and its own decisions. Plain data and rules, unit-tested; the lifecycle
//! and the cluster code apply them. It never does I/O.

use super::model::{JobRecord, JobStatus};

/// The place of a status in a job's life; every end shares the last one.
fn rank(status: JobStatus) -> u8 {
    match status {
        JobStatus::Queued => 0,
        JobStatus::Processing => 1,
        JobStatus::Playable => 2,
        JobStatus::Done | JobStatus::Partial | JobStatus::Failed | JobStatus::Canceled => 3,
    }
}

/// True when a job at `from` may move to `to`: forward only, never out of
/// an end.
pub(super) fn may_move(from: JobStatus, to: JobStatus) -> bool {
    !from.is_terminal() && rank(to) > rank(from)
}

impl JobRecord {
    /// Moves the status to `to` if that is a forward change; true when it
    /// moved.
    pub(super) fn advance(&mut self, to: JobStatus) -> bool {
        let moves = may_move(self.status, to);
        if moves {
            self.status = to;
        }
        moves
    }
}

/// What the registry answered when this pod asked to make a status change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// This pod made the change (or there is no cluster): it announces it.
    Won,
    /// Another pod made it (or a later one) first; its event tells us.
    Lost,
    /// The registry could not be asked (Redis away): this pod applies the
    /// change for itself and leaves the announcement for later.
    Unknown,
}

/// How far this pod got with a job's end. Moves `Open` → `Deciding` →
/// `Settled` or `Unconfirmed` → `Settled`, and never back, so that the end
/// event is emitted and the end webhook sent at most once by this pod; the
/// registry's compare-and-set makes that once cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Ending {
    /// Not ended by this pod.
    #[default]
    Open,
    /// This pod is deciding the end now (one caller at a time).
    Deciding,
    /// Ended here while the registry could not be asked: this pod's streams
    /// got the end event; whether this pod also sends the webhook is
    /// decided once the registry answers (the pod that records the end
    /// there sends it).
    Unconfirmed,
    /// Announced, by this pod or another: nothing more to do.
    Settled,
}

impl Ending {
    /// Starts deciding the end; false when this pod did already.
    pub(super) fn begin(&mut self) -> bool {
        let open = *self == Ending::Open;
        if open {
            *self = Ending::Deciding;
        }
        open
    }

    /// The end was decided with `decision`.
    pub(super) fn decided(&mut self, decision: Decision) {
        *self = match decision {
            Decision::Won | Decision::Lost => Ending::Settled,
            Decision::Unknown => Ending::Unconfirmed,
        };
    }

    /// Gives the decision back (the end did not happen after all).
    pub(super) fn abandon(&mut self) {
        if *self == Ending::Deciding {
            *self = Ending::Open;
        }
    }

    /// An unconfirmed end was settled with the registry.
    pub(super) fn confirm(&mut self) {
        if *self == Ending::Unconfirmed {
            *self = Ending::Settled;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_moves_forward_only_and_an_end_is_final() {
        use JobStatus::*;
        assert!(may_move(Queued, Processing));
        assert!(may_move(Queued, Playable));
        assert!(may_move(Processing, Done));
        assert!(may_move(Playable, Failed));
        assert!(!may_move(Playable, Processing), "never backwards");
        assert!(!may_move(Processing, Processing), "no change is no move");
        for end in [Done, Partial, Failed, Canceled] {
            for to in JobStatus::ALL {
                assert!(!may_move(end, to), "{end:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn an_end_is_decided_once_and_confirmed_once() {
        let mut ending = Ending::default();
        assert!(ending.begin());
        assert!(
            !ending.begin(),
            "a second end waits for nothing: it is refused"
        );
        ending.decided(Decision::Unknown);
        assert_eq!(ending, Ending::Unconfirmed);
        assert!(!ending.begin());
        ending.confirm();
        assert_eq!(ending, Ending::Settled);
        ending.confirm();
        assert_eq!(ending, Ending::Settled);

        let mut won = Ending::default();
        assert!(won.begin());
        won.decided(Decision::Won);
        assert_eq!(won, Ending::Settled);

        let mut abandoned = Ending::default();
        assert!(abandoned.begin());
        abandoned.abandon();
        assert_eq!(abandoned, Ending::Open);
        assert!(abandoned.begin());
    }
}
