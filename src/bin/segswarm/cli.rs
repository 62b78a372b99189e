//! Command-line interface: the subcommands, their flags and environment
//! variables, logging, and `serve`'s flags turned into a pod's validated
//! configuration.

use crate::client::{StatusArgs, SubmitArgs};
use crate::flags::encode_settings;
use crate::transcode::TranscodeArgs;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use segswarm::settings::{
    validate_max_attempts, worker_id_or_hostname, ClaimTtl, LogFormat, PodConfig, RunSettings,
    Slots, TestNetwork, DEFAULT_SEGMENT_DURATION,
};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// segswarm: turn videos into adaptive HLS, alone or as a cluster of pods.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as `text` or `json` (one JSON object per line, with the
    /// job and unit ids as fields, for log pipelines).
    #[arg(
        long,
        global = true,
        env = "SEGSWARM_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
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
    /// only while the running batches leave cores unused; see
    /// docs/configuration.md).
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
    /// For tests of the address check only: a network inside 198.18.0.0/15
    /// (e.g. 198.18.161.4/30) whose addresses count as public. No
    /// environment variable on purpose (see docs/configuration.md).
    #[arg(long, value_name = "A.B.C.D/PREFIX")]
    pub egress_test_network: Option<TestNetwork>,
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
    #[arg(long, env = "SEGSWARM_SEGMENT_DURATION", default_value_t = DEFAULT_SEGMENT_DURATION)]
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

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let default_filter = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEGSWARM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // The event's fields (`job`, `unit`, ...) at the top level of each
        // object, where log pipelines index them.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    match cli.command {
        Command::Transcode(args) => crate::transcode::run(args).await,
        Command::Serve(args) => serve(args).await,
        Command::Submit(args) => crate::client::submit(args).await,
        Command::Status(args) => crate::client::status(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = PodConfig {
        listen: args.listen,
        storage_dir: args.storage_dir,
        worker_id: worker_id_or_hostname(args.worker_id),
        run: RunSettings {
            slots: Slots::from_setting(args.slots),
            claim_ttl: ClaimTtl::from_millis(args.claim_ttl_ms),
            max_attempts: validate_max_attempts(args.max_attempts)
                .context("SEGSWARM_MAX_ATTEMPTS / --max-attempts")?,
            retry_backoff: Duration::from_millis(args.retry_backoff_ms),
            stall_timeout: Duration::from_secs(args.stall_timeout.max(1)),
        },
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        api_token: args.api_token.filter(|t| !t.is_empty()),
        webhook_secret: args.webhook_secret.filter(|s| !s.is_empty()),
        source_roots: args
            .source_roots
            .into_iter()
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        allow_private_urls: args.allow_private_urls,
        egress_test_network: args.egress_test_network,
        watch_dir: args.watch_dir,
        watch_poll: args.watch_poll,
        watch_settle: Duration::from_millis(args.watch_settle_ms),
        defaults: encode_settings(
            &args.ladder,
            args.segment_duration,
            &args.preset,
            [
                "SEGSWARM_LADDER / --ladder",
                "SEGSWARM_SEGMENT_DURATION / --segment-duration",
                "SEGSWARM_PRESET / --preset",
            ],
        )?,
        prefetch_segments: args.prefetch_segments,
        segment_wait: Duration::from_secs(args.segment_wait.max(1)),
        redis_url: args.redis_url.filter(|url| !url.trim().is_empty()),
        fallback_to_local: args.fallback_to_local,
        redis_pool_size: args.redis_pool_size.max(1),
    };
    segswarm::serve(config).await?;
    Ok(ExitCode::SUCCESS)
}
