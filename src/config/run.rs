//! How a process runs its share of the work, the same for `segswarm serve`
//! and `segswarm transcode`: how many batches at once, how long a claim
//! lives, how often a unit is tried.

use super::ConfigError;
use std::time::Duration;

/// Spare slots of a worker whose slot count was not set.
const DEFAULT_SPARE_SLOTS: usize = 2;

/// How many ffmpeg batches run at once.
///
/// By default one per core, plus [`DEFAULT_SPARE_SLOTS`] that start a batch
/// only while the running batches leave cores unused (the worker's
/// `CoreLoad`). How many cores one batch keeps busy depends on the source:
/// with a 720p source the filter graph and the one-thread encoders share
/// ffmpeg's main thread (about one core, with gaps while it seeks and
/// decodes), with a 1080p ladder the threaded 720p and 1080p encoders fill
/// two. Measured on 2 cores (docs/benchmarks.md, figure 1): 720p source, 2
/// slots 55 s, 4 slots 34 s; 1080p source, 2 slots 64 s, 4 slots 69 s (4
/// busy batches on 2 cores cost 8 % more CPU). Spare slots take the first
/// case's unused cores without crowding the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slots {
    /// Batches that run whenever there is work.
    pub fixed: usize,
    /// Further batches that run only while the running ones leave cores
    /// unused.
    pub spare: usize,
}

impl Slots {
    /// The slots for a setting: a count that was given is exact (`0`
    /// counts as 1, no spare slots); none gives the default.
    pub fn from_setting(count: Option<usize>) -> Slots {
        match count {
            Some(count) => Slots {
                fixed: count.max(1),
                spare: 0,
            },
            None => Slots::default(),
        }
    }
}

impl Default for Slots {
    fn default() -> Self {
        Slots {
            fixed: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            spare: DEFAULT_SPARE_SLOTS,
        }
    }
}

/// How long a claim lives without renewal. At least [`ClaimTtl::MIN`]:
/// renewals run every TTL/3, and below that they would be most of what a
/// pod sends to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimTtl(Duration);

impl ClaimTtl {
    pub const MIN: Duration = Duration::from_millis(100);

    /// A TTL of `ms` milliseconds; values below [`ClaimTtl::MIN`] count as
    /// the minimum (as docs/configuration.md says).
    pub fn from_millis(ms: u64) -> ClaimTtl {
        ClaimTtl(Duration::from_millis(ms).max(Self::MIN))
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl Default for ClaimTtl {
    /// 30 s: a killed pod's units are taken over within that.
    fn default() -> Self {
        ClaimTtl(Duration::from_secs(30))
    }
}

/// How a process runs its work: the part of the configuration `serve` and
/// `transcode` share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSettings {
    pub slots: Slots,
    pub claim_ttl: ClaimTtl,
    /// Attempts per unit before it fails for good (at least 1: see
    /// [`validate_max_attempts`]).
    pub max_attempts: u32,
    /// Wait before the first retry of a failed unit; doubles each time.
    pub retry_backoff: Duration,
    /// An ffmpeg that prints no progress for this long is killed.
    pub stall_timeout: Duration,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            slots: Slots::default(),
            claim_ttl: ClaimTtl::default(),
            max_attempts: 3,
            retry_backoff: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// Checks the attempts a unit may have before it fails for good.
pub fn validate_max_attempts(attempts: u32) -> Result<u32, ConfigError> {
    if attempts == 0 {
        Err(ConfigError::MaxAttempts)
    } else {
        Ok(attempts)
    }
}

/// The worker id given, or the hostname when none (or only blanks) was.
pub fn worker_id_or_hostname(given: Option<String>) -> String {
    match given.filter(|id| !id.trim().is_empty()) {
        Some(id) => id,
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_else(|| "segswarm".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_given_are_exact() {
        assert_eq!(Slots::from_setting(Some(3)), Slots { fixed: 3, spare: 0 });
        assert_eq!(Slots::from_setting(Some(0)), Slots { fixed: 1, spare: 0 });
        let default = Slots::from_setting(None);
        assert!(default.fixed >= 1);
        assert_eq!(default.spare, DEFAULT_SPARE_SLOTS);
    }

    #[test]
    fn claim_ttl_has_a_floor() {
        assert_eq!(ClaimTtl::from_millis(5).get(), ClaimTtl::MIN);
        assert_eq!(
            ClaimTtl::from_millis(2500).get(),
            Duration::from_millis(2500)
        );
        assert_eq!(ClaimTtl::default().get(), Duration::from_secs(30));
    }

    #[test]
    fn attempts_and_worker_ids() {
        assert_eq!(validate_max_attempts(0), Err(ConfigError::MaxAttempts));
        assert_eq!(validate_max_attempts(3), Ok(3));
        assert_eq!(worker_id_or_hostname(Some("pod-a".into())), "pod-a");
        assert!(!worker_id_or_hostname(Some("  ".into())).trim().is_empty());
    }
}
