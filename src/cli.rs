//! Command-line interface: subcommands, their flags and environment
//! variables, and what they print.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use segswarm::config::{validate_preset, validate_segment_duration, EncodeSettings, Ladder};
use segswarm::coord::{Coordinator, LocalCoordinator};
use segswarm::egress::EgressPolicy;
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
    /// Run a pod: the HTTP API, HLS files and metrics, encoding jobs.
    Serve(ServeArgs),
    /// Submit a job to a pod.
    Submit(SubmitArgs),
    /// Show a job's status.
    Status(StatusArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, env = "SEGSWARM_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,
    /// Storage root shared by every pod (jobs/<id>/... below it).
    #[arg(long, env = "SEGSWARM_STORAGE_DIR", default_value = "./segswarm-data")]
    pub storage_dir: PathBuf,
    /// Name of this pod in claims (default: the hostname).
    #[arg(long, env = "SEGSWARM_WORKER_ID")]
    pub worker_id: Option<String>,
    /// ffmpeg batches run at once (default: one per core, plus 2 that run
    /// only while the CPU has idle time; see docs/benchmarks.md).
    #[arg(long, env = "SEGSWARM_SLOTS")]
    pub slots: Option<usize>,
    /// Lifetime of a claim without renewal, in milliseconds.
    #[arg(long, env = "SEGSWARM_CLAIM_TTL_MS", default_value_t = 30_000)]
    pub claim_ttl_ms: u64,
    /// Attempts per unit before it fails for good.
    #[arg(long, env = "SEGSWARM_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Wait before the first retry of a failed unit (doubles each time), ms.
    #[arg(long, env = "SEGSWARM_RETRY_BACKOFF_MS", default_value_t = 1_000)]
    pub retry_backoff_ms: u64,
    /// An ffmpeg silent for this many seconds is killed and its unit retried.
    #[arg(long, env = "SEGSWARM_STALL_TIMEOUT", default_value_t = 60)]
    pub stall_timeout: u64,
    /// Seconds a SIGTERM'd pod has to stop (match the orchestrator's grace).
    #[arg(long, env = "SEGSWARM_SHUTDOWN_GRACE", default_value_t = 25)]
    pub shutdown_grace: u64,
    /// Require `Authorization: Bearer <token>` on /v1/*.
    #[arg(long, env = "SEGSWARM_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Sign webhooks with HMAC-SHA256 using this secret.
    #[arg(long, env = "SEGSWARM_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Folders local sources may come from, separated by `:` (none: local
    /// paths are refused; URLs are always allowed).
    #[arg(long, env = "SEGSWARM_SOURCE_ROOTS", value_delimiter = ':')]
    pub source_roots: Vec<PathBuf>,
    /// Accept source and callback URLs whose host is or resolves to a
    /// loopback, private, link-local or other non-public address (refused by
    /// default: see docs/configuration.md).
    #[arg(long, env = "SEGSWARM_ALLOW_PRIVATE_URLS", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub allow_private_urls: bool,
    /// Folder whose new video files become jobs.
    #[arg(long, env = "SEGSWARM_WATCH_DIR")]
    pub watch_dir: Option<PathBuf>,
    /// Poll the watch folder (1/true) instead of inotify; needed on NFS.
    #[arg(long, env = "SEGSWARM_WATCH_POLL", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub watch_poll: bool,
    /// Milliseconds a watched file must stop growing before it becomes a job.
    #[arg(long, env = "SEGSWARM_WATCH_SETTLE_MS", default_value_t = 2_000)]
    pub watch_settle_ms: u64,
    /// Default ladder of jobs that do not give one.
    #[arg(
        long,
        env = "SEGSWARM_LADDER",
        default_value = "240p,360p,480p,720p,1080p"
    )]
    pub ladder: String,
    /// Default segment duration in seconds (2..=10).
    #[arg(long, env = "SEGSWARM_SEGMENT_DURATION", default_value_t = segswarm::config::DEFAULT_SEGMENT_DURATION)]
    pub segment_duration: u32,
    /// x264 preset.
    #[arg(long, env = "SEGSWARM_PRESET", default_value = "veryfast")]
    pub preset: String,
    /// Segments encoded ahead after an on-demand request.
    #[arg(long, env = "SEGSWARM_PREFETCH_SEGMENTS", default_value_t = 3)]
    pub prefetch_segments: usize,
    /// Seconds an HTTP request for a missing segment may wait for it.
    #[arg(long, env = "SEGSWARM_SEGMENT_WAIT", default_value_t = 120)]
    pub segment_wait: u64,
    /// Redis for claims shared with other pods (`redis://` or `rediss://`,
    /// password in the URL). Unset: local mode, this pod alone.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Keep working with local claims while Redis is unreachable (true), or
    /// report not ready and retry (false).
    #[arg(long, env = "SEGSWARM_FALLBACK_TO_LOCAL", default_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub fallback_to_local: bool,
    /// Redis connections in the pool.
    #[arg(long, env = "SEGSWARM_REDIS_POOL_SIZE", default_value_t = 16)]
    pub redis_pool_size: usize,
}

