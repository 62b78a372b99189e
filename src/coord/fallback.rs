//! Redis coordination that falls back to in-process claims when Redis cannot
//! be reached, and returns when it answers again (DESIGN "Local mode and
//! fallback").
//!
//! Owns the switch between the two coordinators, the record of which leases
//! were issued locally, and the units finished while local, which it
//! re-publishes to Redis on the way back. While local, two pods may encode
//! the same unit: wasteful, never wrong, because outputs are published with
//! no-replace semantics (the first complete copy stays; x264's two-thread
//! rungs do not repeat their bytes, so nothing may rest on identical
//! copies). It never fails a unit because Redis is away.
//!
//! While local it does not ask Redis about leases Redis issued (renew,
//! confirm, complete, release): Redis did not answer the last operation,
//! and asking again would make each of them wait for the operation timeout
//! (3 s) on the publish path. A lease it cannot confirm is
//! [`LeaseCheck::Unconfirmed`], never held: the worker publishes anyway
//! (safe) and counts it.

use super::{
    ClaimOutcome, ClusterCapacity, Completion, CoordError, Coordinator, Lease, LeaseCheck,
    LocalCoordinator, Mode, RedisCoordinator, WaitOutcome,
};
use crate::metrics::Metrics;
use crate::plan::Unit;
use crate::sync::lock;
use crate::JobId;
use async_trait::async_trait;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How often Redis is probed while the pod works locally.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Redis first, the in-process coordinator while Redis is away.
pub struct FallbackCoordinator {
    shared: Arc<Shared>,
    _probe: DropGuard,
}

struct Shared {
    redis: RedisCoordinator,
    local: LocalCoordinator,
    local_mode: AtomicBool,
    /// Tokens of leases the local coordinator issued.
    local_tokens: Mutex<HashSet<String>>,
    /// Units completed while Redis was away, to re-publish to it.
    unpublished: Mutex<Vec<(JobId, Unit)>>,
    metrics: Arc<Metrics>,
}

impl FallbackCoordinator {
    /// Wraps `redis`; starts in distributed mode and probes in the
    /// background whenever it had to fall back. Must run inside Tokio.
    pub fn new(redis: RedisCoordinator, metrics: Arc<Metrics>) -> Self {
        let local = LocalCoordinator::new(redis.ttl());
        let shared = Arc::new(Shared {
            redis,
            local,
            local_mode: AtomicBool::new(false),
            local_tokens: Mutex::new(HashSet::new()),
            unpublished: Mutex::new(Vec::new()),
            metrics,
        });
        shared.show_mode();
        let stop = CancellationToken::new();
        tokio::spawn(probe(Arc::downgrade(&shared), stop.clone()));
        FallbackCoordinator {
            shared,
            _probe: stop.drop_guard(),
        }
    }
}

impl Shared {
    fn is_local(&self) -> bool {
        self.local_mode.load(Ordering::Relaxed)
    }

    fn show_mode(&self) {
        let local = self.is_local();
        let gauge = &self.metrics.mode;
        gauge.with_label_values(&["local"]).set(i64::from(local));
        gauge
            .with_label_values(&["distributed"])
            .set(i64::from(!local));
    }

    /// Switches to local coordination after a Redis error.
    fn fall_back(&self, error: &CoordError) {
        if !self.local_mode.swap(true, Ordering::Relaxed) {
            tracing::warn!("Redis unavailable, coordinating locally until it answers: {error}");
            self.metrics.fallbacks.inc();
            self.show_mode();
        }
    }

    fn is_local_lease(&self, lease: &Lease) -> bool {
        lock(&self.local_tokens).contains(&lease.token)
    }

    fn remember_unpublished(&self, job: JobId, unit: &Unit) {
        lock(&self.unpublished).push((job, unit.clone()));
    }

    /// Re-publishes what was finished locally; returns false if Redis failed
    /// again on the way.
    async fn republish(&self) -> bool {
        let pending: Vec<(JobId, Unit)> = std::mem::take(&mut *lock(&self.unpublished));
        for (index, (job, unit)) in pending.iter().enumerate() {
            if self.redis.mark_done(*job, unit).await.is_err() {
                lock(&self.unpublished).extend(pending[index..].iter().cloned());
                return false;
            }
        }
        true
    }
}

