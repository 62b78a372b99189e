//! CPU idle over time, per core, from the kernel's counters (the `cpuN`
//! lines of `/proc/stat`), for figure 7: a sampler that reads them at a
//! fixed period while a run lasts, then the idle share of chosen cores over
//! a window of the run and the timeline as CSV rows. It counts every
//! process on a core, not just the pods' (their own CPU time comes from
//! `/proc/<pid>/stat`, see [`crate::common::process::cpu_seconds_with_children`]).

use anyhow::{bail, Context};
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Ticks per second of `/proc/stat` (`USER_HZ`, 100 in Linux's user ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// Idle and total ticks since boot of each core, indexed by core number (a
/// core that is offline counts zero).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreTimes {
    idle: Vec<u64>,
    total: Vec<u64>,
}

impl CoreTimes {
    pub fn read() -> anyhow::Result<CoreTimes> {
        let text = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        CoreTimes::parse(&text)
    }

    /// Parses the `cpuN` lines: user nice system idle iowait irq softirq
    /// steal (guest time is already in user and nice); idle counts idle and
    /// iowait, as `src/cpu.rs` does for the whole machine.
    fn parse(text: &str) -> anyhow::Result<CoreTimes> {
        let mut times = CoreTimes::default();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let Some(core) = fields.next().and_then(|name| name.strip_prefix("cpu")) else {
                continue;
            };
            if core.is_empty() {
                continue; // the all-cores line
            }
            let core: usize = core
                .parse()
                .with_context(|| format!("bad /proc/stat line {line:?}"))?;
            let values: Vec<u64> = fields.take(8).map_while(|f| f.parse().ok()).collect();
            if values.len() < 4 {
                bail!("bad /proc/stat line {line:?}");
            }
            if times.idle.len() <= core {
                times.idle.resize(core + 1, 0);
                times.total.resize(core + 1, 0);
            }
            times.idle[core] = values[3] + values.get(4).copied().unwrap_or(0);
            times.total[core] = values.iter().sum();
        }
        if times.total.is_empty() {
            bail!("no cpuN line in /proc/stat");
        }
        Ok(times)
    }

    pub fn cores(&self) -> usize {
        self.total.len()
    }

    /// (idle, total) ticks of `core` from `earlier` to `self`.
    fn delta(&self, earlier: &CoreTimes, core: usize) -> (u64, u64) {
        let at = |v: &[u64]| v.get(core).copied().unwrap_or(0);
        (
            at(&self.idle).saturating_sub(at(&earlier.idle)),
            at(&self.total).saturating_sub(at(&earlier.total)),
        )
    }
}

/// Reads [`CoreTimes`] every `period` until stopped.
pub struct CpuSampler {
    origin: Instant,
    first: (Duration, CoreTimes),
    stop: CancellationToken,
    task: JoinHandle<Vec<(Duration, CoreTimes)>>,
}

impl CpuSampler {
    /// Takes the first reading now; times are counted from `origin`.
    pub fn start(origin: Instant, period: Duration) -> anyhow::Result<CpuSampler> {
        let first = (origin.elapsed(), CoreTimes::read()?);
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut readings = Vec::new();
                let mut ticks = tokio::time::interval_at(
                    tokio::time::Instant::now() + period,
                    period.max(Duration::from_millis(1)),
                );
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = ticks.tick() => {
                            // A reading that fails is left out; the window
                            // then spans two periods.
                            if let Ok(times) = CoreTimes::read() {
                                readings.push((origin.elapsed(), times));
                            }
                        }
                    }
                }
                readings
            }
        });
        Ok(CpuSampler {
            origin,
            first,
            stop,
            task,
        })
    }

    /// Stops sampling, takes a last reading now and returns the timeline.
    pub async fn stop(self) -> anyhow::Result<CpuTrace> {
        self.stop.cancel();
        let mut readings = vec![self.first];
        readings.extend(self.task.await.context("the CPU sampler task failed")?);
        readings.push((self.origin.elapsed(), CoreTimes::read()?));
        Ok(CpuTrace { readings })
    }
}

/// The readings of one run, in time order (at least two).
pub struct CpuTrace {
    readings: Vec<(Duration, CoreTimes)>,
}

impl CpuTrace {
    /// Share (0..=1) of the time `cores` were idle between the readings
    /// nearest to `from` and to `to` (at least one period apart).
    pub fn idle_share(&self, cores: &[usize], from: Duration, to: Duration) -> f64 {
        if self.readings.len() < 2 {
            return f64::NAN;
        }
        let last = self.readings.len() - 1;
        let start = self.nearest(from).min(last - 1);
        let end = self.nearest(to).clamp(start + 1, last);
        let (before, after) = (&self.readings[start].1, &self.readings[end].1);
        let (idle, total) = cores
            .iter()
            .map(|&core| after.delta(before, core))
            .fold((0, 0), |(i, t), (di, dt)| (i + di, t + dt));
        if total == 0 {
            f64::NAN
        } else {
            idle as f64 / total as f64
        }
    }

    /// CPU seconds that any process used on `cores` over the whole trace.
    pub fn busy_seconds(&self, cores: &[usize]) -> f64 {
        let (Some((_, first)), Some((_, last))) = (self.readings.first(), self.readings.last())
        else {
            return 0.0;
        };
        let busy: u64 = cores
            .iter()
            .map(|&core| {
                let (idle, total) = last.delta(first, core);
                total - idle
            })
            .sum();
        busy as f64 / TICKS_PER_SECOND
    }

    /// One CSV row per period: `<prefix>,<t s>,<idle share of core 0>,...`
    /// for `cores` cores (empty where a core counted no time), `t` being
    /// the period's end.
    pub fn csv_rows(&self, prefix: &str, cores: usize) -> String {
        let mut rows = String::new();
        for pair in self.readings.windows(2) {
            let [(_, before), (t, after)] = pair else {
                continue;
            };
            let _ = write!(rows, "{prefix},{:.3}", t.as_secs_f64());
            for core in 0..cores {
                let (idle, total) = after.delta(before, core);
                if total == 0 {
                    rows.push(',');
                } else {
                    let _ = write!(rows, ",{:.3}", idle as f64 / total as f64);
                }
            }
            rows.push('\n');
        }
        rows
    }

    /// Index of the reading nearest to `t`.
    fn nearest(&self, t: Duration) -> usize {
        self.readings
            .iter()
            .enumerate()
            .min_by_key(|(_, (at, _))| at.abs_diff(t))
            .map(|(i, _)| i)
            .unwrap_or(0)
    }
}
