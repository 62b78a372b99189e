//! Figure 7: cluster scale-out with real encodes. One `redis-server`; the
//! same job (ladder 360p,720p, 6 s segments, ingest, submitted through the
//! first pod's API) on (a) one pod pinned to one core (`taskset -c`) and
//! (b) N pods, each pinned to its own core. Every pod is a real `segswarm
//! serve` child of the built binary with `--slots` slots, its own port, and
//! the run's one storage folder. Runs alternate (a, b), (b, a) over the
//! repeats so that the machine's drift hits both.
//!
//! Per run: wall time from submit to `done` (the job polled every 50 ms);
//! CPU seconds of the pods and of the ffmpeg and ffprobe they reaped
//! (`/proc/<pid>/stat`); idle share of the pods' cores in the first 5 s,
//! the last 5 s and overall (`/proc/stat` every 250 ms, [`crate::cpu_trace`];
//! `--trace` writes the per-core timeline as CSV); per pod, its start idle
//! and tail idle from its `/metrics` ([`crate::pod_timeline`]). The sources
//! are generated once and cached between invocations.

use crate::common::process::cpu_seconds_with_children;
use crate::common::{metric_value, Pod, RedisServer, TestDir};
use crate::cpu_trace::{CoreTimes, CpuSampler};
use crate::pod_timeline::{MetricsPoller, PodTimeline};
use crate::report::Report;
use anyhow::{bail, Context};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Runs of each configuration; the table shows min/median/max.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Lengths of the generated 1280x720 sources, in seconds (each made
    /// once, then cached in `$TMPDIR/segswarm-bench-cluster/sources`).
    #[arg(long, value_delimiter = ',', default_value = "30,120")]
    pub seconds: Vec<u32>,
    /// Pods of the scale-out run, pod i pinned to the i-th core this
    /// process may use (default: one pod per core).
    #[arg(long)]
    pub pods: Option<usize>,
    /// `SEGSWARM_SLOTS` of every pod.
    #[arg(long, default_value_t = 2)]
    pub slots: usize,
    /// The job's ladder.
    #[arg(long, default_value = "360p,720p")]
    pub ladder: String,
    /// The job's segment duration in seconds.
    #[arg(long, default_value_t = 6)]
    pub segment_duration: u32,
    /// Writes every run's per-core idle share over time to this CSV file
    /// (`run,pods,source_s,t_s,cpu0_idle,...`; one row per 250 ms).
    #[arg(long)]
    pub trace: Option<PathBuf>,
}

/// How often `/proc/stat` is read.
const CPU_PERIOD: Duration = Duration::from_millis(250);
/// How often each pod's `/metrics` is read.
const METRICS_PERIOD: Duration = Duration::from_millis(100);
/// How often the job is polled for `done`.
const JOB_PERIOD: Duration = Duration::from_millis(50);
/// The head and tail windows of the idle figures.
const WINDOW: Duration = Duration::from_secs(5);
/// Longest a job may take before the run is abandoned.
const JOB_LIMIT: Duration = Duration::from_secs(30 * 60);

