//! HLS playlist text: building master and media playlists and reading them
//! back, with m3u8-rs.
//!
//! Pure: callers give segment URIs, durations, bandwidths and codecs; this
//! module turns them into bytes (or bytes into a parsed playlist). It never
//! touches storage, never measures anything and never decides what is
//! listed ([`crate::playlists`] does).

use m3u8_rs::{
    AlternativeMedia, AlternativeMediaType, MasterPlaylist, MediaPlaylist, MediaPlaylistType,
    MediaSegment, Resolution, VariantStream,
};
use std::sync::atomic::Ordering;

/// Group id of the audio renditions in the master playlist.
pub const AUDIO_GROUP: &str = "aud";
/// RFC 6381 codec of the audio renditions (AAC-LC).
pub const AUDIO_CODEC: &str = "mp4a.40.2";
/// Playlist version: floating-point EXTINF needs 3.
const VERSION: usize = 3;

/// One variant (video rendition) of a master playlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// URI of its media playlist, relative to the master.
    pub uri: String,
    /// Peak bit/s, audio included.
    pub bandwidth: u64,
    /// Average bit/s, audio included.
    pub average_bandwidth: u64,
    /// RFC 6381 codecs, audio included.
    pub codecs: String,
    pub width: u32,
    pub height: u32,
    /// Plays with the audio group [`AUDIO_GROUP`].
    pub with_audio: bool,
}

/// The I-frame playlist of one video rendition in a master playlist
/// (`EXT-X-I-FRAME-STREAM-INF`, trick play).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IFrameVariant {
    /// URI of its I-frame playlist, relative to the master.
    pub uri: String,
    /// Peak bit/s of its I-frames.
    pub bandwidth: u64,
    /// RFC 6381 codec of the video alone.
    pub codecs: String,
    pub width: u32,
    pub height: u32,
}

/// One audio rendition of a master playlist (`EXT-X-MEDIA:TYPE=AUDIO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioMedia {
    /// URI of its media playlist, relative to the master.
    pub uri: String,
    pub name: String,
    pub language: Option<String>,
    pub default: bool,
    pub channels: u32,
}

