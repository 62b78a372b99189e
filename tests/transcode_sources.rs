//! `segswarm transcode` on every kind of source we promise to handle: each
//! output must pass the full HLS validation against its source.

mod common;

use std::fs;
use std::process::Command;

use common::media::run_checked;
use common::{
    assert_transcode_ok, gen_clip, run_transcode, validate_hls, ClipSpec, HlsReport, TestDir,
};

/// Fast settings for tests where the encoder's quality does not matter.
const FAST: &[&str] = &[
    "--segment-duration",
    "2",
    "--ladder",
    "144p,240p",
    "--preset",
    "ultrafast",
];

/// Generates `spec`, transcodes it with `args`, validates the output and
/// checks the renditions are exactly `renditions`.
fn transcode_and_validate(
    label: &str,
    spec: &ClipSpec,
    args: &[&str],
    renditions: &[&str],
) -> HlsReport {
    let dir = TestDir::new(label);
    let source = dir.join("source.mp4");
    gen_clip(&source, spec);
    let out = dir.join("out");
    let stdout = assert_transcode_ok(&run_transcode(&source, &out, args));
    let report = validate_hls(&out, &source);
    assert_eq!(
        report.rendition_names(),
        renditions,
        "renditions for a {}x{} source",
        spec.width,
        spec.height
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.contains(&format!("{} renditions", renditions.len())),
        "summary should count {} renditions: {summary}",
        renditions.len()
    );
    assert!(
        summary.contains(&format!("{} audio track(s)", spec.audio_tracks)),
        "summary should count {} audio track(s): {summary}",
        spec.audio_tracks
    );
    // Segments of 2 s: every rendition has ceil(duration / 2) segments, give
    // or take one at the end for frame rounding.
    let expected = (spec.duration / 2.0).ceil() as usize;
    for r in &report.renditions {
        assert!(
            r.segments.abs_diff(expected) <= 1 && r.segments >= 1,
            "{}: {} segments for {} s at 2 s each",
            r.name,
            r.segments,
            spec.duration
        );
    }
    report
}

#[test]
fn cfr_30fps() {
    transcode_and_validate("30fps", &ClipSpec::new(5.0), FAST, &["144p", "240p"]);
}

#[test]
fn ntsc_29_97fps() {
    let report = transcode_and_validate(
        "ntsc",
        &ClipSpec::new(5.0).fps("30000/1001"),
        FAST,
        &["144p", "240p"],
    );
    // 5 s at 29.97 fps is 150 frames (149.85 rounded up by the source).
    assert_eq!(report.rendition("240p").frames, report.source.frames.len());
}

#[test]
fn pal_25fps() {
    transcode_and_validate(
        "pal",
        &ClipSpec::new(5.0).fps("25"),
        FAST,
        &["144p", "240p"],
    );
}

#[test]
fn variable_frame_rate() {
    let report = transcode_and_validate("vfr", &ClipSpec::new(6.0).vfr(), FAST, &["144p", "240p"]);
    assert!(
        report.source.frames.len() < 180,
        "the VFR source should have dropped frames"
    );
}

#[test]
fn no_audio() {
    let report = transcode_and_validate(
        "noaudio",
        &ClipSpec::new(4.0).audio_tracks(0),
        FAST,
        &["144p", "240p"],
    );
    assert!(report.audio_tracks.is_empty());
}

#[test]
fn two_audio_tracks() {
    let dir_report = transcode_and_validate(
        "twoaudio",
        &ClipSpec::new(4.0).audio_tracks(2),
        FAST,
        &["144p", "240p"],
    );
    let languages: Vec<Option<&str>> = dir_report
        .master
        .alternatives
        .iter()
        .map(|a| a.language.as_deref())
        .collect();
    assert_eq!(
        languages,
        [Some("eng"), Some("fra")],
        "EXT-X-MEDIA languages"
    );
    let indexes: Vec<usize> = dir_report.audio_tracks.iter().map(|t| t.index).collect();
    assert_eq!(indexes, [0, 1]);
    assert_eq!(
        dir_report
            .master
            .alternatives
            .iter()
            .filter(|a| a.default)
            .count(),
        1,
        "exactly one audio rendition should be DEFAULT=YES"
    );
}

#[test]
fn odd_size() {
    let report = transcode_and_validate(
        "odd",
        &ClipSpec::new(4.0).size(321, 241),
        FAST,
        &["144p", "240p"],
    );
    for r in &report.renditions {
        assert!(r.width % 2 == 0 && r.height % 2 == 0, "{r:?}");
    }
}

#[test]
fn rotated_90() {
    let report = transcode_and_validate(
        "rotated",
        &ClipSpec::new(4.0).size(640, 360).rotate(90),
        FAST,
        &["144p", "240p"],
    );
    let r = report.rendition("240p");
    assert_eq!(r.width, 240, "portrait 240p should be 240 wide: {r:?}");
    assert!(
        (426..=428).contains(&r.height),
        "portrait 240p height: {r:?}"
    );
}

#[test]
fn nonzero_start_time() {
    let report = transcode_and_validate(
        "start",
        &ClipSpec::new(4.0).start_time(3.0),
        FAST,
        &["144p", "240p"],
    );
    assert!((report.source.video_start - 3.0).abs() < 0.05);
}