pub async fn run(args: &ClusterArgs) -> anyhow::Result<Report> {
    let cores = allowed_cores()?;
    let pods = args.pods.unwrap_or(cores.len());
    if pods < 2 {
        bail!(
            "the scale-out run needs at least 2 pods (this process may use {} core(s)); \
             pass --pods",
            cores.len()
        );
    }
    if pods > cores.len() {
        tracing::warn!(
            "{pods} pods on {} cores: pods share cores (pod i on core i mod {})",
            cores.len(),
            cores.len()
        );
    }
    let cache = std::env::temp_dir()
        .join("segswarm-bench-cluster")
        .join("sources");
    let mut sources = Vec::new();
    for seconds in args.seconds.iter().map(|&s| s.max(1)) {
        sources.push((seconds, source(&cache, seconds)?));
    }
    let mut trace = match &args.trace {
        Some(path) => {
            let mut file = std::fs::File::create(path)
                .with_context(|| format!("create {}", path.display()))?;
            let mut header = "run,pods,source_s,t_s".to_string();
            for core in 0..CoreTimes::read()?.cores() {
                header.push_str(&format!(",cpu{core}_idle"));
            }
            writeln!(file, "{header}")?;
            Some(file)
        }
        None => None,
    };

    let mut bench = Bench {
        redis: RedisServer::start(),
        scratch: TestDir::new("bench-cluster"),
        sources: cache,
        args,
        runs: 0,
    };
    let one = vec![cores[0]];
    let many: Vec<usize> = (0..pods).map(|i| cores[i % cores.len()]).collect();
    let mut report = Report::new("cluster", args.repeat);
    for repeat in 0..args.repeat.max(1) {
        for (seconds, source) in &sources {
            let (mut t1, mut tn) = (0.0, 0.0);
            let order = if repeat % 2 == 0 {
                [&one, &many]
            } else {
                [&many, &one]
            };
            for pinning in order {
                let label = match pinning.len() {
                    1 => format!("{seconds}s 1 pod"),
                    n => format!("{seconds}s {n} pods"),
                };
                let run = bench
                    .run_once(source, pinning)
                    .await
                    .with_context(|| format!("{label}, repeat {}", repeat + 1))?;
                eprintln!(
                    "cluster: {label}, repeat {}: {:.2} s",
                    repeat + 1,
                    run.wall.as_secs_f64()
                );
                run.warn_if_busy(&label);
                if let Some(file) = &mut trace {
                    let prefix = format!("{},{},{seconds}", repeat + 1, pinning.len());
                    file.write_all(run.trace.csv_rows(&prefix, run.trace_cores).as_bytes())?;
                }
                run.record(&mut report, &label);
                if pinning.len() == 1 {
                    t1 = run.wall.as_secs_f64();
                } else {
                    tn = run.wall.as_secs_f64();
                }
            }
            report.add(format!("{seconds}s speed-up t1/t{pods}"), t1 / tn);
        }
    }
    Ok(report)
}

/// What every run shares: the Redis server, the scratch folder, the folder
/// of sources the pods may read.
struct Bench<'a> {
    redis: RedisServer,
    scratch: TestDir,
    sources: PathBuf,
    args: &'a ClusterArgs,
    /// Runs started so far (names each run's folder).
    runs: usize,
}

/// The measurements of one run.
struct RunOutcome {
    wall: Duration,
    pods_cpu: f64,
    /// The distinct cores the pods were pinned to.
    cores: Vec<usize>,
    trace: crate::cpu_trace::CpuTrace,
    /// Cores of the machine (the CSV's columns).
    trace_cores: usize,
    timelines: Vec<PodTimeline>,
}

