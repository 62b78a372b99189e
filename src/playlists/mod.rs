//! A job's playlists as its units complete: what the master lists, whether
//! a media playlist is EVENT (growing) or VOD with ENDLIST, and the
//! BANDWIDTH/CODECS figures measured on the real outputs.
//!
//! A media playlist is derived from what storage holds (the segment files
//! published, in plan order, up to the first missing one), never from this
//! pod's view of the job, and written only if it grows what the file lists
//! ([`growth`]): a pod that is behind (cut off from Redis, a slow NFS
//! cache) keeps the file. The master lists every rendition it listed
//! before, whoever wrote it.
//!
//! Each video rendition also gets an I-frame playlist for trick play
//! ([`iframes`]), grown under the same rule and listed in the master
//! (`EXT-X-I-FRAME-STREAM-INF`) once it exists.
//!
//! The [`Packager`] decides and measures; [`crate::hls`] writes the text and
//! [`crate::storage`] names and publishes the files. It never encodes and
//! never decides what is done: the worker tells it which renditions failed
//! and whether the job ended ([`Availability`]).

pub mod growth;
pub mod iframes;

use crate::encode::video_codec_string;
use crate::hls::{self, AudioMedia, Variant, AUDIO_CODEC};
use crate::plan::Plan;
use crate::storage::{self, JobLayout, PlaylistError, StorageError};
use growth::MediaState;
use iframes::IFrameIndex;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How many times one update reads storage, decides and writes a playlist:
/// after a write (or a write refused because the file changed meanwhile)
/// it looks again, for segments published in the meantime.
const WRITE_ROUNDS: usize = 3;

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

/// What the worker knows of a job that playlists need beyond storage.
#[derive(Debug, Clone, Default)]
pub struct Availability {
    /// Renditions that failed for good; their playlists are not written.
    pub failed: Vec<String>,
    /// Every audio track has a playlist on storage (growing or final).
    pub audio_listed: bool,
}

/// Writes a job's playlists as its units complete. One per job and pod.
pub struct Packager {
    plan: Arc<Plan>,
    layout: JobLayout,
    listing: Listing,
    /// What was last written, so an unchanged master is not rewritten.
    written: Mutex<Written>,
    /// Keyframe byte ranges of the published segments (I-frame playlists).
    iframes: IFrameIndex,
}

