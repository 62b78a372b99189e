//! HLS playlists: the master playlist and one media playlist per rendition,
//! written and parsed with m3u8-rs.
//!
//! Owns what a player sees of a job's progress: which renditions the master
//! lists, whether a media playlist is EVENT (growing) or VOD with ENDLIST,
//! and the BANDWIDTH/CODECS figures measured on the real outputs. Every
//! playlist is published atomically through [`JobLayout::write_atomic`]. It
//! never encodes and never decides what is done; callers tell it.

use crate::encode::video_codec_string;
use crate::plan::Plan;
use crate::storage::{segment_name, JobLayout, StorageError};
use m3u8_rs::{
    AlternativeMedia, AlternativeMediaType, MasterPlaylist, MediaPlaylist, MediaPlaylistType,
    MediaSegment, Resolution, VariantStream,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

/// Group id of the audio renditions in the master playlist.
pub const AUDIO_GROUP: &str = "aud";
/// RFC 6381 codec of the audio renditions (AAC-LC).
pub const AUDIO_CODEC: &str = "mp4a.40.2";
/// Playlist version: floating-point EXTINF needs 3.
const VERSION: usize = 3;

/// Errors while writing playlists.
#[derive(Debug, thiserror::Error)]
pub enum HlsError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("playlist {path} does not parse: {reason}")]
    Parse { path: String, reason: String },
}

/// How media playlists list segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// List the segments that exist (EVENT), VOD with ENDLIST when complete.
    Progressive,
    /// List the whole plan up front as VOD (on-demand: missing segments are
    /// made when requested).
    Full,
}

/// What is done of a job, as far as playlists care.
#[derive(Debug, Clone, Default)]
pub struct Availability {
    /// Per rendition: how many segments from index 0 exist without a hole.
    pub contiguous: HashMap<String, usize>,
    /// Renditions that failed for good; never listed.
    pub failed: Vec<String>,
    /// Every audio track has a playlist on storage (growing or final).
    pub audio_listed: bool,
}

/// Writes a job's playlists as its units complete. One per job and pod.
pub struct Packager {
    plan: std::sync::Arc<Plan>,
    layout: JobLayout,
    listing: Listing,
    /// What was last written, so unchanged playlists are not rewritten.
    written: Mutex<Written>,
}

#[derive(Default)]
struct Written {
    media: HashMap<String, (usize, bool)>,
    master: Option<(Vec<String>, bool, Vec<bool>)>,
    codecs: HashMap<String, String>,
}

impl Packager {
    pub fn new(plan: std::sync::Arc<Plan>, layout: JobLayout, listing: Listing) -> Self {
        set_float_precision();
        Packager {
            plan,
            layout,
            listing,
            written: Mutex::new(Written::default()),
        }
    }