/// Where the pod's API is and how to authenticate.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Base URL of a pod.
    #[arg(long, env = "SEGSWARM_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Bearer token, when the pod requires one.
    #[arg(long, env = "SEGSWARM_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Source path (under the pod's SEGSWARM_SOURCE_ROOTS) or http(s) URL.
    pub source: String,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Ladder, e.g. `240p,360p,720p`.
    #[arg(long)]
    pub ladder: Option<String>,
    #[arg(long)]
    pub segment_duration: Option<u32>,
    #[arg(long)]
    pub priority: Option<i32>,
    /// `ingest` (encode everything now) or `on_demand`.
    #[arg(long)]
    pub mode: Option<String>,
    #[arg(long)]
    pub callback_url: Option<String>,
    /// Follow the job's events until it ends.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Job id.
    pub job: String,
    #[command(flatten)]
    pub server: ServerArgs,
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
    /// ffmpeg batches run at once (default: one per core, plus 2 that run
    /// only while the CPU has idle time; see docs/benchmarks.md).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// x264 preset.
    #[arg(long, default_value = "veryfast")]
    pub preset: String,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Accept a source URL whose host is or resolves to a loopback, private
    /// or link-local address (refused by default, as on a pod).
    #[arg(long, env = "SEGSWARM_ALLOW_PRIVATE_URLS", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub allow_private_urls: bool,
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let default_filter = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEGSWARM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Transcode(args) => transcode(args).await,
        Command::Serve(args) => serve(args).await,
        Command::Submit(args) => crate::client::submit(args).await,
        Command::Status(args) => crate::client::status(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let defaults = EncodeSettings {
        ladder: args
            .ladder
            .parse::<Ladder>()
            .context("SEGSWARM_LADDER / --ladder")?,
        segment_duration: validate_segment_duration(args.segment_duration)
            .context("SEGSWARM_SEGMENT_DURATION / --segment-duration")?,
        preset: validate_preset(&args.preset).context("SEGSWARM_PRESET / --preset")?,
        ..EncodeSettings::default()
    };
    if args.max_attempts == 0 {
        anyhow::bail!("SEGSWARM_MAX_ATTEMPTS must be at least 1");
    }
    let worker_id = match args.worker_id.filter(|id| !id.trim().is_empty()) {
        Some(id) => id,
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_else(|| "segswarm".to_string()),
    };
    let config = segswarm::config::PodConfig {
        listen: args.listen,
        storage_dir: args.storage_dir,
        worker_id,
        slots: args
            .slots
            .unwrap_or_else(segswarm::worker::default_slots)
            .max(1),
        // A slot count that was set is exact; the default adds spare slots.
        spare_slots: if args.slots.is_some() {
            0
        } else {
            segswarm::worker::DEFAULT_SPARE_SLOTS
        },
        claim_ttl: Duration::from_millis(args.claim_ttl_ms.max(100)),
        max_attempts: args.max_attempts,
        retry_backoff: Duration::from_millis(args.retry_backoff_ms),
        stall_timeout: Duration::from_secs(args.stall_timeout.max(1)),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        api_token: args.api_token.filter(|t| !t.is_empty()),
        webhook_secret: args.webhook_secret.filter(|s| !s.is_empty()),
        source_roots: args
            .source_roots
            .into_iter()
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        allow_private_urls: args.allow_private_urls,
        watch_dir: args.watch_dir,
        watch_poll: args.watch_poll,
        watch_settle: Duration::from_millis(args.watch_settle_ms),
        defaults,
        prefetch_segments: args.prefetch_segments,
        segment_wait: Duration::from_secs(args.segment_wait.max(1)),
        redis_url: args.redis_url.filter(|url| !url.trim().is_empty()),
        fallback_to_local: args.fallback_to_local,
        redis_pool_size: args.redis_pool_size.max(1),
    };
    segswarm::pod::run(config).await?;
    Ok(ExitCode::SUCCESS)
}

async fn transcode(args: TranscodeArgs) -> anyhow::Result<ExitCode> {
    let settings = EncodeSettings {
        ladder: args.ladder.parse::<Ladder>().context("--ladder")?,
        segment_duration: validate_segment_duration(args.segment_duration)
            .context("--segment-duration")?,
        preset: validate_preset(&args.preset).context("--preset")?,
        ..EncodeSettings::default()
    };
    let source = Source::parse(&args.input, None)?;
    source
        .check_egress(EgressPolicy::from_allow_private(args.allow_private_urls))
        .await?;
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
        // A slot count that was set is exact; the default adds spare slots.
        spare_slots: if args.concurrency.is_some() {
            0
        } else {
            segswarm::worker::DEFAULT_SPARE_SLOTS
        },
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
            _ = stop_signal() => {
                bar.abandon_with_message("interrupted");
                worker.shutdown().await;
                eprintln!("interrupted: run the same command again to resume");
                return Ok(ExitCode::from(130));
            }
        }
    };
    bar.finish_and_clear();
    worker.shutdown().await;
    // Nothing is in progress any more; an empty .tmp/ is just clutter.
    let _ = std::fs::remove_dir(layout.tmp_dir());
    let wall = started.elapsed().as_secs_f64();
    let master = layout.master_playlist();
    match outcome {
        JobOutcome::Done | JobOutcome::Partial { .. } => {
            if let JobOutcome::Partial { reason } = &outcome {
                eprintln!("warning: finished with failures (partial): {reason}");
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
