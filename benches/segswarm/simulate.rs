//! Figure 9: a simulated cluster on the real scheduler. `--pods` workers
//! (the library's `Worker`: its slots, schedule, claims, leases, publishing
//! and playlists) run in this process, each with its own `RedisCoordinator`
//! on one shared Redis, all on one storage folder, and each is given the
//! same job at the same instant, as pods that adopted a job are once they
//! have its plan. Only the encoder is simulated: [`SleepEncoder`] sleeps for
//! a batch's CPU cost on one core (measured by `scripts/bench-rung-costs`)
//! and writes outputs the worker can publish.
//!
//! Per pod count: the makespan (first `add_job` to the job finished on every
//! pod), efficiency = (ideal cost / slots of the cluster) / makespan, where
//! the ideal cost batches each segment's renditions once (one decode); how
//! busy the slots were; start idle (until every pod runs a unit); tail idle
//! (per pod, makespan minus the end of its last encode, mean over pods);
//! the mean idle gap of a pod between two encodes (finishing one batch,
//! claiming the next); claims; how much later than their cost encodes
//! ended and how late the runtime's timers fired (all pods share one
//! runtime); how busy this machine was: the bench process and Redis ("sim
//! cpu"), every process ("machine busy"). Times are wall seconds of the
//! run, at `--time-scale`: the worker's own waits (claim round trips,
//! rechecks, the audio trickle's 100 ms) do not scale, so a small scale
//! overstates them.

use crate::common::process::cpu_seconds_with_children;
use crate::common::stats::Latencies;
use crate::cpu_trace::CpuSampler;
use crate::report::{ms, Report};
use crate::shared_redis::{RedisArgs, SharedRedis};
use crate::sleep_encoder::{tiny_segment, Costs, Encode, EncodeLog, SleepEncoder, TinySegment};
use anyhow::{bail, ensure, Context};
use clap::Args;
use futures_util::future::join_all;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
// Everything this file uses from the library.
use segswarm::{
    coordination::{Coordinator, Metrics, RedisCoordinator},
    pipeline::{AudioInfo, Plan, Source, SourceInfo, Storage, VideoInfo},
    settings::{ClaimTtl, EncodeSettings, RunSettings, Slots},
    simulation::{JobOptions, Worker, WorkerSettings},
    JobId, JobOutcome,
};

#[derive(Args, Debug)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Numbers of simulated pods, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,32,64")]
    pub pods: Vec<usize>,
    /// Slots per pod (default 1: a simulated pod is one core running one
    /// batch, the unit the costs were measured in).
    #[arg(long, default_value_t = 1)]
    pub slots: usize,
    /// Factor on every simulated encode time (0.1: ten times faster).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Seconds of the simulated source (1920x1080, 30 fps, one stereo audio
    /// track; default ladder, default segment duration).
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,
    /// Costs to use instead of the built-in ones: the JSON file
    /// `scripts/bench-rung-costs` writes (target/bench-rung-costs/costs.json).
    #[arg(long)]
    pub costs: Option<PathBuf>,
    /// Claim TTL of the pods, ms (a pod's default: 30 s).
    #[arg(long, default_value_t = 30_000)]
    pub claim_ttl_ms: u64,
    /// Folder for the job's storage (default /dev/shm, else $TMPDIR).
    #[arg(long)]
    pub storage_dir: Option<PathBuf>,
    /// Write `pods,repeat,t_s,pod,units_running,batch` rows to this CSV:
    /// one row per pod at the start, then one whenever a pod's running
    /// units change (`batch`: what started or ended then).
    #[arg(long)]
    pub trace: Option<PathBuf>,
}

/// The plan of a `duration`-second 1920x1080 30 fps source with one stereo
/// audio track, default ladder and segment duration, made without a file
/// (nothing reads the source: the encoder sleeps).
fn simulated_plan(duration: f64) -> anyhow::Result<Plan> {
    const FPS: f64 = 30.0;
    let frames = (duration * FPS).round().max(1.0) as usize;
    let frame_times: Vec<f64> = (0..frames).map(|i| i as f64 / FPS).collect();
    // x264's default keyframe interval, as in a file nobody tuned.
    let keyframe_times = frame_times.iter().step_by(250).copied().collect();
    let info = SourceInfo {
        format: "mov,mp4,m4a,3gp,3g2,mj2".into(),
        duration,
        start_time: 0.0,
        video: VideoInfo {
            stream_index: 0,
            codec: "h264".into(),
            width: 1920,
            height: 1080,
            sample_aspect: (1, 1),
            rotation: 0,
            pix_fmt: "yuv420p".into(),
            frame_times,
            keyframe_times,
            last_frame_duration: 1.0 / FPS,
        },
        audio: vec![AudioInfo {
            stream_index: 1,
            codec: "aac".into(),
            channels: 2,
            sample_rate: 48_000,
            language: Some("eng".into()),
            title: None,
        }],
        truncated: None,
    };
    let source = Source::File(PathBuf::from("/simulated/source-1080p30.mp4"));
    Ok(Plan::new(
        JobId::new_v4(),
        source,
        EncodeSettings::default(),
        &info,
    )?)
}

