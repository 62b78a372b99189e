//! Figure 3: coordination throughput and claim latency. Simulated pods
//! ([`crate::sim`]) with a no-op encoder (one tiny file per unit) share one
//! Redis; per run: units/s, claim latency, claims per unit, Redis script
//! time and CPU per unit, the pods' CPU per unit, and how busy the machine
//! was (near 100 %: the figure is bounded by this machine's cores).

use crate::common::process::cpu_seconds;
use crate::common::TestDir;
use crate::report::{ms, Report};
use crate::shared_redis::{RedisArgs, SharedRedis};
use crate::sim::{run_pods, PodPlan, Work, RENDITIONS};
use clap::Args;

#[derive(Args, Debug)]
pub struct CoordArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
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

pub async fn run(args: &CoordArgs) -> anyhow::Result<Report> {
    let batch = args.batch.clamp(1, RENDITIONS.len());
    let redis = SharedRedis::new(&args.redis);
    let mut report = Report::new("coord", args.redis.repeat);
    // The pods' "encodes" land here (docs/benchmarks.md measures on tmpfs:
    // TMPDIR=/dev/shm).
    let scratch = TestDir::new("bench-coord");
    let mut runs = 0;
    for _ in 0..args.redis.repeat.max(1) {
        for &pods in &args.pods {
            let pods = pods.max(1);
            runs += 1;
            let dir = scratch.join(format!("run-{runs}"));
            std::fs::create_dir_all(&dir)?;
            let plan = PodPlan {
                segments: args.units.div_ceil(batch),
                batch,
                slots: args.slots.max(1),
                work: Work::File(dir.clone()),
            };
            let before = redis.cost();
            let own_before = cpu_seconds(std::process::id());
            let (stats, wall) = run_pods(&redis, pods, plan, args.slots.max(1) + 2).await?;
            let own = cpu_seconds(std::process::id()) - own_before;
            let after = redis.cost();
            std::fs::remove_dir_all(&dir)?;
            let units = stats.completed as f64;
            let label = format!("pods={pods}");
            report.add(
                format!("{label} units/s"),
                units / wall.as_secs_f64().max(1e-9),
            );
            report.add(
                format!("{label} claim p50 ms"),
                ms(stats.claim.percentile(50.0)),
            );
            report.add(
                format!("{label} claim p99 ms"),
                ms(stats.claim.percentile(99.0)),
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
