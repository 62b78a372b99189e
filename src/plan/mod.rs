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

#[cfg(test)]
pub(crate) mod fixture;
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
mod tests;
