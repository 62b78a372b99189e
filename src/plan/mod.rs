//! The plan: what a job is cut into, computed once from the probe.
//!
//! Owns the renditions a source gets (the ladder filtered to the source:
//! never upscaled, aspect kept, even sizes), the segment boundaries (frame
//! indices from the source's real frame timestamps) and the list of work
//! units. A plan is deterministic: the same source and settings always give
//! the same plan, so any pod can recompute it or read it from `job.json`.
//! It never runs anything and never touches storage.

use crate::config::{EncodeSettings, Rung};
use crate::probe::SourceInfo;
use crate::source::Source;
use crate::JobId;
use serde::{Deserialize, Serialize};

mod unit;
pub use unit::Unit;

/// Version of the `job.json` format.
pub const PLAN_VERSION: u32 = 1;
/// Every output timestamp is shifted so the first frame sits at this many
/// seconds: segment 0's DTS (which starts before its PTS when B-frames are
/// used) never goes negative.
pub const TIMESTAMP_BASE: f64 = 10.0;
/// A trailing segment shorter than this is merged into the one before.
const MIN_TAIL_SECONDS: f64 = 0.5;
/// How far before a segment's keyframe ffmpeg is asked to seek, when the
/// segment does not start on a keyframe and the container has no index
/// ([`Container::Unindexed`]). An MPEG-TS source has no index: ffmpeg finds
/// the position by a search on decode timestamps, which can land just after
/// the keyframe (its decode time is earlier than its presentation time),
/// and then nothing decodes up to the next keyframe.
pub const SEEK_MARGIN: f64 = 1.0;
/// How far past a segment's keyframe ffmpeg is asked to seek, when the
/// segment does not start on a keyframe and the container is indexed
/// ([`Container::Indexed`]): the index lands the seek exactly on the last
/// keyframe at or before the target, so the margin would only decode (and
/// drop) up to a second more per segment. Half a millisecond keeps the
/// target past the keyframe whatever the rounding of the time on the
/// command line (microseconds); ffmpeg's accurate seek then drops the
/// frames before the target, and `trim` those up to the segment.
pub const INDEXED_SEEK_PAST_KEYFRAME: f64 = 0.0005;

/// Short side of the thumbnail, at most.
const THUMBNAIL_SHORT_SIDE: u32 = 360;

/// One H.264 rendition of the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendition {
    /// Name and folder, e.g. `360p`.
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Target bitrate, bit/s.
    pub bitrate: u64,
    /// VBV cap, bit/s.
    pub maxrate: u64,
    /// VBV buffer, bits.
    pub bufsize: u64,
    /// x264 threads: fixed per rendition so every pod writes the same bytes.
    pub threads: u32,
}

/// One segment, the same in every rendition: frames `[first_frame,
/// first_frame + frames)` of the source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub index: usize,
    pub first_frame: usize,
    pub frames: usize,
    /// Source presentation time of the first frame, seconds.
    pub start: f64,
    /// Where ffmpeg seeks (`-ss`, relative to the source start): before the
    /// keyframe the first frame is decoded from (see [`SEEK_MARGIN`]).
    pub seek: f64,
    /// Source time from which frames are kept (`trim`): half a frame before
    /// the first frame. None in plans written before it existed, whose seek
    /// was half a frame before the first frame itself.
    #[serde(default)]
    pub trim_from: Option<f64>,
    /// Duration in seconds (to the next segment's first frame).
    pub duration: f64,
}

/// One audio rendition, made from one source audio stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioTrack {
    /// Track number, also its folder `audio/<track>`.
    pub track: usize,
    pub stream_index: u32,
    /// Name shown by players (unique within the job).
    pub name: String,
    pub language: Option<String>,
    /// Output channels (source channels, at most 2).
    pub channels: u32,
    pub bitrate: u64,
}

/// The thumbnail: one frame, scaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thumbnail {
    /// Seek position relative to the source start, seconds.
    pub time: f64,
    pub width: u32,
    pub height: u32,
}

/// What a job is cut into. Written to storage once as `job.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub version: u32,
    pub job_id: JobId,
    pub source: Source,
    pub settings: EncodeSettings,
    /// Container start time of the source; outputs are offset by
    /// `TIMESTAMP_BASE - start_time`.
    pub start_time: f64,
    pub video_stream: u32,
    /// Video span in seconds (first frame to end of last frame).
    pub duration: f64,
    pub total_frames: usize,
    pub renditions: Vec<Rendition>,
    pub segments: Vec<Segment>,
    pub audio: Vec<AudioTrack>,
    pub thumbnail: Thumbnail,
    /// The source was cut off: its frames end before the end its container
    /// claims. The plan covers the frames there are. None for a whole
    /// source, and in plans written before this field existed.
    #[serde(default)]
    pub truncated: Option<Truncation>,
}

