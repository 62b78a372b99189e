//! What a slot of this pod claims next from one job: the scheduling policy,
//! over the job's [`UnitBook`].
//!
//! Order: units a player asked for ahead (prefetch), alone; then the plan's
//! order (audio, the lowest rendition's segment 0, the thumbnail, then
//! segment by segment), a video segment as a batch of every ready
//! rendition of it. Until the job plays, no other video unit starts here.
//! It only reads the book and reserves what it picks; claiming is
//! [`super::batch`]'s.

use super::units::UnitBook;
use crate::plan::{Plan, Unit};
use std::time::Instant;

/// What the policy needs to know of the job besides its units.
#[derive(Debug, Clone, Copy)]
pub(super) struct JobPolicy {
    /// Encode every video unit in the background (ingest); otherwise only
    /// requested and prefetched segments are made (on demand).
    pub(super) eager_video: bool,
    /// The job's master playlist plays already.
    pub(super) plays: bool,
}

/// Reserves the next units of the job for this pod and returns them, or
/// `None` when nothing is ready at `now`.
pub(super) fn reserve_next(
    book: &mut UnitBook,
    plan: &Plan,
    policy: JobPolicy,
    now: Instant,
) -> Option<Vec<Unit>> {
    book.skip_settled();
    // Prefetched units come first and alone: they exist for latency.
    if let Some(unit) = book.take_wanted(now) {
        book.reserve(&unit);
        return Some(vec![unit]);
    }
    let lowest = plan.renditions.first().map(|r| r.name.as_str());
    let lowest_first = lowest.map(|rendition| Unit::Video {
        rendition: rendition.to_string(),
        index: 0,
    });
    // Until the job plays (audio and the lowest rendition's segment 0 are
    // on storage), nothing else starts: on a busy machine the rest of the
    // ladder would only slow down the few encodes a player is waiting for.
    // A unit that failed for good opens the gate too: the job goes on.
    let playable = policy.plays
        || (lowest_first.as_ref().is_none_or(|u| book.is_settled(u))
            && plan
                .audio
                .iter()
                .all(|a| book.is_settled(&Unit::Audio { track: a.track })));
    let first = book
        .remaining()
        .find(|unit| {
            let wanted_now = match unit {
                Unit::Video { .. } => {
                    policy.eager_video && (playable || Some(*unit) == lowest_first.as_ref())
                }
                _ => true,
            };
            wanted_now && book.is_ready(unit, now)
        })?
        .clone();
    let units = match &first {
        Unit::Video { .. } if book.is_solo(&first) => vec![first],
        // The lowest rendition's first segment is all a player needs to
        // start: encode it alone so the job is playable after one small
        // encode, not after the whole ladder's first segment.
        Unit::Video {
            rendition,
            index: 0,
        } if Some(rendition.as_str()) == lowest => vec![first],
        Unit::Video { index, .. } => plan
            .renditions
            .iter()
            .map(|r| Unit::Video {
                rendition: r.name.clone(),
                index: *index,
            })
            .filter(|unit| book.is_ready(unit, now) && !book.is_solo(unit))
            .collect(),
        _ => vec![first],
    };
    for unit in &units {
        book.reserve(unit);
    }
    Some(units)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::units::tests::{plan, video};
    use crate::worker::units::UnitState;

    const INGEST: JobPolicy = JobPolicy {
        eager_video: true,
        plays: false,
    };

    #[test]
    fn playable_first_then_segment_batches() {
        let plan = plan(3);
        let now = Instant::now();
        let mut book = UnitBook::new(&plan, |_| false, now);
        let next = |book: &mut UnitBook| reserve_next(book, &plan, INGEST, now);
        assert_eq!(next(&mut book), Some(vec![Unit::Audio { track: 0 }]));
        assert_eq!(next(&mut book), Some(vec![video("240p", 0)]));
        assert_eq!(next(&mut book), Some(vec![Unit::Thumbnail]));
        // Not playable yet: the rest of the video waits.
        assert_eq!(next(&mut book), None);
        assert!(book.mark_done(&Unit::Audio { track: 0 }));
        assert!(book.mark_done(&video("240p", 0)));
        assert_eq!(next(&mut book), Some(vec![video("360p", 0)]));
        assert_eq!(
            next(&mut book),
            Some(vec![video("240p", 1), video("360p", 1)])
        );
        assert_eq!(book.state(&video("360p", 1)), Some(&UnitState::Running));
    }

    #[test]
    fn prefetched_and_solo_units_go_alone() {
        let plan = plan(3);
        let now = Instant::now();
        let mut book = UnitBook::new(&plan, |u| matches!(u, Unit::Audio { .. }), now);
        let policy = JobPolicy {
            eager_video: true,
            plays: true,
        };
        book.want([video("360p", 2)]);
        book.make_solo([video("240p", 0)]);
        assert_eq!(
            reserve_next(&mut book, &plan, policy, now),
            Some(vec![video("360p", 2)])
        );
        assert_eq!(
            reserve_next(&mut book, &plan, policy, now),
            Some(vec![video("240p", 0)])
        );
        assert_eq!(
            reserve_next(&mut book, &plan, policy, now),
            Some(vec![Unit::Thumbnail])
        );
        assert_eq!(
            reserve_next(&mut book, &plan, policy, now),
            Some(vec![video("360p", 0)])
        );
    }

    #[test]
    fn on_demand_jobs_make_no_video_by_themselves() {
        let plan = plan(2);
        let now = Instant::now();
        let mut book = UnitBook::new(&plan, |_| false, now);
        let policy = JobPolicy {
            eager_video: false,
            plays: true,
        };
        assert_eq!(
            reserve_next(&mut book, &plan, policy, now),
            Some(vec![Unit::Audio { track: 0 }])
        );
        assert_eq!(
            reserve_next(&mut book, &plan, policy, now),
            Some(vec![Unit::Thumbnail])
        );
        assert_eq!(reserve_next(&mut book, &plan, policy, now), None);
    }
}