impl Bench<'_> {
    /// One run: pods pinned to `pinning` (one core per pod) on a fresh
    /// storage folder and an empty Redis, the job submitted to the first,
    /// measured until `done`, then every pod stopped and the folder removed.
    async fn run_once(&mut self, source: &Path, pinning: &[usize]) -> anyhow::Result<RunOutcome> {
        let run = self.runs;
        self.runs += 1;
        self.redis.flushall();
        let run_dir = self.scratch.join(format!("run-{run}"));
        let storage = run_dir.join("storage");
        let mut pods = Vec::new();
        for (i, core) in pinning.iter().enumerate() {
            let pod = Pod::builder(&storage)
                .binary_defaults()
                .taskset(&core.to_string())
                .env("REDIS_URL", self.redis.url())
                .env("SEGSWARM_WORKER_ID", format!("pod-{}", i + 1))
                .env("SEGSWARM_SLOTS", self.args.slots.to_string())
                .env("SEGSWARM_SOURCE_ROOTS", self.sources.display().to_string())
                .env("SEGSWARM_LOG", "info")
                .start()
                .await;
            pods.push(pod);
        }
        let measured = self.measure(&pods, source, pinning).await;
        for pod in &pods {
            pod.sigterm();
        }
        for pod in &mut pods {
            pod.wait_exit(Duration::from_secs(30)).await;
        }
        let outcome = measured.with_context(|| logs_tail(&pods))?;
        drop(pods);
        let _ = std::fs::remove_dir_all(&run_dir);
        Ok(outcome)
    }

    async fn measure(
        &self,
        pods: &[Pod],
        source: &Path,
        pinning: &[usize],
    ) -> anyhow::Result<RunOutcome> {
        let first = pods.first().context("a run without pods")?;
        for pod in pods {
            wait_distributed(pod).await?;
        }
        // Let the pods' start-up work settle before the clock starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cpu_before: f64 = pods
            .iter()
            .map(|pod| cpu_seconds_with_children(pod.pid()))
            .sum();
        let urls = pods.iter().map(|pod| pod.url("/metrics")).collect();
        let origin = Instant::now();
        let sampler = CpuSampler::start(origin, CPU_PERIOD)?;
        let poller = MetricsPoller::start(urls, origin, METRICS_PERIOD);
        let job = first
            .submit(serde_json::json!({
                "source": source,
                "ladder": self.args.ladder,
                "segment_duration": self.args.segment_duration,
                "mode": "ingest",
            }))
            .await;
        let id = job["id"]
            .as_str()
            .with_context(|| format!("no job id in {job}"))?
            .to_string();
        loop {
            let job = first.job(&id).await;
            match job["status"].as_str().unwrap_or("") {
                "done" => break,
                status @ ("partial" | "failed" | "canceled") => {
                    bail!("the job ended {status}: {job}")
                }
                _ if origin.elapsed() > JOB_LIMIT => {
                    bail!("the job was not done within {JOB_LIMIT:?}: {job}")
                }
                _ => tokio::time::sleep(JOB_PERIOD).await,
            }
        }
        let wall = origin.elapsed();
        let cpu_after: f64 = pods
            .iter()
            .map(|pod| cpu_seconds_with_children(pod.pid()))
            .sum();
        let trace = sampler.stop().await?;
        let timelines = poller.stop().await?;
        let mut cores = pinning.to_vec();
        cores.sort_unstable();
        cores.dedup();
        Ok(RunOutcome {
            wall,
            pods_cpu: cpu_after - cpu_before,
            cores,
            trace_cores: CoreTimes::read()?.cores(),
            trace,
            timelines,
        })
    }
}

impl RunOutcome {
    /// Warns when other processes took more than 10 % of the pods' cores:
    /// the run's figures then say more about the machine than about the
    /// pods.
    fn warn_if_busy(&self, label: &str) {
        let busy = self.trace.busy_seconds(&self.cores);
        let capacity = self.wall.as_secs_f64() * self.cores.len() as f64;
        let others = (busy - self.pods_cpu).max(0.0);
        if others > 0.1 * capacity {
            tracing::warn!(
                "{label}: other processes used {others:.1} s of the pods' cores' {capacity:.1} s \
                 (the pods {:.1} s): not a quiet machine",
                self.pods_cpu
            );
        }
    }

    /// Adds this run's figures under `label` (`30s 2 pods ...`).
    fn record(&self, report: &mut Report, label: &str) {
        let wall = self.wall.as_secs_f64();
        let idle =
            |from: Duration, to: Duration| 100.0 * self.trace.idle_share(&self.cores, from, to);
        report.add(format!("{label} wall s"), wall);
        let busy = self.trace.busy_seconds(&self.cores);
        report.add(format!("{label} pods CPU s"), self.pods_cpu);
        report.add(format!("{label} cores busy CPU s"), busy);
        // What else ran on the pods' cores (this harness, Redis, anything
        // else on the machine): near zero on a quiet machine.
        report.add(
            format!("{label} non-pod CPU on the cores s"),
            (busy - self.pods_cpu).max(0.0),
        );
        report.add(
            format!("{label} idle first 5 s %"),
            idle(Duration::ZERO, WINDOW.min(self.wall)),
        );
        report.add(
            format!("{label} idle last 5 s %"),
            idle(self.wall.saturating_sub(WINDOW), self.wall),
        );
        report.add(
            format!("{label} idle overall %"),
            idle(Duration::ZERO, self.wall),
        );
        for (i, timeline) in self.timelines.iter().enumerate() {
            let pod = format!("pod-{}", i + 1);
            // A pod that never had a unit idled the whole run.
            let start_idle = timeline.first_unit().unwrap_or(self.wall);
            let tail_idle = self
                .wall
                .saturating_sub(timeline.last_unit_done().unwrap_or_default());
            report.add(
                format!("{label} {pod} start idle s"),
                start_idle.as_secs_f64(),
            );
            report.add(
                format!("{label} {pod} tail idle s"),
                tail_idle.as_secs_f64(),
            );
            report.add(format!("{label} {pod} units"), timeline.units());
        }
    }
}

