//! Coordination: who may produce which unit.
//!
//! One trait, [`Coordinator`], with an in-process implementation
//! ([`local::LocalCoordinator`]) for a pod alone and a Redis one
//! ([`redis::RedisCoordinator`]) for a cluster. Code above it never asks which one it has. A coordinator only
//! decides claims and carries notices (and what a unit's output had to fill
//! for a damaged source, ahead of its completion); storage stays the truth
//! for outputs, so a coordinator never creates or deletes files.

pub mod fallback;
pub mod local;
pub mod redis;

use crate::plan::Unit;
use crate::JobId;
use async_trait::async_trait;
use std::collections::HashSet;
use std::time::Duration;

pub use self::redis::RedisCoordinator;
pub use fallback::FallbackCoordinator;
pub use local::LocalCoordinator;

/// Errors from the coordination backend (the network, Redis).
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("coordination backend unavailable: {0}")]
    Unavailable(String),
}

/// Which kind of coordination is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In-process claims: this pod alone.
    Local,
    /// Claims shared with other pods through Redis.
    Distributed,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Distributed => "distributed",
        }
    }
}

/// The right to produce one unit, until it expires or is given back.
/// The token is random per claim (never the worker id), so a stale release
/// from an older claim cannot delete a newer one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job: JobId,
    pub unit: Unit,
    pub token: String,
    pub worker_id: String,
}

/// The result of trying to claim one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// We hold it now. `takeover` is true when an expired claim of another
    /// holder was replaced.
    Won { lease: Lease, takeover: bool },
    /// Someone else holds it.
    Held { holder: String },
    /// It is already done.
    Done,
}

/// What completing a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The lease was still ours.
    Completed,
    /// The lease had been lost (expired, taken over); the unit is marked done
    /// anyway, which is safe because its output is on storage (published
    /// with no-replace: the first copy stays, whoever made it), but it is
    /// counted.
    CompletedAfterLoss,
}

/// What a check of a lease right before publishing found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseCheck {
    /// Ours, confirmed by the authority every pod shares (Redis), or by
    /// the in-process coordinator of a pod that is alone.
    Held,
    /// Another holder has it, or it expired: the output is dropped.
    Lost,
    /// Neither could be confirmed: the backend did not answer in time, or
    /// the pod coordinates locally while it should share claims (fallback).
    /// Publishing is still safe (no-replace: the first copy wins); it is
    /// counted.
    Unconfirmed,
}

/// Why a wait for a unit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The unit is done.
    Done,
    /// Nobody holds it any more (released or expired): claim it now.
    Free,
    /// The timeout passed with the unit still held; check again.
    StillHeld,
}

/// Claims, leases and completion notices for work units.
#[async_trait]
pub trait Coordinator: Send + Sync {
    /// Which kind of coordination this is.
    fn mode(&self) -> Mode;

    /// How long a claim lives without renewal.
    fn claim_ttl(&self) -> Duration;

    /// Unit notices of every pod (done, freed), when the backend has them
    /// (Redis); the worker learns from them what other pods finished or gave
    /// back.
    fn unit_notices(&self) -> Option<tokio::sync::broadcast::Receiver<UnitNotice>> {
        None
    }

    /// Checks the backend; a problem that should make the pod not ready
    /// (work cannot be coordinated) is returned as text.
    async fn check(&self) -> Option<String> {
        None
    }

    /// Tries to claim each of `units` of `job` (atomically per unit, all in
    /// one round trip); one outcome per unit, in order.
    async fn claim(
        &self,
        job: JobId,
        units: &[Unit],
        worker_id: &str,
    ) -> Result<Vec<ClaimOutcome>, CoordError>;

    /// Extends a lease by the claim TTL. `Ok(false)` means the lease is lost:
    /// the caller must stop producing that unit at once.
    async fn renew(&self, lease: &Lease) -> Result<bool, CoordError>;

