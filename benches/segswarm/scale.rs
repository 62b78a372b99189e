//! Figure 4: scale-out efficiency. Simulated pods ([`crate::sim`]) with one
//! slot and batches of one unit, whose "encoder" sleeps `--unit-ms` per unit
//! (an encode on another machine); `pods x --units-per-pod` units per run.
//! Efficiency = throughput(N) / (N x throughput of the first pod count),
//! within the same repeat.

use crate::report::Report;
use crate::shared_redis::{RedisArgs, SharedRedis};
use crate::sim::{run_pods, PodPlan, Work};
use clap::Args;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,32")]
    pub pods: Vec<usize>,
    /// Time the simulated encoder sleeps per unit.
    #[arg(long, default_value_t = 200)]
    pub unit_ms: u64,
    #[arg(long, default_value_t = 20)]
    pub units_per_pod: usize,
}

pub async fn run(args: &ScaleArgs) -> anyhow::Result<Report> {
    let redis = SharedRedis::new(&args.redis);
    let mut report = Report::new("scale", args.redis.repeat);
    let unit = Duration::from_millis(args.unit_ms.max(1));
    for _ in 0..args.redis.repeat.max(1) {
        let mut base = None;
        for &pods in &args.pods {
            let pods = pods.max(1);
            let plan = PodPlan {
                segments: pods * args.units_per_pod.max(1),
                batch: 1,
                slots: 1,
                work: Work::Sleep(unit),
            };
            let before = redis.cost();
            let (stats, wall) = run_pods(&redis, pods, plan, 2).await?;
            let after = redis.cost();
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
