//! Benchmark harness behind `segswarm bench ...`: coordination throughput
//! and claim latency, scale-out efficiency, hand-off and takeover times, pod
//! memory. Each bench runs `--repeat` times and prints a table of
//! min/median/max per figure and one JSON line (`{"bench": ..., "figures":
//! ...}`) that CI can check. Results and how they were taken:
//! docs/benchmarks.md.
//!
//! Simulated pods are tasks of this process, each with its own
//! [`RedisCoordinator`] (its own connection pool and pub/sub connection, like
//! a real pod), driving the same coordinator calls as the worker: claim a
//! batch (segment k of every rendition, one script), produce each unit,
//! complete it (which publishes the notice). They do not run the full
//! [`crate::worker::Worker`]: its encoder is ffmpeg.

use crate::coord::{
    ClaimOutcome, CoordError, Coordinator, Lease, RedisCoordinator, RedisSettings, WaitOutcome,
};
use crate::metrics::Metrics;
use crate::plan::Unit;
use crate::JobId;
use clap::{Args, Subcommand};
use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Coord(#[from] CoordError),
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

fn setup(text: impl Into<String>) -> BenchError {
    BenchError::Setup(text.into())
}

/// `segswarm bench <figure>`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Coordination throughput and claim latency, no-op encoder (figure 3).
    Coord(CoordArgs),
    /// Scale-out efficiency with an encoder that sleeps per unit (figure 4).
    Scale(ScaleArgs),
    /// Hand-off, takeover after expiry, takeover after release (figure 5).
    Handoff(HandoffArgs),
    /// RSS of a real pod, idle and while transcoding (figure 6).
    Memory(MemoryArgs),
    /// Time from submit to `playable` on a real pod, against the encode
    /// time of one lowest-rendition segment (figure 2).
    Playable(PlayableArgs),
}

#[derive(Args, Debug)]
pub struct PlayableArgs {
    /// Runs; the table shows min/median/max.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Length of the generated 1920x1080 30 fps clip.
    #[arg(long, default_value_t = 60)]
    pub seconds: u32,
}

#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Redis to use (default: a redis-server started on a free loopback
    /// port, stopped at the end).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Runs of each figure; the table shows min/median/max over them.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

#[derive(Args, Debug)]
pub struct CoordArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Numbers of simulated pods, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub pods: Vec<usize>,
    /// Units of the job (segments x renditions).
    #[arg(long, default_value_t = 40_000)]
    pub units: usize,
    /// Renditions per segment, claimed together in one script (the worker's
    /// batch).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Concurrent batches per pod (the worker's slots).
    #[arg(long, default_value_t = 4)]
    pub slots: usize,
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,32")]
    pub pods: Vec<usize>,
    /// Time the simulated encoder sleeps per unit.
    #[arg(long, default_value_t = 200)]
    pub unit_ms: u64,
    #[arg(long, default_value_t = 20)]
    pub units_per_pod: usize,
}

#[derive(Args, Debug)]
pub struct HandoffArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Hand-off rounds (holder completes, waiter wakes).
    #[arg(long, default_value_t = 200)]
    pub rounds: usize,
    /// Rounds of takeover after expiry and after release.
    #[arg(long, default_value_t = 5)]
    pub takeover_rounds: usize,
    /// Claim TTL for the takeover rounds.
    #[arg(long, default_value_t = 1000)]
    pub ttl_ms: u64,
}

#[derive(Args, Debug)]
pub struct MemoryArgs {
    /// Runs; the table shows min/median/max.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Length of the generated 1280x720 clip.
    #[arg(long, default_value_t = 20)]
    pub seconds: u32,
}

/// Runs one bench and prints its table and JSON line.
pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    let report = match args.command {
        BenchCommand::Coord(args) => coord(&args).await?,
        BenchCommand::Scale(args) => scale(&args).await?,
        BenchCommand::Handoff(args) => handoff(&args).await?,
        BenchCommand::Memory(args) => memory(&args).await?,
        BenchCommand::Playable(args) => playable(&args).await?,
    };
    report.print();
    Ok(())
}

// ---------------------------------------------------------------- report

/// Figures of one bench, one value per repeat.
pub struct Report {
    bench: &'static str,
    repeat: usize,
    figures: Vec<(String, Vec<f64>)>,
}

