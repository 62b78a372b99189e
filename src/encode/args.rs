//! The ffmpeg command line of each kind of batch: the DESIGN recipe for
//! frame-exact video segments, one continuous AAC encode per audio track,
//! and the thumbnail. Only arguments are built here; nothing is run.

use super::{Batch, VideoOutput};
use crate::fetch::SourceInput;
use crate::plan::{Plan, Segment};
use crate::storage::AudioWorkDir;
use std::ffi::OsString;
use std::path::Path;

/// Sample rate of every audio rendition.
const AUDIO_SAMPLE_RATE: u32 = 48_000;

/// The ffmpeg arguments for `batch`, reading the source as `input`
/// (without `-progress`).
pub(super) fn ffmpeg_args(batch: &Batch, plan: &Plan, input: &SourceInput) -> Vec<OsString> {
    let mut args = Args::default();
    args.push_all(["-nostdin", "-v", "error", "-y"]);
    args.push_all(["-protocol_whitelist", input.protocol_whitelist()]);
    args.push_all(["-format_whitelist", plan.source.format_whitelist()]);
    let input = input.ffmpeg_input();
    match batch {
        Batch::Video { segment, outputs } => video_args(&mut args, plan, input, segment, outputs),
        Batch::Audio { track, work } => audio_args(&mut args, plan, input, *track, work),
        Batch::Thumbnail { tmp_path } => thumbnail_args(&mut args, plan, input, tmp_path),
    }
    args.0
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
fn video_args(
    args: &mut Args,
    plan: &Plan,
    input: &str,
    segment: &Segment,
    outputs: &[VideoOutput],
) {
    args.push_all(["-ss".to_string(), seconds(segment.seek)]);
    args.push_all(["-i", input]);
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
fn audio_args(args: &mut Args, plan: &Plan, input: &str, track: usize, work: &AudioWorkDir) {
    let Some(audio) = plan.audio.iter().find(|a| a.track == track) else {
        return;
    };
    args.push_all(["-i", input]);
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
    args.push(work.segment_template().into_os_string());
    args.push(work.playlist().into_os_string());
}

fn thumbnail_args(args: &mut Args, plan: &Plan, input: &str, tmp_path: &Path) {
    let thumb = &plan.thumbnail;
    args.push_all(["-i", input]);
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