/// Where a cut-off source ends, from the probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Truncation {
    /// The duration the container claims, seconds.
    pub claimed_duration: f64,
    /// What ffprobe said of it (`stream 0, offset 0x...: partial file`).
    pub detail: String,
}

/// How ffmpeg's input seek finds a position in a source's container, which
/// decides where a segment that does not start on a keyframe seeks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    /// mov/mp4: a sample index with every keyframe; the seek lands on the
    /// last keyframe at or before the target.
    Indexed,
    /// Anything else (MPEG-TS has no index): the seek may land a little off
    /// the target, so it goes [`SEEK_MARGIN`] before the keyframe.
    Unindexed,
}

impl Container {
    /// From ffprobe's format name, e.g. `mov,mp4,m4a,3gp,3g2,mj2`.
    fn of_format(format_name: &str) -> Container {
        if format_name
            .split(',')
            .any(|name| name == "mov" || name == "mp4")
        {
            Container::Indexed
        } else {
            Container::Unindexed
        }
    }
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the video stream has no frames")]
    NoFrames,
}

impl Plan {
    /// Computes the plan for a probed source.
    pub fn new(
        job_id: JobId,
        source: Source,
        settings: EncodeSettings,
        info: &SourceInfo,
    ) -> Result<Plan, PlanError> {
        let frames = &info.video.frame_times;
        if frames.is_empty() {
            return Err(PlanError::NoFrames);
        }
        let (display_w, display_h) = info.video.display_size();
        let renditions = renditions_for(&settings.ladder.0, display_w, display_h);
        let segments = cut_segments(
            frames,
            &info.video.keyframe_times,
            info.video.last_frame_duration,
            f64::from(settings.segment_duration),
            info.start_time,
            Container::of_format(&info.format),
        );
        let audio = audio_tracks(info, settings.audio_bitrate);
        let duration = info.video.span();
        let short = display_w.min(display_h);
        let thumb_short = (short as u32).min(THUMBNAIL_SHORT_SIDE);
        let (thumb_w, thumb_h) = scaled_size(display_w, display_h, thumb_short);
        let first = frames[0] - info.start_time;
        Ok(Plan {
            version: PLAN_VERSION,
            job_id,
            source,
            settings,
            start_time: info.start_time,
            video_stream: info.video.stream_index,
            duration,
            total_frames: frames.len(),
            renditions,
            segments,
            audio,
            thumbnail: Thumbnail {
                time: (first + (duration * 0.1).min(5.0)).max(0.0),
                width: thumb_w,
                height: thumb_h,
            },
            truncated: info.truncated.as_ref().map(|detail| Truncation {
                claimed_duration: info.duration,
                detail: detail.clone(),
            }),
        })
    }

    /// The value of `-output_ts_offset` for every output of this job.
    pub fn output_ts_offset(&self) -> f64 {
        TIMESTAMP_BASE - self.start_time
    }

    /// A source time in seconds on the job's timeline, where 0 is the
    /// first frame (what a player shows; what warnings name).
    pub fn timeline(&self, source_time: f64) -> f64 {
        let first = self
            .segments
            .first()
            .map_or(self.start_time, |segment| segment.start);
        source_time - first
    }

    pub fn rendition(&self, name: &str) -> Option<&Rendition> {
        self.renditions.iter().find(|r| r.name == name)
    }

    /// Every unit of the job in the order work should be done: audio, the
    /// lowest rendition's segment 0 (with audio, all a player needs to
    /// start), the thumbnail, then segment by segment, lowest rendition
    /// first.
    pub fn units(&self) -> Vec<Unit> {
        let mut units: Vec<Unit> = self
            .audio
            .iter()
            .map(|a| Unit::Audio { track: a.track })
            .collect();
        let mut video = Vec::new();
        for segment in &self.segments {
            for rendition in &self.renditions {
                video.push(Unit::Video {
                    rendition: rendition.name.clone(),
                    index: segment.index,
                });
            }
        }
        video.insert(video.len().min(1), Unit::Thumbnail);
        units.extend(video);
        units
    }

    /// True when `unit` belongs to this plan.
    pub fn contains(&self, unit: &Unit) -> bool {
        match unit {
            Unit::Audio { track } => *track < self.audio.len(),
            Unit::Thumbnail => true,
            Unit::Video { rendition, index } => {
                self.rendition(rendition).is_some() && *index < self.segments.len()
            }
        }
    }
}

