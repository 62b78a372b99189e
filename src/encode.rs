//! Encoding: the one place that builds ffmpeg arguments, and the checks an
//! output must pass before it may be published.
//!
//! A [`Batch`] is what one ffmpeg process produces: one segment of one or
//! more video renditions (decode once, split, scale and encode each), or a
//! whole audio rendition, or the thumbnail. Outputs go to in-progress paths
//! given by the caller; this module never renames anything into place and
//! never writes to the source.

use crate::ffmpeg::{run_ffmpeg, run_ffprobe, RunControl, RunError};
use crate::plan::{Plan, Rendition, Segment};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a verification ffprobe may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);
/// Sample rate of every audio rendition.
const AUDIO_SAMPLE_RATE: u32 = 48_000;

/// Why an encode did not produce a publishable output.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoding {what}: {error}")]
    Run { what: String, error: RunError },
    #[error("encoding {what}: output {path} failed verification: {reason}")]
    Verify {
        what: String,
        path: PathBuf,
        reason: String,
    },
}

impl EncodeError {
    pub fn is_canceled(&self) -> bool {
        matches!(self, EncodeError::Run { error, .. } if error.is_canceled())
    }
}

/// One video output of a batch: a rendition and where its segment goes.
#[derive(Debug, Clone)]
pub struct VideoOutput {
    pub rendition: Rendition,
    pub tmp_path: PathBuf,
}

/// What one ffmpeg process produces.
#[derive(Debug, Clone)]
pub enum Batch {
    /// Segment `segment` of every listed rendition.
    Video {
        segment: Segment,
        outputs: Vec<VideoOutput>,
    },
    /// A whole audio rendition: `index.m3u8` and its segments in `tmp_dir`.
    Audio { track: usize, tmp_dir: PathBuf },
    /// The thumbnail image.
    Thumbnail { tmp_path: PathBuf },
}

impl Batch {
    /// Human-readable name for errors and logs.
    pub fn describe(&self) -> String {
        match self {
            Batch::Video { segment, outputs } => {
                let names: Vec<&str> = outputs.iter().map(|o| o.rendition.name.as_str()).collect();
                format!("segment {} of {}", segment.index, names.join(","))
            }
            Batch::Audio { track, .. } => format!("audio track {track}"),
            Batch::Thumbnail { .. } => "thumbnail".to_string(),
        }
    }

    /// CPU priority of this batch's ffmpeg: the thumbnail is never what a
    /// player waits for, so it only takes CPU that the segments and audio
    /// leave (on a 2-core pod it used to slow a new job's first segment).
    pub fn niceness(&self) -> i32 {
        match self {
            Batch::Thumbnail { .. } => 10,
            Batch::Video { .. } | Batch::Audio { .. } => 0,
        }
    }

    /// The ffmpeg arguments for this batch (without `-progress`).
    pub fn ffmpeg_args(&self, plan: &Plan) -> Vec<OsString> {
        let mut args = Args::default();
        args.push_all(["-nostdin", "-v", "error", "-y"]);
        args.push_all(["-protocol_whitelist", plan.source.protocol_whitelist()]);
        args.push_all(["-format_whitelist", plan.source.format_whitelist()]);
        match self {
            Batch::Video { segment, outputs } => video_args(&mut args, plan, segment, outputs),
            Batch::Audio { track, tmp_dir } => audio_args(&mut args, plan, *track, tmp_dir),
            Batch::Thumbnail { tmp_path } => thumbnail_args(&mut args, plan, tmp_path),
        }
        args.0
    }

    /// Runs ffmpeg for this batch, then verifies every output.
    pub async fn run(&self, plan: &Plan, control: RunControl) -> Result<(), EncodeError> {
        let what = self.describe();
        run_ffmpeg(self.ffmpeg_args(plan), self.niceness(), control)
            .await
            .map_err(|error| EncodeError::Run {
                what: what.clone(),
                error,
            })?;
        self.verify(plan).await
    }

