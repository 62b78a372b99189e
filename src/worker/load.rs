//! How many cores this worker's running batches use, so that spare slots
//! start a batch only while the machine has cores to spare.
//!
//! Why not the machine's idle time: one batch keeps anywhere from about one
//! core busy (a 720p source: the one-thread encoders share ffmpeg's main
//! thread) to two (a 1080p ladder's two-thread encoders), and idle time
//! over a window says nothing about a batch that has just started, nor
//! tells our batches from anybody else's. More batches than cores cost CPU
//! (docs/benchmarks.md, figure 1).
//!
//! Owns the list of running ffmpeg batches (from the pid the runner
//! reports to the end of the run), each one's CPU use sampled from
//! `/proc/<pid>/stat` (user + system time of all its threads) at most every
//! [`SAMPLE_EVERY`], the cores a batch is expected to use while it is too
//! young to have a sample, and the admission rule. The decision is a
//! function of those numbers ([`Tracked::observe`], [`cores_in_use`],
//! [`admits`]); `/proc` is read only in [`ProcStat`]. It never starts,
//! stops or reprioritises a process and never decides what to claim.

use crate::encode::Batch;
use crate::sync::lock;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Least time between two readings of one batch's CPU time; the cores it
/// uses are the CPU time between two readings over the wall time.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// A spare slot may start a batch while the running batches use less than
/// this share of the machine's cores.
const ADMIT_BELOW: f64 = 0.8;
/// Cores each x264 thread beyond the first adds to a batch's expected use
/// (a rendition's encoder with two threads: half a core more).
const EXTRA_THREAD_CORES: f64 = 0.5;
/// Cores a batch uses on its main thread (demux, decode hand-off, filters,
/// the one-thread encoders), and what an admitted spare start counts for
/// until its batch runs.
const BASE_CORES: f64 = 1.0;

/// Why `/proc` cannot tell a process's CPU time.
#[derive(Debug, thiserror::Error)]
pub(super) enum ProcError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} has no CPU times")]
    Unparsable { path: String },
    #[error("the kernel's clock tick rate is unknown")]
    ClockTicks,
}

/// Reads a process's CPU time from `/proc/<pid>/stat`: the one place that
/// touches `/proc`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ProcStat {
    /// `sysconf(_SC_CLK_TCK)`: the unit of the times in `stat`.
    ticks_per_second: f64,
}

impl ProcStat {
    /// Checks that this process's own `stat` can be read and parsed.
    pub(super) fn open() -> Result<ProcStat, ProcError> {
        // SAFETY: sysconf(3) only reads a constant of the C library.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks <= 0 {
            return Err(ProcError::ClockTicks);
        }
        let stat = ProcStat {
            ticks_per_second: ticks as f64,
        };
        stat.cpu_seconds(std::process::id())?;
        Ok(stat)
    }

    /// User + system CPU time of `pid` (all its threads), seconds.
    pub(super) fn cpu_seconds(&self, pid: u32) -> Result<f64, ProcError> {
        let path = format!("/proc/{pid}/stat");
        let text = std::fs::read_to_string(&path).map_err(|source| ProcError::Read {
            path: path.clone(),
            source,
        })?;
        let ticks = parse_cpu_ticks(&text).ok_or(ProcError::Unparsable { path })?;
        Ok(ticks as f64 / self.ticks_per_second)
    }
}

/// `utime + stime` from a `/proc/<pid>/stat` line. The command name (field
/// 2) is in parentheses and may hold spaces and parentheses itself, so the
/// fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    // After the name: state (field 3), ..., utime (14), stime (15).
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Cores `batch` is expected to keep busy before it is measured: the main
/// thread plus [`EXTRA_THREAD_CORES`] for each x264 thread beyond the
/// first of each rendition (rendition threads are set in the plan), at
/// most the machine's cores.
pub(super) fn expected_cores(batch: &Batch, cores: f64) -> f64 {
    let extra_threads: u32 = match batch {
        Batch::Video { outputs, .. } => outputs
            .iter()
            .map(|output| output.rendition.threads.saturating_sub(1))
            .sum(),
        Batch::Audio { .. } | Batch::Thumbnail { .. } => 0,
    };
    (BASE_CORES + EXTRA_THREAD_CORES * f64::from(extra_threads)).min(cores)
}

/// One reading of a process's CPU time.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    at: Instant,
    cpu_seconds: f64,
}

/// One running batch: what it was expected to use and what it was measured
/// to use.
#[derive(Debug)]
struct Tracked {
    expected: f64,
    /// The child's pid, from the runner; closed when the run has ended.
    pid: watch::Receiver<Option<u32>>,
    first: Option<Reading>,
    last: Option<Reading>,
    /// Cores used between the last two readings.
    measured: Option<f64>,
}

