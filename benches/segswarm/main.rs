//! The benchmark harness: `cargo bench --bench segswarm -- <figure> [flags]`
//! (or `scripts/bench <figure> [flags]`). Coordination throughput and claim
//! latency, scale-out efficiency, hand-off and takeover times, pod memory,
//! time to playable, cluster scale-out with real encodes, the cost of
//! verifying a segment, a simulated cluster on the real scheduler. Each
//! figure runs `--repeat` times and prints a table of min/median/max and
//! one JSON line (`{"bench": ..., "repeat": ..., "figures": {...}}`) that
//! `scripts/bench-smoke` checks. Results and how they were taken:
//! docs/benchmarks.md.
//!
//! Redis servers, real pods, clips and scratch folders come from the test
//! kit, `tests/common`, included below; the simulated pods of [`sim`] drive
//! the library's coordinator directly, those of [`simulate`] run the
//! library's `Worker` with an encoder that sleeps.

#[path = "../../tests/common/mod.rs"]
mod common;

mod cluster;
mod coord;
mod cpu_trace;
mod handoff;
mod memory;
mod playable;
mod pod_timeline;
mod real_pod;
mod report;
mod scale;
mod shared_redis;
mod sim;
mod simulate;
mod sleep_encoder;
mod verify;

use clap::{CommandFactory, Parser, Subcommand};

/// segswarm's benchmark harness (figures: docs/benchmarks.md).
#[derive(Parser, Debug)]
#[command(bin_name = "scripts/bench")]
struct Cli {
    #[command(subcommand)]
    figure: Option<Figure>,
    /// Appended by `cargo bench` to a `harness = false` target's arguments;
    /// ignored.
    #[arg(long, hide = true, global = true)]
    bench: bool,
}

#[derive(Subcommand, Debug)]
enum Figure {
    /// Coordination throughput and claim latency, no-op encoder (figure 3).
    Coord(coord::CoordArgs),
    /// Scale-out efficiency with an encoder that sleeps per unit (figure 4).
    Scale(scale::ScaleArgs),
    /// Hand-off, takeover after expiry, takeover after release (figure 5).
    Handoff(handoff::HandoffArgs),
    /// RSS of a real pod, idle and while transcoding (figure 6).
    Memory(memory::MemoryArgs),
    /// Time from submit to `playable` on a real pod, against the encode
    /// time of one lowest-rendition segment (figure 2).
    Playable(playable::PlayableArgs),
    /// One pod on one core against N pods on N cores, real encodes through
    /// one Redis: wall time, speed-up, CPU, idle cores (figure 7).
    Cluster(cluster::ClusterArgs),
    /// Verifying one video segment: the in-process MPEG-TS reader against
    /// the ffprobe child it replaced (figure 8).
    Verify(verify::VerifyArgs),
    /// A simulated cluster on the real scheduler: Workers with an encoder
    /// that sleeps for measured costs (figure 9).
    Simulate(simulate::SimulateArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The log the binary's non-serve commands had: warnings to stderr.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEGSWARM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let report = match Cli::parse().figure {
        Some(Figure::Coord(args)) => coord::run(&args).await?,
        Some(Figure::Scale(args)) => scale::run(&args).await?,
        Some(Figure::Handoff(args)) => handoff::run(&args).await?,
        Some(Figure::Memory(args)) => memory::run(&args).await?,
        Some(Figure::Playable(args)) => playable::run(&args).await?,
        Some(Figure::Cluster(args)) => cluster::run(&args).await?,
        Some(Figure::Verify(args)) => verify::run(&args).await?,
        Some(Figure::Simulate(args)) => simulate::run(&args).await?,
        // `cargo bench` without `--` and `cargo test --benches` run this
        // binary without a figure: say what there is, fail nothing.
        None => {
            Cli::command().print_help()?;
            return Ok(());
        }
    };
    report.print();
    Ok(())
}
