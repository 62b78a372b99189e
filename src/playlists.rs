//! A job's playlists as its units complete: what the master lists, whether
//! a media playlist is EVENT (growing) or VOD with ENDLIST, and the
//! BANDWIDTH/CODECS figures measured on the real outputs.
//!
//! The [`Packager`] decides and measures; [`crate::hls`] writes the text and
//! [`crate::storage`] names and publishes the files. It never encodes and
//! never decides what is done: the worker tells it ([`Availability`]).

use crate::encode::video_codec_string;
use crate::hls::{self, AudioMedia, Variant, AUDIO_CODEC};
use crate::plan::Plan;
use crate::storage::{self, JobLayout, PlaylistError, StorageError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Errors while writing playlists.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Playlist(#[from] PlaylistError),
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
    plan: Arc<Plan>,
    layout: JobLayout,
    listing: Listing,
    /// What was last written, so unchanged playlists are not rewritten.
    written: Mutex<Written>,
}

#[derive(Default)]
struct Written {
    media: HashMap<String, (usize, bool)>,
    master: Option<(Vec<String>, bool, Vec<bool>)>,
    /// RFC 6381 codec string per rendition, once known.
    codecs: HashMap<String, String>,
}

impl Packager {
    pub fn new(plan: Arc<Plan>, layout: JobLayout, listing: Listing) -> Self {
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
    ) -> Result<bool, PackageError> {
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
                if final_playlist || !storage::is_finished_playlist(&path) {
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
        // Codecs are learned from a verified segment or read from segment
        // 0; in a full listing the master is written before any exists, so
        // it is rewritten as they become known.
        let measured: Vec<bool> = listed
            .iter()
            .map(|name| {
                self.lock().codecs.contains_key(name) || self.layout.segment(name, 0).is_file()
            })
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
        crate::sync::lock(&self.written)
    }

    /// A rendition's media playlist listing its first `count` segments. The
    /// target duration is the whole plan's, so it never changes as the
    /// playlist grows.
    fn media_playlist(&self, count: usize, finished: bool) -> Vec<u8> {
        let segments = self.plan.segments[..count].iter().map(|segment| {
            (
                JobLayout::segment_uri(segment.index),
                segment.duration as f32,
            )
        });
        let target = hls::target_duration(self.plan.segments.iter().map(|s| s.duration));
        hls::media_playlist(segments, target, finished)
    }

    /// The master playlist listing `renditions`, with bandwidths measured on
    /// the segments that exist and codecs read from segment 0.
    async fn master_playlist(&self, renditions: &[String]) -> Result<Vec<u8>, PackageError> {
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
            variants.push(Variant {
                uri: JobLayout::media_playlist_uri(name),
                bandwidth: peak + audio_peak,
                average_bandwidth: average + audio_peak,
                codecs,
                width: rendition.width,
                height: rendition.height,
                with_audio: has_audio,
            });
        }
        let audio = self
            .plan
            .audio
            .iter()
            .map(|track| AudioMedia {
                uri: JobLayout::audio_playlist_uri(track.track),
                name: track.name.clone(),
                language: track.language.clone(),
                default: track.track == 0,
                channels: track.channels,
            })
            .collect();
        Ok(hls::master_playlist(variants, audio))
    }

    /// Remembers the codec strings read from verified segments. The first
    /// one of a rendition stays: all its segments are encoded with the same
    /// settings, so one is enough and none is read again.
    pub fn learn_codecs(&self, codecs: &[(String, String)]) {
        let mut written = self.lock();
        for (rendition, codec) in codecs {
            written
                .codecs
                .entry(rendition.clone())
                .or_insert_with(|| codec.clone());
        }
    }

    /// A rendition's codec string: learned, or read once from its segment 0
    /// (made by another pod), or x264's High profile at level 4.0 while it
    /// cannot be read (tried again at the next write).
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
    fn audio_peak_bandwidth(&self) -> Result<u64, PackageError> {
        let mut peak = 0;
        for track in &self.plan.audio {
            let path = self.layout.audio_playlist(track.track);
            if !path.is_file() {
                // Not made yet (on-demand listing): the nominal rate.
                peak = peak.max(track.bitrate);
                continue;
            }
            let playlist = storage::read_playlist(&path)?;
            let sizes = playlist.segments.iter().filter_map(|segment| {
                let file = self.layout.audio_segment(track.track, &segment.uri);
                let bytes = std::fs::metadata(file).ok()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_peak_and_average() {
        let (peak, avg) = bandwidth([(1000, 2.0), (3000, 2.0)].into_iter()).unwrap();
        assert_eq!(peak, 12000);
        assert_eq!(avg, 8000);
        assert!(bandwidth(std::iter::empty()).is_none());
    }
}