/// Rounds to the nearest even number, at least 2.
fn even(value: f64) -> u32 {
    ((value / 2.0).round() as u32 * 2).max(2)
}

/// Output size for a display size scaled so its short side is `short`.
fn scaled_size(display_w: f64, display_h: f64, short: u32) -> (u32, u32) {
    if display_w >= display_h {
        (
            even(f64::from(short) * display_w / display_h),
            even(f64::from(short)),
        )
    } else {
        (
            even(f64::from(short)),
            even(f64::from(short) * display_h / display_w),
        )
    }
}

/// The ladder filtered to the source: rungs above the source's short side are
/// dropped (never upscale); a source smaller than every rung gets one
/// rendition at its own size.
fn renditions_for(ladder: &[Rung], display_w: f64, display_h: f64) -> Vec<Rendition> {
    let short = display_w.min(display_h).floor() as u32;
    let mut rungs: Vec<Rung> = ladder
        .iter()
        .filter(|rung| rung.height <= short)
        .cloned()
        .collect();
    if rungs.is_empty() {
        let height = even(f64::from(short)).min(short.max(2));
        rungs.push(Rung {
            height,
            bitrate: Rung::default_bitrate(height),
        });
    }
    rungs
        .into_iter()
        .map(|rung| {
            let (width, height) = scaled_size(display_w, display_h, rung.height);
            Rendition {
                name: rung.name(),
                width,
                height,
                bitrate: rung.bitrate,
                maxrate: rung.bitrate * 6 / 5,
                bufsize: rung.bitrate * 2,
                threads: if rung.height >= 720 { 2 } else { 1 },
            }
        })
        .collect()
}

