//! The knobs a user turns, each validated once, where it is parsed, into a
//! type that cannot hold a bad value: the encoding settings of a job
//! ([`encode`]), how a process runs its work ([`run`]: slots, claim TTL,
//! attempts), the log format ([`log`]), and a pod's whole configuration
//! ([`PodConfig`]). The binary
//! fills them from flags and environment variables; everything downstream
//! takes them as they are and never checks them again.

mod encode;
mod log;
mod pod;
mod run;
mod test_network;

pub use encode::{
    validate_preset, validate_segment_duration, EncodeSettings, Ladder, Rung,
    DEFAULT_SEGMENT_DURATION, MAX_RUNGS, SEGMENT_DURATION_RANGE,
};
pub use log::LogFormat;
pub use pod::PodConfig;
pub use run::{validate_max_attempts, worker_id_or_hostname, ClaimTtl, RunSettings, Slots};
pub use test_network::TestNetwork;

use encode::PRESETS;

/// Errors in user-supplied settings.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error(
        "invalid rung {0:?}: expected <height>p or <height>p:<bitrate> (e.g. 360p or 360p:900k)"
    )]
    BadRung(String),
    #[error("rung height {0} is out of range (64..=4320)")]
    RungHeight(u32),
    #[error("the ladder is empty")]
    EmptyLadder,
    #[error("the ladder has {0} rungs; at most {MAX_RUNGS} are allowed")]
    TooManyRungs(usize),
    #[error("the ladder lists {0} twice")]
    DuplicateRung(String),
    #[error("segment duration {0} s is out of range (2..=10 s)")]
    SegmentDuration(u32),
    #[error("unknown x264 preset {0:?} (one of: {list})", list = PRESETS.join(", "))]
    Preset(String),
    #[error("max attempts must be at least 1")]
    MaxAttempts,
    #[error("unknown log format {0:?} (text or json)")]
    LogFormat(String),
    #[error("test network {0:?} must be a.b.c.d/prefix inside 198.18.0.0/15 (the benchmarking range), without host bits")]
    TestNetwork(String),
}
