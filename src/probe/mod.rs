//! Reading what a source holds: streams, duration and every video frame's
//! timestamp, through `ffprobe`.
//!
//! Owns turning ffprobe's JSON and packet list into a [`SourceInfo`] and the
//! sanity limits on what a source may claim. It never decides how to cut the
//! source; that is [`crate::plan`].

mod parse;

use crate::fetch::{FetchError, SourceFetch, SourceInput};
use crate::ffmpeg::{run_ffprobe, run_ffprobe_with_stderr, RunError};
use crate::source::Source;
use parse::{parse_packets, parse_streams};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::time::Duration;

/// Largest width or height accepted; beyond this a header is lying or the
/// source is not something we should decode.
pub const MAX_DIMENSION: u32 = 8192;
/// How long one ffprobe call may take before the source is declared unreadable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(300);
/// Most video frames a source may have (9 h 15 min at 60 fps, 18.5 h at
/// 30 fps). The packet list is read into memory (about 70 bytes a frame of
/// ffprobe output), so ffprobe is told to stop one frame after this.
pub const MAX_FRAMES: usize = 2_000_000;
/// Longest video span accepted, in seconds (24 h). Frame timestamps, not
/// the container header, give the span; a timestamp that jumps hours ahead
/// would otherwise plan thousands of segments of nothing.
pub const MAX_SPAN_SECONDS: f64 = 24.0 * 3600.0;

/// Why a source could not be probed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("source {source_name}: not a readable video ({reason})")]
    Unreadable { source_name: String, reason: String },
    #[error("source {0}: no video stream")]
    NoVideo(String),
    #[error("source {0}: the video stream has no frames (truncated or corrupt?)")]
    NoFrames(String),
    #[error("source {source_name}: video size {width}x{height} is not supported (at most {MAX_DIMENSION} per side)")]
    BadDimensions {
        source_name: String,
        width: u32,
        height: u32,
    },
    #[error("source {source_name}: format {format} is not accepted (accepted: {formats}; playlists such as HLS .m3u8 and concat lists are refused because they open other files)", formats = crate::source::MEDIA_FORMATS)]
    UnsupportedFormat { source_name: String, format: String },
    #[error("source {source_name}: too long: {detail} (at most {MAX_FRAMES} frames and {max_hours} h)", max_hours = MAX_SPAN_SECONDS / 3600.0)]
    TooLong { source_name: String, detail: String },
    #[error("source {source_name}: video size {width}x{height} with pixel aspect {}:{} is not supported (displayed at most {MAX_DIMENSION} per side)", sample_aspect.0, sample_aspect.1)]
    BadDisplaySize {
        source_name: String,
        width: u32,
        height: u32,
        sample_aspect: (u32, u32),
    },
    #[error("source {source_name}: could not parse ffprobe output: {reason}")]
    Parse { source_name: String, reason: String },
    #[error("probing source {source_name}: {error}")]
    Run {
        source_name: String,
        error: RunError,
    },
    /// The pod's proxy could not fetch the source: a refused redirect, an
    /// origin that answered an error or could not be reached.
    #[error("source {source_name}: {error}")]
    Fetch {
        source_name: String,
        error: FetchError,
    },
}

/// The video stream the job is made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoInfo {
    /// Absolute stream index in the source (for `-map 0:<index>`).
    pub stream_index: u32,
    pub codec: String,
    /// Coded size, before rotation.
    pub width: u32,
    pub height: u32,
    /// Sample aspect ratio (1:1 for square pixels).
    pub sample_aspect: (u32, u32),
    /// Rotation in degrees from the display matrix (0, 90, 180, 270).
    pub rotation: u32,
    pub pix_fmt: String,
    /// Presentation time of every frame in seconds, ascending.
    pub frame_times: Vec<f64>,
    /// Presentation time of every keyframe (packet flag K), ascending.
    #[serde(default)]
    pub keyframe_times: Vec<f64>,
    /// Duration of the last frame in seconds.
    pub last_frame_duration: f64,
}

impl VideoInfo {
    /// Display size: rotation applied and non-square pixels made square.
    pub fn display_size(&self) -> (f64, f64) {
        let (num, den) = self.sample_aspect;
        let width = f64::from(self.width) * f64::from(num.max(1)) / f64::from(den.max(1));
        let height = f64::from(self.height);
        if self.rotation % 180 == 90 {
            (height, width)
        } else {
            (width, height)
        }
    }

    /// Span of the video in seconds: first frame to the end of the last.
    pub fn span(&self) -> f64 {
        match (self.frame_times.first(), self.frame_times.last()) {
            (Some(first), Some(last)) => last + self.last_frame_duration - first,
            _ => 0.0,
        }
    }
}