#[derive(Default)]
struct Written {
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
            iframes: IFrameIndex::default(),
        }
    }

    /// Rewrites the playlists that grew. Returns true when the master
    /// playlist exists and lists at least one rendition (the job plays).
    pub async fn update(
        &self,
        availability: &Availability,
        complete: bool,
    ) -> Result<bool, PackageError> {
        let mut ready = Vec::new();
        for rendition in &self.plan.renditions {
            if availability.failed.contains(&rendition.name) {
                continue;
            }
            let listed = self.update_media(&rendition.name)?;
            if self.listing == Listing::Progressive {
                self.update_iframes(&rendition.name, listed)?;
            }
            let is_ready = match self.listing {
                Listing::Progressive => listed.segments > 0 && (!complete || listed.finished),
                Listing::Full => true,
            };
            if is_ready {
                ready.push(rendition.name.clone());
            }
        }
        let audio_ready = self.plan.audio.is_empty()
            || availability.audio_listed
            || self.listing == Listing::Full;
        self.update_master(&ready, audio_ready, complete).await
    }

    /// Brings a rendition's media playlist up to what storage holds, if
    /// that grows the file. Returns what the file lists afterwards (or
    /// would list: nothing is written while no segment exists).
    fn update_media(&self, rendition: &str) -> Result<MediaState, PackageError> {
        let total = self.plan.segments.len();
        let path = self.layout.media_playlist(rendition);
        let mut on_file = growth::read_media_state(&path)?;
        for _ in 0..WRITE_ROUNDS {
            let wanted = match self.listing {
                Listing::Full => MediaState {
                    segments: total,
                    finished: true,
                },
                Listing::Progressive => {
                    // Listed segments were published, and published files
                    // stay: look only beyond them.
                    let from = on_file.map_or(0, |state| state.segments);
                    let segments = self.published_from(rendition, from);
                    MediaState {
                        segments,
                        finished: segments >= total,
                    }
                }
            };
            let grows = match on_file {
                Some(current) => growth::media_grows(current, wanted),
                None => wanted.segments > 0,
            };
            if !grows {
                return Ok(on_file.unwrap_or(wanted));
            }
            let bytes = self.media_playlist(wanted.segments, wanted.finished);
            growth::write_media(&self.layout, &path, &bytes, wanted)?;
            // Written or not (another writer's longer one got there
            // first), look again: storage may have grown meanwhile.
            on_file = growth::read_media_state(&path)?;
        }
        Ok(on_file.unwrap_or(MediaState {
            segments: 0,
            finished: false,
        }))
    }

    /// How many segments of `rendition` are published from index 0 without
    /// a hole, knowing the first `from` are.
    fn published_from(&self, rendition: &str, from: usize) -> usize {
        let total = self.plan.segments.len();
        (from..total)
            .find(|&index| !self.layout.segment(rendition, index).is_file())
            .unwrap_or(total)
    }

    /// Writes the master if what it would list changed: the renditions
    /// `ready` here plus every one the file already lists. Returns true
    /// when the master exists and lists at least one rendition.
    async fn update_master(
        &self,
        ready: &[String],
        audio_ready: bool,
        complete: bool,
    ) -> Result<bool, PackageError> {
        let path = self.layout.master_playlist();
        for _ in 0..WRITE_ROUNDS {
            let on_file = growth::read_master_uris(&path)?;
            let listed: Vec<String> = self
                .plan
                .renditions
                .iter()
                .map(|r| r.name.clone())
                .filter(|name| {
                    ready.contains(name) || on_file.contains(&JobLayout::media_playlist_uri(name))
                })
                .collect();
            // Another pod's master plays even if this pod has not seen the
            // audio yet.
            if listed.is_empty() || (!audio_ready && on_file.is_empty()) {
                return Ok(!on_file.is_empty());
            }
            // Codecs are learned from a verified segment or read from
            // segment 0; in a full listing the master is written before any
            // exists, so it is rewritten as they become known.
            let measured: Vec<bool> = listed
                .iter()
                .map(|name| {
                    self.lock().codecs.contains_key(name) || self.layout.segment(name, 0).is_file()
                })
                .collect();
            // A rendition's I-frame playlist is listed once it exists (or
            // the file lists it already).
            let with_iframes: Vec<String> = listed
                .iter()
                .filter(|name| {
                    let uri = JobLayout::iframe_playlist_uri(name);
                    on_file.contains(&uri) || self.layout.iframe_playlist(name).is_file()
                })
                .cloned()
                .collect();
            let uris: Vec<String> = listed
                .iter()
                .map(|name| JobLayout::media_playlist_uri(name))
                .chain(
                    with_iframes
                        .iter()
                        .map(|name| JobLayout::iframe_playlist_uri(name)),
                )
                .collect();
            let key = (uris.clone(), complete, measured);
            let unchanged =
                self.lock().master.as_ref() == Some(&key) && growth::master_keeps(&uris, &on_file);
            if unchanged {
                return Ok(true);
            }
            let bytes = self.master_playlist(&listed, &with_iframes).await?;
            if growth::write_master(&self.layout, &path, &bytes, &uris)? {
                self.lock().master = Some(key);
                return Ok(true);
            }
            // The file gained a rendition meanwhile: list it too.
        }
        Ok(!growth::read_master_uris(&path)?.is_empty())
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

    /// The master playlist listing `renditions` (and the I-frame playlists
    /// of `with_iframes`), with bandwidths measured on the segments that
    /// exist and codecs read from segment 0.
    async fn master_playlist(
        &self,
        renditions: &[String],
        with_iframes: &[String],
    ) -> Result<Vec<u8>, PackageError> {
        let has_audio = !self.plan.audio.is_empty();
        let audio_peak = if has_audio {
            self.audio_peak_bandwidth()?
        } else {
            0
        };
        let mut variants = Vec::new();
        let mut iframe_variants = Vec::new();
        for name in renditions {
            let Some(rendition) = self.plan.rendition(name) else {
                continue;
            };
            let (peak, average) = self
                .video_bandwidth(name)
                .unwrap_or((rendition.maxrate, rendition.bitrate));
            let mut codecs = self.codec_of(name).await;
            if with_iframes.contains(name) {
                iframe_variants.extend(self.iframe_variant(name, &codecs));
            }
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
        Ok(hls::master_playlist(variants, iframe_variants, audio))
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

    /// A job folder with `published` segments of each rendition on disk.
    struct Folder {
        dir: std::path::PathBuf,
        layout: JobLayout,
        plan: Arc<Plan>,
    }

    impl Folder {
        fn new(segments: usize) -> Folder {
            let dir = std::env::temp_dir().join(format!("segswarm-pl-{}", uuid::Uuid::new_v4()));
            let layout = JobLayout::new(&dir);
            let plan = Arc::new(crate::plan::fixture::plan(segments));
            layout.create_dirs(&plan).unwrap();
            Folder { dir, layout, plan }
        }
        fn publish_segments(&self, rendition: &str, count: usize) {
            for index in 0..count {
                std::fs::write(self.layout.segment(rendition, index), b"segment").unwrap();
            }
        }
        /// What another pod wrote: a media playlist of `count` segments.
        fn write_playlist(&self, rendition: &str, count: usize, finished: bool) {
            let listed = (0..count).map(|i| (JobLayout::segment_uri(i), 6.0_f32));
            let bytes = hls::media_playlist(listed, 6, finished);
            std::fs::write(self.layout.media_playlist(rendition), bytes).unwrap();
        }
        fn listed(&self, rendition: &str) -> MediaState {
            growth::read_media_state(&self.layout.media_playlist(rendition))
                .unwrap()
                .expect("a media playlist")
        }
        fn packager(&self) -> Packager {
            Packager::new(self.plan.clone(), self.layout.clone(), Listing::Progressive)
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn state(segments: usize, finished: bool) -> MediaState {
        MediaState { segments, finished }
    }

    #[tokio::test]
    async fn media_playlists_list_what_storage_holds_and_only_grow() {
        let folder = Folder::new(4);
        let everything = Availability {
            failed: Vec::new(),
            audio_listed: true,
        };
        folder.publish_segments("240p", 2);
        folder.publish_segments("360p", 2);
        let packager = folder.packager();
        assert!(packager.update(&everything, false).await.unwrap());
        assert_eq!(folder.listed("240p"), state(2, false));

        // Another pod saw a segment this pod cannot see yet (a slow NFS
        // cache, a pod cut off from Redis): its longer playlist stays.
        folder.write_playlist("240p", 3, false);
        packager.update(&everything, false).await.unwrap();
        assert_eq!(folder.listed("240p"), state(3, false));

        // A finished playlist is never made growing again by a pod behind.
        folder.write_playlist("360p", 4, true);
        packager.update(&everything, false).await.unwrap();
        assert_eq!(folder.listed("360p"), state(4, true));

        // Storage grows: the playlist grows, and ends with the plan.
        folder.publish_segments("240p", 4);
        packager.update(&everything, true).await.unwrap();
        assert_eq!(folder.listed("240p"), state(4, true));
    }

    #[tokio::test]
    async fn the_master_keeps_every_rendition_it_listed() {
        let folder = Folder::new(2);
        folder.publish_segments("240p", 1);
        folder.publish_segments("360p", 1);
        let both = Availability {
            failed: Vec::new(),
            audio_listed: true,
        };
        assert!(folder.packager().update(&both, false).await.unwrap());
        // A pod that believes 360p failed (or has not seen it) writes the
        // master: 360p stays listed.
        let without_360p = Availability {
            failed: vec!["360p".into()],
            audio_listed: true,
        };
        folder.publish_segments("240p", 2);
        assert!(folder.packager().update(&without_360p, true).await.unwrap());
        let uris = growth::read_master_uris(&folder.layout.master_playlist()).unwrap();
        assert_eq!(uris, ["240p/index.m3u8", "360p/index.m3u8"]);
        assert_eq!(folder.listed("240p"), state(2, true));
    }
}
