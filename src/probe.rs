//! Reading what a source holds: streams, duration and every video frame's
//! timestamp, through `ffprobe`.
//!
//! Owns turning ffprobe's JSON and packet list into a [`SourceInfo`] and the
//! sanity limits on what a source may claim. It never decides how to cut the
//! source; that is [`crate::plan`].

use crate::ffmpeg::{run_ffprobe, run_ffprobe_with_stderr, RunError};
use crate::source::Source;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    #[error("source {source_name}: truncated or damaged ({detail})")]
    Truncated { source_name: String, detail: String },
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
}

/// Probes `source`: streams, then every packet timestamp of the video stream.
pub async fn probe(source: &Source) -> Result<SourceInfo, ProbeError> {
    let source_name = source.to_string();
    let run_error = |error: RunError| match error {
        // ffprobe's last line is then only "<input>: Invalid argument".
        RunError::Failed { stderr, .. } if stderr.contains("not on whitelist") => {
            ProbeError::UnsupportedFormat {
                source_name: source_name.clone(),
                format: refused_format(&stderr),
            }
        }
        RunError::Failed { stderr, .. } => ProbeError::Unreadable {
            source_name: source_name.clone(),
            reason: failure_reason(&stderr),
        },
        error => ProbeError::Run {
            source_name: source_name.clone(),
            error,
        },
    };
    let streams_json = run_ffprobe(
        probe_args(source, &["-show_format", "-show_streams", "-of", "json"]),
        PROBE_TIMEOUT,
    )
    .await
    .map_err(run_error)?;
    let info = parse_streams(&source_name, &streams_json)?;
    let index = info.video.stream_index.to_string();
    let packet_limit = format!("%+#{}", MAX_FRAMES + 1);
    let (packets, warnings) = run_ffprobe_with_stderr(
        probe_args(
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
    let info = with_frames(&source_name, info, &packets)?;
    // A cut-off upload still probes, but ffprobe says so on stderr (and
    // exits 0): refuse it here rather than fail its last segment later.
    if let Some(line) = warnings
        .lines()
        .find(|line| line.contains("partial file") || line.contains("truncat"))
    {
        return Err(ProbeError::Truncated {
            source_name,
            detail: line.trim().to_string(),
        });
    }
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

/// ffprobe arguments for `source`: quiet, and only the protocols and
/// demuxers the source may use (a playlist or concat list would otherwise
/// open the files and hosts it names during the probe already).
fn probe_args(source: &Source, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "-v".into(),
        "error".into(),
        "-protocol_whitelist".into(),
        source.protocol_whitelist().into(),
        "-format_whitelist".into(),
        source.format_whitelist().into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args.push(source.ffmpeg_input().into());
    args
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

#[derive(Deserialize)]
struct ProbeJson {
    #[serde(default)]
    streams: Vec<StreamJson>,
    format: Option<FormatJson>,
}

#[derive(Deserialize)]
struct FormatJson {
    format_name: Option<String>,
    duration: Option<String>,
    start_time: Option<String>,
}

#[derive(Deserialize)]
struct StreamJson {
    index: u32,
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    sample_aspect_ratio: Option<String>,
    pix_fmt: Option<String>,
    channels: Option<u32>,
    sample_rate: Option<String>,
    #[serde(default)]
    disposition: BTreeMap<String, i64>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    side_data_list: Vec<serde_json::Value>,
}

/// Parses `ffprobe -show_format -show_streams -of json` output.
fn parse_streams(source_name: &str, json: &[u8]) -> Result<SourceInfo, ProbeError> {
    let parsed: ProbeJson = serde_json::from_slice(json).map_err(|err| ProbeError::Parse {
        source_name: source_name.to_string(),
        reason: err.to_string(),
    })?;
    let format = parsed.format.ok_or_else(|| ProbeError::Unreadable {
        source_name: source_name.to_string(),
        reason: "no container format found".into(),
    })?;
    let video_stream = parsed
        .streams
        .iter()
        .find(|s| {
            s.codec_type.as_deref() == Some("video")
                && s.disposition.get("attached_pic").copied().unwrap_or(0) == 0
                && s.width.unwrap_or(0) > 0
        })
        .ok_or_else(|| ProbeError::NoVideo(source_name.to_string()))?;
    let (width, height) = (
        video_stream.width.unwrap_or(0),
        video_stream.height.unwrap_or(0),
    );
    if width < 2 || height < 2 || width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(ProbeError::BadDimensions {
            source_name: source_name.to_string(),
            width,
            height,
        });
    }
    let video = VideoInfo {
        stream_index: video_stream.index,
        codec: video_stream.codec_name.clone().unwrap_or_default(),
        width,
        height,
        sample_aspect: parse_ratio(video_stream.sample_aspect_ratio.as_deref()),
        rotation: rotation_of(video_stream),
        pix_fmt: video_stream.pix_fmt.clone().unwrap_or_default(),
        frame_times: Vec::new(),
        keyframe_times: Vec::new(),
        last_frame_duration: 0.0,
    };
    // Renditions keep the display aspect ratio, so a lying pixel aspect
    // (65535:1) would ask the scaler for a frame millions of pixels wide.
    let (display_width, display_height) = video.display_size();
    if display_width > f64::from(MAX_DIMENSION) || display_height > f64::from(MAX_DIMENSION) {
        return Err(ProbeError::BadDisplaySize {
            source_name: source_name.to_string(),
            width,
            height,
            sample_aspect: video.sample_aspect,
        });
    }
    let audio = parsed
        .streams
        .iter()
        .filter(|s| s.codec_type.as_deref() == Some("audio") && s.channels.unwrap_or(0) > 0)
        .map(|s| AudioInfo {
            stream_index: s.index,
            codec: s.codec_name.clone().unwrap_or_default(),
            channels: s.channels.unwrap_or(2),
            sample_rate: s
                .sample_rate
                .as_deref()
                .and_then(|rate| rate.parse().ok())
                .unwrap_or(48_000),
            language: s
                .tags
                .get("language")
                .filter(|lang| !lang.is_empty() && lang.as_str() != "und")
                .cloned(),
            title: s
                .tags
                .get("title")
                .or_else(|| s.tags.get("handler_name"))
                .filter(|title| !is_default_handler(title))
                .cloned(),
        })
        .collect();
    // "nan" and "inf" parse as f64; a header value like that would end up
    // in ffmpeg's arguments and in job.json (where JSON has no NaN).
    let number = |text: &Option<String>| {
        text.as_deref()
            .and_then(|t| t.parse::<f64>().ok())
            .filter(|n| n.is_finite())
    };
    Ok(SourceInfo {
        format: format.format_name.unwrap_or_default(),
        duration: number(&format.duration).unwrap_or(0.0),
        start_time: number(&format.start_time).unwrap_or(0.0),
        video,
        audio,
    })
}

/// Muxers write generic handler names that say nothing to a viewer.
fn is_default_handler(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name.trim().is_empty() || lower.contains("handler") || lower.starts_with("core media")
}

fn parse_ratio(text: Option<&str>) -> (u32, u32) {
    text.and_then(|t| t.split_once(':'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .filter(|&(a, b): &(u32, u32)| a > 0 && b > 0)
        .unwrap_or((1, 1))
}

/// Rotation in degrees, normalised to 0/90/180/270, from the display matrix
/// side data or the legacy `rotate` tag.
fn rotation_of(stream: &StreamJson) -> u32 {
    let from_side_data = stream.side_data_list.iter().find_map(|entry| {
        entry
            .get("rotation")
            .and_then(|value| value.as_f64().or_else(|| value.as_str()?.parse().ok()))
    });
    let degrees = from_side_data
        .or_else(|| stream.tags.get("rotate").and_then(|r| r.parse().ok()))
        .unwrap_or(0.0);
    let quarter_turns = (degrees / 90.0).round() as i64;
    (quarter_turns.rem_euclid(4) * 90) as u32
}

/// Parses `compact` packet lines into sorted frame times and the last
/// frame's duration. Discarded packets are not frames; packets without a pts
/// fall back to their dts.
fn parse_packets(output: &[u8]) -> (Vec<f64>, Vec<f64>, f64) {
    let text = String::from_utf8_lossy(output);
    let mut times = Vec::new();
    let mut keyframes = Vec::new();
    let mut durations = Vec::new();
    for line in text.lines() {
        let mut pts = None;
        let mut dts = None;
        let mut duration = None;
        let mut discarded = false;
        let mut keyframe = false;
        for field in line.split('|') {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            match key {
                "pts_time" => pts = value.parse::<f64>().ok(),
                "dts_time" => dts = value.parse::<f64>().ok(),
                "duration_time" => duration = value.parse::<f64>().ok(),
                "flags" => {
                    discarded = value.contains('D');
                    keyframe = value.contains('K');
                }
                _ => {}
            }
        }
        if discarded {
            continue;
        }
        if let Some(time) = pts.or(dts).filter(|t| t.is_finite()) {
            times.push((time, duration));
            if keyframe {
                keyframes.push(time);
            }
        }
    }
    times.sort_by(|a, b| a.0.total_cmp(&b.0));
    times.dedup_by(|a, b| (a.0 - b.0).abs() < 1e-6);
    for (_, duration) in &times {
        if let Some(d) = duration.filter(|d| *d > 0.0) {
            durations.push(d);
        }
    }
    let frame_times: Vec<f64> = times.iter().map(|(t, _)| *t).collect();
    let last_duration = times
        .last()
        .and_then(|(_, d)| d.filter(|d| *d > 0.0))
        .or_else(|| median_interval(&frame_times))
        .unwrap_or(1.0 / 30.0);
    keyframes.sort_by(f64::total_cmp);
    keyframes.dedup_by(|a, b| (*a - *b).abs() < 1e-6);
    (frame_times, keyframes, last_duration)
}

fn median_interval(times: &[f64]) -> Option<f64> {
    let mut gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    if gaps.is_empty() {
        return None;
    }
    gaps.sort_by(f64::total_cmp);
    Some(gaps[gaps.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_sorted_by_pts_and_discard_skipped() {
        let out = b"pts_time=0.000000|dts_time=-0.066667|duration_time=0.033333|flags=K_\n\
pts_time=0.100000|dts_time=-0.033333|duration_time=0.033333|flags=__\n\
pts_time=0.033333|dts_time=0.000000|duration_time=0.033333|flags=__\n\
pts_time=0.066667|dts_time=0.033333|duration_time=0.033333|flags=_D\n";
        let (times, keyframes, last) = parse_packets(out);
        assert_eq!(times, vec![0.0, 0.033333, 0.1]);
        assert_eq!(keyframes, vec![0.0]);
        assert!((last - 0.033333).abs() < 1e-9);
    }

    #[test]
    fn rotation_and_video_choice() {
        let json = br#"{"format":{"format_name":"mov","duration":"2.0","start_time":"0.5"},
          "streams":[{"index":0,"codec_type":"video","codec_name":"mjpeg","width":300,"height":300,"disposition":{"attached_pic":1}},
                     {"index":1,"codec_type":"video","codec_name":"h264","width":1280,"height":720,
                      "side_data_list":[{"side_data_type":"Display Matrix","rotation":-90}]},
                     {"index":2,"codec_type":"audio","codec_name":"aac","channels":2,"sample_rate":"44100","tags":{"language":"fra"}}]}"#;
        let info = parse_streams("x", json).unwrap();
        assert_eq!(info.video.stream_index, 1);
        assert_eq!(info.video.rotation, 270);
        assert_eq!(info.video.display_size(), (720.0, 1280.0));
        assert_eq!(info.audio[0].language.as_deref(), Some("fra"));
        assert_eq!(info.start_time, 0.5);
    }

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

    #[test]
    fn refuses_huge_headers() {
        let json = br#"{"format":{"format_name":"mov"},"streams":[{"index":0,"codec_type":"video","width":16384,"height":16384}]}"#;
        assert!(matches!(
            parse_streams("x", json),
            Err(ProbeError::BadDimensions { .. })
        ));
        let json = br#"{"format":{"format_name":"mp3"},"streams":[{"index":0,"codec_type":"audio","channels":2}]}"#;
        assert!(matches!(
            parse_streams("x", json),
            Err(ProbeError::NoVideo(_))
        ));
    }
}