    /// Checks the outputs: a truncated or empty output is a failed attempt,
    /// never a done unit.
    pub async fn verify(&self, plan: &Plan) -> Result<(), EncodeError> {
        let what = self.describe();
        match self {
            Batch::Video { segment, outputs } => {
                for output in outputs {
                    verify_segment(&output.tmp_path, segment.frames, &output.rendition)
                        .await
                        .map_err(|reason| EncodeError::Verify {
                            what: what.clone(),
                            path: output.tmp_path.clone(),
                            reason,
                        })?;
                }
                Ok(())
            }
            Batch::Audio { tmp_dir, .. } => {
                verify_audio(tmp_dir)
                    .await
                    .map_err(|reason| EncodeError::Verify {
                        what,
                        path: tmp_dir.join("index.m3u8"),
                        reason,
                    })
            }
            Batch::Thumbnail { tmp_path } => verify_image(tmp_path, plan.thumbnail.width)
                .await
                .map_err(|reason| EncodeError::Verify {
                    what,
                    path: tmp_path.clone(),
                    reason,
                }),
        }
    }
}

/// Output options that keep subtitles, data, metadata and chapters of the
/// source out of an output (they would make bytes depend on the source's
/// tags, and players do not need them).
const STRIP_OTHER_STREAMS: [&str; 6] = ["-sn", "-dn", "-map_metadata", "-1", "-map_chapters", "-1"];

/// A growing ffmpeg argument list.
#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, arg: impl Into<OsString>) {
        self.0.push(arg.into());
    }
    fn push_all<I, S>(&mut self, args: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.0.extend(args.into_iter().map(Into::into));
    }
}

/// Seconds as ffmpeg reads them, to the microsecond.
fn seconds(value: f64) -> String {
    format!("{value:.6}")
}

/// The DESIGN recipe, with a seek that also works without an index: seek
/// before the keyframe the segment is decoded from, trim to half a frame
/// before its first frame, take exactly its frames, keep source timestamps shifted by a fixed base,
/// one IDR at the start. Each rendition is a branch of one filter graph so
/// the source is decoded once per batch.
fn video_args(args: &mut Args, plan: &Plan, segment: &Segment, outputs: &[VideoOutput]) {
    args.push_all(["-ss".to_string(), seconds(segment.seek)]);
    args.push_all(["-i".to_string(), plan.source.ffmpeg_input()]);
    // The seek lands before the segment (at its keyframe, see
    // plan::SEEK_MARGIN); trim drops what comes before its first frame.
    // Timestamps are the source's own here (-copyts).
    let trim = segment
        .trim_from
        .map(|from| format!("trim=start={},", seconds(from)))
        .unwrap_or_default();
    let mut graph = format!("[0:{}]{trim}split={}", plan.video_stream, outputs.len());
    for i in 0..outputs.len() {
        graph.push_str(&format!("[s{i}]"));
    }
    for (i, output) in outputs.iter().enumerate() {
        let r = &output.rendition;
        graph.push_str(&format!(
            ";[s{i}]scale={}:{}:flags=bicubic,setsar=1,format=yuv420p[v{i}]",
            r.width, r.height
        ));
    }
    args.push_all(["-filter_complex".to_string(), graph]);
    args.push("-copyts");
    let frames = segment.frames.to_string();
    for (i, output) in outputs.iter().enumerate() {
        let r = &output.rendition;
        args.push_all(["-map".to_string(), format!("[v{i}]")]);
        args.push("-an");
        args.push_all(STRIP_OTHER_STREAMS);
        args.push_all(["-frames:v", &frames, "-fps_mode", "passthrough"]);
        args.push_all(["-c:v", "libx264", "-preset", &plan.settings.preset]);
        args.push_all(["-profile:v", "high", "-pix_fmt", "yuv420p"]);
        args.push_all(["-threads".to_string(), r.threads.to_string()]);
        args.push_all(["-b:v".to_string(), r.bitrate.to_string()]);
        args.push_all(["-maxrate".to_string(), r.maxrate.to_string()]);
        args.push_all(["-bufsize".to_string(), r.bufsize.to_string()]);
        args.push_all(["-g", &frames, "-keyint_min", &frames, "-sc_threshold", "0"]);
        args.push_all([
            "-output_ts_offset".to_string(),
            seconds(plan.output_ts_offset()),
        ]);
        args.push_all(["-muxdelay", "0", "-muxpreload", "0", "-f", "mpegts"]);
        args.push(output.tmp_path.as_os_str());
    }
}

