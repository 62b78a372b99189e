//! Checks an output must pass before it is published (a truncated or empty
//! output is a failed attempt, never a done unit), and reading an output's
//! codec for the master playlist. Video segments are read in process
//! ([`super::mpegts`]); the audio rendition and the thumbnail (one check per
//! job) are one ffprobe each. Nothing here writes a file.

use super::mpegts::{self, TsError, TsSegment, TS_CLOCK};
use crate::ffmpeg::run_ffprobe;
use crate::plan::{Plan, Rendition, Segment};
use crate::storage::AudioWorkDir;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

/// How long a verification ffprobe may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);

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

/// How far, in 90 kHz ticks, a segment's first PTS may be from the
/// expected one (rounding of the source's time base and of the offset).
const PTS_TOLERANCE: u64 = 2;

/// Why a video segment did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SegmentFault {
    /// A well-formed segment of the rendition's size, IDR first, that holds
    /// fewer frames than planned, or an output with no video frame at all
    /// (`frames` 0; `empty` says what it looked like): what a source that
    /// does not decode to its planned frames gives (see `damage.rs`).
    Short {
        frames: usize,
        planned: usize,
        empty: Option<String>,
    },
    /// Anything else.
    Bad(String),
}

impl std::fmt::Display for SegmentFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentFault::Short {
                planned,
                empty: Some(what),
                ..
            } => write!(f, "{what} (no frame, expected {planned})"),
            SegmentFault::Short {
                frames, planned, ..
            } => {
                write!(f, "{frames} frames, expected {planned}")
            }
            SegmentFault::Bad(reason) => f.write_str(reason),
        }
    }
}

/// A video segment must be a non-empty MPEG-TS file that demuxes, hold
/// exactly the planned frames, start with an IDR picture of the rendition's
/// size, and start at the planned time ([`expected_first_pts`]). Returns
/// what it read, for the codec string. Parsed in process
/// ([`super::mpegts`]), not by an ffprobe child.
pub(super) async fn segment(
    path: &Path,
    plan: &Plan,
    segment: &Segment,
    rendition: &Rendition,
) -> Result<TsSegment, SegmentFault> {
    let nothing = |what: String| SegmentFault::Short {
        frames: 0,
        planned: segment.frames,
        empty: Some(what),
    };
    let size = std::fs::metadata(path)
        .map_err(|e| SegmentFault::Bad(format!("cannot stat: {e}")))?
        .len();
    // ffmpeg ends cleanly with an empty output when nothing decoded.
    if size == 0 {
        return Err(nothing("empty file".into()));
    }
    let owned = path.to_path_buf();
    let info = tokio::task::spawn_blocking(move || mpegts::read(&owned))
        .await
        .map_err(|e| SegmentFault::Bad(format!("reading the segment: {e}")))?
        .map_err(|e| match e {
            e @ (TsError::NoVideo | TsError::NoFrames) => nothing(e.to_string()),
            other => SegmentFault::Bad(other.to_string()),
        })?;
    check_segment(&info, plan, segment, rendition)?;
    Ok(info)
}

/// The checks of [`segment`] on what was read.
fn check_segment(
    info: &TsSegment,
    plan: &Plan,
    segment: &Segment,
    rendition: &Rendition,
) -> Result<(), SegmentFault> {
    if (info.width, info.height) != (rendition.width, rendition.height) {
        return Err(SegmentFault::Bad(format!(
            "size {}x{}, expected {}x{}",
            info.width, info.height, rendition.width, rendition.height
        )));
    }
    if !info.keyframe_first {
        return Err(SegmentFault::Bad(
            "first frame is not a keyframe (no IDR slice)".into(),
        ));
    }
    if info.frames < segment.frames {
        // Its first frame is then late too: the frame count says more.
        return Err(SegmentFault::Short {
            frames: info.frames,
            planned: segment.frames,
            empty: None,
        });
    }
    if info.frames != segment.frames {
        return Err(SegmentFault::Bad(format!(
            "{} frames, expected {}",
            info.frames, segment.frames
        )));
    }
    let first = info
        .first_pts
        .ok_or_else(|| SegmentFault::Bad("first frame has no PTS".into()))?;
    let expected = expected_first_pts(segment.start, plan.output_ts_offset(), info.tick);
    if !expected
        .iter()
        .any(|e| pts_distance(first, *e) <= PTS_TOLERANCE)
    {
        let shown: Vec<String> = expected.iter().map(|e| e.to_string()).collect();
        return Err(SegmentFault::Bad(format!(
            "first frame at PTS {first} ({:.6} s), expected {} (source time {:.6} s \
             + offset {:.6} s), within {PTS_TOLERANCE} ticks of 90 kHz",
            first as f64 / TS_CLOCK as f64,
            shown.join(" or "),
            segment.start,
            plan.output_ts_offset(),
        )));
    }
    Ok(())
}

