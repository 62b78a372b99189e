//! Shared helpers for segswarm's end-to-end tests.
//!
//! Every test file does `mod common;` and uses what it needs from here:
//! - [`media`]: generate small test clips with ffmpeg's lavfi sources and probe
//!   media with ffprobe.
//! - [`hls`]: validate an HLS output folder end to end (playlists, IDR first,
//!   no gaps, duration to the frame, decodes cleanly).
//! - [`process`]: the binary under test, scratch directories, running
//!   `segswarm transcode`, and finding leftover ffmpeg processes.
//!
//! Later additions (a redis-server on a free port, pod starters) belong in
//! their own sub-module here, re-exported below.
//!
//! Each test binary compiles this module on its own and uses only part of it,
//! hence the module-level `dead_code` and `unused_imports` allowances.
#![allow(dead_code, unused_imports)]

pub mod hls;
pub mod media;
pub mod process;

pub use hls::{validate_hls, AudioTrackReport, HlsReport, RenditionReport};
pub use media::{ffprobe_json, gen_clip, probe_source, ClipSpec, SourceMedia};
pub use process::{
    assert_transcode_ok, bin, ffmpeg_processes_mentioning, run_transcode, seg_files, TestDir,
};
