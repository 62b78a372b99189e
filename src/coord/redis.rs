//! Distributed coordination through Redis: claims, leases and completion
//! notices shared by every pod of a cluster.
//!
//! Owns the Lua scripts of the protocol in DESIGN.md ("Coordination
//! protocol") and the calls that run them; the key names are in
//! [`crate::redis_link::keys`] (every key of a job carries the hash tag
//! `{<job-id>}`, so each script touches one slot and runs unchanged on
//! Redis Cluster).
//!
//! Each operation is one script, so a claim, a compare-and-renew or a
//! compare-and-delete is atomic however many pods race. Scripts are sent by
//! hash (EVALSHA) and loaded by the redis crate on NOSCRIPT. The `claimed` set
//! is what tells a takeover from a fresh claim: a unit is added when won and
//! removed when its holder gives it back (complete, release), so winning a
//! unit that is still a member means the previous holder's claim expired.
//!
//! This module never decides what to encode and never touches storage; it
//! never panics on a Redis error: every failure becomes
//! [`CoordError::Unavailable`] with the operation, job and unit in its text.

mod claims;
mod notices;
mod scripts;

use super::{
    new_token, ClaimOutcome, ClusterCapacity, Completion, CoordError, Coordinator, Lease,
    LeaseCheck, Mode, WaitOutcome,
};
use crate::config::ClaimTtl;
use crate::metrics::Metrics;
use crate::plan::Unit;
use crate::redis_link::keys::{self, JobKeys};
use crate::redis_link::{RedisSettings, RedisSetupError};
use crate::JobId;
use ::redis::{FromRedisValue, RedisError, ScriptInvocation};
use async_trait::async_trait;
use deadpool_redis::Pool;
use notices::{Notices, PubSubListener};
use scripts::Scripts;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::DropGuard;

/// How long a forgotten job's keys stay readable. Other pods may still be
/// finishing or releasing units of the job (a cancel reaches them a little
/// later, a batch in flight completes): if the keys were deleted at once,
/// their late `complete`/`release` would recreate the sets without any
/// expiry and leak them; a late pod would also lose the done set it still
/// reads. Expiring them a day later bounds the leak and lets stragglers see
/// consistent state. Claim keys expire on their own (PX).
const FORGET_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// When a claim key has no expiry (never written by us), how soon a waiter
/// looks again.
const NO_EXPIRY_RECHECK: Duration = Duration::from_secs(1);

/// Longest a pre-publish confirmation of a lease waits for Redis. A renewal
/// is one round trip (well under a millisecond on a LAN): one that takes
/// longer means Redis is away or overloaded, and a publish does not need
/// the answer to be safe (no-replace), only to be counted; it must not
/// wait for the 3 s operation timeout on every file.
const CONFIRM_TIMEOUT: Duration = Duration::from_millis(500);

/// What went wrong in one Redis round trip, before the operation adds its
/// context.
#[derive(Debug, thiserror::Error)]
enum OpError {
    #[error("no connection: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("{0}")]
    Redis(#[from] RedisError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply: {0}")]
    Reply(String),
}

impl OpError {
    /// Whether the error says Redis cannot be reached (as opposed to Redis
    /// answering something we did not expect).
    fn is_outage(&self) -> bool {
        match self {
            OpError::Pool(_) | OpError::Timeout(_) => true,
            OpError::Redis(err) => {
                err.is_io_error()
                    || err.is_connection_refusal()
                    || err.is_connection_dropped()
                    || err.is_timeout()
                    || err.is_unrecoverable_error()
            }
            OpError::Reply(_) => false,
        }
    }
}

/// What a waiter found when it looked at a unit.
enum Peek {
    Done,
    Free,
    Held { remaining: Duration },
}

/// Coordination shared with other pods through Redis.
///
/// Owns a pool of command connections, the protocol's scripts and one
/// dedicated pub/sub connection (a background task, stopped when this value
/// is dropped) whose notices wake every waiter of this pod. It must never
/// delete or extend a claim whose token is not the caller's.
pub struct RedisCoordinator {
    pool: Pool,
    claim_ttl: ClaimTtl,
    op_timeout: Duration,
    scripts: Scripts,
    notices: Notices,
    metrics: Arc<Metrics>,
    _listener: DropGuard,
}

impl RedisCoordinator {
    /// Sets up the pool and starts the pub/sub listener. Does not need Redis
    /// to answer yet: operations fail with [`CoordError::Unavailable`] until
    /// it does, and the listener keeps retrying. Must be called inside a
    /// Tokio runtime.
    pub fn new(
        settings: &RedisSettings,
        claim_ttl: ClaimTtl,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RedisSetupError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| RedisSetupError::NoRuntime)?;
        let client = settings.client()?;
        let pool = settings.pool()?;
        let (notices, listener) = PubSubListener::new(client, metrics.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        runtime.spawn(listener.run(stop.clone()));
        Ok(RedisCoordinator {
            pool,
            claim_ttl,
            op_timeout: settings.op_timeout,
            scripts: Scripts::new(),
            notices,
            metrics,
            _listener: stop.drop_guard(),
        })
    }

