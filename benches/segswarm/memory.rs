//! Figure 6: a real pod's own RSS (`VmRSS`, not its ffmpeg children), 0.5 s
//! after `/healthz` answers (idle), then sampled every 100 ms while it
//! transcodes a generated 1280x720 clip with its default ladder until the
//! job is done.

use crate::common::process::rss_mb;
use crate::common::TestDir;
use crate::real_pod;
use crate::report::Report;
use anyhow::bail;
use clap::Args;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct MemoryArgs {
    /// Runs; the table shows min/median/max.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Length of the generated 1280x720 clip.
    #[arg(long, default_value_t = 20)]
    pub seconds: u32,
}

pub async fn run(args: &MemoryArgs) -> anyhow::Result<Report> {
    let mut report = Report::new("memory", args.repeat);
    let scratch = TestDir::new("bench-memory");
    let source = real_pod::clip(&scratch, 1280, 720, args.seconds)?;
    for run in 0..args.repeat.max(1) {
        let pod = real_pod::start(&scratch, run).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = rss_mb(pod.pid());
        let id = real_pod::submit(&pod, &source).await?;
        let mut peak = idle;
        let started = Instant::now();
        let mut last_poll = Instant::now() - Duration::from_secs(1);
        loop {
            peak = peak.max(rss_mb(pod.pid()));
            if last_poll.elapsed() >= Duration::from_millis(500) {
                last_poll = Instant::now();
                let status = pod.job(&id).await["status"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                if ["done", "partial", "failed", "canceled"].contains(&status.as_str()) {
                    if status != "done" {
                        bail!("the job ended {status}");
                    }
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!("the job did not finish within 10 min");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        report.add("idle rss MB", idle);
        report.add("max rss under load MB", peak);
        report.add("job seconds", started.elapsed().as_secs_f64());
        real_pod::stop(pod).await;
    }
    Ok(report)
}