/// The PTS values (90 kHz) a segment whose first frame has source time
/// `source_time` may start at, with the job's `-output_ts_offset`.
///
/// Outputs keep the source's timestamps (`-copyts`) shifted by the offset,
/// which ffmpeg adds in the muxer's 90 kHz clock. Measured with ffmpeg 5.1:
/// before that, the encoder (whose time base is one frame at the stream's
/// frame rate, and x264 writes that tick into the SPS timing information)
/// rounds each frame's time to its tick. Sources whose frames sit on that
/// grid (most files) start exactly at `source_time + offset`; others (an
/// MPEG-TS source starting at 1.421333 s at 30 fps) start on the grid
/// (1.433333 s), at most half a frame later or earlier. Both are accepted,
/// so the check also holds for an ffmpeg that encodes in the source's time
/// base; a segment that starts one frame early or late matches neither.
fn expected_first_pts(source_time: f64, offset: f64, tick: Option<(u64, u64)>) -> Vec<u64> {
    let clock = TS_CLOCK as f64;
    let offset_ticks = offset * clock;
    let mut expected = vec![(source_time * clock + offset_ticks).round()];
    if let Some((num, den)) = tick {
        let (num, den) = (num as f64, den as f64);
        let frames = source_time * den / num;
        let mut grid = vec![frames.round()];
        // A time halfway between two ticks: the source's time is known to
        // the microsecond only, so either rounding may be ffmpeg's.
        if (frames.fract().abs() - 0.5).abs() < 1e-3 {
            grid = vec![frames.floor(), frames.ceil()];
        }
        for n in grid {
            expected.push((n * num / den * clock + offset_ticks).round());
        }
    }
    let mut ticks: Vec<u64> = expected
        .into_iter()
        .filter(|t| t.is_finite() && *t >= 0.0)
        .map(|t| (t as u64) % PTS_WRAP)
        .collect();
    ticks.sort_unstable();
    ticks.dedup();
    ticks
}

/// PTS values are 33-bit and wrap.
const PTS_WRAP: u64 = 1 << 33;

/// Distance between two PTS values, across the wrap.
fn pts_distance(a: u64, b: u64) -> u64 {
    let d = a.abs_diff(b) % PTS_WRAP;
    d.min(PTS_WRAP - d)
}

/// The audio rendition's playlist must parse, be complete (ENDLIST) and list
/// segments that exist, the first of them holding AAC.
pub(super) async fn audio(work: &AudioWorkDir) -> Result<(), String> {
    let playlist = crate::storage::read_playlist(&work.playlist())
        .map_err(|e| format!("cannot read playlist: {e}"))?;
    if playlist.segments.is_empty() {
        return Err("no audio segments".into());
    }
    if !playlist.end_list {
        return Err("playlist has no ENDLIST: the encode stopped early".into());
    }
    for segment in &playlist.segments {
        let len = std::fs::metadata(work.file(&segment.uri))
            .map_err(|e| format!("segment {}: {e}", segment.uri))?
            .len();
        if len == 0 {
            return Err(format!("segment {} is empty", segment.uri));
        }
    }
    let first = work.file(&playlist.segments[0].uri);
    let text = ffprobe_compact(&first, "stream=codec_name").await?;
    if !text.contains("codec_name=aac") {
        return Err("first segment holds no AAC stream".into());
    }
    Ok(())
}

pub(super) async fn image(path: &Path, width: u32) -> Result<(), String> {
    let text = ffprobe_compact(path, "stream=width").await?;
    if text.contains(&format!("width={width}")) {
        Ok(())
    } else {
        Err(format!("not a {width} px wide image: {}", text.trim()))
    }
}

/// Reads an MPEG-TS segment's RFC 6381 codec string (`avc1.64001f`) from
/// its sequence parameter set, in process.
pub async fn video_codec_string(segment: &Path) -> Option<String> {
    let owned = segment.to_path_buf();
    tokio::task::spawn_blocking(move || mpegts::read(&owned))
        .await
        .ok()?
        .ok()
        .map(|info| info.codec)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x264's tick at 30 fps (num_units_in_tick 1, time_scale 60).
    const TICK_30: Option<(u64, u64)> = Some((2, 60));

    #[test]
    fn a_source_on_the_frame_grid_starts_at_its_own_time() {
        // Measured: a 30 fps mp4, segment 1 at 2 s, offset 10 s.
        assert_eq!(expected_first_pts(2.0, 10.0, TICK_30), vec![1_080_000]);
        // 29.97 fps, frame 60 (2.002 s): exact in both.
        assert_eq!(
            expected_first_pts(2.002, 10.0, Some((2002, 60000))),
            vec![1_080_180]
        );
    }

    #[test]
    fn a_source_off_the_grid_may_start_on_the_encoders_grid() {
        // Measured: an MPEG-TS source starting at 1.4 s, first frame at
        // 1.421333 s; ffmpeg wrote 903000 (1.433333 s + 8.6 s).
        let expected = expected_first_pts(1.421333, 8.6, TICK_30);
        assert_eq!(expected, vec![901_920, 903_000]);
        // Without timing information only the source's own time counts.
        assert_eq!(expected_first_pts(1.421333, 8.6, None), vec![901_920]);
    }

    #[test]
    fn a_time_halfway_between_ticks_accepts_both_roundings() {
        let expected = expected_first_pts(1.0 / 60.0, 10.0, TICK_30);
        assert_eq!(expected, vec![900_000, 901_500, 903_000]);
    }

    #[test]
    fn a_frame_late_or_early_matches_nothing() {
        let expected = expected_first_pts(2.0, 10.0, TICK_30);
        for first in [1_077_000u64, 1_083_000] {
            assert!(expected
                .iter()
                .all(|e| pts_distance(first, *e) > PTS_TOLERANCE));
        }
        assert!(expected
            .iter()
            .any(|e| pts_distance(1_080_002, *e) <= PTS_TOLERANCE));
    }

    #[test]
    fn pts_distance_wraps_at_33_bits() {
        assert_eq!(pts_distance(1, PTS_WRAP - 1), 2);
        assert_eq!(pts_distance(5, 3), 2);
    }
}