    /// The claim TTL this coordinator was made with.
    pub fn ttl(&self) -> ClaimTtl {
        self.claim_ttl
    }

    /// One round trip to Redis, for health checks and fallback probes.
    pub async fn ping(&self) -> Result<(), CoordError> {
        let fut = async {
            let mut conn = self.pool.get().await?;
            let _: String = ::redis::cmd("PING").query_async(&mut *conn).await?;
            Ok(())
        };
        self.bounded(fut)
            .await
            .map_err(|err| unavailable("ping".into(), err))
    }

    /// Units announced done or freed by any pod, from now on.
    pub fn unit_notices(&self) -> tokio::sync::broadcast::Receiver<super::UnitNotice> {
        self.notices.unit_notices()
    }

    /// Whether the pub/sub connection is subscribed right now.
    pub fn notices_connected(&self) -> bool {
        self.notices.connected()
    }

    /// Runs one script and records whether Redis answered.
    async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, OpError> {
        let fut = async {
            let mut conn = self.pool.get().await?;
            Ok(invocation.invoke_async(&mut *conn).await?)
        };
        self.bounded(fut).await
    }

    /// Applies the operation timeout and sets `segswarm_redis_up`.
    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, OpError>>,
    ) -> Result<T, OpError> {
        let result = match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(OpError::Timeout(self.op_timeout)),
        };
        let up = !matches!(&result, Err(err) if err.is_outage());
        self.metrics.redis_up.set(i64::from(up));
        result
    }

    async fn peek(&self, job: JobId, unit: &Unit) -> Result<Peek, OpError> {
        let keys = JobKeys::new(job);
        let (done, pttl): (i64, i64) = self
            .invoke(
                self.scripts
                    .peek
                    .key(keys.done())
                    .key(keys.claim(unit))
                    .arg(unit.to_string()),
            )
            .await?;
        Ok(match (done, pttl) {
            (1, _) => Peek::Done,
            (_, -2) => Peek::Free,
            (_, -1) => Peek::Held {
                remaining: NO_EXPIRY_RECHECK,
            },
            (_, ms) => Peek::Held {
                remaining: Duration::from_millis(ms.max(0).unsigned_abs()),
            },
        })
    }
}

fn unavailable(context: String, err: OpError) -> CoordError {
    CoordError::Unavailable(format!("redis {context}: {err}"))
}

fn parse_claims(
    job: JobId,
    units: &[Unit],
    worker_id: &str,
    tokens: Vec<String>,
    replies: Vec<(String, String)>,
) -> Result<Vec<ClaimOutcome>, OpError> {
    if replies.len() != units.len() {
        return Err(OpError::Reply(format!(
            "{} claim results for {} units",
            replies.len(),
            units.len()
        )));
    }
    units
        .iter()
        .zip(tokens)
        .zip(replies)
        .map(|((unit, token), (status, detail))| match status.as_str() {
            "done" => Ok(ClaimOutcome::Done),
            "held" => Ok(ClaimOutcome::Held { holder: detail }),
            "won" => Ok(ClaimOutcome::Won {
                lease: Lease {
                    job,
                    unit: unit.clone(),
                    token,
                    worker_id: worker_id.to_string(),
                },
                takeover: detail == "takeover",
            }),
            other => Err(OpError::Reply(format!("claim status {other:?}"))),
        })
        .collect()
}

fn unit_list(units: &[Unit]) -> String {
    let names: Vec<String> = units.iter().map(Unit::to_string).collect();
    names.join(", ")
}

#[async_trait]
impl Coordinator for RedisCoordinator {
    fn unit_notices(&self) -> Option<tokio::sync::broadcast::Receiver<super::UnitNotice>> {
        Some(self.notices.unit_notices())
    }

    async fn check(&self) -> Option<String> {
        self.ping()
            .await
            .err()
            .map(|err| format!("cannot coordinate: {err}"))
    }

    fn mode(&self) -> Mode {
        Mode::Distributed
    }

    fn claim_ttl(&self) -> Duration {
        self.claim_ttl.get()
    }