/// A folder removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(parent: Option<&Path>) -> anyhow::Result<Scratch> {
        let shm = Path::new("/dev/shm");
        let parent = match parent {
            Some(parent) => parent.to_path_buf(),
            None if shm.is_dir() => shm.to_path_buf(),
            None => std::env::temp_dir(),
        };
        let dir = parent.join(format!(
            "segswarm-bench-simulate-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one run measured.
struct RunFigures {
    makespan: f64,
    busy: f64,
    start_idle: f64,
    tail_idle_mean: f64,
    gap_mean: f64,
    overrun_mean: f64,
    lag: Latencies,
    sim_busy: f64,
    machine_busy: f64,
    claim_calls: u64,
    /// Mean round trip of a claim call, seconds.
    claim_mean: f64,
    claims_won: u64,
    claims_held: u64,
    video_batches: usize,
    encodes: Vec<Encode>,
    started: Instant,
}

/// How late this process's timers fire while the pods run: a task that
/// sleeps 10 ms again and again. All pods share one runtime on this
/// machine's cores; when they are busy (the pods' bookkeeping, other
/// processes), every pod's claims, notices and sleeps are late by this
/// much, which real pods on their own machines would not be.
struct RuntimeLag {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Latencies>,
}

impl RuntimeLag {
    const PERIOD: Duration = Duration::from_millis(10);

    fn start() -> RuntimeLag {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut lag = Latencies::default();
                while !stop.is_cancelled() {
                    let asleep = Instant::now();
                    tokio::time::sleep(Self::PERIOD).await;
                    lag.push(asleep.elapsed().saturating_sub(Self::PERIOD));
                }
                lag
            }
        });
        RuntimeLag { stop, task }
    }

    async fn stop(self) -> anyhow::Result<Latencies> {
        self.stop.cancel();
        self.task.await.context("the runtime lag task failed")
    }
}

/// One simulated pod.
struct Pod {
    worker: Worker,
    coord: Arc<RedisCoordinator>,
    metrics: Arc<Metrics>,
}

pub async fn run(args: &SimulateArgs) -> anyhow::Result<Report> {
    ensure!(args.time_scale > 0.0, "--time-scale must be above 0");
    ensure!(args.duration >= 1.0, "--duration must be at least 1 s");
    let costs = Arc::new(match &args.costs {
        Some(path) => Costs::read(path)?,
        None => Costs::default(),
    });
    let template = simulated_plan(args.duration)?;
    for rendition in &template.renditions {
        if !costs.rung_ms_per_frame.contains_key(&rendition.name) {
            bail!("no cost for rendition {} in the costs", rendition.name);
        }
    }
    let slots = args.slots.max(1);
    let job_seconds = costs.job_ms(&template) / 1e3;
    eprintln!(
        "simulate: {} s source, {} segments x {} renditions + audio + thumbnail = {} units; \
         ideal cost {job_seconds:.1} CPU s at time scale 1, {:.1} s at {}",
        args.duration,
        template.segments.len(),
        template.renditions.len(),
        template.units().len(),
        job_seconds * args.time_scale,
        args.time_scale
    );
    let redis = SharedRedis::new(&args.redis);
    let storage = Scratch::new(args.storage_dir.as_deref())?;
    let segment = Arc::new(tiny_segment(&storage.0)?);
    let mut trace = match &args.trace {
        Some(path) => {
            let mut file = std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            );
            writeln!(file, "pods,repeat,t_s,pod,units_running,batch")?;
            Some(file)
        }
        None => None,
    };
    let mut report = Report::new("simulate", args.redis.repeat);
    for repeat in 0..args.redis.repeat.max(1) {
        for &pods in &args.pods {
            let pods = pods.max(1);
            let mut plan = template.clone();
            plan.job_id = JobId::new_v4();
            let figures = run_once(
                args,
                &redis,
                &storage.0,
                pods,
                Arc::new(plan),
                (&costs, &segment),
            )
            .await?;
            let ideal = job_seconds * args.time_scale / (pods * slots) as f64;
            let label = format!("pods={pods}");
            report.add(format!("{label} makespan s"), figures.makespan);
            report.add(format!("{label} ideal s"), ideal);
            report.add(
                format!("{label} efficiency %"),
                100.0 * ideal / figures.makespan,
            );
            report.add(format!("{label} busy %"), 100.0 * figures.busy);
            report.add(format!("{label} start idle s"), figures.start_idle);
            report.add(format!("{label} tail idle mean s"), figures.tail_idle_mean);
            report.add(format!("{label} gap mean ms"), 1e3 * figures.gap_mean);
            report.add(format!("{label} claim calls"), figures.claim_calls as f64);
            report.add(format!("{label} claim mean ms"), 1e3 * figures.claim_mean);
            report.add(format!("{label} claims won"), figures.claims_won as f64);
            report.add(format!("{label} claims held"), figures.claims_held as f64);
            report.add(
                format!("{label} video batches"),
                figures.video_batches as f64,
            );
            report.add(
                format!("{label} overrun mean ms"),
                1e3 * figures.overrun_mean,
            );
            report.add(
                format!("{label} runtime lag p99 ms"),
                ms(figures.lag.percentile(99.0)),
            );
            report.add(format!("{label} runtime lag max ms"), ms(figures.lag.max()));
            report.add(format!("{label} sim cpu %"), 100.0 * figures.sim_busy);
            report.add(
                format!("{label} machine busy %"),
                100.0 * figures.machine_busy,
            );
            if let Some(file) = trace.as_mut() {
                write_trace(file, pods, repeat, &figures)?;
            }
        }
    }
    if let Some(mut file) = trace {
        file.flush()?;
    }
    Ok(report)
}