/// The cores this process may run on (`Cpus_allowed_list` of
/// `/proc/self/status`, e.g. `0-1` or `0,2-3`).
fn allowed_cores() -> anyhow::Result<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .context("no Cpus_allowed_list in /proc/self/status")?
        .trim();
    let mut cores = Vec::new();
    for part in list.split(',') {
        let bad = || format!("bad Cpus_allowed_list {list:?}");
        match part.split_once('-') {
            Some((first, last)) => cores.extend(
                first.parse::<usize>().with_context(bad)?..=last.parse().with_context(bad)?,
            ),
            None => cores.push(part.parse().with_context(bad)?),
        }
    }
    if cores.is_empty() {
        bail!("no core in Cpus_allowed_list {list:?}");
    }
    Ok(cores)
}

/// The figure's source of `seconds`: 1280x720 30 fps testsrc2 with
/// temporal noise and a 440 Hz tone, x264 veryfast 8 Mb/s with a keyframe
/// every 250 frames, AAC 128k (figure 1's recipe at 720p). Generated once
/// into `cache` (written under a temporary name, then renamed), then
/// reused.
fn source(cache: &Path, seconds: u32) -> anyhow::Result<PathBuf> {
    let path = cache.join(format!("testsrc2-noise-1280x720-8M-{seconds}s.mp4"));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache).with_context(|| format!("create {}", cache.display()))?;
    let partial = cache.join(format!(
        "partial-{}-{seconds}s.mp4",
        uuid::Uuid::new_v4().simple()
    ));
    eprintln!(
        "cluster: generating {} (once; later runs reuse it)",
        path.display()
    );
    let output = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!(
            "testsrc2=size=1280x720:rate=30:duration={seconds},noise=alls=12:allf=t"
        ))
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "sine=frequency=440:sample_rate=48000:duration={seconds}"
        ))
        .args(["-map", "0:v", "-map", "1:a"])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-b:v", "8M"])
        .args(["-pix_fmt", "yuv420p", "-g", "250"])
        .args(["-c:a", "aac", "-b:a", "128k"])
        .arg(&partial)
        .output()
        .context("run ffmpeg")?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "ffmpeg could not generate {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&partial, &path)
        .with_context(|| format!("rename {} to {}", partial.display(), path.display()))?;
    Ok(path)
}

/// Waits up to 10 s for a pod to report distributed coordination (it
/// reached Redis): a pod in local mode would encode the job alone.
async fn wait_distributed(pod: &Pod) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = pod.metrics().await;
        if metric_value(&metrics, "segswarm_mode", &[("mode", "distributed")]) == Some(1.0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pod {} is not in distributed mode after 10 s", pod.addr());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last lines of every pod's log, for an error's context.
fn logs_tail(pods: &[Pod]) -> String {
    let mut text = String::from("pod logs (last 20 lines each):");
    for (i, pod) in pods.iter().enumerate() {
        let log = pod.log_text();
        let lines: Vec<&str> = log.lines().collect();
        text.push_str(&format!("\n--- pod-{}", i + 1));
        for line in &lines[lines.len().saturating_sub(20)..] {
            text.push_str(&format!("\n{line}"));
        }
    }
    text
}