/// While local, pings Redis every [`PROBE_EVERY`]; once it answers and the
/// units finished meanwhile are published, switches back.
async fn probe(shared: std::sync::Weak<Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if !shared.is_local() {
            continue;
        }
        if shared.redis.ping().await.is_ok() && shared.republish().await {
            shared.local_mode.store(false, Ordering::Relaxed);
            shared.show_mode();
            tracing::info!("Redis answers again: back to distributed coordination");
        }
    }
}

#[async_trait]
impl Coordinator for FallbackCoordinator {
    fn mode(&self) -> Mode {
        if self.shared.is_local() {
            Mode::Local
        } else {
            Mode::Distributed
        }
    }

    fn claim_ttl(&self) -> Duration {
        self.shared.redis.claim_ttl()
    }

    fn unit_notices(&self) -> Option<tokio::sync::broadcast::Receiver<super::UnitNotice>> {
        Some(self.shared.redis.unit_notices())
    }

    /// Pings Redis while distributed, so an idle pod notices an outage too.
    /// Never a readiness problem: the fallback keeps the pod working.
    async fn check(&self) -> Option<String> {
        let shared = &self.shared;
        if !shared.is_local() {
            if let Err(err) = shared.redis.ping().await {
                shared.fall_back(&err);
            }
        }
        None
    }

    async fn claim(
        &self,
        job: JobId,
        units: &[Unit],
        worker_id: &str,
    ) -> Result<Vec<ClaimOutcome>, CoordError> {
        let shared = &self.shared;
        if !shared.is_local() {
            match shared.redis.claim(job, units, worker_id).await {
                Ok(outcomes) => return Ok(outcomes),
                Err(err) => shared.fall_back(&err),
            }
        }
        let outcomes = shared.local.claim(job, units, worker_id).await?;
        let mut tokens = lock(&shared.local_tokens);
        for outcome in &outcomes {
            if let ClaimOutcome::Won { lease, .. } = outcome {
                tokens.insert(lease.token.clone());
            }
        }
        Ok(outcomes)
    }

    async fn renew(&self, lease: &Lease) -> Result<bool, CoordError> {
        let shared = &self.shared;
        if shared.is_local_lease(lease) {
            return shared.local.renew(lease).await;
        }
        // Keep encoding while Redis is away: losing Redis is not losing the
        // lease (whether it still is ours is asked again before publishing).
        if shared.is_local() {
            return Ok(true);
        }
        match shared.redis.renew(lease).await {
            Ok(held) => Ok(held),
            Err(err) => {
                shared.fall_back(&err);
                Ok(true)
            }
        }
    }

    /// A lease issued locally is never confirmed (no other pod can see
    /// it); a Redis lease is confirmed by Redis while distributed (bounded
    /// by [`RedisCoordinator`]'s short confirmation timeout) and not asked
    /// about while local.
    async fn confirm(&self, lease: &Lease) -> LeaseCheck {
        let shared = &self.shared;
        if shared.is_local_lease(lease) {
            return match shared.local.renew(lease).await {
                Ok(false) => LeaseCheck::Lost,
                _ => LeaseCheck::Unconfirmed,
            };
        }
        if shared.is_local() {
            return LeaseCheck::Unconfirmed;
        }
        shared.redis.confirm(lease).await
    }

    async fn complete(&self, lease: &Lease) -> Result<Completion, CoordError> {
        let shared = &self.shared;
        if shared.is_local_lease(lease) {
            lock(&shared.local_tokens).remove(&lease.token);
            shared.remember_unpublished(lease.job, &lease.unit);
            return shared.local.complete(lease).await;
        }
        if !shared.is_local() {
            match shared.redis.complete(lease).await {
                Ok(completion) => return Ok(completion),
                Err(err) => shared.fall_back(&err),
            }
        }
        shared.remember_unpublished(lease.job, &lease.unit);
        shared.local.mark_done(lease.job, &lease.unit).await?;
        Ok(Completion::Completed)
    }

