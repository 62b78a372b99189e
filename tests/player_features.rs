//! Player features of a package made by `segswarm transcode` (local mode,
//! the same pipeline as a cluster): trick play's I-frame playlists.

mod common;

use common::iframes::{assert_starts_with_idr, check_iframe_playlists};
use common::{assert_transcode_ok, gen_clip, run_transcode, validate_hls, ClipSpec, TestDir};
use m3u8_rs::Playlist;

const FAST: &[&str] = &[
    "--segment-duration",
    "2",
    "--ladder",
    "144p,240p",
    "--preset",
    "ultrafast",
];

/// Every rendition gets an I-frame playlist whose byte ranges, each with
/// its segment's PAT/PMT, start with an IDR picture; a range that does
/// not (the keyframe's range moved one TS packet on) is caught by the same
/// check, so the check can fail.
#[test]
fn iframe_playlists_point_at_the_keyframes_of_the_segments() {
    let dir = TestDir::new("iframes");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(7.0));
    let out = dir.join("out");
    assert_transcode_ok(&run_transcode(&source, &out, FAST));
    let hls = validate_hls(&out, &source);
    let report = check_iframe_playlists(&out);
    assert_eq!(report.renditions, hls.renditions.len());
    assert_eq!(report.renditions, 2);
    // 7 s in 2 s segments: 4 segments, one keyframe each, per rendition.
    assert_eq!(report.entries, 2 * 4, "{report:?}");

    let playlist = match common::hls::parse_playlist(&out.join("240p/iframes.m3u8")) {
        Playlist::MediaPlaylist(p) => p,
        _ => panic!("240p/iframes.m3u8 is no media playlist"),
    };
    let entry = &playlist.segments[1];
    let file = std::fs::read(out.join("240p").join(&entry.uri)).unwrap();
    let map = entry.map.as_ref().unwrap().byte_range.clone().unwrap();
    let range = entry.byte_range.clone().unwrap();
    let (start, len) = (range.offset.unwrap() as usize, range.length as usize);
    // The frame after the keyframe: from the range's end to the next
    // PES start is the second frame's packets; take the tail of the file
    // from there with the map and it starts with a P or B frame.
    let mut moved = file[..map.length as usize].to_vec();
    moved.extend_from_slice(&file[start + len..]);
    let wrong = dir.join("moved.ts");
    std::fs::write(&wrong, &moved).unwrap();
    let caught = std::panic::catch_unwind(|| assert_starts_with_idr(&wrong, "moved range"));
    assert!(
        caught.is_err(),
        "a range past the keyframe passed the check"
    );
}