impl Report {
    fn new(bench: &'static str, repeat: usize) -> Self {
        Report {
            bench,
            repeat,
            figures: Vec::new(),
        }
    }

    fn add(&mut self, name: impl Into<String>, value: f64) {
        let name = name.into();
        match self.figures.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => self.figures.push((name, vec![value])),
        }
    }

    fn summary(values: &[f64]) -> (f64, f64, f64) {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = if sorted.len() % 2 == 1 {
            sorted[sorted.len() / 2]
        } else {
            (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
        };
        (sorted[0], median, sorted[sorted.len() - 1])
    }

    /// The table, then the JSON line.
    pub fn print(&self) {
        let width = self
            .figures
            .iter()
            .map(|(n, _)| n.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let mut out = format!(
            "{:<width$}  {:>12}  {:>12}  {:>12}\n",
            "figure", "min", "median", "max"
        );
        let mut json = serde_json::Map::new();
        for (name, values) in &self.figures {
            let (min, median, max) = Self::summary(values);
            out.push_str(&format!(
                "{name:<width$}  {:>12}  {:>12}  {:>12}\n",
                fmt(min),
                fmt(median),
                fmt(max)
            ));
            json.insert(
                name.clone(),
                serde_json::json!({"min": min, "median": median, "max": max}),
            );
        }
        let line = serde_json::json!({
            "bench": self.bench,
            "repeat": self.repeat,
            "figures": json,
        });
        out.push_str(&format!("{line}\n"));
        // A closed stdout (`| head`) is not an error of the bench.
        let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
    }
}

fn fmt(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

/// The `q` quantile (0..=1) of `values`, nearest rank; 0 when empty.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------- redis

/// A `redis-server` child on a free loopback port, killed when dropped.
struct RedisChild {
    child: Child,
    url: String,
}

impl RedisChild {
    async fn start() -> Result<Self, BenchError> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| setup(format!("cannot start redis-server: {err}")))?;
        let server = RedisChild {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut conn) = connect(&server.url).await {
                let pong: Result<String, _> = ::redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                return Err(setup("redis-server did not answer PING within 10 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, BenchError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn connect(url: &str) -> Result<::redis::aio::MultiplexedConnection, BenchError> {
    let client = ::redis::Client::open(url)?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// The Redis to use: the given URL, or a child server (kept alive by the
/// returned guard).
async fn redis_for(common: &CommonArgs) -> Result<(String, Option<RedisChild>), BenchError> {
    match &common.redis_url {
        Some(url) => Ok((url.clone(), None)),
        None => {
            let child = RedisChild::start().await?;
            Ok((child.url.clone(), Some(child)))
        }
    }
}

/// Redis's own accounting: microseconds spent in commands (scripts included)
/// and CPU seconds of the server process.
#[derive(Debug, Clone, Copy, Default)]
struct RedisCost {
    command_usec: f64,
    calls: f64,
    cpu_seconds: f64,
}

async fn redis_cost(url: &str) -> Result<RedisCost, BenchError> {
    let mut conn = connect(url).await?;
    let stats: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let cpu: String = ::redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut conn)
        .await?;
    let mut cost = RedisCost::default();
    for line in stats.lines() {
        // cmdstat_evalsha:calls=1,usec=2,usec_per_call=2.00,...
        let Some((name, fields)) = line.split_once(':') else {
            continue;
        };
        // Scripts only: the commands a script calls are counted again
        // under their own names, and setup commands (HELLO, SUBSCRIBE,
        // SCRIPT LOAD) are not per unit.
        if name != "cmdstat_evalsha" && name != "cmdstat_eval" {
            continue;
        }
        for field in fields.split(',') {
            match field.split_once('=') {
                Some(("usec", v)) => cost.command_usec += v.parse::<f64>().unwrap_or(0.0),
                Some(("calls", v)) => cost.calls += v.parse::<f64>().unwrap_or(0.0),
                _ => {}
            }
        }
    }
    for line in cpu.lines() {
        if let Some((name, value)) = line.split_once(':') {
            if name == "used_cpu_sys" || name == "used_cpu_user" {
                cost.cpu_seconds += value.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    Ok(cost)
}

fn coordinator(url: &str, ttl: Duration, pool: usize) -> Result<RedisCoordinator, BenchError> {
    let metrics = Arc::new(Metrics::new().map_err(|err| setup(format!("metrics: {err}")))?);
    let mut settings = RedisSettings::new(url, ttl);
    settings.pool_size = pool;
    RedisCoordinator::new(settings, metrics).map_err(|err| setup(err.to_string()))
}

// ---------------------------------------------------------------- pods

const RENDITIONS: [&str; 10] = [
    "240p", "360p", "480p", "720p", "1080p", "1440p", "2160p", "r8", "r9", "r10",
];

/// What a simulated pod does with a unit it won.
#[derive(Clone)]
enum Work {
    /// Write a tiny file below this folder (no-op encoder).
    File(PathBuf),
    /// Sleep this long (an encode on another machine).
    Sleep(Duration),
}

/// What all pods of one run did.
#[derive(Default)]
struct RunStats {
    completed: usize,
    claim_calls: usize,
    claim_ms: Vec<f64>,
}

struct PodPlan {
    segments: usize,
    batch: usize,
    slots: usize,
    work: Work,
}

/// One simulated pod: `slots` tasks walking the segments from `start`,
/// skipping those it heard are done, claiming each segment's renditions in
/// one script, producing and completing what it won.
async fn run_pod(
    coord: Arc<RedisCoordinator>,
    job: JobId,
    start: usize,
    plan: Arc<PodPlan>,
    worker_id: String,
) -> Result<RunStats, BenchError> {
    let cursor = Arc::new(AtomicUsize::new(0));
    let done: Arc<Mutex<HashSet<usize>>> = Arc::default();
    // Learn what other pods finished, as the worker does from notices.
    let listener = {
        let done = done.clone();
        let mut notices = coord.unit_notices();
        tokio::spawn(async move {
            loop {
                match notices.recv().await {
                    Ok(notice) => {
                        if let (true, Unit::Video { index, .. }) = (notice.done, &notice.unit) {
                            if let Ok(mut done) = done.lock() {
                                done.insert(*index);
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
        })
    };
    let mut slots = tokio::task::JoinSet::new();
    for _ in 0..plan.slots {
        let (coord, cursor, done, plan, worker_id) = (
            coord.clone(),
            cursor.clone(),
            done.clone(),
            plan.clone(),
            worker_id.clone(),
        );
        slots.spawn(async move {
            let mut stats = RunStats::default();
            loop {
                let step = cursor.fetch_add(1, Ordering::Relaxed);
                if step >= plan.segments {
                    break;
                }
                let index = (start + step) % plan.segments;
                if done.lock().map(|d| d.contains(&index)).unwrap_or(false) {
                    continue;
                }
                let units: Vec<Unit> = RENDITIONS[..plan.batch]
                    .iter()
                    .map(|r| Unit::Video {
                        rendition: (*r).to_string(),
                        index,
                    })
                    .collect();
                let started = Instant::now();
                let outcomes = coord.claim(job, &units, &worker_id).await?;
                stats.claim_ms.push(ms(started.elapsed()));
                stats.claim_calls += 1;
                let leases: Vec<Lease> = outcomes
                    .into_iter()
                    .filter_map(|o| match o {
                        ClaimOutcome::Won { lease, .. } => Some(lease),
                        _ => None,
                    })
                    .collect();
                if leases.is_empty() {
                    continue;
                }
                match &plan.work {
                    Work::Sleep(d) => tokio::time::sleep(*d * leases.len() as u32).await,
                    Work::File(dir) => {
                        // One blocking task per batch, like one ffmpeg per
                        // batch writing every rendition's file.
                        let paths: Vec<PathBuf> = leases
                            .iter()
                            .map(|l| dir.join(l.unit.to_string().replace('/', "_")))
                            .collect();
                        tokio::task::spawn_blocking(move || {
                            paths
                                .iter()
                                .try_for_each(|path| std::fs::write(path, b"segment"))
                        })
                        .await
                        .map_err(|err| setup(format!("writer: {err}")))??;
                    }
                }
                for lease in &leases {
                    coord.complete(lease).await?;
                    stats.completed += 1;
                }
            }
            Ok::<_, BenchError>(stats)
        });
    }
    let mut total = RunStats::default();
    while let Some(joined) = slots.join_next().await {
        let stats = joined.map_err(|err| setup(format!("pod task: {err}")))??;
        total.completed += stats.completed;
        total.claim_calls += stats.claim_calls;
        total.claim_ms.extend(stats.claim_ms);
    }
    listener.abort();
    Ok(total)
}

/// One run: `pods` pods on one fresh job; returns the stats and wall time.
async fn run_pods(
    url: &str,
    pods: usize,
    plan: PodPlan,
    pool: usize,
) -> Result<(RunStats, Duration), BenchError> {
    let job = JobId::new_v4();
    let plan = Arc::new(plan);
    let mut coords = Vec::new();
    for _ in 0..pods {
        let coord = Arc::new(coordinator(url, Duration::from_secs(30), pool)?);
        coord.ping().await?;
        coords.push(coord);
    }
    // Let every pub/sub connection subscribe before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !coords.iter().all(|c| c.notices_connected()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (p, coord) in coords.iter().enumerate() {
        tasks.spawn(run_pod(
            coord.clone(),
            job,
            p * plan.segments / pods,
            plan.clone(),
            format!("bench-pod-{p}"),
        ));
    }
    let mut total = RunStats::default();
    while let Some(joined) = tasks.join_next().await {
        let stats = joined.map_err(|err| setup(format!("pod: {err}")))??;
        total.completed += stats.completed;
        total.claim_calls += stats.claim_calls;
        total.claim_ms.extend(stats.claim_ms);
    }
    let wall = started.elapsed();
    let expected = plan.segments * plan.batch;
    if total.completed != expected {
        return Err(setup(format!(
            "{} units completed, {expected} expected",
            total.completed
        )));
    }
    if let Some(coord) = coords.first() {
        coord.forget(job).await?;
    }
    Ok((total, wall))
}

// ---------------------------------------------------------------- figures

async fn coord(args: &CoordArgs) -> Result<Report, BenchError> {
    let batch = args.batch.clamp(1, RENDITIONS.len());
    let (url, _server) = redis_for(&args.common).await?;
    let mut report = Report::new("coord", args.common.repeat);
    let tmp = TempDir::new("coord")?;
    for _ in 0..args.common.repeat.max(1) {
        for &pods in &args.pods {
            let pods = pods.max(1);
            let dir = tmp.path().join(format!("run-{}", JobId::new_v4()));
            std::fs::create_dir_all(&dir)?;
            let plan = PodPlan {
                segments: args.units.div_ceil(batch),
                batch,
                slots: args.slots.max(1),
                work: Work::File(dir.clone()),
            };
            let before = redis_cost(&url).await?;
            let own_before = own_cpu_seconds()?;
            let (mut stats, wall) = run_pods(&url, pods, plan, args.slots.max(1) + 2).await?;
            let own = own_cpu_seconds()? - own_before;
            let after = redis_cost(&url).await?;
            std::fs::remove_dir_all(&dir)?;
            let units = stats.completed as f64;
            let label = format!("pods={pods}");
            report.add(
                format!("{label} units/s"),
                units / wall.as_secs_f64().max(1e-9),
            );
            report.add(
                format!("{label} claim p50 ms"),
                quantile(&mut stats.claim_ms, 0.5),
            );
            report.add(
                format!("{label} claim p99 ms"),
                quantile(&mut stats.claim_ms, 0.99),
            );
            report.add(
                format!("{label} claims/unit"),
                stats.claim_calls as f64 * batch as f64 / units,
            );
            report.add(
                format!("{label} redis cmd us/unit"),
                (after.command_usec - before.command_usec) / units,
            );
            let redis_cpu = after.cpu_seconds - before.cpu_seconds;
            report.add(
                format!("{label} redis cpu us/unit"),
                redis_cpu * 1e6 / units,
            );
            report.add(format!("{label} pods cpu us/unit"), own * 1e6 / units);
            // Both CPU consumers against what the machine has: near 100 %
            // means the figure is bounded by this machine's cores.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            report.add(
                format!("{label} machine cpu busy %"),
                100.0 * (own + redis_cpu) / (wall.as_secs_f64() * cores),
            );
        }
    }
    Ok(report)
}

async fn scale(args: &ScaleArgs) -> Result<Report, BenchError> {
    let (url, _server) = redis_for(&args.common).await?;
    let mut report = Report::new("scale", args.common.repeat);
    let unit = Duration::from_millis(args.unit_ms.max(1));
    for _ in 0..args.common.repeat.max(1) {
        let mut base = None;
        for &pods in &args.pods {
            let pods = pods.max(1);
            let plan = PodPlan {
                segments: pods * args.units_per_pod.max(1),
                batch: 1,
                slots: 1,
                work: Work::Sleep(unit),
            };
            let before = redis_cost(&url).await?;
            let (stats, wall) = run_pods(&url, pods, plan, 2).await?;
            let after = redis_cost(&url).await?;
            let units = stats.completed as f64;
            let throughput = units / wall.as_secs_f64();
            let one = *base.get_or_insert(throughput / pods as f64);
            let label = format!("pods={pods}");
            report.add(format!("{label} units/s"), throughput);
            report.add(
                format!("{label} efficiency %"),
                100.0 * throughput / (pods as f64 * one),
            );
            report.add(
                format!("{label} redis cmd us/unit"),
                (after.command_usec - before.command_usec) / units,
            );
        }
    }
    Ok(report)
}

async fn handoff(args: &HandoffArgs) -> Result<Report, BenchError> {
    let (url, _server) = redis_for(&args.common).await?;
    let mut report = Report::new("handoff", args.common.repeat);
    let ttl = Duration::from_millis(args.ttl_ms.max(1));
    for _ in 0..args.common.repeat.max(1) {
        let holder = coordinator(&url, ttl, 4)?;
        let waiter = Arc::new(coordinator(&url, ttl, 4)?);
        holder.ping().await?;
        waiter.ping().await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(holder.notices_connected() && waiter.notices_connected())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let job = JobId::new_v4();
        let mut handoff_ms = Vec::new();
        for index in 0..args.rounds {
            let unit = Unit::Video {
                rendition: "240p".into(),
                index,
            };
            let lease = won(holder
                .claim(job, std::slice::from_ref(&unit), "holder")
                .await?)?;
            let wait = {
                let (waiter, unit) = (waiter.clone(), unit.clone());
                tokio::spawn(async move {
                    let outcome = waiter.wait_for(job, &unit, Duration::from_secs(10)).await;
                    (outcome, Instant::now())
                })
            };
            // Let the waiter subscribe and look before the holder completes.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let started = Instant::now();
            holder.complete(&lease).await?;
            let (outcome, woke) = wait.await.map_err(|err| setup(format!("waiter: {err}")))?;
            if outcome? != WaitOutcome::Done {
                return Err(setup("the waiter did not see the unit done"));
            }
            handoff_ms.push(ms(woke.saturating_duration_since(started)));
        }
        report.add("handoff p50 ms", quantile(&mut handoff_ms, 0.5));
        report.add("handoff p99 ms", quantile(&mut handoff_ms, 0.99));

        let mut expiry_ms = Vec::new();
        let mut release_ms = Vec::new();
        for round in 0..args.takeover_rounds {
            for expire in [true, false] {
                let unit = Unit::Video {
                    rendition: if expire { "360p" } else { "480p" }.into(),
                    index: round,
                };
                // A fresh holder per round: kill -9 is dropping it without a
                // release; SIGTERM is releasing.
                let dying = coordinator(&url, ttl, 2)?;
                let lease = won(dying
                    .claim(job, std::slice::from_ref(&unit), "dying")
                    .await?)?;
                let started = Instant::now();
                let taker = {
                    let (waiter, unit) = (waiter.clone(), unit.clone());
                    tokio::spawn(async move {
                        let wait_until = Instant::now() + Duration::from_secs(30);
                        loop {
                            match waiter
                                .claim(job, std::slice::from_ref(&unit), "taker")
                                .await?
                            {
                                v if matches!(v.first(), Some(ClaimOutcome::Won { .. })) => {
                                    return Ok::<_, BenchError>(Instant::now());
                                }
                                _ if Instant::now() > wait_until => {
                                    return Err(setup("no takeover within 30 s"));
                                }
                                _ => {
                                    waiter.wait_for(job, &unit, Duration::from_secs(5)).await?;
                                }
                            }
                        }
                    })
                };
                if expire {
                    drop(dying);
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let released = Instant::now();
                    dying.release(&lease, false).await?;
                    let taken = taker
                        .await
                        .map_err(|err| setup(format!("taker: {err}")))??;
                    release_ms.push(ms(taken.saturating_duration_since(released)));
                    continue;
                }
                let taken = taker
                    .await
                    .map_err(|err| setup(format!("taker: {err}")))??;
                expiry_ms.push(ms(taken.saturating_duration_since(started)));
            }
        }
        if !expiry_ms.is_empty() {
            report.add(
                "takeover after kill (ttl) max ms",
                quantile(&mut expiry_ms, 1.0),
            );
            report.add(
                "takeover after release max ms",
                quantile(&mut release_ms, 1.0),
            );
            report.add("takeover ttl ms", ms(ttl));
        }
        waiter.forget(job).await?;
    }
    Ok(report)
}

fn won(outcomes: Vec<ClaimOutcome>) -> Result<Lease, BenchError> {
    match outcomes.into_iter().next() {
        Some(ClaimOutcome::Won { lease, .. }) => Ok(lease),
        other => Err(setup(format!(
            "expected to win a fresh unit, got {other:?}"
        ))),
    }
}

async fn memory(args: &MemoryArgs) -> Result<Report, BenchError> {
    let mut report = Report::new("memory", args.repeat);
    let tmp = TempDir::new("memory")?;
    let source = generate_clip(tmp.path(), "1280x720", args.seconds)?;
    let exe = std::env::current_exe()?;
    let http = reqwest::Client::new();
    for run in 0..args.repeat.max(1) {
        let (mut pod, base) = start_pod(&exe, tmp.path(), run, &http).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pid = pod.0.id();
        let idle = rss_mb(pid)?;
        let id = submit_job(&http, &base, &source).await?;
        let mut peak = idle;
        let started = Instant::now();
        let mut last_poll = Instant::now() - Duration::from_secs(1);
        loop {
            peak = peak.max(rss_mb(pid)?);
            if last_poll.elapsed() >= Duration::from_millis(500) {
                last_poll = Instant::now();
                let state: serde_json::Value = http
                    .get(format!("{base}/v1/jobs/{id}"))
                    .send()
                    .await?
                    .json()
                    .await?;
                let status = state["status"].as_str().unwrap_or("");
                if ["done", "partial", "failed", "canceled"].contains(&status) {
                    if status != "done" {
                        return Err(setup(format!("the job ended {status}")));
                    }
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(600) {
                return Err(setup("the job did not finish within 10 min"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        report.add("idle rss MB", idle);
        report.add("max rss under load MB", peak);
        report.add("job seconds", started.elapsed().as_secs_f64());
        pod.stop();
    }
    Ok(report)
}

/// Figure 2: a real pod is started, the source submitted, and the time to
/// the job's `playable` flag measured (polled every 10 ms); the same
/// source's segment 0 of the lowest rendition is encoded alone through the
/// library (probe, plan, one batch) for the comparison.
async fn playable(args: &PlayableArgs) -> Result<Report, BenchError> {
    use crate::encode::{Batch, VideoOutput};
    use crate::ffmpeg::RunControl;
    let mut report = Report::new("playable", args.repeat);
    let tmp = TempDir::new("playable")?;
    let source = generate_clip(tmp.path(), "1920x1080", args.seconds)?;
    let parsed = crate::source::Source::parse(&source.display().to_string(), None)
        .map_err(|e| setup(e.to_string()))?;
    let info = crate::probe::probe(&parsed)
        .await
        .map_err(|e| setup(e.to_string()))?;
    let plan = crate::plan::Plan::new(
        JobId::new_v4(),
        parsed,
        crate::config::EncodeSettings::default(),
        &info,
    )
    .map_err(|e| setup(e.to_string()))?;
    let lowest = plan
        .renditions
        .first()
        .cloned()
        .ok_or_else(|| setup("the plan has no rendition"))?;
    let exe = std::env::current_exe()?;
    let http = reqwest::Client::new();
    for run in 0..args.repeat.max(1) {
        // One lowest-rendition segment, encoded alone.
        let batch = Batch::Video {
            segment: plan.segments[0].clone(),
            outputs: vec![VideoOutput {
                rendition: lowest.clone(),
                tmp_path: tmp.path().join(format!("segment-{run}.ts")),
            }],
        };
        let started = Instant::now();
        batch
            .run(
                &plan,
                RunControl {
                    cancel: tokio_util::sync::CancellationToken::new(),
                    stall_timeout: Duration::from_secs(60),
                    progress: None,
                },
            )
            .await
            .map_err(|e| setup(e.to_string()))?;
        let segment_seconds = started.elapsed().as_secs_f64();

        let (mut pod, base) = start_pod(&exe, tmp.path(), run, &http).await?;
        let submitted = Instant::now();
        let id = submit_job(&http, &base, &source).await?;
        let to_playable = loop {
            let state: serde_json::Value = http
                .get(format!("{base}/v1/jobs/{id}"))
                .send()
                .await?
                .json()
                .await?;
            if state["playable"].as_bool() == Some(true) {
                break submitted.elapsed().as_secs_f64();
            }
            if state["status"] == "failed" || submitted.elapsed() > Duration::from_secs(600) {
                return Err(setup("the job did not become playable"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        report.add("segment 0 lowest rendition encode s", segment_seconds);
        report.add("submit to playable s", to_playable);
        report.add("ratio playable/segment", to_playable / segment_seconds);
        pod.stop();
    }
    Ok(report)
}

/// Submits `source` to the pod at `base`; returns the job's id.
async fn submit_job(
    http: &reqwest::Client,
    base: &str,
    source: &Path,
) -> Result<String, BenchError> {
    let job: serde_json::Value = http
        .post(format!("{base}/v1/jobs"))
        .json(&serde_json::json!({"source": source}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    job["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| setup("no job id in the answer"))
}

/// Generates a clip of `size` (e.g. 1280x720) with motion and a tone under
/// `<dir>/src/`, the folder the benches' pods accept sources from.
fn generate_clip(dir: &Path, size: &str, seconds: u32) -> Result<PathBuf, BenchError> {
    let source = dir.join("src").join("clip.mp4");
    std::fs::create_dir_all(dir.join("src"))?;
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=s={size}:r=30"))
        .args(["-f", "lavfi", "-i", "sine=f=440:sample_rate=48000", "-t"])
        .arg(seconds.max(1).to_string())
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"])
        .arg(&source)
        .status()?;
    if !status.success() {
        return Err(setup("ffmpeg could not generate the source clip"));
    }
    Ok(source)
}

/// Starts a real pod in local mode on a free port with its own storage
/// under `dir`, and waits until it answers `/healthz`.
async fn start_pod(
    exe: &Path,
    dir: &Path,
    run: usize,
    http: &reqwest::Client,
) -> Result<(PodChild, String), BenchError> {
    let port = free_port()?;
    let pod = PodChild(
        Command::new(exe)
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--storage-dir")
            .arg(dir.join(format!("data-{run}")))
            .arg("--source-roots")
            .arg(dir.join("src"))
            .env_remove("REDIS_URL")
            .env("SEGSWARM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(resp) = http.get(format!("{base}/healthz")).send().await {
            if resp.status().is_success() {
                return Ok((pod, base));
            }
        }
        if Instant::now() > deadline {
            return Err(setup("the pod did not answer /healthz within 15 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU time (user + system) of this process so far, all threads, from
/// /proc/self/stat (clock ticks of 1/100 s, the Linux user ABI).
fn own_cpu_seconds() -> Result<f64, BenchError> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command name: state is field 0, utime 11, stime 12.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok((user + system) / 100.0),
        _ => Err(setup("cannot read /proc/self/stat")),
    }
}

/// VmRSS of one process (not its children), in MB.
fn rss_mb(pid: u32) -> Result<f64, BenchError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .ok_or_else(|| setup(format!("no VmRSS for pid {pid}")))?;
    Ok(kb / 1024.0)
}

/// A pod child process: SIGTERM then wait, at the latest when dropped.
struct PodChild(Child);

impl PodChild {
    fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for PodChild {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}

/// A folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<Self, BenchError> {
        let path = std::env::temp_dir().join(format!("segswarm-bench-{name}-{}", JobId::new_v4()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut values, 0.5), 50.0);
        assert_eq!(quantile(&mut values, 0.99), 99.0);
        assert_eq!(quantile(&mut values, 1.0), 100.0);
        assert_eq!(quantile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn summary_is_min_median_max() {
        assert_eq!(Report::summary(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(Report::summary(&[4.0, 1.0]), (1.0, 2.5, 4.0));
    }
}