impl Tracked {
    fn new(expected: f64, pid: watch::Receiver<Option<u32>>) -> Tracked {
        Tracked {
            expected,
            pid,
            first: None,
            last: None,
            measured: None,
        }
    }

    /// The cores this batch counts for: measured once it has been, else
    /// expected.
    fn cores(&self) -> f64 {
        self.measured.unwrap_or(self.expected)
    }

    /// True when a new reading would be used.
    fn is_due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|last| now.duration_since(last.at) >= SAMPLE_EVERY)
    }

    /// Takes a reading: the first one starts the count, each one at least
    /// [`SAMPLE_EVERY`] after the previous one measures the cores used
    /// between them; earlier ones are ignored.
    fn observe(&mut self, reading: Reading) {
        match self.last {
            None => {
                self.first = Some(reading);
                self.last = Some(reading);
            }
            Some(last) if reading.at.duration_since(last.at) >= SAMPLE_EVERY => {
                self.measured = Some(cores_between(last, reading));
                self.last = Some(reading);
            }
            Some(_) => {}
        }
    }

    /// Cores used from the first reading to the last (for the log).
    fn lifetime_cores(&self) -> Option<f64> {
        match (self.first, self.last) {
            (Some(first), Some(last)) if last.at > first.at => Some(cores_between(first, last)),
            _ => None,
        }
    }
}

/// CPU time between two readings over the wall time between them.
fn cores_between(before: Reading, after: Reading) -> f64 {
    let wall = after.at.duration_since(before.at).as_secs_f64();
    if wall > 0.0 {
        ((after.cpu_seconds - before.cpu_seconds) / wall).max(0.0)
    } else {
        0.0
    }
}

/// Cores in use: each running batch's ([`Tracked::cores`]) plus
/// [`BASE_CORES`] for each admitted spare start whose batch is not running
/// yet.
fn cores_in_use(running: &[Tracked], pending_starts: usize) -> f64 {
    running.iter().map(Tracked::cores).sum::<f64>() + BASE_CORES * pending_starts as f64
}

/// The admission rule: a spare slot may start while the cores in use are
/// below [`ADMIT_BELOW`] of the machine's.
fn admits(in_use: f64, cores: f64) -> bool {
    in_use < ADMIT_BELOW * cores
}

/// What is known about the running batches.
#[derive(Debug, Default)]
struct LoadState {
    running: Vec<Tracked>,
    /// Spare starts admitted whose batch has not been tracked yet.
    pending_starts: usize,
}

impl LoadState {
    /// Forgets batches whose run has ended.
    fn prune(&mut self) {
        self.running.retain(|tracked| {
            let ended = tracked.pid.has_changed().is_err();
            if ended {
                if let Some(used) = tracked.lifetime_cores() {
                    tracing::debug!(
                        "batch used {used:.2} cores (expected {:.2})",
                        tracked.expected
                    );
                }
            }
            !ended
        });
    }
}

/// Tells spare slots whether the running batches leave cores to spare.
/// Every batch the worker runs (slots and on-demand requests) is tracked.
#[derive(Debug)]
pub(super) struct CoreLoad {
    /// The cores this process may use (affinity and cgroup quota counted).
    cores: f64,
    /// None without a readable `/proc`: spare slots then never start.
    proc_stat: Option<ProcStat>,
    state: Mutex<LoadState>,
}

impl CoreLoad {
    /// Counts the cores `std::thread::available_parallelism` gives (a
    /// `taskset` to one CPU or a cgroup quota of one CPU: 1) and checks
    /// that `/proc` can be read.
    pub(super) fn new() -> CoreLoad {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let proc_stat = ProcStat::open()
            .inspect_err(|err| tracing::debug!("spare slots will not start: {err}"))
            .ok();
        CoreLoad::with(cores as f64, proc_stat)
    }

    fn with(cores: f64, proc_stat: Option<ProcStat>) -> CoreLoad {
        CoreLoad {
            cores,
            proc_stat,
            state: Mutex::new(LoadState::default()),
        }
    }

    /// Starts tracking `batch`: returns the sender its run reports the
    /// child's pid on ([`crate::ffmpeg::RunControl::pid`]). The batch counts
    /// until that sender is dropped; an admitted spare start waiting for its
    /// batch ends here.
    pub(super) fn track(&self, batch: &Batch) -> watch::Sender<Option<u32>> {
        let (sender, receiver) = watch::channel(None);
        let mut state = lock(&self.state);
        state.prune();
        state.pending_starts = state.pending_starts.saturating_sub(1);
        state
            .running
            .push(Tracked::new(expected_cores(batch, self.cores), receiver));
        sender
    }

