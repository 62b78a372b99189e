//! Checks of a job folder's I-frame playlists (trick play): the master
//! lists one `EXT-X-I-FRAME-STREAM-INF` per video rendition, each
//! `<rendition>/iframes.m3u8` parses with m3u8-rs as an I-frames-only VOD
//! playlist, covers the rendition's duration, and every entry's bytes (its
//! `EXT-X-MAP` bytes, then its byte range) demux on their own and start
//! with an IDR picture (ffprobe: key_frame 1, pict_type I; the first
//! slice's NAL unit type is 5).

use super::hls::parse_playlist;
use super::media::run_checked;
use m3u8_rs::{ByteRange, Playlist};
use std::path::Path;
use std::process::Command;

/// What [`check_iframe_playlists`] saw.
#[derive(Debug, Default)]
pub struct IFrameReport {
    /// Renditions with an I-frame playlist.
    pub renditions: usize,
    /// Entries checked, over all of them.
    pub entries: usize,
}

/// The bytes a byte range names in `file`.
fn slice<'a>(bytes: &'a [u8], range: &ByteRange, what: &str) -> &'a [u8] {
    let start = range.offset.expect("byte ranges carry their offset") as usize;
    let end = start + range.length as usize;
    assert!(
        end <= bytes.len(),
        "{what}: range {start}..{end} past the file's {} bytes",
        bytes.len()
    );
    &bytes[start..end]
}

/// NAL unit types of an Annex B stream, in order.
fn nal_types(stream: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut i = 0;
    while i + 3 < stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            types.push(stream[i + 3] & 0x1f);
            i += 3;
        } else {
            i += 1;
        }
    }
    types
}

/// Checks that `ts` (a map plus one byte range) starts with an IDR frame.
pub fn assert_starts_with_idr(ts: &Path, what: &str) {
    let frames = super::ffprobe_json(
        &[
            "-select_streams",
            "v:0",
            "-show_frames",
            "-show_entries",
            "frame=key_frame,pict_type",
        ],
        ts,
    );
    let first = &frames["frames"][0];
    assert_eq!(first["key_frame"], 1, "{what}: first frame {first}");
    assert_eq!(first["pict_type"], "I", "{what}: first frame {first}");
    let raw = run_checked(
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i"])
            .arg(ts)
            .args(["-map", "0:v:0", "-c:v", "copy", "-frames:v", "1"])
            .args(["-bsf:v", "h264_mp4toannexb", "-f", "h264", "-"]),
    );
    let first_slice = nal_types(&raw.stdout)
        .into_iter()
        .find(|t| (1..=5).contains(t));
    assert_eq!(first_slice, Some(5), "{what}: first slice is no IDR");
}

/// Checks every I-frame playlist of the job folder `out_dir`.
pub fn check_iframe_playlists(out_dir: &Path) -> IFrameReport {
    let master = match parse_playlist(&out_dir.join("master.m3u8")) {
        Playlist::MasterPlaylist(m) => m,
        Playlist::MediaPlaylist(_) => panic!("master.m3u8 is a media playlist"),
    };
    let video: Vec<_> = master.variants.iter().filter(|v| !v.is_i_frame).collect();
    let iframe: Vec<_> = master.variants.iter().filter(|v| v.is_i_frame).collect();
    assert_eq!(
        iframe.len(),
        video.len(),
        "one EXT-X-I-FRAME-STREAM-INF per video rendition"
    );
    let scratch = out_dir.join(".iframe-check");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut report = IFrameReport::default();
    for variant in &video {
        let name = variant.uri.strip_suffix("/index.m3u8").unwrap();
        let uri = format!("{name}/iframes.m3u8");
        let entry = iframe
            .iter()
            .find(|v| v.uri == uri)
            .unwrap_or_else(|| panic!("no I-frame playlist {uri} in the master"));
        assert_eq!(entry.resolution, variant.resolution, "{uri}: RESOLUTION");
        assert!(entry.bandwidth > 0, "{uri}: BANDWIDTH");
        let codecs = entry.codecs.clone().unwrap_or_default();
        assert!(
            codecs.starts_with("avc1.") && !codecs.contains(','),
            "{uri}: CODECS={codecs}"
        );

        let media = match parse_playlist(&out_dir.join(&variant.uri)) {
            Playlist::MediaPlaylist(p) => p,
            _ => panic!("{} is no media playlist", variant.uri),
        };
        let playlist = match parse_playlist(&out_dir.join(&uri)) {
            Playlist::MediaPlaylist(p) => p,
            _ => panic!("{uri} is no media playlist"),
        };
        assert!(playlist.i_frames_only, "{uri}: no EXT-X-I-FRAMES-ONLY");
        assert!(playlist.end_list, "{uri}: no ENDLIST on a finished job");
        assert!(
            playlist.version.unwrap_or(1) >= 5,
            "{uri}: EXT-X-MAP needs version 5"
        );
        // Every segment starts on an IDR: at least one entry per segment.
        assert!(
            playlist.segments.len() >= media.segments.len(),
            "{uri}: {} entries for {} segments",
            playlist.segments.len(),
            media.segments.len()
        );
        let total = |p: &m3u8_rs::MediaPlaylist| -> f64 {
            p.segments.iter().map(|s| f64::from(s.duration)).sum()
        };
        assert!(
            (total(&playlist) - total(&media)).abs() < 0.001 * media.segments.len() as f64 + 0.001,
            "{uri}: entries last {} s, the rendition {} s",
            total(&playlist),
            total(&media)
        );
        let mut map = None;
        for (i, segment) in playlist.segments.iter().enumerate() {
            if let Some(m) = &segment.map {
                map = Some(m.clone());
            }
            let map = map
                .clone()
                .unwrap_or_else(|| panic!("{uri} #{i}: no EXT-X-MAP"));
            let what = format!("{uri} #{i} ({})", segment.uri);
            let file = std::fs::read(out_dir.join(name).join(&segment.uri)).unwrap();
            let mut bytes = Vec::new();
            assert_eq!(map.uri, segment.uri, "{what}: map of another file");
            bytes.extend_from_slice(slice(&file, map.byte_range.as_ref().unwrap(), &what));
            let range = segment.byte_range.as_ref().expect("EXT-X-BYTERANGE");
            assert!(
                range.offset.unwrap() > 0,
                "{what}: the map is the range's own start"
            );
            bytes.extend_from_slice(slice(&file, range, &what));
            let part = scratch.join(format!("{name}-{i}.ts"));
            std::fs::write(&part, &bytes).unwrap();
            assert_starts_with_idr(&part, &what);
            report.entries += 1;
        }
        report.renditions += 1;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    report
}