/// One audio stream of the source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioInfo {
    pub stream_index: u32,
    pub codec: String,
    pub channels: u32,
    pub sample_rate: u32,
    pub language: Option<String>,
    pub title: Option<String>,
}

/// Everything the planner needs to know about a source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub format: String,
    /// Container duration in seconds (informational; the plan uses frames).
    pub duration: f64,
    /// Container start time in seconds; output timestamps are offset by it.
    pub start_time: f64,
    pub video: VideoInfo,
    pub audio: Vec<AudioInfo>,
    /// What ffprobe said when the file ends before its last packet (a
    /// cut-off upload): the frames listed are the ones there are.
    #[serde(default)]
    pub truncated: Option<String>,
}

/// Probes `source`, read through `fetch`: streams, then every packet
/// timestamp of the video stream.
pub async fn probe(source: &Source, fetch: &SourceFetch) -> Result<SourceInfo, ProbeError> {
    let source_name = source.to_string();
    let input = fetch
        .open(source)
        .await
        .map_err(|error| ProbeError::Fetch {
            source_name: source_name.clone(),
            error,
        })?;
    let run_error = |error: RunError| match (input.failure(), error) {
        // The proxy knows why better than ffprobe ("403 Forbidden").
        (Some(error), _) => ProbeError::Fetch {
            source_name: source_name.clone(),
            error,
        },
        // ffprobe's last line is then only "<input>: Invalid argument".
        (None, RunError::Failed { stderr, .. }) if stderr.contains("not on whitelist") => {
            ProbeError::UnsupportedFormat {
                source_name: source_name.clone(),
                format: refused_format(&stderr),
            }
        }
        (None, RunError::Failed { stderr, .. }) => ProbeError::Unreadable {
            source_name: source_name.clone(),
            reason: input.explain(&failure_reason(&stderr)),
        },
        (None, error) => ProbeError::Run {
            source_name: source_name.clone(),
            error,
        },
    };
    let streams_json = run_ffprobe(
        probe_args(
            &input,
            source,
            &["-show_format", "-show_streams", "-of", "json"],
        ),
        PROBE_TIMEOUT,
    )
    .await
    .map_err(run_error)?;
    let info = parse_streams(&source_name, &streams_json)?;
    let index = info.video.stream_index.to_string();
    let packet_limit = format!("%+#{}", MAX_FRAMES + 1);
    let (packets, warnings) = run_ffprobe_with_stderr(
        probe_args(
            &input,
            source,
            &[
                "-select_streams",
                &index,
                "-read_intervals",
                &packet_limit,
                "-show_entries",
                "packet=pts_time,dts_time,duration_time,flags",
                "-of",
                "compact=p=0",
            ],
        ),
        PROBE_TIMEOUT,
    )
    .await
    .map_err(run_error)?;
    let mut info = with_frames(&source_name, info, &packets)?;
    // A cut-off upload still probes, but ffprobe says so on stderr (and
    // exits 0). The packets it listed are the ones before the cut: the job
    // is planned on them and ends with a warning naming what is missing
    // (an upload cut before its first frame has no packets: NoFrames).
    info.truncated = warnings
        .lines()
        .find(|line| line.contains("partial file") || line.contains("truncat"))
        .map(|line| input.explain(without_context(line.trim())));
    Ok(info)
}

/// The two ffprobe outputs (streams JSON, compact packet list) made into a
/// [`SourceInfo`], with every sanity limit applied: what [`probe`] does
/// without running ffprobe (the fuzz targets call it too).
pub(crate) fn parse_probe_output(
    source_name: &str,
    streams_json: &[u8],
    packets: &[u8],
) -> Result<SourceInfo, ProbeError> {
    let info = parse_streams(source_name, streams_json)?;
    with_frames(source_name, info, packets)
}

/// Adds the frame timestamps of the packet list to `info`.
fn with_frames(
    source_name: &str,
    mut info: SourceInfo,
    packets: &[u8],
) -> Result<SourceInfo, ProbeError> {
    let (frame_times, keyframe_times, last_frame_duration) = parse_packets(packets);
    if frame_times.is_empty() {
        return Err(ProbeError::NoFrames(source_name.to_string()));
    }
    check_length(source_name, &frame_times, last_frame_duration)?;
    info.video.frame_times = frame_times;
    info.video.keyframe_times = keyframe_times;
    info.video.last_frame_duration = last_frame_duration;
    Ok(info)
}