    /// Asks whether a spare slot may start a batch now. Yes gives a
    /// [`SpareStart`] that counts as [`BASE_CORES`] until the batch is
    /// tracked or the start is dropped, so that two spare slots asking at
    /// once do not both start on the same free cores. Without `/proc`:
    /// always no.
    pub(super) fn admit_spare(&self) -> Option<SpareStart<'_>> {
        let proc_stat = self.proc_stat?;
        self.admit_spare_with(Instant::now(), |pid| proc_stat.cpu_seconds(pid).ok())
    }

    /// [`Self::admit_spare`] with the clock and the CPU-time reader given.
    fn admit_spare_with(
        &self,
        now: Instant,
        cpu_seconds: impl Fn(u32) -> Option<f64>,
    ) -> Option<SpareStart<'_>> {
        let mut state = lock(&self.state);
        state.prune();
        for tracked in &mut state.running {
            let pid = *tracked.pid.borrow();
            if let Some(pid) = pid.filter(|_| tracked.is_due(now)) {
                if let Some(cpu_seconds) = cpu_seconds(pid) {
                    tracked.observe(Reading {
                        at: now,
                        cpu_seconds,
                    });
                }
            }
        }
        if !admits(
            cores_in_use(&state.running, state.pending_starts),
            self.cores,
        ) {
            return None;
        }
        state.pending_starts += 1;
        Some(SpareStart {
            load: self,
            pending: true,
        })
    }
}

/// A spare slot's admitted start: counts as one pending start while the
/// slot claims. Dropped (nothing claimed): the count goes at once. Handed
/// over (a batch was claimed and runs): it goes when the next batch is
/// tracked, normally that one; if another slot's batch is tracked first,
/// the start stops counting a claim call early.
#[derive(Debug)]
pub(super) struct SpareStart<'a> {
    load: &'a CoreLoad,
    pending: bool,
}

impl SpareStart<'_> {
    /// The claimed batch runs now; its own tracking takes over from the
    /// pending start.
    pub(super) fn hand_over(mut self) {
        self.pending = false;
    }
}

