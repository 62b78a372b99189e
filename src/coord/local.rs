//! In-process coordination for a pod alone (local mode) and for
//! `segswarm transcode`: a map of claims with expiry and a broadcast channel
//! of completion notices. Same semantics as the Redis coordinator, so the
//! worker above cannot tell them apart.

use super::{
    new_token, ClaimOutcome, Completion, CoordError, Coordinator, Lease, Mode, WaitOutcome,
};
use crate::config::ClaimTtl;
use crate::plan::Unit;
use crate::JobId;
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

type Key = (JobId, Unit);

struct Claim {
    token: String,
    holder: String,
    expires: Instant,
}

#[derive(Default)]
struct State {
    claims: HashMap<Key, Claim>,
    done: HashSet<Key>,
    attempts: HashMap<Key, u32>,
}

/// Claims held in this process.
pub struct LocalCoordinator {
    ttl: Duration,
    state: Mutex<State>,
    notices: broadcast::Sender<Key>,
}

impl LocalCoordinator {
    pub fn new(ttl: ClaimTtl) -> Self {
        let ttl = ttl.get();
        let (notices, _) = broadcast::channel(1024);
        LocalCoordinator {
            ttl,
            state: Mutex::new(State::default()),
            notices,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }
}

#[async_trait]
impl Coordinator for LocalCoordinator {
    fn mode(&self) -> Mode {
        Mode::Local
    }

    fn claim_ttl(&self) -> Duration {
        self.ttl
    }

    async fn claim(
        &self,
        job: JobId,
        units: &[Unit],
        worker_id: &str,
    ) -> Result<Vec<ClaimOutcome>, CoordError> {
        let now = Instant::now();
        let mut state = self.lock();
        let outcomes = units
            .iter()
            .map(|unit| {
                let key = (job, unit.clone());
                if state.done.contains(&key) {
                    return ClaimOutcome::Done;
                }
                let mut takeover = false;
                if let Some(claim) = state.claims.get(&key) {
                    if claim.expires > now {
                        return ClaimOutcome::Held {
                            holder: claim.holder.clone(),
                        };
                    }
                    takeover = true;
                }
                let token = new_token();
                state.claims.insert(
                    key,
                    Claim {
                        token: token.clone(),
                        holder: worker_id.to_string(),
                        expires: now + self.ttl,
                    },
                );
                ClaimOutcome::Won {
                    lease: Lease {
                        job,
                        unit: unit.clone(),
                        token,
                        worker_id: worker_id.to_string(),
                    },
                    takeover,
                }
            })
            .collect();
        Ok(outcomes)
    }

