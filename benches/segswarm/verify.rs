//! Figure 8: the cost of verifying one published video segment. Real
//! segments are encoded through the library (probe, plan, one batch per
//! segment); each is then verified the way segswarm does now (the
//! in-process MPEG-TS reader, through `Batch::verify`) and the way it did
//! before (one ffprobe child with the arguments the old check used), one
//! after the other, per segment.

use crate::common::{gen_clip, ClipSpec, TestDir};
use crate::report::{ms, Report};
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
pub struct VerifyArgs {
    /// Segments to encode and verify.
    #[arg(long, default_value_t = 50)]
    pub segments: u32,
    /// Segment duration, seconds.
    #[arg(long, default_value_t = 2)]
    pub segment_seconds: u32,
    /// Source (and rendition) height; the source is 16:9, 30 fps.
    #[arg(long, default_value_t = 360)]
    pub height: u32,
    /// Passes over all segments; the table shows min/median/max over every
    /// segment of every pass (and over passes for the totals).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

pub async fn run(args: &VerifyArgs) -> anyhow::Result<Report> {
    let mut report = Report::new("verify", args.repeat);
    let scratch = TestDir::new("bench-verify");
    let height = args.height.max(120) / 2 * 2;
    let width = (height * 16 / 9) / 2 * 2;
    let source = scratch.join("clip.mp4");
    let seconds = f64::from(args.segments.max(1) * args.segment_seconds);
    gen_clip(&source, &ClipSpec::new(seconds).size(width, height));
    let parsed = Source::parse(&source.display().to_string(), None)?;
    let fetch = SourceFetch::new(EgressPolicy::default());
    let info = probe(&parsed, &fetch).await?;
    let settings = EncodeSettings {
        ladder: format!("{height}p").parse()?,
        segment_duration: args.segment_seconds,
        ..EncodeSettings::default()
    };
    let plan = Plan::new(JobId::new_v4(), parsed, settings, &info)?;
    let rendition = plan
        .renditions
        .first()
        .cloned()
        .context("the plan has no rendition")?;
    let input = fetch.open(&plan.source).await?;
    let mut batches = Vec::new();
    for segment in &plan.segments {
        let batch = Batch::Video {
            segment: segment.clone(),
            outputs: vec![VideoOutput {
                rendition: rendition.clone(),
                tmp_path: scratch.join(format!("seg-{}.ts", segment.index)),
            }],
        };
        let control = RunControl {
            cancel: CancellationToken::new(),
            stall_timeout: Duration::from_secs(60),
            progress: None,
            pid: None,
        };
        batch.run(&plan, &input, control).await?;
        batches.push(batch);
    }
    let bytes: u64 = batches
        .iter()
        .map(|b| {
            std::fs::metadata(output_path(b))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    report.add("segments", batches.len() as f64);
    report.add(
        "segment size KiB (mean)",
        bytes as f64 / 1024.0 / batches.len().max(1) as f64,
    );
    for _ in 0..args.repeat.max(1) {
        let (mut in_process, mut ffprobe) = (Duration::ZERO, Duration::ZERO);
        for batch in &batches {
            let started = Instant::now();
            batch.verify(&plan).await?;
            let took = started.elapsed();
            in_process += took;
            report.add("in-process verify ms per segment", ms(took));

            let started = Instant::now();
            old_ffprobe_check(output_path(batch)).await?;
            let took = started.elapsed();
            ffprobe += took;
            report.add("ffprobe verify ms per segment", ms(took));
        }
        report.add("in-process verify ms, all segments", ms(in_process));
        report.add("ffprobe verify ms, all segments", ms(ffprobe));
    }
    Ok(report)
}

fn output_path(batch: &Batch) -> &std::path::Path {
    match batch {
        Batch::Video { outputs, .. } => &outputs[0].tmp_path,
        _ => std::path::Path::new(""),
    }
}

/// The child process the check used before: ffprobe listing the streams'
/// sizes and every packet's flags, whose output was then parsed.
async fn old_ffprobe_check(path: &std::path::Path) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-protocol_whitelist",
            "file",
            "-show_entries",
        ])
        .arg("stream=codec_type,width,height:packet=stream_index,flags")
        .args(["-of", "compact"])
        .arg(path)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.lines().any(|l| l.starts_with("packet|")) {
        bail!("ffprobe failed on {}", path.display());
    }
    Ok(())
}
