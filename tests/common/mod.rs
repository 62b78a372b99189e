//! Shared helpers for segswarm's end-to-end tests.
//!
//! Every test file does `mod common;` and uses what it needs from here:
//! - [`media`]: generate small test clips with ffmpeg's lavfi sources and probe
//!   media with ffprobe.
//! - [`iframes`]: check a job's I-frame playlists (trick play): every
//!   entry's map and byte range demux alone and start with an IDR.
//! - [`hls`]: validate an HLS output folder end to end (playlists, IDR first,
//!   no gaps, duration to the frame, decodes cleanly).
//! - [`process`]: the binary under test, scratch directories, running
//!   `segswarm transcode`, finding leftover ffmpeg processes, and a
//!   process's RSS and CPU time.
//! - [`pod`]: `segswarm serve` on a free port ([`pod::Pod`]), or inside a
//!   network namespace ([`pod::PodNetns`]), SSE and metrics parsing, raw
//!   HTTP requests and an `ffmpeg` wrapper for fault injection.
//! - [`redis`]: a real `redis-server` on a free loopback port
//!   ([`redis::RedisServer`]), stoppable and restartable on the same port,
//!   and `INFO` of any Redis ([`redis::info`]).
//! - [`browser`]: headless Chromium through the node scripts in
//!   `tests/browser/` (pinned hls.js and playwright-core).
//! - [`cluster`]: several pods sharing one Redis and one storage folder
//!   ([`cluster::Cluster`]) and an `ffmpeg` wrapper that holds encodes.
//! - [`proxy`]: a loopback TCP proxy that cuts a pod off from Redis (a
//!   black hole, like a DROP rule) and restores it ([`proxy::CutProxy`]).
//! - [`mounts`]: a small tmpfs and a read-only bind mount for storage
//!   faults ([`mounts::Mount`], unmounted on drop).
//! - [`nfs`]: a network file system with per-client caches, one sshfs
//!   mount per pod of a folder served by a throwaway sshd
//!   ([`nfs::NetworkShare`], unmounted on drop).
//! - [`relay`]: a TCP relay between a pod and Redis that can be cut
//!   ([`relay::RedisRelay`]): one pod alone while the others keep Redis.
//! - [`integrity`]: a thread that checks every file of a job folder is
//!   whole while the folder is written ([`integrity::FolderWatch`]).
//! - [`netns`]: network namespaces, veth pairs and listeners bound inside a
//!   namespace ([`netns::Netns`]; root only, skipped elsewhere but on CI), and a pod's
//!   host with a cuttable path to Redis ([`netns::PodHost`]).
//! - [`origin`]: an HTTP origin with redirects and Range requests that
//!   records what it is asked ([`origin::Origin`]), and a listener that
//!   counts connections ([`origin::Tripwire`]).
//! - [`finality`]: a thread that checks a job folder's published files are
//!   never replaced and its playlists only grow ([`finality::FinalityWatch`]).
//! - [`stats`]: latency percentiles for `FIGURE:` lines
//!   ([`stats::Latencies`]) and min/median/max over repeated runs.
//!
//! Each test binary compiles this module on its own and uses only part of it,
//! hence the module-level `dead_code` and `unused_imports` allowances. The
//! benchmark harness (`benches/segswarm`) includes it too, with `#[path]`.
#![allow(dead_code, unused_imports)]

pub mod browser;
pub mod cluster;
pub mod finality;
pub mod hls;
pub mod iframes;
pub mod integrity;
pub mod media;
pub mod mounts;
pub mod netns;
pub mod nfs;
pub mod origin;
pub mod pod;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod relay;
pub mod stats;
pub mod webhook;

pub use self::redis::RedisServer;
pub use cluster::{hold_wrapper, Cluster};
pub use hls::{
    validate_hls, validate_hls_as_planned, AudioTrackReport, HlsReport, RenditionReport,
};
pub use media::{ffprobe_json, gen_clip, probe_source, ClipSpec, SourceMedia};
pub use pod::{
    decode_errors, has_metric, metric_value, raw_get, wait_for, FfmpegWrapper, Pod, SseEvent,
    SseStream,
};
pub use process::{
    assert_transcode_ok, bin, ffmpeg_processes_mentioning, run_transcode, seg_files, TestDir,
};
