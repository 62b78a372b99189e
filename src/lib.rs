//! segswarm: turn source videos into adaptive HLS on a cluster of identical
//! pods.
//!
//! Data flows one way: `probe` → `plan` → units claimed through a
//! [`Coordinator`] → `encode` (ffmpeg, via `ffmpeg`) → `storage` (atomic
//! publish) → `playlists` (written by `hls`). The `worker` drives that
//! pipeline for `segswarm transcode` ([`Transcode`]) and for a pod
//! ([`serve`]) alike; around it a pod has `jobs` (records, events, the
//! cluster's job registry), `api` (HTTP), `watch` and `webhook`. Nothing in
//! the pipeline calls back into the worker, the pod or the binary.
//! docs/architecture.md has the map.
//!
//! Modules are private; what the binary, the tests, the benchmarks and the
//! fuzz targets use is re-exported here.

mod api;
mod config;
mod coord;
mod egress;
mod encode;
mod fetch;
mod ffmpeg;
#[doc(hidden)]
pub mod fuzzing;
mod hls;
mod jobs;
mod metrics;
mod plan;
mod playlists;
mod pod;
mod prepare;
mod probe;
mod redis_link;
mod source;
mod storage;
mod sync;
mod transcode;
mod warning;
mod watch;
mod webhook;
mod worker;

/// Identifier of a job (UUID v4).
pub type JobId = uuid::Uuid;

// Running segswarm: a pod, a one-off transcode, and what they report.
pub use pod::{serve, PodError};
pub use transcode::{Transcode, TranscodeConfig, TranscodeError};
pub use warning::{JobWarning, WarningKind};
pub use worker::{FailureKind, JobOutcome, JobRun, UnitFailure, WorkerEvent};

/// The validated settings a pod and a transcode are made from.
pub mod settings {
    pub use crate::config::{
        validate_max_attempts, validate_preset, validate_segment_duration, worker_id_or_hostname,
        ClaimTtl, ConfigError, EncodeSettings, Ladder, LogFormat, PodConfig, RunSettings, Rung,
        Slots, TestNetwork, DEFAULT_SEGMENT_DURATION,
    };
}

/// Coordination, for tests and benchmarks that drive it directly.
pub mod coordination {
    pub use crate::coord::{
        new_token, ClaimOutcome, ClusterCapacity, Completion, CoordError, Coordinator, Lease,
        LocalCoordinator, Mode, RedisCoordinator, UnitNotice, WaitOutcome,
    };
    pub use crate::metrics::Metrics;
    pub use crate::redis_link::{RedisSettings, RedisSetupError};
}

/// The encoding pipeline's pieces, for tests and benchmarks that drive or
/// time one step.
pub mod pipeline {
    pub use crate::egress::EgressPolicy;
    pub use crate::encode::mpegts::{self, TsError, TsSegment};
    pub use crate::encode::{AudioGap, Batch, EncodeError, Filled, Verified, VideoOutput};
    pub use crate::fetch::{FetchError, SourceFetch, SourceInput};
    pub use crate::ffmpeg::{RunControl, RunError};
    pub use crate::plan::{Plan, PlanError, Rendition, Segment, Unit};
    pub use crate::probe::{probe, ProbeError, SourceInfo};
    pub use crate::probe::{AudioInfo, VideoInfo};
    pub use crate::source::{Source, SourceError};
    pub use crate::storage::{AudioWorkDir, JobLayout, Storage};
}

/// The worker with an encoder of the caller's, for the simulation
/// benchmark: the real scheduler, coordinator and publishing, with outputs
/// made by something other than ffmpeg.
pub mod simulation {
    pub use crate::playlists::Listing;
    pub use crate::worker::{Encoder, Ffmpeg, JobOptions, Worker, WorkerSettings};
}