/// Refuses a source with more than [`MAX_FRAMES`] frames or a span over
/// [`MAX_SPAN_SECONDS`].
fn check_length(
    source_name: &str,
    frame_times: &[f64],
    last_frame_duration: f64,
) -> Result<(), ProbeError> {
    let too_long = |detail: String| ProbeError::TooLong {
        source_name: source_name.to_string(),
        detail,
    };
    if frame_times.len() > MAX_FRAMES {
        return Err(too_long(format!("more than {MAX_FRAMES} frames")));
    }
    if let (Some(first), Some(last)) = (frame_times.first(), frame_times.last()) {
        let span = last + last_frame_duration - first;
        if !span.is_finite() || span > MAX_SPAN_SECONDS {
            return Err(too_long(format!(
                "its frame timestamps span {span:.0} s ({first:.3} s to {last:.3} s)"
            )));
        }
    }
    Ok(())
}

/// ffprobe arguments for `source` read as `input`: quiet, and only the
/// protocols and demuxers the source may use (a playlist or concat list
/// would otherwise open the files and hosts it names during the probe
/// already).
fn probe_args(input: &SourceInput, source: &Source, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "-v".into(),
        "error".into(),
        "-protocol_whitelist".into(),
        input.protocol_whitelist().into(),
        "-format_whitelist".into(),
        source.format_whitelist().into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args.push(input.ffmpeg_input().into());
    args
}

/// An ffprobe log line without its `[mov,mp4,... @ 0x55d0c5f0a940] `
/// prefix (the address differs every run; the plan must not).
fn without_context(line: &str) -> &str {
    match line
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("] "))
    {
        Some((context, message)) if context.contains(" @ ") => message,
        _ => line,
    }
}

/// The demuxer named in ffprobe's `[hls @ 0x...] Format not on whitelist`.
fn refused_format(stderr: &str) -> String {
    stderr
        .lines()
        .find(|line| line.contains("not on whitelist"))
        .and_then(|line| line.strip_prefix('['))
        .and_then(|rest| rest.split_once(" @"))
        .map(|(name, _)| name.to_string())
        .filter(|name| !name.is_empty() && name.len() < 64)
        .unwrap_or_else(|| "(unknown)".to_string())
}

/// ffprobe's explanation of a failure: its last line (`<input>: <error>`),
/// after the demuxer's message before it when there is one
/// (`[mov,mp4,... @ 0x...] moov atom not found`), which says more.
fn failure_reason(stderr: &str) -> String {
    let mut lines = stderr
        .lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.is_empty());
    let Some(last) = lines.next() else {
        return "ffprobe failed without a message".to_string();
    };
    let detail = lines
        .next()
        .filter(|line| line.starts_with('['))
        .and_then(|line| line.split_once("] "))
        .map(|(_, message)| message.trim());
    match detail {
        Some(detail) if !detail.is_empty() => format!("{detail}; {last}"),
        _ => last.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reason_keeps_the_demuxer_message() {
        assert_eq!(
            failure_reason("[IMGUTILS @ 0x7ffe] Picture size 16384x16384 is invalid\nfile:huge.y4m: Device or resource busy\n"),
            "Picture size 16384x16384 is invalid; file:huge.y4m: Device or resource busy"
        );
        assert_eq!(
            failure_reason("file:t.txt: Invalid data found when processing input"),
            "file:t.txt: Invalid data found when processing input"
        );
        assert_eq!(failure_reason(""), "ffprobe failed without a message");
    }

    #[test]
    fn log_lines_lose_their_context_address() {
        assert_eq!(
            without_context("[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55a6cef5ca40] stream 0, offset 0x1d0047: partial file"),
            "stream 0, offset 0x1d0047: partial file"
        );
        assert_eq!(without_context("partial file"), "partial file");
        assert_eq!(without_context("[x] y"), "[x] y");
    }

    #[test]
    fn names_the_refused_format() {
        let stderr =
            "[hls @ 0x55c3e48d7540] Format not on whitelist 'mov,mp4'\np.m3u8: Invalid argument";
        assert_eq!(refused_format(stderr), "hls");
        assert_eq!(refused_format("Format not on whitelist"), "(unknown)");
    }

    #[test]
    fn refuses_lying_timestamps() {
        let mut times: Vec<f64> = (0..50).map(|i| f64::from(i) / 25.0).collect();
        assert!(check_length("x", &times, 0.04).is_ok());
        times.push(360_000.0);
        assert!(matches!(
            check_length("x", &times, 0.04),
            Err(ProbeError::TooLong { .. })
        ));
        assert!(check_length("x", &times[..50], f64::INFINITY).is_err());
    }
}