/// Cuts the frame list into segments of about `target` seconds. Boundaries
/// fall on the first frame at or after each multiple of `target` from the
/// first frame, so they follow real timestamps (VFR works).
fn cut_segments(
    frames: &[f64],
    keyframes: &[f64],
    last_frame_duration: f64,
    target: f64,
    start_time: f64,
    container: Container,
) -> Vec<Segment> {
    let first_time = frames[0];
    let end_time = frames[frames.len() - 1] + last_frame_duration;
    let mut starts = vec![0usize];
    let mut next_boundary = target;
    for (index, time) in frames.iter().enumerate().skip(1) {
        let offset = time - first_time;
        if offset >= next_boundary - 1e-6 {
            starts.push(index);
            next_boundary = ((offset / target + 1e-9).floor() + 1.0) * target;
        }
    }
    if starts.len() > 1 {
        let last_start = frames[starts[starts.len() - 1]];
        if end_time - last_start < MIN_TAIL_SECONDS {
            starts.pop();
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(index, &first_frame)| {
            let next = starts.get(index + 1).copied();
            let frames_in = next.unwrap_or(frames.len()) - first_frame;
            let start = frames[first_frame];
            let end = next.map(|n| frames[n]).unwrap_or(end_time);
            let (seek, trim_from) = if index == 0 {
                (0.0, None)
            } else {
                let half_frame = (start - frames[first_frame - 1]) / 2.0;
                // Without keyframe times (they are not known), seek to the
                // segment itself, as plans always did.
                let keyframe = keyframes
                    .iter()
                    .rev()
                    .find(|k| **k <= start + 1e-6)
                    .copied()
                    .unwrap_or(start);
                let trim_from = start - half_frame;
                let seek = if keyframe >= start - 1e-6 {
                    // On a keyframe: half a frame before it.
                    keyframe - half_frame
                } else {
                    match container {
                        Container::Indexed => {
                            (keyframe + INDEXED_SEEK_PAST_KEYFRAME).min(trim_from)
                        }
                        Container::Unindexed => keyframe - SEEK_MARGIN,
                    }
                };
                ((seek - start_time).max(0.0), Some(trim_from))
            };
            Segment {
                index,
                first_frame,
                frames: frames_in,
                start,
                seek,
                trim_from,
                duration: end - start,
            }
        })
        .collect()
}

/// One audio rendition per source audio stream, with unique names.
fn audio_tracks(info: &SourceInfo, bitrate: u64) -> Vec<AudioTrack> {
    let mut tracks: Vec<AudioTrack> = Vec::new();
    for (track, stream) in info.audio.iter().enumerate() {
        let base = stream
            .title
            .clone()
            .or_else(|| stream.language.clone())
            .unwrap_or_else(|| format!("Audio {}", track + 1));
        let mut name = base.clone();
        let mut suffix = 2;
        while tracks.iter().any(|t| t.name == name) {
            name = format!("{base} ({suffix})");
            suffix += 1;
        }
        tracks.push(AudioTrack {
            track,
            stream_index: stream.stream_index,
            name,
            language: stream.language.clone(),
            channels: stream.channels.clamp(1, 2),
            bitrate,
        });
    }
    tracks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Ladder;
    use crate::probe::{AudioInfo, VideoInfo};

    fn info(width: u32, height: u32, rotation: u32, frames: Vec<f64>) -> SourceInfo {
        SourceInfo {
            format: "mov".into(),
            duration: 0.0,
            start_time: 0.0,
            video: VideoInfo {
                stream_index: 0,
                codec: "h264".into(),
                width,
                height,
                sample_aspect: (1, 1),
                rotation,
                pix_fmt: "yuv420p".into(),
                frame_times: frames,
                keyframe_times: vec![0.0],
                last_frame_duration: 1.0 / 30.0,
            },
            audio: vec![],
            truncated: None,
        }
    }

    fn cfr(count: usize, fps: f64) -> Vec<f64> {
        (0..count).map(|i| i as f64 / fps).collect()
    }

    #[test]
    fn ladder_is_filtered_and_even() {
        let r = renditions_for(&Ladder::default().0, 1280.0, 720.0);
        let names: Vec<_> = r
            .iter()
            .map(|r| (r.name.as_str(), r.width, r.height))
            .collect();
        assert_eq!(
            names,
            vec![
                ("240p", 426, 240),
                ("360p", 640, 360),
                ("480p", 854, 480),
                ("720p", 1280, 720)
            ]
        );
        let portrait = renditions_for(&Ladder::default().0, 720.0, 1280.0);
        assert_eq!((portrait[0].width, portrait[0].height), (240, 426));
        let odd = renditions_for(&Ladder::default().0, 321.0, 241.0);
        assert_eq!(
            (odd[0].name.as_str(), odd[0].width, odd[0].height),
            ("240p", 320, 240)
        );
        let tiny = renditions_for(&Ladder::default().0, 160.0, 120.0);
        assert_eq!(
            (tiny[0].name.as_str(), tiny[0].width, tiny[0].height),
            ("120p", 160, 120)
        );
    }

    #[test]
    fn segments_cover_every_frame_once() {
        let frames = cfr(300, 30000.0 / 1001.0);
        let segments = cut_segments(&frames, &[0.0], 1001.0 / 30000.0, 2.0, 0.0, MP4);
        assert_eq!(segments.iter().map(|s| s.frames).sum::<usize>(), 300);
        for pair in segments.windows(2) {
            assert_eq!(pair[0].first_frame + pair[0].frames, pair[1].first_frame);
        }
        let total: f64 = segments.iter().map(|s| s.duration).sum();
        assert!((total - 300.0 * 1001.0 / 30000.0).abs() < 1e-9);
        assert_eq!(segments[1].first_frame, 60);
    }

    const MP4: Container = Container::Indexed;
    const TS: Container = Container::Unindexed;

    #[test]
    fn seek_goes_before_the_keyframe_and_trim_to_the_first_frame() {
        // 10 fps, 2 s segments, keyframes at 0 s and 3 s, source start 1 s,
        // no index (MPEG-TS).
        let frames: Vec<f64> = (0..60).map(|i| 1.0 + f64::from(i) / 10.0).collect();
        let segments = cut_segments(&frames, &[1.0, 4.0], 0.1, 2.0, 1.0, TS);
        assert_eq!((segments[0].seek, segments[0].trim_from), (0.0, None));
        // Segment 1 (from 3.0 s) is decoded from the keyframe at 1.0 s.
        assert_eq!(segments[1].seek, 0.0);
        let trim = segments[1].trim_from.unwrap();
        assert!((trim - 2.95).abs() < 1e-9, "{trim}");
        // Segment 2 (from 5.0 s) from the keyframe at 4.0 s, 1 s earlier.
        assert!((segments[2].seek - (4.0 - 1.0 - SEEK_MARGIN)).abs() < 1e-9);
        // Without keyframe times: the segment's own start, half a frame early.
        let segments = cut_segments(&frames, &[], 0.1, 2.0, 1.0, TS);
        assert!((segments[2].seek - (5.0 - 1.0 - 0.05)).abs() < 1e-9);
    }

    #[test]
    fn indexed_containers_seek_just_past_the_keyframe() {
        // As above, in an mp4: keyframes at 1 s, 4 s and 7 s (source time),
        // source start 1 s; segments from 3 s, 5 s and 7 s.
        let frames: Vec<f64> = (0..80).map(|i| 1.0 + f64::from(i) / 10.0).collect();
        let segments = cut_segments(&frames, &[1.0, 4.0, 7.0], 0.1, 2.0, 1.0, MP4);
        assert_eq!((segments[0].seek, segments[0].trim_from), (0.0, None));
        // Segment 1 (from 3.0 s): the keyframe at 1.0 s, which is the
        // container start, plus half a millisecond.
        assert!((segments[1].seek - INDEXED_SEEK_PAST_KEYFRAME).abs() < 1e-9);
        // Segment 2 (from 5.0 s): the keyframe at 4.0 s, not a second before.
        let seek = segments[2].seek;
        assert!((seek - (4.0 - 1.0 + INDEXED_SEEK_PAST_KEYFRAME)).abs() < 1e-9);
        assert!(segments[2].trim_from.unwrap() - 1.0 > seek);
        // Segment 3 starts on the keyframe at 7.0 s: half a frame before it,
        // as in every container.
        assert!((segments[3].seek - (7.0 - 1.0 - 0.05)).abs() < 1e-9);
        // The same frames in MPEG-TS: a second before each keyframe.
        let ts = cut_segments(&frames, &[1.0, 4.0, 7.0], 0.1, 2.0, 1.0, TS);
        assert!((ts[2].seek - (4.0 - 1.0 - SEEK_MARGIN)).abs() < 1e-9);
        assert_eq!(ts[3].seek, segments[3].seek);
        // Frames closer together than the nudge (a 4 kHz oddity): the seek
        // stays at or before the trim, never past the segment's first frame.
        let dense: Vec<f64> = (0..4000).map(|i| f64::from(i) * 0.00025).collect();
        let cut = cut_segments(&dense, &[0.0, 0.00475], 0.00025, 0.005, 0.0, MP4);
        assert_eq!(cut[1].first_frame, 20);
        let trim = cut[1].trim_from.unwrap();
        assert!(
            cut[1].seek <= trim + 1e-12 && cut[1].seek > 0.00475,
            "{cut:?}"
        );
    }

    #[test]
    fn containers_with_an_index_are_mov_and_mp4() {
        for indexed in ["mov,mp4,m4a,3gp,3g2,mj2", "mov", "mp4"] {
            assert_eq!(Container::of_format(indexed), Container::Indexed);
        }
        for unindexed in ["mpegts", "matroska,webm", "flv", "", "mpegtsraw"] {
            assert_eq!(Container::of_format(unindexed), Container::Unindexed);
        }
    }

    #[test]
    fn short_tail_is_merged_and_vfr_gap_skips_targets() {
        // 6.2 s at 25 fps with 2 s segments: tail of 0.2 s merges.
        let segments = cut_segments(&cfr(155, 25.0), &[0.0], 0.04, 2.0, 0.0, MP4);
        assert_eq!(segments.len(), 3);
        assert_eq!(segments[2].frames, 55);
        // A 5 s hole in VFR timestamps does not make empty segments.
        let mut frames = cfr(10, 10.0);
        frames.extend((0..10).map(|i| 6.0 + f64::from(i) / 10.0));
        let segments = cut_segments(&frames, &[0.0], 0.1, 2.0, 0.0, MP4);
        assert!(segments.iter().all(|s| s.frames > 0));
        assert_eq!(segments.len(), 2);
    }

    #[test]
    fn plan_is_deterministic_and_orders_units() {
        let mut source_info = info(640, 360, 0, cfr(90, 30.0));
        source_info.audio.push(AudioInfo {
            stream_index: 1,
            codec: "aac".into(),
            channels: 6,
            sample_rate: 48000,
            language: Some("eng".into()),
            title: None,
        });
        let settings = EncodeSettings {
            segment_duration: 2,
            ..EncodeSettings::default()
        };
        let id = JobId::nil();
        let source = Source::Url("http://example.com/a.mp4".into());
        let a = Plan::new(id, source.clone(), settings.clone(), &source_info).unwrap();
        let b = Plan::new(id, source, settings, &source_info).unwrap();
        assert_eq!(a, b);
        let units: Vec<String> = a.units().iter().map(Unit::to_string).collect();
        assert_eq!(
            &units[..4],
            &["audio/0", "video/240p/0", "thumbnail", "video/360p/0"]
        );
        assert_eq!(a.audio[0].channels, 2);
        for unit in a.units() {
            assert_eq!(unit.to_string().parse::<Unit>().unwrap(), unit);
        }
        assert!("video/../0".parse::<Unit>().is_err());
    }
}