    async fn release(&self, lease: &Lease, failed: bool) -> Result<u32, CoordError> {
        let shared = &self.shared;
        if shared.is_local_lease(lease) {
            lock(&shared.local_tokens).remove(&lease.token);
            return shared.local.release(lease, failed).await;
        }
        // While local, the Redis claim is left to expire on its own.
        if shared.is_local() {
            return shared.local.release(lease, failed).await;
        }
        match shared.redis.release(lease, failed).await {
            Ok(attempts) => Ok(attempts),
            Err(err) => {
                shared.fall_back(&err);
                shared.local.release(lease, failed).await
            }
        }
    }

    /// Kept in Redis while distributed; while local, only this pod knows
    /// them (its job events carry them).
    async fn keep_warnings(
        &self,
        job: JobId,
        warnings: &[(String, String)],
    ) -> Result<(), CoordError> {
        let shared = &self.shared;
        if !shared.is_local() {
            if let Err(err) = shared.redis.keep_warnings(job, warnings).await {
                shared.fall_back(&err);
            }
        }
        Ok(())
    }

    async fn mark_done(&self, job: JobId, unit: &Unit) -> Result<(), CoordError> {
        let shared = &self.shared;
        shared.local.mark_done(job, unit).await?;
        if shared.is_local() {
            shared.remember_unpublished(job, unit);
            return Ok(());
        }
        if let Err(err) = shared.redis.mark_done(job, unit).await {
            shared.fall_back(&err);
            shared.remember_unpublished(job, unit);
        }
        Ok(())
    }

    async fn unmark_done(&self, job: JobId, unit: &Unit) -> Result<(), CoordError> {
        let shared = &self.shared;
        shared.local.unmark_done(job, unit).await?;
        if !shared.is_local() {
            if let Err(err) = shared.redis.unmark_done(job, unit).await {
                shared.fall_back(&err);
            }
        }
        Ok(())
    }

    async fn wait_for(
        &self,
        job: JobId,
        unit: &Unit,
        timeout: Duration,
    ) -> Result<WaitOutcome, CoordError> {
        let shared = &self.shared;
        if !shared.is_local() {
            match shared.redis.wait_for(job, unit, timeout).await {
                Ok(outcome) => return Ok(outcome),
                Err(err) => shared.fall_back(&err),
            }
        }
        shared.local.wait_for(job, unit, timeout).await
    }

    async fn forget(&self, job: JobId) -> Result<(), CoordError> {
        let shared = &self.shared;
        shared.local.forget(job).await?;
        if !shared.is_local() {
            if let Err(err) = shared.redis.forget(job).await {
                shared.fall_back(&err);
            }
        }
        Ok(())
    }

    /// Redis's count of live pods while distributed; none while local (no
    /// cluster to ask: the worker uses its own slots).
    async fn heartbeat(
        &self,
        worker_id: &str,
        slots: usize,
        busy: usize,
        ttl: Duration,
    ) -> Result<Option<ClusterCapacity>, CoordError> {
        if self.shared.is_local() {
            return Ok(None);
        }
        self.shared
            .redis
            .heartbeat(worker_id, slots, busy, ttl)
            .await
    }

    /// Redis's claims while distributed; none while local (this pod's own
    /// units are known to its worker).
    async fn holders(&self, job: JobId) -> Result<Vec<(String, String)>, CoordError> {
        if self.shared.is_local() {
            return Ok(Vec::new());
        }
        self.shared.redis.holders(job).await
    }

    /// Redis's claims and this pod's local ones while distributed (local
    /// claims made during an outage may still run); unknown while local,
    /// since other pods may be working alone too.
    async fn claim_tokens(
        &self,
        job: JobId,
    ) -> Result<Option<std::collections::HashSet<String>>, CoordError> {
        if self.shared.is_local() {
            return Ok(None);
        }
        let Some(mut tokens) = self.shared.redis.claim_tokens(job).await? else {
            return Ok(None);
        };
        if let Some(local) = self.shared.local.claim_tokens(job).await? {
            tokens.extend(local);
        }
        Ok(Some(tokens))
    }
}
