//! Every Redis key and channel name segswarm uses, in one place.
//!
//! Keys of one job share the hash tag `{<job-id>}`, so every script touches
//! one slot and the protocol runs unchanged on Redis Cluster:
//!
//! | key / channel                        | holds                                                   | used by     |
//! |--------------------------------------|---------------------------------------------------------|-------------|
//! | `segswarm:{<job>}:claim:<unit>`      | `<token> <worker_id>`, PX = claim TTL                   | coordinator |
//! | `segswarm:{<job>}:done`              | set of done unit names                                  | coordinator |
//! | `segswarm:{<job>}:claimed`           | set of units claimed and not given back                 | coordinator |
//! | `segswarm:{<job>}:attempts`          | hash unit → failed attempts                             | coordinator |
//! | channel `segswarm:{<job>}:units`     | `done <unit>` / `free <unit>` notices                   | coordinator |
//! | `segswarm:{<job>}:job`               | hash: `status`, `record`, `plan`, progress, once-flags  | registry    |
//! | `segswarm:{<job>}:seq`               | the last event id                                       | registry    |
//! | `segswarm:{<job>}:history`           | list of the job's last events                           | registry    |
//! | `segswarm:{<job>}:warnings`          | hash warning key → warning JSON (damaged source filled) | coordinator writes, registry reads |
//! | channel `segswarm:{<job>}:events`    | each event as `<seq> <origin> <name> <job JSON>`        | registry    |
//! | `segswarm:jobs`                      | sorted set of active jobs (priority, then age)          | registry    |
//! | `segswarm:pods`                      | hash worker id → `<slots> <busy> <expires ms>`          | coordinator |
//! | channel `segswarm:control`           | `new <job>`, `planned <job>`, `cancel <job>`            | registry    |
//!
//! Nothing else in the crate spells a key.

use crate::plan::Unit;
use crate::JobId;

/// The set of active jobs (also what KEDA scales on).
pub const ACTIVE_JOBS: &str = "segswarm:jobs";
/// The live pods and their slots (the heartbeat), for the cluster's
/// capacity.
pub const PODS: &str = "segswarm:pods";
/// The channel of job-level notices (`new <job>`, `planned <job>`, `cancel <job>`).
pub const CONTROL_CHANNEL: &str = "segswarm:control";
/// The pattern of every job's unit-notice channel.
pub const UNITS_PATTERN: &str = "segswarm:{*}:units";
/// The pattern of every job's event channel.
pub const EVENTS_PATTERN: &str = "segswarm:{*}:events";

const UNITS_SUFFIX: &str = "units";
const EVENTS_SUFFIX: &str = "events";

/// The names of one job's keys and channels.
pub struct JobKeys {
    /// `segswarm:{<job>}`
    prefix: String,
}

impl JobKeys {
    pub fn new(job: JobId) -> Self {
        JobKeys {
            prefix: format!("segswarm:{{{job}}}"),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// The claim of one unit.
    pub fn claim(&self, unit: &Unit) -> String {
        format!("{}{unit}", self.claim_prefix())
    }

    /// What every claim key of the job starts with (for SCAN).
    pub fn claim_prefix(&self) -> String {
        self.key("claim:")
    }

    pub fn done(&self) -> String {
        self.key("done")
    }

    pub fn claimed(&self) -> String {
        self.key("claimed")
    }

    pub fn attempts(&self) -> String {
        self.key("attempts")
    }

    /// The channel of unit notices.
    pub fn units_channel(&self) -> String {
        self.key(UNITS_SUFFIX)
    }

    /// The registry's hash of the job.
    pub fn job(&self) -> String {
        self.key("job")
    }

    pub fn seq(&self) -> String {
        self.key("seq")
    }

    pub fn history(&self) -> String {
        self.key("history")
    }

    /// The job's warnings, one field per warning (`<kind>:<unit>`).
    pub fn warnings(&self) -> String {
        self.key("warnings")
    }

    /// The channel of job events.
    pub fn events_channel(&self) -> String {
        self.key(EVENTS_SUFFIX)
    }

    /// The registry's keys that expire a while after the job ends.
    pub fn registry_keys(&self) -> [String; 4] {
        [self.job(), self.seq(), self.history(), self.warnings()]
    }
}

/// The job of a unit-notice channel name.
pub fn job_of_units_channel(channel: &str) -> Option<JobId> {
    job_of_channel(channel, UNITS_SUFFIX)
}

/// The job of an event channel name.
pub fn job_of_events_channel(channel: &str) -> Option<JobId> {
    job_of_channel(channel, EVENTS_SUFFIX)
}

fn job_of_channel(channel: &str, suffix: &str) -> Option<JobId> {
    channel
        .strip_prefix("segswarm:{")?
        .strip_suffix(suffix)?
        .strip_suffix("}:")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_job_hash_tag() {
        let job = JobId::new_v4();
        let keys = JobKeys::new(job);
        let unit = Unit::Video {
            rendition: "240p".into(),
            index: 3,
        };
        let tag = format!("{{{job}}}");
        for key in [
            keys.claim(&unit),
            keys.done(),
            keys.claimed(),
            keys.attempts(),
            keys.units_channel(),
            keys.job(),
            keys.seq(),
            keys.history(),
            keys.warnings(),
            keys.events_channel(),
        ] {
            assert!(key.starts_with(&format!("segswarm:{tag}:")), "{key}");
        }
        assert_eq!(
            keys.claim(&unit),
            format!("segswarm:{tag}:claim:video/240p/3")
        );
    }

    #[test]
    fn channels_name_their_job() {
        let job = JobId::new_v4();
        let keys = JobKeys::new(job);
        assert_eq!(job_of_units_channel(&keys.units_channel()), Some(job));
        assert_eq!(job_of_events_channel(&keys.events_channel()), Some(job));
        assert_eq!(job_of_events_channel(&keys.units_channel()), None);
        assert_eq!(job_of_units_channel("segswarm:{nope}:units"), None);
        // The patterns match the channels.
        assert_eq!(
            UNITS_PATTERN.replace('*', &job.to_string()),
            keys.units_channel()
        );
        assert_eq!(
            EVENTS_PATTERN.replace('*', &job.to_string()),
            keys.events_channel()
        );
    }
}