/// One continuous AAC encode per track, cut into HLS segments by ffmpeg's
/// hls muxer (per-segment AAC would add priming silence at every boundary).
fn audio_args(args: &mut Args, plan: &Plan, track: usize, tmp_dir: &Path) {
    let Some(audio) = plan.audio.iter().find(|a| a.track == track) else {
        return;
    };
    args.push_all(["-i".to_string(), plan.source.ffmpeg_input()]);
    args.push_all(["-map".to_string(), format!("0:{}", audio.stream_index)]);
    args.push("-vn");
    args.push_all(STRIP_OTHER_STREAMS);
    args.push_all(["-c:a", "aac"]);
    args.push_all(["-b:a".to_string(), audio.bitrate.to_string()]);
    args.push_all(["-ac".to_string(), audio.channels.to_string()]);
    args.push_all(["-ar".to_string(), AUDIO_SAMPLE_RATE.to_string()]);
    args.push("-copyts");
    args.push_all([
        "-output_ts_offset".to_string(),
        seconds(plan.output_ts_offset()),
    ]);
    args.push_all(["-muxdelay", "0", "-muxpreload", "0", "-f", "hls"]);
    args.push_all([
        "-hls_time".to_string(),
        plan.settings.segment_duration.to_string(),
    ]);
    // EVENT: the hls muxer rewrites the playlist after every segment (with
    // VOD only at the end), so the worker can publish the track as it grows.
    // temp_file: segments and playlist appear under their names only whole.
    args.push_all(["-hls_playlist_type", "event", "-hls_list_size", "0"]);
    args.push_all(["-hls_flags", "temp_file"]);
    args.push("-hls_segment_filename");
    args.push(tmp_dir.join("seg_%05d.ts").into_os_string());
    args.push(tmp_dir.join("index.m3u8").into_os_string());
}

fn thumbnail_args(args: &mut Args, plan: &Plan, tmp_path: &Path) {
    let thumb = &plan.thumbnail;
    args.push_all(["-i".to_string(), plan.source.ffmpeg_input()]);
    // An output seek: decode from the start and drop frames up to the time
    // (at most 5 s in). An input seek can land past the only keyframe of an
    // MPEG-TS source and yield no frame at all.
    args.push_all(["-ss".to_string(), seconds(thumb.time)]);
    args.push_all(["-map".to_string(), format!("0:{}", plan.video_stream)]);
    args.push_all(["-an", "-sn", "-dn", "-map_metadata", "-1", "-frames:v", "1"]);
    args.push_all([
        "-vf".to_string(),
        format!("scale={}:{},setsar=1", thumb.width, thumb.height),
    ]);
    args.push_all(["-c:v", "libwebp", "-quality", "80", "-f", "webp"]);
    args.push(tmp_path.as_os_str());
}

async fn ffprobe_compact(path: &Path, entries: &str) -> Result<String, String> {
    let args: Vec<OsString> = vec![
        "-v".into(),
        "error".into(),
        "-protocol_whitelist".into(),
        "file".into(),
        "-show_entries".into(),
        entries.into(),
        "-of".into(),
        "compact".into(),
        path.as_os_str().into(),
    ];
    run_ffprobe(args, VERIFY_TIMEOUT)
        .await
        .map(|out| String::from_utf8_lossy(&out).into_owned())
        .map_err(|e| e.to_string())
}