/// An MPEG-TS source with timestamps from 10 s and keyframes 5 s apart
/// (longer than its 2 s segments), and a 6 s one with a single keyframe
/// packaged as one 6 s segment. MPEG-TS has no index: a seek to a
/// segment's start landed past the keyframe it is decoded from (segments
/// came out empty), and the thumbnail's seek made no frame.
#[test]
fn mpegts_with_long_gops() {
    for (label, duration, keyint, segment) in [
        ("ts-gop-5s", 8.0, "150", "2"),
        ("ts-one-keyframe", 6.0, "1000", "6"),
    ] {
        let dir = TestDir::new(label);
        let mp4 = dir.join("source.mp4");
        gen_clip(&mp4, &ClipSpec::new(duration));
        let source = dir.join("source.ts");
        run_checked(
            Command::new("ffmpeg")
                .args(["-nostdin", "-v", "error", "-y", "-i"])
                .arg(&mp4)
                .args(["-c:v", "libx264", "-preset", "ultrafast"])
                .args([
                    "-x264-params",
                    &format!("keyint={keyint}:min-keyint={keyint}:scenecut=0"),
                ])
                .args(["-c:a", "aac", "-output_ts_offset", "10", "-f", "mpegts"])
                .arg(&source),
        );
        let out = dir.join("out");
        let args = [
            "--segment-duration",
            segment,
            "--ladder",
            "144p",
            "--preset",
            "ultrafast",
        ];
        let stdout = assert_transcode_ok(&run_transcode(&source, &out, &args));
        validate_hls(&out, &source);
        let thumbnail = fs::metadata(out.join("thumbnail.webp")).map(|m| m.len());
        assert!(
            thumbnail.as_ref().is_ok_and(|len| *len > 0),
            "{label}: no thumbnail ({thumbnail:?}); transcode said:\n{stdout}"
        );
    }
}

/// An mp4 source with B-frames and keyframes 5 s apart, so that most 2 s
/// segments start between keyframes: mov/mp4 seeks just past the keyframe
/// a segment is decoded from (the index lands on it), and every segment
/// must still hold exactly its frames, IDR first.
#[test]
fn mp4_with_long_gops_and_b_frames() {
    let dir = TestDir::new("mp4-gop-5s");
    let plain = dir.join("plain.mp4");
    gen_clip(&plain, &ClipSpec::new(9.0));
    let source = dir.join("source.mp4");
    run_checked(
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-i"])
            .arg(&plain)
            .args(["-c:v", "libx264", "-preset", "veryfast", "-bf", "3"])
            .args(["-x264-params", "keyint=150:min-keyint=150:scenecut=0"])
            .args(["-c:a", "copy"])
            .arg(&source),
    );
    let out = dir.join("out");
    assert_transcode_ok(&run_transcode(&source, &out, FAST));
    let report = validate_hls(&out, &source);
    assert!(
        report.renditions.iter().all(|r| r.segments == 5),
        "{report:?}"
    );
}

#[test]
fn hevc_10bit() {
    let report = transcode_and_validate(
        "hevc10",
        &ClipSpec::new(4.0).hevc_10bit(),
        FAST,
        &["144p", "240p"],
    );
    assert_eq!(report.source.pix_fmt, "yuv420p10le");
}

#[test]
fn shorter_than_one_segment() {
    let report = transcode_and_validate(
        "short",
        &ClipSpec::new(1.5),
        &[
            "--segment-duration",
            "6",
            "--ladder",
            "144p,240p",
            "--preset",
            "ultrafast",
        ],
        &["144p", "240p"],
    );
    for r in &report.renditions {
        assert_eq!(r.segments, 1, "{r:?}");
    }
}

#[test]
fn source_smaller_than_the_lowest_rung() {
    // 256x144 with the default ladder (240p and up): one rendition named after
    // the source's own short side.
    let report = transcode_and_validate(
        "tiny",
        &ClipSpec::new(3.0).size(256, 144),
        &["--segment-duration", "2", "--preset", "ultrafast"],
        &["144p"],
    );
    let r = report.rendition("144p");
    assert_eq!((r.width, r.height), (256, 144));
}

#[test]
fn rungs_above_the_source_are_dropped() {
    let report = transcode_and_validate(
        "dropped",
        &ClipSpec::new(3.0).size(640, 360),
        &[
            "--segment-duration",
            "2",
            "--ladder",
            "240p,360p,480p,720p",
            "--preset",
            "ultrafast",
        ],
        &["240p", "360p"],
    );
    assert_eq!(report.rendition("360p").width, 640);
}

/// A segment encoded alone or in a batch with other renditions, in another
/// process, gives the same bytes (DESIGN.md: batching never changes output).
#[test]
fn segments_are_byte_identical_alone_or_batched() {
    let dir = TestDir::new("identical");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(5.0).size(480, 270));
    let batched = dir.join("batched");
    let alone = dir.join("alone");
    assert_transcode_ok(&run_transcode(
        &source,
        &batched,
        &["--segment-duration", "2", "--ladder", "240p,360p"],
    ));
    assert_transcode_ok(&run_transcode(
        &source,
        &alone,
        &["--segment-duration", "2", "--ladder", "240p"],
    ));
    let a = common::seg_files(&batched.join("240p"));
    let b = common::seg_files(&alone.join("240p"));
    assert!(a.len() >= 3, "expected 3 segments, got {a:?}");
    assert_eq!(
        a.iter().map(|p| p.file_name()).collect::<Vec<_>>(),
        b.iter().map(|p| p.file_name()).collect::<Vec<_>>(),
        "same segment files"
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(
            fs::read(x).unwrap() == fs::read(y).unwrap(),
            "{} and {} differ",
            x.display(),
            y.display()
        );
    }
    // And the playlists agree.
    assert_eq!(
        fs::read_to_string(batched.join("240p/index.m3u8")).unwrap(),
        fs::read_to_string(alone.join("240p/index.m3u8")).unwrap()
    );
}
