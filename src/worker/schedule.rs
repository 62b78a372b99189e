//! What a slot of this pod claims next from one job: the scheduling policy,
//! over the job's [`UnitBook`].
//!
//! Order: units a player asked for ahead (prefetch), alone; then the plan's
//! order (audio, the lowest rendition's segment 0, the thumbnail, then
//! segment by segment), a video segment as a batch of every ready
//! rendition of it. Until the job plays, a pod that is itself encoding audio
//! or the lowest rendition's segment 0 starts no other video (it would slow
//! what a player waits for); a pod that is not goes on with the next
//! segments at once. When fewer segments are left than the cluster has
//! slots, a slot takes a piece ([`super::pieces`]) instead of a whole
//! segment, the costliest first, so the job's tail is spread over the
//! cluster. It only reads the book and reserves what it picks; claiming is
//! [`super::batch`]'s.

use super::pieces;
use super::units::{UnitBook, UnitState};
use crate::plan::{Plan, Unit};
use std::collections::BTreeSet;
use std::time::Instant;

/// What the policy needs to know of the job besides its units.
#[derive(Debug, Clone, Copy)]
pub(super) struct JobPolicy {
    /// Encode every video unit in the background (ingest); otherwise only
    /// requested and prefetched segments are made (on demand).
    pub(super) eager_video: bool,
    /// The job's master playlist plays already.
    pub(super) plays: bool,
    /// Slots of every live pod of the cluster (this pod's alone without a
    /// cluster): fewer open segments than this and slots take pieces.
    pub(super) cluster_slots: usize,
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
    // The gate is this pod's own: while it encodes what makes the job
    // playable, the rest of the ladder would only slow those encodes down
    // on its cores; another pod's cores are free to go on.
    let critical_here = !policy.plays
        && lowest_first
            .iter()
            .cloned()
            .chain(plan.audio.iter().map(|a| Unit::Audio { track: a.track }))
            .any(|unit| book.state(&unit) == Some(&UnitState::Running));
    let first = book
        .remaining()
        .find(|unit| {
            let wanted_now = match unit {
                Unit::Video { .. } => {
                    policy.eager_video && (!critical_here || Some(*unit) == lowest_first.as_ref())
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
        Unit::Video { index, .. } => {
            if open_segments_below(book, now, policy.cluster_slots) {
                costliest_piece(book, plan, now).unwrap_or(vec![first])
            } else {
                segment_batch(book, plan, *index, now)
            }
        }
        _ => vec![first],
    };
    for unit in &units {
        book.reserve(unit);
    }
    Some(units)
}

/// Every ready rendition of segment `index`, but those that go alone.
fn segment_batch(book: &UnitBook, plan: &Plan, index: usize, now: Instant) -> Vec<Unit> {
    plan.renditions
        .iter()
        .map(|r| Unit::Video {
            rendition: r.name.clone(),
            index,
        })
        .filter(|unit| book.is_ready(unit, now) && !book.is_solo(unit))
        .collect()
}

/// True when fewer than `slots` segments have a video unit ready to claim
/// (units held by other pods are not ready: they wait for a recheck).
fn open_segments_below(book: &UnitBook, now: Instant, slots: usize) -> bool {
    let mut open = BTreeSet::new();
    for unit in book.remaining() {
        if let Unit::Video { index, .. } = unit {
            if book.is_ready(unit, now) && open.insert(*index) && open.len() >= slots {
                return false;
            }
        }
    }
    true
}

/// The ready units of the costliest piece left: the first group (costliest
/// first) that has a ready unit, at its earliest such segment.
fn costliest_piece(book: &UnitBook, plan: &Plan, now: Instant) -> Option<Vec<Unit>> {
    let unit_of = |rendition: usize, index: usize| Unit::Video {
        rendition: plan.renditions[rendition].name.clone(),
        index,
    };
    pieces::groups(&plan.renditions)
        .into_iter()
        .find_map(|group| {
            let index = plan.segments.iter().map(|s| s.index).find(|&index| {
                group.iter().any(|&r| {
                    let unit = unit_of(r, index);
                    book.is_ready(&unit, now) && !book.is_solo(&unit)
                })
            })?;
            let units: Vec<Unit> = group
                .iter()
                .map(|&r| unit_of(r, index))
                .filter(|unit| book.is_ready(unit, now) && !book.is_solo(unit))
                .collect();
            Some(units)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::units::tests::{plan, video};

    const INGEST: JobPolicy = JobPolicy {
        eager_video: true,
        plays: false,
        cluster_slots: 1,
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
    fn a_pod_that_does_not_hold_the_playable_units_goes_on_at_once() {
        let plan = plan(3);
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(1);
        let mut book = UnitBook::new(&plan, |_| false, now);
        // Another pod won audio and the lowest rendition's segment 0.
        book.retry_at(&Unit::Audio { track: 0 }, later);
        book.retry_at(&video("240p", 0), later);
        let next = |book: &mut UnitBook| reserve_next(book, &plan, INGEST, now);
        assert_eq!(next(&mut book), Some(vec![Unit::Thumbnail]));
        assert_eq!(next(&mut book), Some(vec![video("360p", 0)]));
        assert_eq!(
            next(&mut book),
            Some(vec![video("240p", 1), video("360p", 1)])
        );
    }

    #[test]
    fn fewer_open_segments_than_cluster_slots_make_pieces_costliest_first() {
        let plan = plan(3);
        let now = Instant::now();
        let mut book = UnitBook::new(&plan, |u| !matches!(u, Unit::Video { .. }), now);
        assert!(book.mark_done(&video("240p", 0)));
        let policy = JobPolicy {
            eager_video: true,
            plays: true,
            cluster_slots: 4,
        };
        let mut next = || reserve_next(&mut book, &plan, policy, now);
        // Three open segments, four slots: one rendition at a time, the
        // costlier (360p) of every segment before the cheaper.
        assert_eq!(next(), Some(vec![video("360p", 0)]));
        assert_eq!(next(), Some(vec![video("360p", 1)]));
        assert_eq!(next(), Some(vec![video("360p", 2)]));
        assert_eq!(next(), Some(vec![video("240p", 1)]));
        assert_eq!(next(), Some(vec![video("240p", 2)]));
        assert_eq!(next(), None);
        // While at least as many segments are open as there are slots:
        // whole segments.
        let plan = crate::worker::units::tests::plan(6);
        let mut book = UnitBook::new(&plan, |u| !matches!(u, Unit::Video { .. }), now);
        let policy = JobPolicy {
            cluster_slots: 3,
            ..policy
        };
        let mut next = || reserve_next(&mut book, &plan, policy, now);
        assert_eq!(next(), Some(vec![video("240p", 0)]));
        assert_eq!(next(), Some(vec![video("360p", 0)]));
        for index in 1..4 {
            assert_eq!(
                next(),
                Some(vec![video("240p", index), video("360p", index)])
            );
        }
        assert_eq!(
            next(),
            Some(vec![video("360p", 4)]),
            "two open, three slots"
        );
    }

    #[test]
    fn prefetched_and_solo_units_go_alone() {
        let plan = plan(3);
        let now = Instant::now();
        let mut book = UnitBook::new(&plan, |u| matches!(u, Unit::Audio { .. }), now);
        let policy = JobPolicy {
            eager_video: true,
            plays: true,
            cluster_slots: 1,
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
            cluster_slots: 1,
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
