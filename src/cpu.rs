//! How busy the machine's CPUs are, from the kernel's counters
//! (`/proc/stat`), so that spare slots run batches only on CPU that would
//! otherwise idle.
//!
//! Why: one batch keeps anywhere from about one core (small renditions
//! share ffmpeg's main thread) to two (a 1080p ladder's threaded encoders)
//! busy. More batches than cores fill the first case and, measured, cost
//! 8 % more CPU in the second, where the cores were full already
//! (docs/benchmarks.md, figure 1). Owns reading and differencing the
//! counters; it never decides what to run.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A spare slot may start a batch when at least this share of all CPU time
/// was idle over the last window.
const IDLE_TO_SPARE: f64 = 0.2;
/// The window over which idle time is measured: also the least time between
/// two spare starts, so each start's load shows before the next is decided.
const WINDOW: Duration = Duration::from_secs(1);

/// Busy and idle CPU time since boot, in the kernel's ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuTimes {
    busy: u64,
    idle: u64,
}

/// Parses the first (`cpu`, all cores) line of `/proc/stat`.
fn parse_stat(text: &str) -> Option<CpuTimes> {
    let mut fields = text.lines().next()?.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal; guest time is already
    // counted in user and nice.
    let values: Vec<u64> = fields.take(8).map_while(|f| f.parse().ok()).collect();
    if values.len() < 4 {
        return None;
    }
    let idle = values[3] + values.get(4).copied().unwrap_or(0);
    let total: u64 = values.iter().sum();
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        idle,
    })
}

/// Share of CPU time that was idle between two readings.
fn idle_share(before: CpuTimes, after: CpuTimes) -> f64 {
    let idle = after.idle.saturating_sub(before.idle) as f64;
    let busy = after.busy.saturating_sub(before.busy) as f64;
    if idle + busy > 0.0 {
        idle / (idle + busy)
    } else {
        0.0
    }
}

fn read_times() -> Option<CpuTimes> {
    parse_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Answers spare slots: is there CPU to spare right now?
#[derive(Debug, Default)]
pub struct CpuGauge {
    /// Start of the current window and the counters then.
    window: Mutex<Option<(Instant, CpuTimes)>>,
}

impl CpuGauge {
    pub fn new() -> CpuGauge {
        CpuGauge::default()
    }

    /// True when, over the window that just ended, at least
    /// [`IDLE_TO_SPARE`] of the CPU time was idle. Every answer given after
    /// a full window starts the next one; within a window the answer is
    /// no. Without `/proc/stat` (not Linux) it is always no: spare slots
    /// then never run.
    pub fn take_spare(&self) -> bool {
        let Some(now_times) = read_times() else {
            return false;
        };
        let now = Instant::now();
        let mut window = crate::sync::lock(&self.window);
        match *window {
            Some((start, before)) if now.duration_since(start) >= WINDOW => {
                *window = Some((now, now_times));
                idle_share(before, now_times) >= IDLE_TO_SPARE
            }
            Some(_) => false,
            None => {
                *window = Some((now, now_times));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_all_cores_line() {
        let text = "cpu  100 5 50 800 40 1 2 3 7 0\ncpu0 50 2 25 400 20 0 1 1 0 0\n";
        assert_eq!(
            parse_stat(text),
            Some(CpuTimes {
                busy: 100 + 5 + 50 + 1 + 2 + 3,
                idle: 840
            })
        );
        assert_eq!(parse_stat("intr 1 2 3\n"), None);
        assert_eq!(parse_stat("cpu 1 2\n"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn idle_share_between_readings() {
        let before = CpuTimes {
            busy: 100,
            idle: 100,
        };
        let after = CpuTimes {
            busy: 160,
            idle: 140,
        };
        assert!((idle_share(before, after) - 0.4).abs() < 1e-9);
        assert_eq!(idle_share(before, before), 0.0);
    }

    #[test]
    fn no_spare_within_the_first_window() {
        let gauge = CpuGauge::new();
        assert!(!gauge.take_spare());
        assert!(!gauge.take_spare());
    }
}
