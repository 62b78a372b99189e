//! The ffmpeg command line of each kind of batch: the DESIGN recipe for
//! frame-exact video segments (and its filling variant for a damaged
//! source, [`Recipe::Fill`]), one continuous AAC encode per audio track,
//! and the thumbnail. Only arguments are built here; nothing is run.

use super::{Batch, VideoOutput};
use crate::fetch::SourceInput;
use crate::plan::{Plan, Segment};
use crate::storage::AudioWorkDir;
use std::ffi::OsString;
use std::path::Path;

/// Sample rate of every audio rendition.
const AUDIO_SAMPLE_RATE: u32 = 48_000;

/// A hole in a track's decoded audio longer than this (seconds) is filled
/// with silence (`aresample`'s hard compensation), so the track keeps the
/// source's timeline; shorter ones are left (a fraction of a 21 ms AAC
/// frame: rounding, not damage).
pub(super) const AUDIO_GAP_FILLED: f64 = 0.005;

/// How a video segment is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recipe {
    /// The frames the source has, exactly: the DESIGN recipe.
    Exact,
    /// For a source that decodes to fewer frames than planned (see
    /// `damage.rs`): the segment's frames on a constant-rate grid from its
    /// first planned time, a missing frame repeating the one before it
    /// (the one after it at the start, the last one at the end), so the
    /// segment still has its planned frame count and times.
    Fill,
}

