//! Figure 2: time from submit to the job's `playable` flag on a real pod
//! (polled every 10 ms), against the encode time of the same source's
//! segment 0 in the lowest rendition, encoded alone through the library
//! (probe, plan, one batch, verification included).

use crate::common::TestDir;
use crate::real_pod;
use crate::report::Report;
use anyhow::{bail, Context};
use clap::Args;
// Everything this file uses from the library.
use segswarm::{
    pipeline::{probe, Batch, EgressPolicy, Plan, RunControl, Source, SourceFetch, VideoOutput},
    settings::EncodeSettings,
    JobId,
};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct PlayableArgs {
    /// Runs; the table shows min/median/max.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Length of the generated 1920x1080 30 fps clip.
    #[arg(long, default_value_t = 60)]
    pub seconds: u32,
}

pub async fn run(args: &PlayableArgs) -> anyhow::Result<Report> {
    let mut report = Report::new("playable", args.repeat);
    let scratch = TestDir::new("bench-playable");
    let source = real_pod::clip(&scratch, 1920, 1080, args.seconds)?;
    let parsed = Source::parse(&source.display().to_string(), None)?;
    let fetch = SourceFetch::new(EgressPolicy::default());
    let info = probe(&parsed, &fetch).await?;
    let plan = Plan::new(JobId::new_v4(), parsed, EncodeSettings::default(), &info)?;
    let lowest = plan
        .renditions
        .first()
        .cloned()
        .context("the plan has no rendition")?;
    let input = fetch.open(&plan.source).await?;
    for run in 0..args.repeat.max(1) {
        // One lowest-rendition segment, encoded alone.
        let batch = Batch::Video {
            segment: plan.segments[0].clone(),
            outputs: vec![VideoOutput {
                rendition: lowest.clone(),
                tmp_path: scratch.join(format!("segment-{run}.ts")),
            }],
        };
        let started = Instant::now();
        batch
            .run(
                &plan,
                &input,
                RunControl {
                    cancel: CancellationToken::new(),
                    stall_timeout: Duration::from_secs(60),
                    progress: None,
                    pid: None,
                },
            )
            .await?;
        let segment_seconds = started.elapsed().as_secs_f64();

        let pod = real_pod::start(&scratch, run).await;
        let submitted = Instant::now();
        let id = real_pod::submit(&pod, &source).await?;
        let to_playable = loop {
            let state = pod.job(&id).await;
            if state["playable"].as_bool() == Some(true) {
                break submitted.elapsed().as_secs_f64();
            }
            if state["status"] == "failed" || submitted.elapsed() > Duration::from_secs(600) {
                bail!("the job did not become playable");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        report.add("segment 0 lowest rendition encode s", segment_seconds);
        report.add("submit to playable s", to_playable);
        report.add("ratio playable/segment", to_playable / segment_seconds);
        real_pod::stop(pod).await;
    }
    Ok(report)
}