    async fn claim(
        &self,
        job: JobId,
        units: &[Unit],
        worker_id: &str,
    ) -> Result<Vec<ClaimOutcome>, CoordError> {
        if units.is_empty() {
            return Ok(Vec::new());
        }
        let keys = JobKeys::new(job);
        let tokens: Vec<String> = units.iter().map(|_| new_token()).collect();
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(keys.done())
            .key(keys.claimed())
            .arg(self.claim_ttl.get().as_millis() as u64)
            .arg(worker_id);
        for (unit, token) in units.iter().zip(&tokens) {
            invocation
                .key(keys.claim(unit))
                .arg(unit.to_string())
                .arg(token);
        }
        let started = Instant::now();
        let result = self
            .invoke::<Vec<(String, String)>>(&invocation)
            .await
            .and_then(|replies| parse_claims(job, units, worker_id, tokens, replies));
        self.metrics
            .claim_seconds
            .observe(started.elapsed().as_secs_f64());
        let claims = &self.metrics.claims;
        match result {
            Ok(outcomes) => {
                for outcome in &outcomes {
                    let label = match outcome {
                        ClaimOutcome::Won { takeover, .. } => {
                            if *takeover {
                                self.metrics.takeovers.inc();
                            }
                            "won"
                        }
                        ClaimOutcome::Held { .. } => "held",
                        ClaimOutcome::Done => "already_done",
                    };
                    claims.with_label_values(&[label]).inc();
                }
                Ok(outcomes)
            }
            Err(err) => {
                claims
                    .with_label_values(&["error"])
                    .inc_by(units.len() as u64);
                Err(unavailable(
                    format!("claim of job {job} units [{}]", unit_list(units)),
                    err,
                ))
            }
        }
    }

    async fn renew(&self, lease: &Lease) -> Result<bool, CoordError> {
        let keys = JobKeys::new(lease.job);
        let result: Result<i64, OpError> = self
            .invoke(
                self.scripts
                    .renew
                    .key(keys.claim(&lease.unit))
                    .arg(&lease.token)
                    .arg(self.claim_ttl.get().as_millis() as u64),
            )
            .await;
        let renewals = &self.metrics.lease_renewals;
        match result {
            Ok(renewed) => {
                let renewed = renewed == 1;
                let label = if renewed { "renewed" } else { "lost" };
                renewals.with_label_values(&[label]).inc();
                Ok(renewed)
            }
            Err(err) => {
                renewals.with_label_values(&["error"]).inc();
                Err(unavailable(
                    format!("renew of job {} unit {}", lease.job, lease.unit),
                    err,
                ))
            }
        }
    }

    /// A renewal bounded by [`CONFIRM_TIMEOUT`] (or the operation timeout
    /// if shorter); no answer in time is [`LeaseCheck::Unconfirmed`].
    async fn confirm(&self, lease: &Lease) -> LeaseCheck {
        let bound = CONFIRM_TIMEOUT.min(self.op_timeout);
        match tokio::time::timeout(bound, self.renew(lease)).await {
            Ok(Ok(true)) => LeaseCheck::Held,
            Ok(Ok(false)) => LeaseCheck::Lost,
            Ok(Err(_)) => LeaseCheck::Unconfirmed,
            Err(_) => {
                self.metrics
                    .lease_renewals
                    .with_label_values(&["error"])
                    .inc();
                LeaseCheck::Unconfirmed
            }
        }
    }

    async fn complete(&self, lease: &Lease) -> Result<Completion, CoordError> {
        let keys = JobKeys::new(lease.job);
        let ours: i64 = self
            .invoke(
                self.scripts
                    .complete
                    .key(keys.done())
                    .key(keys.claimed())
                    .key(keys.claim(&lease.unit))
                    .arg(lease.unit.to_string())
                    .arg(&lease.token)
                    .arg(keys.units_channel()),
            )
            .await
            .map_err(|err| {
                unavailable(
                    format!("complete of job {} unit {}", lease.job, lease.unit),
                    err,
                )
            })?;
        Ok(if ours == 1 {
            Completion::Completed
        } else {
            Completion::CompletedAfterLoss
        })
    }

    async fn release(&self, lease: &Lease, failed: bool) -> Result<u32, CoordError> {
        let keys = JobKeys::new(lease.job);
        let attempts: i64 = self
            .invoke(
                self.scripts
                    .release
                    .key(keys.claim(&lease.unit))
                    .key(keys.claimed())
                    .key(keys.attempts())
                    .arg(lease.unit.to_string())
                    .arg(&lease.token)
                    .arg(if failed { "1" } else { "0" })
                    .arg(keys.units_channel()),
            )
            .await
            .map_err(|err| {
                unavailable(
                    format!("release of job {} unit {}", lease.job, lease.unit),
                    err,
                )
            })?;
        Ok(u32::try_from(attempts.max(0)).unwrap_or(u32::MAX))
    }

