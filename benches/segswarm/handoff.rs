//! Figure 5: hand-off and takeover between two coordinators on one Redis.
//! - Hand-off: A claims a unit, B waits for it (`wait_for`), A completes
//!   20 ms later; measured from just before A's `complete` to B waking.
//! - Takeover after kill -9: a fresh holder claims (TTL `--ttl-ms`) and is
//!   dropped without releasing; B loops claim → `wait_for` until it wins.
//!   Measured from the claim to B winning.
//! - Takeover after release (the SIGTERM path): the holder releases;
//!   measured from the release call to B winning.

use crate::common::stats::Latencies;
use crate::report::{ms, Report};
use crate::shared_redis::{RedisArgs, SharedRedis};
use anyhow::{anyhow, bail, ensure};
use clap::Args;
// Everything this file uses from the library.
use segswarm::{
    coordination::{ClaimOutcome, Coordinator, Lease, WaitOutcome},
    pipeline::Unit,
    settings::ClaimTtl,
    JobId,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct HandoffArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Hand-off rounds (holder completes, waiter wakes).
    #[arg(long, default_value_t = 200)]
    pub rounds: usize,
    /// Rounds of takeover after expiry and after release.
    #[arg(long, default_value_t = 5)]
    pub takeover_rounds: usize,
    /// Claim TTL for the takeover rounds.
    #[arg(long, default_value_t = 1000)]
    pub ttl_ms: u64,
}

pub async fn run(args: &HandoffArgs) -> anyhow::Result<Report> {
    let redis = SharedRedis::new(&args.redis);
    let mut report = Report::new("handoff", args.redis.repeat);
    // What a pod would use: TTLs below the minimum count as the minimum.
    let ttl = ClaimTtl::from_millis(args.ttl_ms).get();
    for _ in 0..args.redis.repeat.max(1) {
        let holder = redis.coordinator(ttl, 4)?;
        let waiter = Arc::new(redis.coordinator(ttl, 4)?);
        holder.ping().await?;
        waiter.ping().await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(holder.notices_connected() && waiter.notices_connected())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let job = JobId::new_v4();
        let mut handoff = Latencies::default();
        for index in 0..args.rounds {
            let unit = Unit::Video {
                rendition: "240p".into(),
                index,
            };
            let lease = won(holder
                .claim(job, std::slice::from_ref(&unit), "holder")
                .await?)?;
            let wait = {
                let (waiter, unit) = (waiter.clone(), unit.clone());
                tokio::spawn(async move {
                    let outcome = waiter.wait_for(job, &unit, Duration::from_secs(10)).await;
                    (outcome, Instant::now())
                })
            };
            // Let the waiter subscribe and look before the holder completes.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let started = Instant::now();
            holder.complete(&lease).await?;
            let (outcome, woke) = wait.await?;
            ensure!(
                outcome? == WaitOutcome::Done,
                "the waiter did not see the unit done"
            );
            handoff.push(woke.saturating_duration_since(started));
        }
        report.add("handoff p50 ms", ms(handoff.percentile(50.0)));
        report.add("handoff p99 ms", ms(handoff.percentile(99.0)));

        let mut after_expiry = Latencies::default();
        let mut after_release = Latencies::default();
        for round in 0..args.takeover_rounds {
            for expire in [true, false] {
                let unit = Unit::Video {
                    rendition: if expire { "360p" } else { "480p" }.into(),
                    index: round,
                };
                // A fresh holder per round: kill -9 is dropping it without a
                // release; SIGTERM is releasing.
                let dying = redis.coordinator(ttl, 2)?;
                let lease = won(dying
                    .claim(job, std::slice::from_ref(&unit), "dying")
                    .await?)?;
                let started = Instant::now();
                let taker = {
                    let (waiter, unit) = (waiter.clone(), unit.clone());
                    tokio::spawn(async move {
                        let wait_until = Instant::now() + Duration::from_secs(30);
                        loop {
                            match waiter
                                .claim(job, std::slice::from_ref(&unit), "taker")
                                .await?
                            {
                                v if matches!(v.first(), Some(ClaimOutcome::Won { .. })) => {
                                    return anyhow::Ok(Instant::now());
                                }
                                _ if Instant::now() > wait_until => {
                                    bail!("no takeover within 30 s");
                                }
                                _ => {
                                    waiter.wait_for(job, &unit, Duration::from_secs(5)).await?;
                                }
                            }
                        }
                    })
                };
                if expire {
                    drop(dying);
                    let taken = taker.await??;
                    after_expiry.push(taken.saturating_duration_since(started));
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let released = Instant::now();
                    dying.release(&lease, false).await?;
                    let taken = taker.await??;
                    after_release.push(taken.saturating_duration_since(released));
                }
            }
        }
        if !after_expiry.is_empty() {
            report.add("takeover after kill (ttl) max ms", ms(after_expiry.max()));
            report.add("takeover after release max ms", ms(after_release.max()));
            report.add("takeover ttl ms", ms(ttl));
        }
        waiter.forget(job).await?;
    }
    Ok(report)
}

/// The lease of a claim on a fresh unit, which must have been won.
fn won(outcomes: Vec<ClaimOutcome>) -> anyhow::Result<Lease> {
    match outcomes.into_iter().next() {
        Some(ClaimOutcome::Won { lease, .. }) => Ok(lease),
        other => Err(anyhow!("expected to win a fresh unit, got {other:?}")),
    }
}