/// A compact-format line's `key=value` field.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split('|')
        .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
}

/// A video segment must demux, hold exactly the planned frames, start with a
/// keyframe and have the rendition's size.
async fn verify_segment(path: &Path, frames: usize, rendition: &Rendition) -> Result<(), String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot stat: {e}"))?
        .len();
    if size == 0 {
        return Err("empty file".into());
    }
    let text = ffprobe_compact(
        path,
        "stream=codec_type,width,height:packet=stream_index,flags",
    )
    .await?;
    let video_stream = text
        .lines()
        .find(|l| l.starts_with("stream|") && field(l, "codec_type") == Some("video"))
        .ok_or("no video stream")?;
    let (width, height) = (field(video_stream, "width"), field(video_stream, "height"));
    if width != Some(&rendition.width.to_string()) || height != Some(&rendition.height.to_string())
    {
        return Err(format!(
            "size {}x{}, expected {}x{}",
            width.unwrap_or("?"),
            height.unwrap_or("?"),
            rendition.width,
            rendition.height
        ));
    }
    let packets: Vec<&str> = text.lines().filter(|l| l.starts_with("packet|")).collect();
    if packets.len() != frames {
        return Err(format!("{} frames, expected {frames}", packets.len()));
    }
    match packets.first().and_then(|p| field(p, "flags")) {
        Some(flags) if flags.contains('K') => Ok(()),
        _ => Err("first frame is not a keyframe".into()),
    }
}

/// The audio rendition's playlist must parse and list segments that exist.
async fn verify_audio(tmp_dir: &Path) -> Result<(), String> {
    let playlist_path = tmp_dir.join("index.m3u8");
    let bytes = std::fs::read(&playlist_path).map_err(|e| format!("cannot read playlist: {e}"))?;
    let playlist = m3u8_rs::parse_media_playlist_res(&bytes)
        .map_err(|e| format!("playlist does not parse: {e:?}"))?;
    if playlist.segments.is_empty() {
        return Err("no audio segments".into());
    }
    if !playlist.end_list {
        return Err("playlist has no ENDLIST: the encode stopped early".into());
    }
    for segment in &playlist.segments {
        let path = tmp_dir.join(&segment.uri);
        let len = std::fs::metadata(&path)
            .map_err(|e| format!("segment {}: {e}", segment.uri))?
            .len();
        if len == 0 {
            return Err(format!("segment {} is empty", segment.uri));
        }
    }
    let first = tmp_dir.join(&playlist.segments[0].uri);
    let text = ffprobe_compact(&first, "stream=codec_name").await?;
    if !text.contains("codec_name=aac") {
        return Err("first segment holds no AAC stream".into());
    }
    Ok(())
}

async fn verify_image(path: &Path, width: u32) -> Result<(), String> {
    let text = ffprobe_compact(path, "stream=width").await?;
    if text.contains(&format!("width={width}")) {
        Ok(())
    } else {
        Err(format!("not a {width} px wide image: {}", text.trim()))
    }
}

/// Reads an MPEG-TS segment's video profile and level and turns them into an
/// RFC 6381 codec string (`avc1.64001f`), from the real output.
pub async fn video_codec_string(segment: &Path) -> Option<String> {
    let text = ffprobe_compact(segment, "stream=codec_type,profile,level")
        .await
        .ok()?;
    let line = text
        .lines()
        .find(|l| field(l, "codec_type") == Some("video"))?;
    let level: u32 = field(line, "level")?.parse().ok()?;
    let (profile_idc, constraints) = match field(line, "profile")? {
        "Constrained Baseline" => (0x42, 0xC0),
        "Baseline" => (0x42, 0x00),
        "Main" => (0x4D, 0x40),
        "High" => (0x64, 0x00),
        _ => return None,
    };
    Some(format!(
        "avc1.{profile_idc:02x}{constraints:02x}{level:02x}"
    ))
}