    async fn keep_warnings(
        &self,
        job: JobId,
        warnings: &[(String, String)],
    ) -> Result<(), CoordError> {
        if warnings.is_empty() {
            return Ok(());
        }
        let key = JobKeys::new(job).warnings();
        let fut = async {
            let mut conn = self.pool.get().await?;
            let mut pipe = redis::pipe();
            for (field, json) in warnings {
                pipe.cmd("HSETNX").arg(&key).arg(field).arg(json).ignore();
            }
            Ok(pipe.query_async::<()>(&mut *conn).await?)
        };
        self.bounded(fut)
            .await
            .map_err(|err| unavailable(format!("keeping warnings of job {job}"), err))
    }

    async fn mark_done(&self, job: JobId, unit: &Unit) -> Result<(), CoordError> {
        let keys = JobKeys::new(job);
        let _: i64 = self
            .invoke(
                self.scripts
                    .mark_done
                    .key(keys.done())
                    .arg(unit.to_string())
                    .arg(keys.units_channel()),
            )
            .await
            .map_err(|err| unavailable(format!("mark_done of job {job} unit {unit}"), err))?;
        Ok(())
    }

    async fn unmark_done(&self, job: JobId, unit: &Unit) -> Result<(), CoordError> {
        let keys = JobKeys::new(job);
        let _: i64 = self
            .invoke(
                self.scripts
                    .unmark_done
                    .key(keys.done())
                    .arg(unit.to_string()),
            )
            .await
            .map_err(|err| unavailable(format!("unmark_done of job {job} unit {unit}"), err))?;
        Ok(())
    }

    async fn wait_for(
        &self,
        job: JobId,
        unit: &Unit,
        timeout: Duration,
    ) -> Result<WaitOutcome, CoordError> {
        let started = Instant::now();
        let deadline = started + timeout;
        self.metrics.unit_waits.inc();
        // Subscribe first: a notice sent after the check below is queued on
        // this receiver, so a completion between check and wait is not lost.
        let mut waiter = self.notices.waiter(job, unit);
        let result = loop {
            let connected = waiter.link_connected();
            let found = match self.peek(job, unit).await {
                Ok(found) => found,
                Err(err) => break Err(unavailable(format!("wait for job {job} unit {unit}"), err)),
            };
            let remaining = match found {
                Peek::Done => break Ok(WaitOutcome::Done),
                Peek::Free => break Ok(WaitOutcome::Free),
                Peek::Held { remaining } => remaining,
            };
            let now = Instant::now();
            if now >= deadline {
                break Ok(WaitOutcome::StillHeld);
            }
            // Wake on a notice, a pub/sub reconnect (notices may have been
            // lost), the claim's expiry (its holder may have died) or the
            // deadline, whichever comes first; then look again.
            let wake = (now + remaining + Duration::from_millis(1)).min(deadline);
            waiter.wait(wake, connected).await;
        };
        self.metrics
            .unit_wait_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn forget(&self, job: JobId) -> Result<(), CoordError> {
        let keys = JobKeys::new(job);
        let _: i64 = self
            .invoke(
                self.scripts
                    .forget
                    .key(keys.done())
                    .key(keys.claimed())
                    .key(keys.attempts())
                    .arg(FORGET_AFTER.as_secs()),
            )
            .await
            .map_err(|err| unavailable(format!("forget of job {job}"), err))?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        worker_id: &str,
        slots: usize,
        busy: usize,
        ttl: Duration,
    ) -> Result<Option<ClusterCapacity>, CoordError> {
        let (pods, slots, busy): (usize, usize, usize) = self
            .invoke(
                self.scripts
                    .heartbeat
                    .key(keys::PODS)
                    .arg(worker_id)
                    .arg(slots)
                    .arg(busy)
                    .arg(ttl.as_millis() as u64),
            )
            .await
            .map_err(|err| unavailable("heartbeat".into(), err))?;
        Ok(Some(ClusterCapacity { pods, slots, busy }))
    }

    async fn holders(&self, job: JobId) -> Result<Vec<(String, String)>, CoordError> {
        let claims = self.claims(job).await?;
        Ok(claims
            .into_iter()
            .map(|claim| (claim.unit, claim.worker_id))
            .collect())
    }

    async fn claim_tokens(&self, job: JobId) -> Result<Option<HashSet<String>>, CoordError> {
        let claims = self.claims(job).await?;
        Ok(Some(claims.into_iter().map(|claim| claim.token).collect()))
    }
}