/// A media playlist listing `segments` (URI, seconds): VOD with ENDLIST when
/// `finished`, else EVENT (it will grow).
pub fn media_playlist(
    segments: impl IntoIterator<Item = (String, f32)>,
    target_duration: u64,
    finished: bool,
) -> Vec<u8> {
    set_float_precision();
    let playlist = MediaPlaylist {
        version: Some(VERSION),
        target_duration,
        segments: segments
            .into_iter()
            .map(|(uri, duration)| MediaSegment {
                uri,
                duration,
                ..MediaSegment::empty()
            })
            .collect(),
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

/// Turns the playlist ffmpeg's hls muxer wrote for an audio rendition into
/// ours, segment URIs as bare file names: VOD with ENDLIST when `finished`,
/// else EVENT (the track is still being encoded).
pub fn audio_playlist(ffmpeg_playlist: &MediaPlaylist, finished: bool) -> Vec<u8> {
    let segments: Vec<(String, f32)> = ffmpeg_playlist
        .segments
        .iter()
        .map(|segment| (file_name(&segment.uri), segment.duration))
        .collect();
    let target = target_duration(segments.iter().map(|(_, d)| f64::from(*d)));
    media_playlist(segments, target, finished)
}

/// The master playlist: `variants`, the I-frame playlists `iframes` and
/// `audio` as one group.
pub fn master_playlist(
    variants: Vec<Variant>,
    iframes: Vec<IFrameVariant>,
    audio: Vec<AudioMedia>,
) -> Vec<u8> {
    set_float_precision();
    let iframes = iframes.into_iter().map(|variant| VariantStream {
        is_i_frame: true,
        uri: variant.uri,
        bandwidth: variant.bandwidth,
        codecs: Some(variant.codecs),
        resolution: Some(Resolution {
            width: u64::from(variant.width),
            height: u64::from(variant.height),
        }),
        ..VariantStream::default()
    });
    let variants = variants
        .into_iter()
        .map(|variant| VariantStream {
            uri: variant.uri,
            bandwidth: variant.bandwidth,
            average_bandwidth: Some(variant.average_bandwidth),
            codecs: Some(variant.codecs),
            resolution: Some(Resolution {
                width: u64::from(variant.width),
                height: u64::from(variant.height),
            }),
            audio: variant.with_audio.then(|| AUDIO_GROUP.to_string()),
            ..VariantStream::default()
        })
        .chain(iframes)
        .collect();
    let alternatives = audio
        .into_iter()
        .map(|track| AlternativeMedia {
            media_type: AlternativeMediaType::Audio,
            uri: Some(track.uri),
            group_id: AUDIO_GROUP.to_string(),
            language: track.language,
            name: track.name,
            default: track.default,
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
    bytes
}

/// EXT-X-TARGETDURATION: every EXTINF rounded to the nearest integer must
/// not exceed it.
pub fn target_duration(durations: impl Iterator<Item = f64>) -> u64 {
    durations.fold(1.0_f64, |max, d| max.max(d.round())) as u64
}

/// True when a playlist's text has ENDLIST.
pub fn has_endlist(playlist: &[u8]) -> bool {
    playlist
        .windows(b"#EXT-X-ENDLIST".len())
        .any(|w| w == b"#EXT-X-ENDLIST")
}

/// Parses a media playlist; the error says why not.
pub fn parse_media_playlist(bytes: &[u8]) -> Result<MediaPlaylist, String> {
    m3u8_rs::parse_media_playlist_res(bytes).map_err(|e| format!("{e:?}"))
}

/// Parses a master playlist; the error says why not.
pub fn parse_master_playlist(bytes: &[u8]) -> Result<MasterPlaylist, String> {
    m3u8_rs::parse_master_playlist_res(bytes).map_err(|e| format!("{e:?}"))
}

/// The last path component of a playlist URI.
pub fn file_name(uri: &str) -> String {
    uri.rsplit('/').next().unwrap_or(uri).to_string()
}

/// Sets how many decimals m3u8-rs writes in EXTINF (every playlist writer
/// calls it first).
pub fn set_float_precision() {
    // m3u8-rs writes EXTINF with this many decimals; microseconds are plenty
    // and keep f32 noise out of the playlists.
    m3u8_rs::WRITE_OPT_FLOAT_PRECISION.store(6, Ordering::Relaxed);
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
    fn media_playlists_are_event_until_finished() {
        let segments = || vec![("seg_00000.ts".to_string(), 2.002_f32)];
        let growing = media_playlist(segments(), 2, false);
        let text = String::from_utf8_lossy(&growing);
        assert!(text.contains("#EXT-X-PLAYLIST-TYPE:EVENT"), "{text}");
        assert!(!has_endlist(&growing));
        let finished = media_playlist(segments(), 2, true);
        assert!(String::from_utf8_lossy(&finished).contains("#EXT-X-PLAYLIST-TYPE:VOD"));
        assert!(has_endlist(&finished));
        let parsed = parse_media_playlist(&finished).unwrap();
        assert_eq!(parsed.segments.len(), 1);
        assert_eq!(parsed.segments[0].uri, "seg_00000.ts");
    }

    #[test]
    fn audio_playlists_use_bare_file_names() {
        let ffmpeg = parse_media_playlist(
            b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:6\n#EXTINF:6.0,\n/tmp/x/seg_00000.ts\n#EXT-X-ENDLIST\n",
        )
        .unwrap();
        let ours = parse_media_playlist(&audio_playlist(&ffmpeg, true)).unwrap();
        assert_eq!(ours.segments[0].uri, "seg_00000.ts");
        assert!(ours.end_list);
    }
}
