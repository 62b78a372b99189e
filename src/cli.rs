//! Command-line interface: subcommands, their flags and environment
//! variables, and what they print.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use segswarm::config::{validate_preset, validate_segment_duration, EncodeSettings, Ladder};
use segswarm::coord::{Coordinator, LocalCoordinator};
use segswarm::metrics::Metrics;
use segswarm::source::Source;
use segswarm::storage::JobLayout;
use segswarm::transcode::prepare;
use segswarm::worker::{JobOptions, JobOutcome, Worker, WorkerEvent, WorkerSettings};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// segswarm: turn videos into adaptive HLS, alone or as a cluster of pods.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Transcode one source into an HLS ladder in OUT_DIR, on this machine.
    Transcode(TranscodeArgs),
}

#[derive(Args, Debug)]
pub struct TranscodeArgs {
    /// Source: a local file or an http(s) URL (read by ffmpeg directly).
    pub input: String,
    /// Output folder: master.m3u8, renditions, audio, thumbnail, job.json.
    pub out_dir: PathBuf,
    /// Target segment duration in seconds (2..=10).
    #[arg(long, default_value_t = segswarm::config::DEFAULT_SEGMENT_DURATION)]
    pub segment_duration: u32,
    /// Renditions, e.g. `240p,360p,720p` or `360p:900k` for a custom bitrate;
    /// rungs above the source's size are dropped.
    #[arg(long, default_value = "240p,360p,480p,720p,1080p")]
    pub ladder: String,
    /// ffmpeg batches run at once (default: number of cores).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// x264 preset.
    #[arg(long, default_value = "veryfast")]
    pub preset: String,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEGSWARM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Transcode(args) => transcode(args).await,
    }
}

async fn transcode(args: TranscodeArgs) -> anyhow::Result<ExitCode> {
    let settings = EncodeSettings {
        ladder: args.ladder.parse::<Ladder>().context("--ladder")?,
        segment_duration: validate_segment_duration(args.segment_duration)
            .context("--segment-duration")?,
        preset: validate_preset(&args.preset).context("--preset")?,
        ..EncodeSettings::default()
    };
    let source = Source::parse(&args.input, &[])?;
    segswarm::ffmpeg::check_installed().await?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating output folder {}", args.out_dir.display()))?;
    let layout = JobLayout::new(&args.out_dir);
    let started = Instant::now();
    let prepared = prepare(&layout, source, settings, uuid::Uuid::new_v4()).await?;
    let plan = Arc::new(prepared.plan);
    // Nobody else writes into this folder: leftovers of a killed run are
    // safe to remove.
    let _ = std::fs::remove_dir_all(layout.tmp_dir());

    let worker_settings = WorkerSettings {
        slots: args
            .concurrency
            .unwrap_or_else(segswarm::worker::default_slots)
            .max(1),
        ..WorkerSettings::default()
    };
    let coord: Arc<dyn Coordinator> = Arc::new(LocalCoordinator::new(Duration::from_secs(30)));
    let metrics = Arc::new(Metrics::new()?);
    let worker = Worker::start(worker_settings, coord, metrics);
    let mut events = worker.subscribe();
    let job = worker
        .add_job(plan.clone(), layout.clone(), JobOptions::default())
        .await?;
    let (done, total) = job.progress();
    if prepared.resumed {
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
            outcome = job.wait() => break outcome,
            event = events.recv() => match event {
                Ok(WorkerEvent::UnitDone { .. }) => bar.set_position(job.progress().0 as u64),
                Ok(WorkerEvent::UnitFailed { unit, error, permanent, .. }) => {
                    bar.suspend(|| eprintln!("warning: {unit} failed{}: {error}", if permanent { " for good" } else { ", retrying" }));
                }
                _ => {}
            },
            _ = tokio::signal::ctrl_c() => {
                bar.abandon_with_message("interrupted");
                worker.shutdown().await;
                eprintln!("interrupted: run the same command again to resume");
                return Ok(ExitCode::from(130));
            }
        }
    };
    bar.finish_and_clear();
    worker.shutdown().await;
    let wall = started.elapsed().as_secs_f64();
    let master = layout.master_playlist();
    match outcome {
        JobOutcome::Done | JobOutcome::Partial { .. } => {
            if let JobOutcome::Partial { reason } = &outcome {
                eprintln!("warning: some renditions failed: {reason}");
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
