//! The paths and names of one job's folder, in both directions: unit →
//! files, request path → unit, and the URIs playlists use for them.
//!
//! ```text
//! job.json  status.json  master.m3u8  thumbnail.webp
//! <rendition>/index.m3u8  <rendition>/seg_00000.ts ...
//! <rendition>/iframes.m3u8   (I-frame playlist: byte ranges of the segments)
//! audio/<track>/index.m3u8  audio/<track>/seg_00000.ts ...
//! .tmp/   in-progress files, named per claim token
//! ```
//!
//! Only names are decided here; nothing is read or written but the
//! existence checks that say whether a unit is done.

use super::StorageError;
use crate::plan::{Plan, Unit};
use std::path::{Path, PathBuf};

const PLAN_FILE: &str = "job.json";
const STATUS_FILE: &str = "status.json";
const MASTER_PLAYLIST: &str = "master.m3u8";
pub(super) const THUMBNAIL: &str = "thumbnail.webp";
/// Every media playlist's name, in its rendition's or track's folder.
const MEDIA_PLAYLIST: &str = "index.m3u8";
/// A video rendition's I-frame playlist (trick play), beside its media
/// playlist.
const IFRAME_PLAYLIST: &str = "iframes.m3u8";
const AUDIO_DIR: &str = "audio";
const TMP_DIR: &str = ".tmp";
/// [`segment_name`] as an ffmpeg output template (the audio muxer numbers
/// its segments itself).
const SEGMENT_TEMPLATE: &str = "seg_%05d.ts";

/// `seg_00000.ts` style name of segment `index`.
pub fn segment_name(index: usize) -> String {
    format!("seg_{index:05}.ts")
}

/// The index of a segment file name made by [`segment_name`].
fn segment_index(name: &str) -> Option<usize> {
    name.strip_prefix("seg_")?.strip_suffix(".ts")?.parse().ok()
}

/// The paths of one job's folder.
#[derive(Debug, Clone)]
pub struct JobLayout {
    dir: PathBuf,
}

impl JobLayout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JobLayout { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The plan, written once.
    pub fn job_json(&self) -> PathBuf {
        self.dir.join(PLAN_FILE)
    }

    /// A pod's record of the job (status, error, progress).
    pub fn status_file(&self) -> PathBuf {
        self.dir.join(STATUS_FILE)
    }

    pub fn master_playlist(&self) -> PathBuf {
        self.dir.join(MASTER_PLAYLIST)
    }

    pub fn thumbnail(&self) -> PathBuf {
        self.dir.join(THUMBNAIL)
    }

    pub fn rendition_dir(&self, rendition: &str) -> PathBuf {
        self.dir.join(rendition)
    }

    pub fn media_playlist(&self, rendition: &str) -> PathBuf {
        self.rendition_dir(rendition).join(MEDIA_PLAYLIST)
    }

    /// A video rendition's I-frame playlist (`EXT-X-I-FRAMES-ONLY`).
    pub fn iframe_playlist(&self, rendition: &str) -> PathBuf {
        self.rendition_dir(rendition).join(IFRAME_PLAYLIST)
    }

    pub fn segment(&self, rendition: &str, index: usize) -> PathBuf {
        self.rendition_dir(rendition).join(segment_name(index))
    }

    pub fn audio_dir(&self, track: usize) -> PathBuf {
        self.dir.join(AUDIO_DIR).join(track.to_string())
    }

    pub fn audio_playlist(&self, track: usize) -> PathBuf {
        self.audio_dir(track).join(MEDIA_PLAYLIST)
    }

    /// A published audio segment, by its file name.
    pub fn audio_segment(&self, track: usize, name: &str) -> PathBuf {
        self.audio_dir(track).join(name)
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join(TMP_DIR)
    }

    /// A fresh in-progress path for `name`, unique to `token`.
    pub fn tmp_path(&self, token: &str, name: &str) -> PathBuf {
        self.tmp_dir().join(format!("{token}-{name}"))
    }

    /// Where segment `index` of `rendition` is encoded under the claim
    /// `token`.
    pub fn segment_tmp(&self, token: &str, rendition: &str, index: usize) -> PathBuf {
        self.tmp_path(token, &format!("{rendition}-{}", segment_name(index)))
    }

    /// Where the thumbnail is encoded under the claim `token`.
    pub fn thumbnail_tmp(&self, token: &str) -> PathBuf {
        self.tmp_path(token, THUMBNAIL)
    }

    /// The folder an audio track is encoded into under the claim `token`.
    pub fn audio_work_dir(&self, token: &str, track: usize) -> AudioWorkDir {
        AudioWorkDir(self.tmp_path(token, &format!("audio-{track}")))
    }