    /// Checks and extends a lease right before its output is published.
    /// Must answer quickly whatever the backend does: a publish never waits
    /// for a backend timeout. By default, a renewal: extended is
    /// [`LeaseCheck::Held`], refused is [`LeaseCheck::Lost`], an error is
    /// [`LeaseCheck::Unconfirmed`].
    async fn confirm(&self, lease: &Lease) -> LeaseCheck {
        match self.renew(lease).await {
            Ok(true) => LeaseCheck::Held,
            Ok(false) => LeaseCheck::Lost,
            Err(_) => LeaseCheck::Unconfirmed,
        }
    }

    /// Marks the unit done, drops the claim if it is still ours and announces
    /// the completion. Called after the output was published.
    async fn complete(&self, lease: &Lease) -> Result<Completion, CoordError>;

    /// Gives a lease back (failure or shutdown) so another worker can take it
    /// now. With `failed`, the unit's attempt counter grows; returns it.
    async fn release(&self, lease: &Lease, failed: bool) -> Result<u32, CoordError>;

    /// Keeps the warnings of a unit's output (a damaged source it had to
    /// fill: `(key, JSON)` per warning; a key already kept keeps its first
    /// value) where every pod reads them. Called before the unit is
    /// published and completed, so whoever sees the unit done finds its
    /// warnings too. By default nothing is kept: a pod alone knows its own.
    async fn keep_warnings(
        &self,
        job: JobId,
        warnings: &[(String, String)],
    ) -> Result<(), CoordError> {
        let _ = (job, warnings);
        Ok(())
    }

    /// Records that a unit is done because its output was found on storage.
    async fn mark_done(&self, job: JobId, unit: &Unit) -> Result<(), CoordError>;

    /// Takes a unit off the done set because its output is missing on
    /// storage (storage is the truth), so it can be claimed and made again.
    async fn unmark_done(&self, job: JobId, unit: &Unit) -> Result<(), CoordError>;

    /// Waits until `unit` is done, or free to claim, or `timeout` passes.
    /// Subscribes before checking, so a completion is never missed.
    async fn wait_for(
        &self,
        job: JobId,
        unit: &Unit,
        timeout: Duration,
    ) -> Result<WaitOutcome, CoordError>;

    /// Forgets a finished or canceled job's claims and counters.
    async fn forget(&self, job: JobId) -> Result<(), CoordError>;

    /// Tells the cluster this pod is alive with `slots` slots, `busy` of
    /// them running a batch, for `ttl`; returns the capacity of every live
    /// pod (this one included), or `None` when there is no cluster to ask
    /// (local mode, Redis away).
    async fn heartbeat(
        &self,
        worker_id: &str,
        slots: usize,
        busy: usize,
        ttl: Duration,
    ) -> Result<Option<ClusterCapacity>, CoordError> {
        let _ = (worker_id, slots, busy, ttl);
        Ok(None)
    }

    /// The claims of `job` held right now by any pod, as `(unit, worker_id)`,
    /// when the backend can list them (Redis). Read-only, for display: the
    /// answer may be stale by the time it is read. Empty by default.
    async fn holders(&self, job: JobId) -> Result<Vec<(String, String)>, CoordError> {
        let _ = job;
        Ok(Vec::new())
    }

    /// The tokens of every claim of `job` held right now, by any pod, when
    /// this coordinator sees every pod's claims (Redis; the in-process one
    /// of a pod alone); `None` when it cannot know (a pod of a cluster
    /// coordinating locally while Redis is away). The `.tmp` sweep keeps
    /// the in-progress files named after these tokens.
    async fn claim_tokens(&self, job: JobId) -> Result<Option<HashSet<String>>, CoordError>;
}

/// What the live pods of a cluster have, from their heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterCapacity {
    pub pods: usize,
    pub slots: usize,
    pub busy: usize,
}

/// A unit of a job was finished (`done`) or given back (not `done`) by
/// some pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitNotice {
    pub job: JobId,
    pub unit: Unit,
    pub done: bool,
}

/// A fresh claim token (UUID v4).
pub fn new_token() -> String {
    uuid::Uuid::new_v4().to_string()
}