/// One run: `pods` workers on one fresh job, from the same `add_job`
/// instant to the job's end on every pod, then everything torn down.
async fn run_once(
    args: &SimulateArgs,
    redis: &SharedRedis,
    storage_root: &Path,
    pods: usize,
    plan: Arc<Plan>,
    (costs, segment): (&Arc<Costs>, &Arc<TinySegment>),
) -> anyhow::Result<RunFigures> {
    let slots = args.slots.max(1);
    let log = Arc::new(EncodeLog::default());
    let run_settings = RunSettings {
        slots: Slots::from_setting(Some(slots)),
        claim_ttl: ClaimTtl::from_millis(args.claim_ttl_ms),
        ..RunSettings::default()
    };
    let mut cluster = Vec::new();
    for pod in 0..pods {
        let metrics = Arc::new(Metrics::new()?);
        let coord = Arc::new(redis.coordinator_counting(
            run_settings.claim_ttl.get(),
            slots + 2,
            metrics.clone(),
        )?);
        coord.ping().await?;
        let encoder = Arc::new(SleepEncoder {
            pod,
            costs: costs.clone(),
            time_scale: args.time_scale,
            segment: segment.clone(),
            log: log.clone(),
        });
        let settings = WorkerSettings::new(format!("sim-pod-{pod}"), run_settings.clone());
        let shared: Arc<dyn Coordinator> = coord.clone();
        let worker = Worker::with_encoder(settings, shared, metrics.clone(), encoder);
        cluster.push(Pod {
            worker,
            coord,
            metrics,
        });
    }
    // Every pod hears the others' notices before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.iter().all(|p| p.coord.notices_connected()) {
        ensure!(
            Instant::now() < deadline,
            "pub/sub of {pods} pods not connected within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let storage = Storage::new(storage_root);
    let layout = storage.job(plan.job_id);
    let (own_cpu, redis_cpu) = (
        cpu_seconds_with_children(std::process::id()),
        redis.cost().cpu_seconds,
    );
    let started = Instant::now();
    let machine = CpuSampler::start(started, Duration::from_secs(1))?;
    let lag = RuntimeLag::start();
    let added = join_all(cluster.iter().map(|pod| {
        pod.worker
            .add_job(plan.clone(), layout.clone(), JobOptions::default())
    }))
    .await;
    let mut jobs = Vec::new();
    for job in added {
        jobs.push(job?);
    }
    // Generous: four times the ideal makespan, plus a minute.
    let limit = Duration::from_secs_f64(
        costs.job_ms(&plan) * args.time_scale / 1e3 / (pods * slots) as f64 * 4.0 + 60.0,
    );
    let ended = tokio::time::timeout(
        limit,
        join_all(jobs.iter().map(|job| async {
            let outcome = job.wait().await;
            (outcome, Instant::now())
        })),
    )
    .await
    .with_context(|| format!("{pods} pods did not finish the job within {limit:?}"))?;
    let mut finished = started;
    for (outcome, at) in &ended {
        ensure!(
            *outcome == JobOutcome::Done,
            "a pod ended the job {outcome:?}"
        );
        finished = finished.max(*at);
    }
    let makespan = (finished - started).as_secs_f64();
    let sim_cpu = cpu_seconds_with_children(std::process::id()) - own_cpu
        + redis.cost().cpu_seconds
        - redis_cpu;
    let machine = machine.stop().await?;
    let lag = lag.stop().await?;
    let cores: Vec<usize> =
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    let machine_busy = machine.busy_seconds(&cores) / (makespan * cores.len() as f64);
    let (mut claim_calls, mut claims_won, mut claims_held) = (0, 0, 0);
    let mut claim_seconds = 0.0;
    for pod in &cluster {
        claim_calls += pod.metrics.claim_seconds.get_sample_count();
        claim_seconds += pod.metrics.claim_seconds.get_sample_sum();
        claims_won += pod.metrics.claims.with_label_values(&["won"]).get();
        claims_held += pod.metrics.claims.with_label_values(&["held"]).get();
    }
    // Tear down: no slot left, no connection, no key, no file.
    join_all(cluster.iter().map(|pod| pod.worker.shutdown())).await;
    drop(jobs);
    drop(cluster);
    let left = redis.delete_keys(&format!("segswarm:{{{}}}*", plan.job_id))?;
    if let Some(claim) = left.iter().find(|key| key.contains(":claim:")) {
        eprintln!("simulate: a claim was left in Redis after the job ended: {claim}");
    }
    std::fs::remove_dir_all(layout.dir())
        .with_context(|| format!("removing {}", layout.dir().display()))?;

    let encodes = log.take();
    let capacity = (pods * slots) as f64;
    let busy: f64 = encodes
        .iter()
        .map(|e| (e.end - e.start).as_secs_f64())
        .sum::<f64>()
        / (capacity * makespan);
    let mut by_pod: Vec<Vec<(f64, f64)>> = vec![Vec::new(); pods];
    for encode in &encodes {
        let (start, end) = (
            (encode.start - started).as_secs_f64(),
            (encode.end - started).as_secs_f64(),
        );
        by_pod[encode.pod].push((start, end));
    }
    let mut first_start = vec![makespan; pods];
    let mut last_end = vec![0.0f64; pods];
    let mut gaps = Vec::new();
    for (pod, mut spans) in by_pod.into_iter().enumerate() {
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Idle between busy periods (a pod with several slots is busy
        // while any of them runs).
        let mut busy_until = None;
        for (start, end) in spans {
            first_start[pod] = first_start[pod].min(start);
            last_end[pod] = last_end[pod].max(end);
            match busy_until {
                Some(until) if start > until => {
                    gaps.push(start - until);
                    busy_until = Some(end);
                }
                Some(until) => busy_until = Some(end.max(until)),
                None => busy_until = Some(end),
            }
        }
    }
    Ok(RunFigures {
        makespan,
        busy,
        start_idle: first_start.iter().copied().fold(0.0, f64::max),
        tail_idle_mean: last_end.iter().map(|end| makespan - end).sum::<f64>() / pods as f64,
        gap_mean: gaps.iter().sum::<f64>() / gaps.len().max(1) as f64,
        overrun_mean: {
            let overruns: Vec<f64> = encodes
                .iter()
                .filter(|e| e.finished)
                .map(|e| (e.end - e.start).as_secs_f64() - e.cost.as_secs_f64())
                .collect();
            overruns.iter().sum::<f64>() / overruns.len().max(1) as f64
        },
        lag,
        sim_busy: sim_cpu / (makespan * cores.len() as f64),
        machine_busy,
        claim_calls,
        claim_mean: claim_seconds / claim_calls.max(1) as f64,
        claims_won,
        claims_held,
        video_batches: encodes.iter().filter(|e| e.video).count(),
        encodes,
        started,
    })
}

/// A pod's units running over time: a row per pod at 0, then one at each
/// start and end of an encode.
fn write_trace(
    file: &mut impl Write,
    pods: usize,
    repeat: usize,
    figures: &RunFigures,
) -> anyhow::Result<()> {
    let mut changes: Vec<(f64, usize, i64, &str)> = Vec::new();
    for encode in &figures.encodes {
        let units = encode.units as i64;
        let at = |instant: Instant| (instant - figures.started).as_secs_f64();
        let what = encode.what.as_str();
        changes.push((at(encode.start), encode.pod, units, what));
        changes.push((at(encode.end), encode.pod, -units, what));
    }
    // Ends before starts at the same instant.
    changes.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
    let mut running = vec![0i64; pods];
    for pod in 0..pods {
        writeln!(file, "{pods},{repeat},0.000000,{pod},0,")?;
    }
    for (t, pod, delta, what) in changes {
        running[pod] += delta;
        let what = what.replace('"', "'");
        writeln!(
            file,
            "{pods},{repeat},{t:.6},{pod},{},\"{what}\"",
            running[pod]
        )?;
    }
    Ok(())
}