    async fn renew(&self, lease: &Lease) -> Result<bool, CoordError> {
        let mut state = self.lock();
        match state.claims.get_mut(&(lease.job, lease.unit.clone())) {
            Some(claim) if claim.token == lease.token => {
                claim.expires = Instant::now() + self.ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn complete(&self, lease: &Lease) -> Result<Completion, CoordError> {
        let key = (lease.job, lease.unit.clone());
        let completion = {
            let mut state = self.lock();
            state.done.insert(key.clone());
            let ours = state
                .claims
                .get(&key)
                .is_some_and(|claim| claim.token == lease.token);
            if ours {
                state.claims.remove(&key);
                Completion::Completed
            } else {
                Completion::CompletedAfterLoss
            }
        };
        let _ = self.notices.send(key);
        Ok(completion)
    }

    async fn release(&self, lease: &Lease, failed: bool) -> Result<u32, CoordError> {
        let key = (lease.job, lease.unit.clone());
        let attempts = {
            let mut state = self.lock();
            if state
                .claims
                .get(&key)
                .is_some_and(|claim| claim.token == lease.token)
            {
                state.claims.remove(&key);
            }
            let attempts = state.attempts.entry(key.clone()).or_insert(0);
            if failed {
                *attempts += 1;
            }
            *attempts
        };
        // Waiters re-check on any notice; a release makes the unit free.
        let _ = self.notices.send(key);
        Ok(attempts)
    }

    async fn mark_done(&self, job: JobId, unit: &Unit) -> Result<(), CoordError> {
        let key = (job, unit.clone());
        self.lock().done.insert(key.clone());
        let _ = self.notices.send(key);
        Ok(())
    }

    async fn unmark_done(&self, job: JobId, unit: &Unit) -> Result<(), CoordError> {
        self.lock().done.remove(&(job, unit.clone()));
        Ok(())
    }

    async fn wait_for(
        &self,
        job: JobId,
        unit: &Unit,
        timeout: Duration,
    ) -> Result<WaitOutcome, CoordError> {
        let key = (job, unit.clone());
        let deadline = Instant::now() + timeout;
        let mut notices = self.notices.subscribe();
        loop {
            let expires = {
                let state = self.lock();
                if state.done.contains(&key) {
                    return Ok(WaitOutcome::Done);
                }
                match state.claims.get(&key) {
                    Some(claim) if claim.expires > Instant::now() => claim.expires,
                    _ => return Ok(WaitOutcome::Free),
                }
            };
            let wake = expires.min(deadline);
            tokio::select! {
                notice = notices.recv() => match notice {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Ok(WaitOutcome::StillHeld),
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            if Instant::now() >= deadline {
                let state = self.lock();
                if state.done.contains(&key) {
                    return Ok(WaitOutcome::Done);
                }
                return Ok(WaitOutcome::StillHeld);
            }
        }
    }

    async fn forget(&self, job: JobId) -> Result<(), CoordError> {
        let mut state = self.lock();
        state.claims.retain(|(j, _), _| *j != job);
        state.done.retain(|(j, _)| *j != job);
        state.attempts.retain(|(j, _), _| *j != job);
        Ok(())
    }

    /// This process's unexpired claims of `job`: in local mode there is no
    /// other pod.
    async fn claim_tokens(&self, job: JobId) -> Result<Option<HashSet<String>>, CoordError> {
        let now = Instant::now();
        let state = self.lock();
        let tokens = state
            .claims
            .iter()
            .filter(|((j, _), claim)| *j == job && claim.expires > now)
            .map(|(_, claim)| claim.token.clone())
            .collect();
        Ok(Some(tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(i: usize) -> Unit {
        Unit::Video {
            rendition: "240p".into(),
            index: i,
        }
    }

    #[tokio::test]
    async fn claim_hold_complete() {
        let coord = LocalCoordinator::new(ClaimTtl::default());
        let job = JobId::new_v4();
        let first = coord.claim(job, &[unit(0), unit(1)], "a").await.unwrap();
        let ClaimOutcome::Won { lease, takeover } = &first[0] else {
            panic!("expected a win, got {first:?}")
        };
        assert!(!takeover);
        let second = coord.claim(job, &[unit(0)], "b").await.unwrap();
        assert_eq!(second[0], ClaimOutcome::Held { holder: "a".into() });
        assert_eq!(coord.complete(lease).await.unwrap(), Completion::Completed);
        let third = coord.claim(job, &[unit(0)], "b").await.unwrap();
        assert_eq!(third[0], ClaimOutcome::Done);
    }

    #[tokio::test]
    async fn stale_release_keeps_newer_claim() {
        let coord = LocalCoordinator::new(ClaimTtl::from_millis(100));
        let job = JobId::new_v4();
        let old = match &coord.claim(job, &[unit(0)], "a").await.unwrap()[0] {
            ClaimOutcome::Won { lease, .. } => lease.clone(),
            other => panic!("{other:?}"),
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        let newer = coord.claim(job, &[unit(0)], "b").await.unwrap();
        assert!(matches!(
            &newer[0],
            ClaimOutcome::Won { takeover: true, .. }
        ));
        assert!(!coord.renew(&old).await.unwrap());
        assert_eq!(coord.release(&old, true).await.unwrap(), 1);
        let again = coord.claim(job, &[unit(0)], "c").await.unwrap();
        assert_eq!(again[0], ClaimOutcome::Held { holder: "b".into() });
    }

    #[tokio::test]
    async fn waiter_wakes_on_completion() {
        let coord = std::sync::Arc::new(LocalCoordinator::new(ClaimTtl::default()));
        let job = JobId::new_v4();
        let lease = match &coord.claim(job, &[unit(0)], "a").await.unwrap()[0] {
            ClaimOutcome::Won { lease, .. } => lease.clone(),
            other => panic!("{other:?}"),
        };
        let waiter = {
            let coord = coord.clone();
            tokio::spawn(async move { coord.wait_for(job, &unit(0), Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        coord.complete(&lease).await.unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), WaitOutcome::Done);
    }
}
