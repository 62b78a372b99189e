//! The rule that keeps playlists growing whoever writes them (DESIGN
//! "Storage layout"): a media playlist is never replaced by one with fewer
//! segments, nor by a growing (EVENT) one once it is final (ENDLIST or
//! VOD); a master playlist never loses a rendition it lists.
//!
//! Pure decisions on what a file holds, read with m3u8-rs through
//! [`crate::hls`], and the writes that ask them at the last moment
//! ([`JobLayout::rewrite_if`]). Nothing here decides what a playlist should
//! list; the [`super::Packager`] and the audio publish do.
//!
//! Two pods may read, decide and write at the same time. `rewrite_if`
//! asks the rule again on a fresh read right before its rename, so a file
//! can be replaced without being looked at only when another writer's
//! rename lands between that read and our rename. Even then the result is
//! never shorter than what either writer read: each writes only a playlist
//! at least as long as the file it read, so it never undoes anything it
//! saw. What it may undo is the other writer's concurrent step (a few
//! segments, or ENDLIST). Every writer therefore looks once more after its
//! write ([`write_media`]) and puts its playlist back if a shorter one
//! landed over it, and the packager of every pod derives the next write
//! from storage, which only gains segments: the playlist comes back at
//! once to at least what either writer wrote.

use crate::hls;
use crate::storage::{JobLayout, StorageError};
use m3u8_rs::MediaPlaylistType;
use std::path::Path;

/// What a media playlist lists, as far as growth goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaState {
    /// Segments listed (from segment 0, in plan order).
    pub segments: usize,
    /// ENDLIST, or typed VOD: it will not grow any more.
    pub finished: bool,
}

impl MediaState {
    /// What the media playlist text `bytes` lists; `None` if it does not
    /// parse.
    pub fn of(bytes: &[u8]) -> Option<MediaState> {
        let playlist = hls::parse_media_playlist(bytes).ok()?;
        Some(MediaState {
            segments: playlist.segments.len(),
            finished: playlist.end_list || playlist.playlist_type == Some(MediaPlaylistType::Vod),
        })
    }
}

/// Whether a playlist listing `new` may replace one listing `current`:
/// only if it changes something, lists at least as many segments, and is
/// final if `current` was.
pub fn media_grows(current: MediaState, new: MediaState) -> bool {
    new != current && new.segments >= current.segments && (new.finished || !current.finished)
}

/// [`media_grows`] against a file's bytes (`None`: no file yet). A file
/// that does not parse plays for nobody: it may be replaced.
pub fn media_may_replace(current: Option<&[u8]>, new: MediaState) -> bool {
    match current.map(MediaState::of) {
        None | Some(None) => true,
        Some(Some(current)) => media_grows(current, new),
    }
}

/// The media playlist URIs a master playlist's text lists; `None` if it
/// does not parse.
pub fn master_uris(bytes: &[u8]) -> Option<Vec<String>> {
    let master = hls::parse_master_playlist(bytes).ok()?;
    Some(master.variants.into_iter().map(|v| v.uri).collect())
}

/// Whether a master listing the media playlists `new` may replace one
/// listing `current`: only if it keeps every one of them (bandwidths and
/// codecs may change; renditions are only ever added).
pub fn master_keeps(current: &[String], new: &[String]) -> bool {
    current.iter().all(|uri| new.contains(uri))
}

/// [`master_keeps`] against a file's bytes (`None`: no file yet).
pub fn master_may_replace(current: Option<&[u8]>, new: &[String]) -> bool {
    match current.map(master_uris) {
        None | Some(None) => true,
        Some(Some(current)) => master_keeps(&current, new),
    }
}

/// What the media playlist at `path` lists now; `None` when there is no
/// such file or it does not parse.
pub fn read_media_state(path: &Path) -> Result<Option<MediaState>, StorageError> {
    Ok(read(path)?.and_then(|bytes| MediaState::of(&bytes)))
}

/// The media playlist URIs the master at `path` lists; empty when there is
/// no such file or it does not parse.
pub fn read_master_uris(path: &Path) -> Result<Vec<String>, StorageError> {
    Ok(read(path)?
        .and_then(|bytes| master_uris(&bytes))
        .unwrap_or_default())
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::new("reading", path, e)),
    }
}

/// Writes the media playlist `bytes` (which list `state`) to `path` unless
/// the file there lists more or is final while this is not. Returns whether
/// it was written. After a write it looks once more: if a concurrent
/// writer's shorter copy landed over ours, ours goes back.
pub fn write_media(
    layout: &JobLayout,
    path: &Path,
    bytes: &[u8],
    state: MediaState,
) -> Result<bool, StorageError> {
    let mut written = false;
    for _ in 0..2 {
        if !layout.rewrite_if(path, bytes, |current| media_may_replace(current, state))? {
            break;
        }
        written = true;
    }
    Ok(written)
}

/// Writes the master playlist `bytes` (which list the media playlists
/// `uris`) to `path` unless the file there lists one that `uris` lacks.
/// Returns whether it was written.
pub fn write_master(
    layout: &JobLayout,
    path: &Path,
    bytes: &[u8],
    uris: &[String],
) -> Result<bool, StorageError> {
    layout.rewrite_if(path, bytes, |current| master_may_replace(current, uris))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(segments: usize, finished: bool) -> MediaState {
        MediaState { segments, finished }
    }

    fn playlist(segments: usize, finished: bool) -> Vec<u8> {
        let listed = (0..segments).map(|i| (format!("seg_{i:05}.ts"), 2.0_f32));
        hls::media_playlist(listed, 2, finished)
    }

    #[test]
    fn a_shorter_view_never_replaces_a_longer_playlist() {
        assert!(!media_grows(state(23, false), state(10, false)));
        assert!(!media_grows(state(23, false), state(22, true)));
        assert!(media_grows(state(10, false), state(23, false)));
    }

    #[test]
    fn a_final_playlist_is_never_made_growing_again() {
        assert!(!media_grows(state(30, true), state(30, false)));
        assert!(!media_grows(state(30, true), state(31, false)));
        assert!(media_grows(state(30, false), state(30, true)));
    }

    #[test]
    fn an_unchanged_playlist_is_not_rewritten() {
        assert!(!media_grows(state(5, false), state(5, false)));
        assert!(!media_grows(state(30, true), state(30, true)));
    }

    #[test]
    fn the_rule_reads_what_a_file_holds() {
        assert!(media_may_replace(None, state(1, false)));
        assert!(media_may_replace(Some(b"not a playlist"), state(1, false)));
        let file = playlist(3, false);
        assert_eq!(MediaState::of(&file), Some(state(3, false)));
        assert!(!media_may_replace(Some(&file), state(2, false)));
        assert!(media_may_replace(Some(&file), state(4, false)));
        let vod = playlist(4, true);
        assert_eq!(MediaState::of(&vod), Some(state(4, true)));
        assert!(!media_may_replace(Some(&vod), state(4, false)));
    }

    #[test]
    fn a_master_only_gains_renditions() {
        let uris = |names: &[&str]| -> Vec<String> {
            names.iter().map(|n| format!("{n}/index.m3u8")).collect()
        };
        assert!(master_keeps(&uris(&["240p"]), &uris(&["240p", "360p"])));
        assert!(master_keeps(
            &uris(&["240p", "360p"]),
            &uris(&["240p", "360p"])
        ));
        assert!(!master_keeps(&uris(&["240p", "360p"]), &uris(&["240p"])));
        assert!(!master_keeps(&uris(&["360p"]), &uris(&["240p"])));
    }
}