impl Drop for SpareStart<'_> {
    fn drop(&mut self) {
        if self.pending {
            let mut state = lock(&self.load.state);
            state.pending_starts = state.pending_starts.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::VideoOutput;
    use crate::plan::{Rendition, Segment};

    fn rendition(name: &str, threads: u32) -> Rendition {
        Rendition {
            name: name.into(),
            width: 2,
            height: 2,
            bitrate: 1,
            maxrate: 1,
            bufsize: 1,
            threads,
        }
    }

    fn video(threads: &[u32]) -> Batch {
        Batch::Video {
            segment: Segment {
                index: 1,
                first_frame: 0,
                frames: 1,
                start: 0.0,
                seek: 0.0,
                trim_from: None,
                duration: 1.0,
            },
            outputs: threads
                .iter()
                .enumerate()
                .map(|(i, t)| VideoOutput {
                    rendition: rendition(&format!("{i}p"), *t),
                    tmp_path: format!("/tmp/{i}.ts").into(),
                })
                .collect(),
        }
    }

    #[test]
    fn parses_cpu_ticks_after_the_command_name() {
        let stat = "4242 (ff mpeg (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    1500 250 0 0 20 0 7 0 12345 1000000 2000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(1750));
        assert_eq!(parse_cpu_ticks("4242 (ffmpeg) S 1 2"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis 1 2 3"), None);
        assert_eq!(parse_cpu_ticks("1 (x) S 1 1 1 0 -1 0 0 0 0 0 abc 2"), None);
    }

    #[test]
    fn reads_its_own_cpu_time() {
        if let Ok(stat) = ProcStat::open() {
            let seconds = stat.cpu_seconds(std::process::id()).unwrap();
            assert!(seconds >= 0.0);
        }
    }

    #[test]
    fn expected_cores_grow_with_extra_threads_up_to_the_machine() {
        // 720p source: three one-thread rungs and the 720p with two.
        assert_eq!(expected_cores(&video(&[1, 1, 1, 2]), 2.0), 1.5);
        // 1080p ladder: 720p and 1080p with two threads each.
        assert_eq!(expected_cores(&video(&[1, 1, 1, 2, 2]), 8.0), 2.0);
        assert_eq!(expected_cores(&video(&[1]), 8.0), 1.0);
        assert_eq!(expected_cores(&video(&[2, 2, 2]), 2.0), 2.0);
        // A taskset pod with one core: never more than it.
        assert_eq!(expected_cores(&video(&[1, 1, 1, 2, 2]), 1.0), 1.0);
        let thumbnail = Batch::Thumbnail {
            tmp_path: "/tmp/t.webp".into(),
        };
        assert_eq!(expected_cores(&thumbnail, 4.0), 1.0);
    }

    #[test]
    fn a_batch_is_measured_between_readings_at_least_the_interval_apart() {
        let (_sender, receiver) = watch::channel(Some(7));
        let mut tracked = Tracked::new(1.5, receiver);
        let t0 = Instant::now();
        let at = |ms: u64, cpu_seconds: f64| Reading {
            at: t0 + Duration::from_millis(ms),
            cpu_seconds,
        };
        assert_eq!(tracked.cores(), 1.5);
        tracked.observe(at(0, 10.0));
        assert_eq!(tracked.cores(), 1.5, "one reading is no measurement");
        tracked.observe(at(200, 10.4));
        assert_eq!(tracked.cores(), 1.5, "too soon after the first");
        assert!(!tracked.is_due(t0 + Duration::from_millis(200)));
        tracked.observe(at(500, 10.9));
        assert!((tracked.cores() - 1.8).abs() < 1e-9);
        tracked.observe(at(1500, 11.4));
        assert!((tracked.cores() - 0.5).abs() < 1e-9);
        assert!((tracked.lifetime_cores().unwrap() - 1.4 / 1.5).abs() < 1e-9);
        // A counter that went backwards (pid reused) counts as nothing.
        tracked.observe(at(2000, 1.0));
        assert_eq!(tracked.cores(), 0.0);
    }

    #[test]
    fn admits_below_four_fifths_of_the_cores() {
        assert!(admits(1.5, 2.0));
        assert!(!admits(1.6, 2.0));
        assert!(!admits(2.0, 2.0));
        assert!(admits(0.0, 1.0));
        assert!(!admits(1.0, 1.0));
        assert!(admits(3.1, 4.0));
    }

    #[test]
    fn cores_in_use_add_measured_expected_and_pending() {
        let (_a, a) = watch::channel(Some(1));
        let (_b, b) = watch::channel(None);
        let mut measured = Tracked::new(2.0, a);
        measured.measured = Some(0.7);
        let young = Tracked::new(1.5, b);
        assert!((cores_in_use(&[measured, young], 1) - 3.2).abs() < 1e-9);
        assert_eq!(cores_in_use(&[], 0), 0.0);
    }

    #[test]
    fn spare_starts_follow_the_running_batches() {
        let load = CoreLoad::with(2.0, None);
        let t0 = Instant::now();
        let later = |ms: u64| t0 + Duration::from_millis(ms);
        // Nothing runs: spare starts are admitted while the pending ones
        // (claiming) count less than 1.6 cores: two, not three.
        let first = load.admit_spare_with(t0, |_| None).unwrap();
        let second = load.admit_spare_with(t0, |_| None).unwrap();
        assert!(load.admit_spare_with(t0, |_| None).is_none());
        drop(second);
        assert!(load.admit_spare_with(t0, |_| None).is_some());
        drop(first);

        // A one-thread batch, young: expected 1 core, room left (1 < 1.6)
        // but not once a start is pending.
        let start = load.admit_spare_with(t0, |_| None).unwrap();
        let pid = load.track(&video(&[1]));
        start.hand_over();
        pid.send_replace(Some(100));
        let cpu = |seconds: f64| move |pid: u32| (pid == 100).then_some(seconds);
        let start = load.admit_spare_with(t0, cpu(0.0)).unwrap();
        // The spare's batch: a 1080p ladder, expected 2 cores.
        let spare_pid = load.track(&video(&[1, 1, 1, 2, 2]));
        start.hand_over();
        assert!(load.admit_spare_with(later(100), cpu(0.1)).is_none());
        // Measured: the first batch idles (0.25 core) and the ladder is
        // not running yet (still expected 2): no room.
        assert!(load.admit_spare_with(later(600), cpu(0.15)).is_none());
        // The ladder ends: the first batch alone, measured, leaves room.
        drop(spare_pid);
        assert!(load.admit_spare_with(later(700), cpu(0.2)).is_some());
        assert_eq!(lock(&load.state).running.len(), 1);
        // It gets busy: 1.75 cores measured, no room.
        assert!(load.admit_spare_with(later(1200), cpu(1.2)).is_none());
        drop(pid);
        assert!(load.admit_spare_with(later(1300), cpu(1.2)).is_some());
        assert!(lock(&load.state).running.is_empty());
    }

    #[test]
    fn without_proc_spare_slots_never_start() {
        let load = CoreLoad::with(4.0, None);
        assert!(load.admit_spare().is_none());
    }

    #[test]
    fn a_one_core_machine_admits_only_when_nothing_runs() {
        let load = CoreLoad::with(1.0, None);
        let pid = load.track(&video(&[1, 1, 1, 2]));
        assert!(load.admit_spare_with(Instant::now(), |_| None).is_none());
        drop(pid);
        assert!(load.admit_spare_with(Instant::now(), |_| None).is_some());
    }
}
