//! A job's progress value and the 2 % throttle of its `progress` events.
//!
//! The one value is [`JobRecord::progress`](super::JobRecord::progress): the
//! highest percentage known cluster-wide (what this pod reported, what the
//! registry says was reported, what other pods' events carried). A pod
//! reports a step when its own progress is in a higher 2 % step than that
//! value. Pure arithmetic: it never locks, sends or reads anything.

/// Percentage of units done, to 0.1 (100 for a job without units).
pub(super) fn percent((done, total): (usize, usize)) -> f64 {
    if total == 0 {
        return 100.0;
    }
    ((done as f64 / total as f64) * 1000.0).round() / 10.0
}

/// The 2 % step `progress` is in (0 for 0–1.9 %, 50 for 100 %).
fn step_of(progress: f64) -> u64 {
    (progress / 2.0).floor() as u64
}

/// The step to report when this pod's own progress is in a higher step than
/// the highest progress known, else `None` (that step was reported already,
/// here or by another pod). Step 0 is never reported.
pub(super) fn step_to_report(own: f64, known: f64) -> Option<u64> {
    let step = step_of(own);
    (step > step_of(known)).then_some(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_rounds_to_a_tenth() {
        assert_eq!(percent((0, 0)), 100.0);
        assert_eq!(percent((1, 3)), 33.3);
        assert_eq!(percent((2, 3)), 66.7);
        assert_eq!(percent((3, 3)), 100.0);
    }

    #[test]
    fn a_step_is_reported_once_it_is_above_the_known_one() {
        // Below 2 %: nothing to report.
        assert_eq!(step_to_report(1.9, 0.0), None);
        assert_eq!(step_to_report(2.0, 0.0), Some(1));
        // Same step as known: already reported.
        assert_eq!(step_to_report(3.9, 2.0), None);
        assert_eq!(step_to_report(4.0, 2.0), Some(2));
        // Steps skipped at once are one report of the highest.
        assert_eq!(step_to_report(11.0, 2.0), Some(5));
        // Another pod is ahead: nothing, even though own progress moved.
        assert_eq!(step_to_report(9.0, 12.4), None);
        assert_eq!(step_to_report(100.0, 99.0), Some(50));
        assert_eq!(step_to_report(100.0, 100.0), None);
    }

    #[test]
    fn folding_the_reported_value_stops_asking_for_the_same_step() {
        // The registry says another pod reported step 5 with 10.4: once the
        // record holds it, step 5 is not asked again, step 6 is.
        let known = 8.0_f64.max(10.4);
        assert_eq!(step_to_report(10.8, known), None);
        assert_eq!(step_to_report(12.0, known), Some(6));
    }
}
