//! Outputs that the coordinator says are done (another pod published them)
//! but that this pod cannot see on storage yet: on a network file system
//! each pod's client may cache "no such file" for a while (docs/deploy.md).
//!
//! Such a unit is looked up again past the cache
//! ([`crate::storage::revalidate`]) and rechecked every [`UNSEEN_RECHECK`];
//! it is never encoded again while the coordinator says done, until
//! [`UNSEEN_GRACE`] has passed without the file appearing (then it is taken
//! as lost, as storage is the truth, and made again). It never deletes or
//! writes a file.

use super::job_run::JobRun;
use super::Shared;
use crate::plan::Unit;
use crate::sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How soon a unit done elsewhere but not visible here is looked at again.
pub(super) const UNSEEN_RECHECK: Duration = Duration::from_secs(1);
/// How long a unit may stay done elsewhere but invisible here before it is
/// taken as lost: longer than NFS's longest default attribute cache (60 s).
pub(super) const UNSEEN_GRACE: Duration = Duration::from_secs(90);

/// When this pod first failed to see each unit the coordinator says done.
#[derive(Debug, Default)]
pub(super) struct UnseenOutputs {
    since: Mutex<HashMap<Unit, Instant>>,
}

/// What to do with a unit done elsewhere that this pod cannot see.
#[derive(Debug, PartialEq)]
enum Unseen {
    /// Look again later; never encode it now.
    Recheck { first: bool },
    /// Invisible for longer than the grace: take it as lost.
    Lost(Duration),
}

impl UnseenOutputs {
    /// Records that `unit` was not visible at `now`.
    fn note(&self, unit: &Unit, now: Instant) -> Unseen {
        let mut since = lock(&self.since);
        match since.get(unit) {
            None => {
                since.insert(unit.clone(), now);
                Unseen::Recheck { first: true }
            }
            Some(first) if now.duration_since(*first) < UNSEEN_GRACE => {
                Unseen::Recheck { first: false }
            }
            Some(first) => {
                let waited = now.duration_since(*first);
                since.remove(unit);
                Unseen::Lost(waited)
            }
        }
    }

    fn clear(&self, unit: &Unit) {
        lock(&self.since).remove(unit);
    }

    /// True while `unit` is done elsewhere and not visible here.
    pub(super) fn contains(&self, unit: &Unit) -> bool {
        lock(&self.since).contains_key(unit)
    }
}

impl Shared {
    /// The coordinator says `unit` is done (another pod published it): done
    /// here once storage shows it, looked up past this pod's cache; until
    /// then rechecked, and made again only when it stays invisible past the
    /// grace.
    pub(super) async fn done_elsewhere(&self, job: &Arc<JobRun>, unit: &Unit) {
        let id = job.id();
        if job.layout.is_done_fresh(unit) {
            job.unseen.clear(unit);
            self.unit_done(job, unit).await;
            return;
        }
        match job.unseen.note(unit, Instant::now()) {
            Unseen::Recheck { first } => {
                if first {
                    tracing::info!(job = %id, unit = %unit, "done on another pod but not visible here yet: looking again (not encoding it)");
                }
                job.book().retry_at(unit, Instant::now() + UNSEEN_RECHECK);
            }
            Unseen::Lost(waited) => {
                tracing::warn!(job = %id, unit = %unit, "marked done but its output is still missing after {waited:?} and fresh lookups: redoing it");
                if let Err(err) = self.coord.unmark_done(id, unit).await {
                    tracing::warn!(job = %id, unit = %unit, "unmarking: {err}");
                }
                job.book().retry_at(unit, Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unseen_unit_is_rechecked_until_the_grace_ends() {
        let unseen = UnseenOutputs::default();
        let unit = Unit::Thumbnail;
        let start = Instant::now();
        assert!(!unseen.contains(&unit));
        assert_eq!(unseen.note(&unit, start), Unseen::Recheck { first: true });
        assert!(unseen.contains(&unit));
        let later = start + UNSEEN_GRACE - Duration::from_millis(1);
        assert_eq!(unseen.note(&unit, later), Unseen::Recheck { first: false });
        let past = start + UNSEEN_GRACE;
        assert_eq!(unseen.note(&unit, past), Unseen::Lost(UNSEEN_GRACE));
        assert!(!unseen.contains(&unit), "a lost unit starts over");
        assert_eq!(unseen.note(&unit, past), Unseen::Recheck { first: true });
        unseen.clear(&unit);
        assert!(!unseen.contains(&unit));
    }
}
