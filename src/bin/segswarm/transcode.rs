//! `segswarm transcode`: the library's [`Transcode`] with a progress bar,
//! messages and exit codes (0 done, 3 partial, 1 error, 130 interrupted).

use crate::flags::encode_settings;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use segswarm::settings::{ClaimTtl, RunSettings, Slots, DEFAULT_SEGMENT_DURATION};
use segswarm::{JobOutcome, Transcode, TranscodeConfig, WorkerEvent};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct TranscodeArgs {
    /// Source: a local file or an http(s) URL (read by ffmpeg directly).
    pub input: String,
    /// Output folder: master.m3u8, renditions, audio, thumbnail, job.json.
    pub out_dir: PathBuf,
    /// Target segment duration in seconds (2..=10).
    #[arg(long, default_value_t = DEFAULT_SEGMENT_DURATION)]
    pub segment_duration: u32,
    /// Renditions, e.g. `240p,360p,720p` or `360p:900k` for a custom bitrate;
    /// rungs above the source's size are dropped.
    #[arg(long, default_value = "240p,360p,480p,720p,1080p")]
    pub ladder: String,
    /// ffmpeg batches run at once (default: one per core, plus 2 that run
    /// only while the running batches leave cores unused; see
    /// docs/configuration.md).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// x264 preset.
    #[arg(long, default_value = "veryfast")]
    pub preset: String,
    /// Lifetime of a unit's claim without renewal, in milliseconds (values
    /// below 100 count as 100).
    #[arg(long, env = "SEGSWARM_CLAIM_TTL_MS", default_value_t = 30_000)]
    pub claim_ttl_ms: u64,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Accept a source URL whose host is or resolves to a loopback, private
    /// or link-local address (refused by default, as on a pod).
    #[arg(long, env = "SEGSWARM_ALLOW_PRIVATE_URLS", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub allow_private_urls: bool,
}

pub async fn run(args: TranscodeArgs) -> anyhow::Result<ExitCode> {
    let settings = encode_settings(
        &args.ladder,
        args.segment_duration,
        &args.preset,
        ["--ladder", "--segment-duration", "--preset"],
    )?;
    let config = TranscodeConfig {
        input: args.input,
        out_dir: args.out_dir.clone(),
        settings,
        run: RunSettings {
            slots: Slots::from_setting(args.concurrency),
            claim_ttl: ClaimTtl::from_millis(args.claim_ttl_ms),
            ..RunSettings::default()
        },
        allow_private_urls: args.allow_private_urls,
    };
    let started = Instant::now();
    let (transcode, mut events) = Transcode::start(config).await?;
    let job = transcode.job();
    let (done, total) = job.progress();
    if transcode.resumed() {
        println!(
            "resume: skipped {} of {} units already done",
            job.skipped(),
            total
        );
    }

    let bar = progress_bar(total as u64, args.no_progress);
    bar.set_position(done as u64);
    let outcome = loop {
        tokio::select! {
            outcome = transcode.wait() => break outcome,
            event = events.recv() => match event {
                Ok(WorkerEvent::UnitDone { .. }) => bar.set_position(job.progress().0 as u64),
                Ok(WorkerEvent::UnitFailed { unit, failure, permanent, .. }) => {
                    bar.suspend(|| eprintln!("warning: {unit} failed{}: {failure}", if permanent { " for good" } else { ", retrying" }));
                }
                Ok(WorkerEvent::Warnings { warnings, .. }) => bar.suspend(|| {
                    for warning in &warnings {
                        eprintln!("warning: {}", warning.message);
                    }
                }),
                _ => {}
            },
            _ = stop_signal() => {
                bar.abandon_with_message("interrupted");
                transcode.stop().await;
                eprintln!("interrupted: run the same command again to resume");
                return Ok(ExitCode::from(130));
            }
        }
    };
    bar.finish_and_clear();
    transcode.stop().await;
    let wall = started.elapsed().as_secs_f64();
    let master = transcode.master_playlist();
    let plan = &job.plan;
    match outcome {
        JobOutcome::Done | JobOutcome::Partial { .. } => {
            if let JobOutcome::Partial { reason } = &outcome {
                eprintln!("warning: finished with failures (partial): {reason}");
            }
            let warnings = job.warnings();
            if !warnings.is_empty() {
                let frames: usize = warnings.iter().map(|w| w.frames_filled).sum();
                let silence: f64 = warnings.iter().map(|w| w.silence_filled).sum();
                eprintln!(
                    "warning: the source is damaged: {} warning(s), {frames} video frame(s) \
                     repeated, {silence:.3} s of audio filled with silence (see above)",
                    warnings.len()
                );
            }
            println!("HLS: {}", master.display());
            println!(
                "play: serve {} over HTTP and open master.m3u8 in an HLS player (e.g. `ffplay {}`)",
                args.out_dir.display(),
                master.display()
            );
            println!(
                "done: {} renditions, {} segments, {} audio track(s), wall {:.1} s, {:.2}x realtime",
                plan.renditions.len(),
                plan.segments.len(),
                plan.audio.len(),
                wall,
                plan.duration / wall.max(1e-9)
            );
            Ok(if matches!(outcome, JobOutcome::Done) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        JobOutcome::Failed { reason } => anyhow::bail!("transcode failed: {reason}"),
        JobOutcome::Canceled => anyhow::bail!("transcode canceled"),
    }
}

/// Resolves on SIGINT or SIGTERM (either stops a transcode cleanly).
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut interrupt), Ok(mut terminate)) => {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        // Without handlers the default action (exit) still applies.
        _ => std::future::pending().await,
    }
}

fn progress_bar(total: u64, hidden: bool) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if hidden {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} units ({eta})",
    ) {
        bar.set_style(style);
    }
    bar
}