    /// URI of the master playlist, relative to the job folder.
    pub fn master_uri() -> &'static str {
        MASTER_PLAYLIST
    }

    /// URI of the thumbnail, relative to the job folder.
    pub fn thumbnail_uri() -> &'static str {
        THUMBNAIL
    }

    /// URI of a rendition's media playlist, relative to the master.
    pub fn media_playlist_uri(rendition: &str) -> String {
        format!("{rendition}/{MEDIA_PLAYLIST}")
    }

    /// URI of a rendition's I-frame playlist, relative to the master.
    pub fn iframe_playlist_uri(rendition: &str) -> String {
        format!("{rendition}/{IFRAME_PLAYLIST}")
    }

    /// URI of an audio track's playlist, relative to the master.
    pub fn audio_playlist_uri(track: usize) -> String {
        format!("{AUDIO_DIR}/{track}/{MEDIA_PLAYLIST}")
    }

    /// URI of segment `index`, relative to its media playlist.
    pub fn segment_uri(index: usize) -> String {
        segment_name(index)
    }

    /// The file whose existence means `unit` is done. For audio this is the
    /// playlist, published after all of its segments.
    pub fn unit_output(&self, unit: &Unit) -> PathBuf {
        match unit {
            Unit::Audio { track } => self.audio_playlist(*track),
            Unit::Thumbnail => self.thumbnail(),
            Unit::Video { rendition, index } => self.segment(rendition, *index),
        }
    }

    /// True when `unit`'s final output exists (storage is the truth).
    pub fn is_done(&self, unit: &Unit) -> bool {
        let output = self.unit_output(unit);
        match unit {
            // An audio playlist is published while the track is encoded
            // (EVENT, growing); the track is done once it has ENDLIST.
            Unit::Audio { .. } => is_finished_playlist(&output),
            _ => output.is_file(),
        }
    }

    /// The unit that produces the file at `path` (relative to the job
    /// folder, as `/hls/<id>/<path>` names it), if it is a planned output.
    pub fn unit_for_path(plan: &Plan, path: &str) -> Option<Unit> {
        let parts: Vec<&str> = path.split('/').collect();
        let unit = match parts.as_slice() {
            [THUMBNAIL] => Unit::Thumbnail,
            [AUDIO_DIR, track, _] => Unit::Audio {
                track: track.parse().ok()?,
            },
            [rendition, name] => Unit::Video {
                rendition: rendition.to_string(),
                index: segment_index(name)?,
            },
            _ => return None,
        };
        plan.contains(&unit).then_some(unit)
    }

    /// True when `path` (relative to the job folder) names one of the
    /// job's playlists: the master, a rendition's (media or I-frame) or an
    /// audio track's.
    pub fn is_playlist_path(plan: &Plan, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            [MASTER_PLAYLIST] => true,
            [AUDIO_DIR, track, MEDIA_PLAYLIST] => {
                plan.audio.iter().any(|a| a.track.to_string() == *track)
            }
            [rendition, MEDIA_PLAYLIST | IFRAME_PLAYLIST] => plan.rendition(rendition).is_some(),
            _ => false,
        }
    }

    /// Creates the job folder, `.tmp/` and every output folder of `plan`.
    pub fn create_dirs(&self, plan: &Plan) -> Result<(), StorageError> {
        let mut dirs = vec![self.dir.clone(), self.tmp_dir()];
        dirs.extend(plan.renditions.iter().map(|r| self.rendition_dir(&r.name)));
        dirs.extend(plan.audio.iter().map(|a| self.audio_dir(a.track)));
        for dir in dirs {
            std::fs::create_dir_all(&dir).map_err(|e| StorageError::new("creating", &dir, e))?;
        }
        Ok(())
    }
}

/// True when the playlist at `path` exists and has ENDLIST (it will not
/// grow any more).
fn is_finished_playlist(path: &Path) -> bool {
    std::fs::read(path)
        .map(|bytes| crate::hls::has_endlist(&bytes))
        .unwrap_or(false)
}

/// The folder ffmpeg's hls muxer writes one audio track into while it is
/// encoded: its playlist and numbered segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioWorkDir(PathBuf);

impl AudioWorkDir {
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The muxer's playlist (rewritten whole after every segment).
    pub fn playlist(&self) -> PathBuf {
        self.0.join(MEDIA_PLAYLIST)
    }

    /// The muxer's segment file template (`-hls_segment_filename`).
    pub fn segment_template(&self) -> PathBuf {
        self.0.join(SEGMENT_TEMPLATE)
    }

    /// A file the muxer wrote, by the name its playlist gives.
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_and_the_ffmpeg_template_agree() {
        assert_eq!(segment_name(7), "seg_00007.ts");
        // What ffmpeg's %05d makes of 7.
        assert_eq!(SEGMENT_TEMPLATE.replace("%05d", "00007"), segment_name(7));
        assert_eq!(segment_index(&segment_name(123)), Some(123));
        assert_eq!(segment_index("seg_x.ts"), None);
        assert_eq!(segment_index("index.m3u8"), None);
    }

    #[test]
    fn uris_point_at_the_files() {
        let layout = JobLayout::new("/s/jobs/j");
        assert_eq!(
            layout.dir().join(JobLayout::media_playlist_uri("240p")),
            layout.media_playlist("240p")
        );
        assert_eq!(
            layout.dir().join(JobLayout::iframe_playlist_uri("240p")),
            layout.iframe_playlist("240p")
        );
        assert_eq!(
            layout.dir().join(JobLayout::audio_playlist_uri(1)),
            layout.audio_playlist(1)
        );
        assert_eq!(
            layout.rendition_dir("240p").join(JobLayout::segment_uri(3)),
            layout.segment("240p", 3)
        );
    }
}