    /// Rewrites the playlists that changed. Returns true when the master
    /// playlist exists and lists at least one rendition (the job plays).
    pub async fn update(
        &self,
        availability: &Availability,
        complete: bool,
    ) -> Result<bool, HlsError> {
        let total = self.plan.segments.len();
        let mut listed = Vec::new();
        for rendition in &self.plan.renditions {
            if availability.failed.contains(&rendition.name) {
                continue;
            }
            let count = availability
                .contiguous
                .get(&rendition.name)
                .copied()
                .unwrap_or(0);
            let finished = count >= total;
            let shown = match self.listing {
                Listing::Progressive => count,
                Listing::Full => total,
            };
            let changed = self.lock().media.get(&rendition.name) != Some(&(shown, finished));
            if changed && shown > 0 {
                let final_playlist = finished || self.listing == Listing::Full;
                let path = self.layout.media_playlist(&rendition.name);
                // In a cluster every pod writes playlists from its own view,
                // and views lag each other: never replace a finished (VOD)
                // playlist with a growing one from a pod that is behind.
                if final_playlist || !is_finished_playlist(&path) {
                    let bytes = self.media_playlist(shown, final_playlist);
                    self.layout.write_atomic(&path, &bytes)?;
                }
                self.lock()
                    .media
                    .insert(rendition.name.clone(), (shown, finished));
            }
            let ready = match self.listing {
                Listing::Progressive => count > 0 && (!complete || finished),
                Listing::Full => true,
            };
            if ready {
                listed.push(rendition.name.clone());
            }
        }
        let audio_ready = self.plan.audio.is_empty()
            || availability.audio_listed
            || self.listing == Listing::Full;
        if listed.is_empty() || !audio_ready {
            return Ok(false);
        }
        // Codecs are read from segment 0; in a full listing the master is
        // written before any exists, so it is rewritten as they appear.
        let measured: Vec<bool> = listed
            .iter()
            .map(|name| self.layout.segment(name, 0).is_file())
            .collect();
        let key = (listed.clone(), complete, measured);
        if self.lock().master.as_ref() != Some(&key) {
            let bytes = self.master_playlist(&listed).await?;
            self.layout
                .write_atomic(&self.layout.master_playlist(), &bytes)?;
            self.lock().master = Some(key);
        }
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Written> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A rendition's media playlist listing its first `count` segments.
    fn media_playlist(&self, count: usize, finished: bool) -> Vec<u8> {
        let segments = self.plan.segments[..count]
            .iter()
            .map(|segment| MediaSegment {
                uri: segment_name(segment.index),
                duration: segment.duration as f32,
                ..MediaSegment::empty()
            })
            .collect();
        let playlist = MediaPlaylist {
            version: Some(VERSION),
            target_duration: target_duration(self.plan.segments.iter().map(|s| s.duration)),
            segments,
            end_list: finished,
            playlist_type: Some(if finished {
                MediaPlaylistType::Vod
            } else {
                MediaPlaylistType::Event
            }),
            independent_segments: true,
            ..MediaPlaylist::default()
        };
        let mut bytes = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = playlist.write_to(&mut bytes);
        bytes
    }

    /// The master playlist listing `renditions`, with bandwidths measured on
    /// the segments that exist and codecs read from segment 0.
    async fn master_playlist(&self, renditions: &[String]) -> Result<Vec<u8>, HlsError> {
        let has_audio = !self.plan.audio.is_empty();
        let audio_peak = if has_audio {
            self.audio_peak_bandwidth()?
        } else {
            0
        };
        let mut variants = Vec::new();
        for name in renditions {
            let Some(rendition) = self.plan.rendition(name) else {
                continue;
            };
            let (peak, average) = self
                .video_bandwidth(name)
                .unwrap_or((rendition.maxrate, rendition.bitrate));
            let mut codecs = self.codec_of(name).await;
            if has_audio {
                codecs = format!("{codecs},{AUDIO_CODEC}");
            }
            variants.push(VariantStream {
                uri: format!("{name}/index.m3u8"),
                bandwidth: peak + audio_peak,
                average_bandwidth: Some(average + audio_peak),
                codecs: Some(codecs),
                resolution: Some(Resolution {
                    width: u64::from(rendition.width),
                    height: u64::from(rendition.height),
                }),
                audio: has_audio.then(|| AUDIO_GROUP.to_string()),
                ..VariantStream::default()
            });
        }
        let alternatives = self
            .plan
            .audio
            .iter()
            .map(|track| AlternativeMedia {
                media_type: AlternativeMediaType::Audio,
                uri: Some(format!("audio/{}/index.m3u8", track.track)),
                group_id: AUDIO_GROUP.to_string(),
                language: track.language.clone(),
                name: track.name.clone(),
                default: track.track == 0,
                autoselect: true,
                channels: Some(track.channels.to_string()),
                ..AlternativeMedia::default()
            })
            .collect();
        let master = MasterPlaylist {
            version: Some(VERSION),
            variants,
            independent_segments: true,
            alternatives,
            ..MasterPlaylist::default()
        };
        let mut bytes = Vec::new();
        let _ = master.write_to(&mut bytes);
        Ok(bytes)
    }

    async fn codec_of(&self, rendition: &str) -> String {
        if let Some(codec) = self.lock().codecs.get(rendition) {
            return codec.clone();
        }
        match video_codec_string(&self.layout.segment(rendition, 0)).await {
            Some(codec) => {
                self.lock()
                    .codecs
                    .insert(rendition.to_string(), codec.clone());
                codec
            }
            // High profile is what we ask x264 for; level 4.0 covers 1080p.
            None => "avc1.640028".to_string(),
        }
    }

    /// (peak, average) bit/s over the segments of `rendition` that exist.
    fn video_bandwidth(&self, rendition: &str) -> Option<(u64, u64)> {
        let sizes = self.plan.segments.iter().filter_map(|segment| {
            let bytes = std::fs::metadata(self.layout.segment(rendition, segment.index)).ok()?;
            Some((bytes.len(), segment.duration))
        });
        bandwidth(sizes)
    }

    /// Peak bit/s over all audio tracks' segments.
    fn audio_peak_bandwidth(&self) -> Result<u64, HlsError> {
        let mut peak = 0;
        for track in &self.plan.audio {
            let dir = self.layout.audio_dir(track.track);
            let path = self.layout.audio_playlist(track.track);
            if !path.is_file() {
                // Not made yet (on-demand listing): the nominal rate.
                peak = peak.max(track.bitrate);
                continue;
            }
            let playlist = read_media_playlist(&path)?;
            let sizes = playlist.segments.iter().filter_map(|segment| {
                let bytes = std::fs::metadata(dir.join(&segment.uri)).ok()?;
                Some((bytes.len(), f64::from(segment.duration)))
            });
            if let Some((track_peak, _)) = bandwidth(sizes) {
                peak = peak.max(track_peak);
            }
        }
        Ok(peak)
    }
}

/// (peak, average) bit/s of (bytes, seconds) pairs.
fn bandwidth(sizes: impl Iterator<Item = (u64, f64)>) -> Option<(u64, u64)> {
    let mut peak: f64 = 0.0;
    let (mut bits, mut seconds) = (0.0, 0.0);
    for (bytes, duration) in sizes {
        if duration <= 0.0 {
            continue;
        }
        let segment_bits = bytes as f64 * 8.0;
        // Very short segments (a short tail) exaggerate the peak; count them
        // as at least one second.
        peak = peak.max(segment_bits / duration.max(1.0));
        bits += segment_bits;
        seconds += duration;
    }
    (seconds > 0.0).then(|| (peak.ceil() as u64, (bits / seconds).ceil() as u64))
}

/// EXT-X-TARGETDURATION: every EXTINF rounded to the nearest integer must
/// not exceed it.
fn target_duration(durations: impl Iterator<Item = f64>) -> u64 {
    durations.fold(1.0_f64, |max, d| max.max(d.round())) as u64
}

fn set_float_precision() {
    // m3u8-rs writes EXTINF with this many decimals; microseconds are plenty
    // and keep f32 noise out of the playlists.
    m3u8_rs::WRITE_OPT_FLOAT_PRECISION.store(6, Ordering::Relaxed);
}

/// True when the media playlist at `path` exists and has ENDLIST.
/// True when the playlist at `path` exists and has ENDLIST.
pub fn is_finished_playlist(path: &Path) -> bool {
    std::fs::read(path)
        .map(|bytes| {
            bytes
                .windows(b"#EXT-X-ENDLIST".len())
                .any(|w| w == b"#EXT-X-ENDLIST")
        })
        .unwrap_or(false)
}

/// Reads and parses a media playlist.
pub fn read_media_playlist(path: &Path) -> Result<MediaPlaylist, HlsError> {
    let bytes = std::fs::read(path).map_err(|e| StorageError::new("reading", path, e))?;
    m3u8_rs::parse_media_playlist_res(&bytes).map_err(|e| HlsError::Parse {
        path: path.display().to_string(),
        reason: format!("{e:?}"),
    })
}

/// Turns the playlist ffmpeg's hls muxer wrote for an audio rendition into
/// ours, segment URIs as bare file names: VOD with ENDLIST when `finished`,
/// else EVENT (the track is still being encoded).
pub fn audio_playlist(ffmpeg_playlist: &MediaPlaylist, finished: bool) -> Vec<u8> {
    set_float_precision();
    let segments = ffmpeg_playlist
        .segments
        .iter()
        .map(|segment| MediaSegment {
            uri: file_name(&segment.uri),
            duration: segment.duration,
            ..MediaSegment::empty()
        })
        .collect::<Vec<_>>();
    let playlist = MediaPlaylist {
        version: Some(VERSION),
        target_duration: target_duration(segments.iter().map(|s| f64::from(s.duration))),
        segments,
        end_list: finished,
        playlist_type: Some(if finished {
            MediaPlaylistType::Vod
        } else {
            MediaPlaylistType::Event
        }),
        independent_segments: true,
        ..MediaPlaylist::default()
    };
    let mut bytes = Vec::new();
    let _ = playlist.write_to(&mut bytes);
    bytes
}

/// The last path component of a playlist URI.
pub fn file_name(uri: &str) -> String {
    uri.rsplit('/').next().unwrap_or(uri).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_duration_rounds() {
        assert_eq!(target_duration([2.002, 2.0, 1.4].into_iter()), 2);
        assert_eq!(target_duration([2.6].into_iter()), 3);
    }

    #[test]
    fn bandwidth_peak_and_average() {
        let (peak, avg) = bandwidth([(1000, 2.0), (3000, 2.0)].into_iter()).unwrap();
        assert_eq!(peak, 12000);
        assert_eq!(avg, 8000);
        assert!(bandwidth(std::iter::empty()).is_none());
    }
}
