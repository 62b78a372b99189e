//! Every Redis key and channel name of the job registry, spelled here once.
//!
//! | key / channel                     | holds                                              |
//! |-----------------------------------|----------------------------------------------------|
//! | `segswarm:{<job>}:job`            | hash: `status`, `record` (the job's JSON), `progress_step`, `progress_value`, once-flags |
//! | `segswarm:{<job>}:seq`            | the last event id                                  |
//! | `segswarm:{<job>}:history`        | list of the job's last events                      |
//! | channel `segswarm:{<job>}:events` | each event as `<seq> <origin> <name> <job JSON>`   |
//! | `segswarm:jobs`                   | sorted set of active jobs (priority, then age)     |
//! | channel `segswarm:control`        | `new <job>` and `cancel <job>`                     |
//!
//! Every key of a job carries the `{<job-id>}` hash tag, so that a script
//! touching them stays in one slot on Redis Cluster. Names only: nothing
//! here talks to Redis.

use crate::JobId;

/// The names of the registry's keys and channels.
pub(super) struct RegistryKeys;

impl RegistryKeys {
    /// The channel of job-level notices.
    pub(super) const CONTROL: &'static str = "segswarm:control";
    /// The set of active jobs (also what KEDA scales on).
    pub(super) const ACTIVE_JOBS: &'static str = "segswarm:jobs";
    /// The pattern matching every job's events channel.
    pub(super) const EVENTS_PATTERN: &'static str = "segswarm:{*}:events";
    const JOB_PREFIX: &'static str = "segswarm:{";
    const EVENTS_SUFFIX: &'static str = "}:events";

    /// The job's hash.
    pub(super) fn job(job: JobId) -> String {
        format!("segswarm:{{{job}}}:job")
    }

    /// The job's last event id.
    pub(super) fn seq(job: JobId) -> String {
        format!("segswarm:{{{job}}}:seq")
    }

    /// The job's list of recent events.
    pub(super) fn history(job: JobId) -> String {
        format!("segswarm:{{{job}}}:history")
    }

    /// The job's events channel.
    pub(super) fn events(job: JobId) -> String {
        format!("segswarm:{{{job}}}:events")
    }

    /// The job whose events channel `channel` is.
    pub(super) fn job_of_events(channel: &str) -> Option<JobId> {
        channel
            .strip_prefix(Self::JOB_PREFIX)?
            .strip_suffix(Self::EVENTS_SUFFIX)?
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_a_job_share_its_hash_tag() {
        let job: JobId = "6f1c1b8e-8d0a-4c56-9a53-0d1f3c2b4a10".parse().unwrap();
        let tag = format!("{{{job}}}");
        for key in [
            RegistryKeys::job(job),
            RegistryKeys::seq(job),
            RegistryKeys::history(job),
            RegistryKeys::events(job),
        ] {
            assert!(key.starts_with("segswarm:") && key.contains(&tag), "{key}");
        }
        assert_eq!(
            RegistryKeys::job(job),
            "segswarm:{6f1c1b8e-8d0a-4c56-9a53-0d1f3c2b4a10}:job"
        );
        assert_eq!(
            RegistryKeys::job_of_events(&RegistryKeys::events(job)),
            Some(job)
        );
        assert_eq!(RegistryKeys::job_of_events(&RegistryKeys::seq(job)), None);
        assert_eq!(RegistryKeys::job_of_events(RegistryKeys::CONTROL), None);
    }
}