/// The ffmpeg arguments for `batch` (without `-progress`); `recipe`
/// matters only for video.
pub(super) fn ffmpeg_args(
    batch: &Batch,
    plan: &Plan,
    input: &SourceInput,
    recipe: Recipe,
) -> Vec<OsString> {
    let mut args = Args::default();
    args.push_all(["-nostdin", "-v", "error", "-y"]);
    // ffmpeg exits with 69 when more than 2/3 of the decoded frames had
    // errors, after writing its outputs all the same. What a damaged
    // source yields is judged on the outputs (damage.rs), so the exit
    // status stays about the encode: a crash, a signal, a write error.
    args.push_all(["-max_error_rate", "1"]);
    args.push_all(["-protocol_whitelist", input.protocol_whitelist()]);
    args.push_all(["-format_whitelist", plan.source.format_whitelist()]);
    let input = input.ffmpeg_input();
    match batch {
        Batch::Video { segment, outputs } => {
            video_args(&mut args, plan, input, segment, outputs, recipe)
        }
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
/// before its first frame (and before the next segment's), take exactly
/// its frames, keep source timestamps shifted by a fixed base, one IDR at
/// the start. Each rendition is a branch of one filter graph so the source
/// is decoded once per batch.
fn video_args(
    args: &mut Args,
    plan: &Plan,
    input: &str,
    segment: &Segment,
    outputs: &[VideoOutput],
    recipe: Recipe,
) {
    args.push_all(["-ss".to_string(), seconds(segment.seek)]);
    args.push_all(["-i", input]);
    let mut graph = format!("[0:{}]", plan.video_stream);
    graph.push_str(&trim_filter(plan, segment));
    if recipe == Recipe::Fill {
        graph.push_str(&fill_filters(segment));
    }
    graph.push_str(&format!("split={}", outputs.len()));
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

/// `trim` to the segment's own frames, with a comma after it (empty for a
/// plan written before `trim_from` existed). The seek lands before the
/// segment (at its keyframe, see plan::SEEK_MARGIN): the start drops what
/// comes before its first frame (segment 0 is decoded from the source's
/// start and needs none). The end, half a frame before the next segment's
/// first frame, changes nothing for a healthy source (its frames all come
/// before it, and `-frames:v` stops there), but a source that lost frames
/// inside the segment now yields a short segment, which verification sees,
/// instead of frames of the next one (a timeline that overlaps the next
/// segment's). Timestamps are the source's own here (-copyts).
fn trim_filter(plan: &Plan, segment: &Segment) -> String {
    let from = segment
        .trim_from
        .map(|from| format!("start={}", seconds(from)));
    let to = plan
        .segments
        .get(segment.index + 1)
        .and_then(|next| next.trim_from)
        .map(|to| format!("end={}", seconds(to)));
    let bounds: Vec<String> = from.into_iter().chain(to).collect();
    if bounds.is_empty() {
        String::new()
    } else {
        format!("trim={},", bounds.join(":"))
    }
}

/// The [`Recipe::Fill`] filters, with a comma after them. `fps` puts the
/// frames on the segment's own constant-rate grid from its first planned
/// time (`start_time`: a missing start repeats the first frame decoded; a
/// hole repeats the frame before it), `tpad` repeats the last frame when
/// the end is missing, and `-frames:v` takes exactly the planned count.
/// The rate is the segment's frames over its duration: the source's rate
/// for a constant-rate source, so every frame keeps its planned time; a
/// variable-rate source gets evenly spaced frames over the same span.
fn fill_filters(segment: &Segment) -> String {
    format!(
        "fps=fps={}:start_time={}:round=near,tpad=stop={}:stop_mode=clone,",
        segment_rate(segment),
        seconds(segment.start),
        segment.frames
    )
}

/// A segment's frame rate as an exact fraction (`30000/1001`): its frames
/// over its duration in microseconds.
fn segment_rate(segment: &Segment) -> String {
    let num = segment.frames as u64 * 1_000_000;
    let den = ((segment.duration * 1e6).round() as u64).max(1);
    let divisor = gcd(num, den).max(1);
    format!("{}/{}", num / divisor, den / divisor)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
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
    // A damaged source's audio decodes with holes (packets the decoder
    // refuses): resampling with hard compensation fills them with silence
    // (and trims overlaps), so the track keeps the source's timeline. It
    // changes nothing for a track that decodes whole (measured:
    // docs/reliability.md). No first_pts: -copyts keeps the source's start.
    args.push_all([
        "-af".to_string(),
        format!("aresample={AUDIO_SAMPLE_RATE}:async=1:min_hard_comp={AUDIO_GAP_FILLED}"),
    ]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EncodeSettings;
    use crate::plan::Rendition;
    use crate::probe::{AudioInfo, SourceInfo, VideoInfo};
    use crate::storage::JobLayout;

    /// The plan's source, read directly.
    fn local() -> SourceInput {
        SourceInput::file(std::path::Path::new("/media/in.mp4"))
    }

    /// A 12 s, 30 fps mp4 with audio, planned in 4 s segments.
    fn plan() -> Plan {
        let frame_times: Vec<f64> = (0..360).map(|i| f64::from(i) / 30.0).collect();
        let info = SourceInfo {
            format: "mov,mp4,m4a,3gp,3g2,mj2".into(),
            duration: 12.0,
            start_time: 0.0,
            video: VideoInfo {
                stream_index: 0,
                codec: "h264".into(),
                width: 320,
                height: 240,
                sample_aspect: (1, 1),
                rotation: 0,
                pix_fmt: "yuv420p".into(),
                keyframe_times: frame_times.iter().step_by(30).copied().collect(),
                frame_times,
                last_frame_duration: 1.0 / 30.0,
            },
            audio: vec![AudioInfo {
                stream_index: 1,
                codec: "aac".into(),
                channels: 1,
                sample_rate: 48_000,
                language: None,
                title: None,
            }],
            truncated: None,
        };
        let settings = EncodeSettings {
            ladder: "240p".parse().expect("ladder"),
            segment_duration: 4,
            ..EncodeSettings::default()
        };
        let source = crate::source::Source::Url("http://example.com/a.mp4".into());
        Plan::new(crate::JobId::nil(), source, settings, &info).expect("plan")
    }

    fn video(plan: &Plan, index: usize) -> Batch {
        let rendition: Rendition = plan.renditions[0].clone();
        Batch::Video {
            segment: plan.segments[index].clone(),
            outputs: vec![VideoOutput {
                rendition,
                tmp_path: "/tmp/seg.ts".into(),
            }],
        }
    }

    fn graph(args: &[OsString]) -> String {
        let at = args
            .iter()
            .position(|a| a == "-filter_complex")
            .expect("a filter graph");
        args[at + 1].to_string_lossy().into_owned()
    }

    #[test]
    fn a_segment_is_trimmed_to_its_own_frames() {
        let plan = plan();
        assert_eq!(plan.segments.len(), 3);
        // Half a frame (1/60 s) before this segment's and the next's first
        // frame.
        let middle = graph(&ffmpeg_args(
            &video(&plan, 1),
            &plan,
            &local(),
            Recipe::Exact,
        ));
        assert!(
            middle.starts_with("[0:0]trim=start=3.983333:end=7.983333,split=1"),
            "{middle}"
        );
        // The last one runs to the end of the source, the first from its
        // start.
        let last = graph(&ffmpeg_args(
            &video(&plan, 2),
            &plan,
            &local(),
            Recipe::Exact,
        ));
        assert!(
            last.starts_with("[0:0]trim=start=7.983333,split=1"),
            "{last}"
        );
        let first = graph(&ffmpeg_args(
            &video(&plan, 0),
            &plan,
            &local(),
            Recipe::Exact,
        ));
        assert!(
            first.starts_with("[0:0]trim=end=3.983333,split=1"),
            "{first}"
        );
    }

    #[test]
    fn the_fill_recipe_puts_the_frames_on_the_segments_grid() {
        let plan = plan();
        let fill = graph(&ffmpeg_args(
            &video(&plan, 1),
            &plan,
            &local(),
            Recipe::Fill,
        ));
        assert!(
            fill.starts_with(
                "[0:0]trim=start=3.983333:end=7.983333,\
                 fps=fps=30/1:start_time=4.000000:round=near,\
                 tpad=stop=120:stop_mode=clone,split=1"
            ),
            "{fill}"
        );
        let exact = ffmpeg_args(&video(&plan, 1), &plan, &local(), Recipe::Exact);
        let filled = ffmpeg_args(&video(&plan, 1), &plan, &local(), Recipe::Fill);
        assert_eq!(exact.len(), filled.len(), "only the graph differs");
    }

    #[test]
    fn segment_rates_are_exact_fractions() {
        let mut segment = plan().segments[0].clone();
        assert_eq!(segment_rate(&segment), "30/1");
        segment.frames = 180;
        segment.duration = 6.006;
        assert_eq!(segment_rate(&segment), "30000/1001");
        segment.frames = 5;
        segment.duration = 0.2;
        assert_eq!(segment_rate(&segment), "25/1");
    }

    #[test]
    fn audio_fills_holes_with_silence() {
        let plan = plan();
        let work = JobLayout::new("/tmp/job").audio_work_dir("token", 0);
        let args = ffmpeg_args(
            &Batch::Audio { track: 0, work },
            &plan,
            &local(),
            Recipe::Exact,
        );
        let at = args.iter().position(|a| a == "-af").expect("-af");
        assert_eq!(args[at + 1], "aresample=48000:async=1:min_hard_comp=0.005");
    }
}
