//! How a segment splits into pieces when a job's work left is smaller than
//! the cluster's slots: the renditions of the ladder dealt into groups of
//! about equal encode cost, so the last pods to finish each hold about one
//! costliest rendition's worth of work, not a whole segment of the ladder.
//!
//! Pure arithmetic over the plan's renditions; it claims nothing. Every pod
//! computes the same groups from the same plan.

use crate::plan::Rendition;

/// Fixed per-frame work of an output, in pixels: scaling, the encoder's
/// set-up, muxing. Measured costs (docs/benchmarks.md, the rung costs) run
/// from ~3 ms/frame at 240p to ~26 ms/frame at 1080p, not proportional to
/// the pixels alone.
const PER_FRAME_OVERHEAD_PIXELS: u64 = 200_000;

/// Relative encode cost of one frame of `rendition`.
pub(super) fn cost(rendition: &Rendition) -> u64 {
    u64::from(rendition.width) * u64::from(rendition.height) + PER_FRAME_OVERHEAD_PIXELS
}

/// The renditions (by index into `renditions`) dealt into groups: as many
/// groups as the costliest rendition fits into the total, each rendition
/// (costliest first) into the cheapest group so far. A piece is one group
/// of one segment; a group is never emptier than it must be, so every
/// piece's decode is shared by as many outputs as the balance allows.
pub(super) fn groups(renditions: &[Rendition]) -> Vec<Vec<usize>> {
    let total: u64 = renditions.iter().map(cost).sum();
    let costliest = renditions.iter().map(cost).max().unwrap_or(1).max(1);
    let count = total.div_ceil(costliest).max(1) as usize;
    let mut order: Vec<usize> = (0..renditions.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(cost(&renditions[i])));
    let mut groups: Vec<(u64, Vec<usize>)> = vec![(0, Vec::new()); count];
    for index in order {
        if let Some(lightest) = groups.iter_mut().min_by_key(|(load, _)| *load) {
            lightest.0 += cost(&renditions[index]);
            lightest.1.push(index);
        }
    }
    let mut groups: Vec<(u64, Vec<usize>)> =
        groups.into_iter().filter(|(_, g)| !g.is_empty()).collect();
    // Costliest group first: it is the one to start first.
    groups.sort_by_key(|(load, _)| std::cmp::Reverse(*load));
    groups.into_iter().map(|(_, g)| g).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rung(height: u32) -> Rendition {
        Rendition {
            name: format!("{height}p"),
            width: height * 16 / 9,
            height,
            bitrate: 1,
            maxrate: 1,
            bufsize: 1,
            threads: 1,
        }
    }

    #[test]
    fn the_default_ladder_splits_into_groups_no_costlier_than_its_top_rung() {
        let ladder: Vec<Rendition> = [240, 360, 480, 720, 1080].map(rung).to_vec();
        // 1080p alone, 720p alone, the three below it together.
        assert_eq!(groups(&ladder), vec![vec![4], vec![2, 1, 0], vec![3]]);
        let costliest = cost(&ladder[4]);
        for group in groups(&ladder) {
            assert!(group.iter().map(|&i| cost(&ladder[i])).sum::<u64>() <= costliest);
        }
    }

    #[test]
    fn two_rungs_go_apart_and_one_rung_stays_whole() {
        assert_eq!(groups(&[rung(360), rung(720)]), vec![vec![1], vec![0]]);
        assert_eq!(groups(&[rung(720)]), vec![vec![0]]);
        assert_eq!(groups(&[]), Vec::<Vec<usize>>::new());
        // Equal rungs: one each.
        assert_eq!(groups(&[rung(480), rung(480)]).len(), 2);
    }
}
