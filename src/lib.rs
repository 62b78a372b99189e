//! segswarm: turn source videos into adaptive HLS on a cluster of identical pods.
//!
//! Data flows one way: [`probe`] → [`plan`] → units claimed through a
//! [`coord::Coordinator`] → [`encode`] (ffmpeg, via [`ffmpeg`]) → [`storage`]
//! (atomic publish) → [`hls`] (playlists). The [`worker`] drives that pipeline
//! for the CLI and for the pod alike; nothing in the pipeline calls back into
//! the worker or the binary.

pub mod api;
pub mod bench;
pub mod config;
pub mod coord;
pub mod cpu;
pub mod egress;
pub mod encode;
pub mod ffmpeg;
#[doc(hidden)]
pub mod fuzzing;
pub mod hls;
pub mod jobs;
pub mod metrics;
pub mod plan;
pub mod pod;
pub mod probe;
pub mod source;
pub mod storage;
mod sync;
pub mod transcode;
pub mod watch;
pub mod webhook;
pub mod worker;

/// Identifier of a job (UUID v4).
pub type JobId = uuid::Uuid;
