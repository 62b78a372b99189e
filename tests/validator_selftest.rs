//! Proves the HLS validator in `common::hls` itself: it accepts a correct
//! package made with plain ffmpeg and rejects packages broken on purpose
//! (a gap between segments, a segment not starting with a keyframe, a dropped
//! frame, a playlist without ENDLIST, audio that does not line up). Without
//! these, a validator that accepts everything would make every other test
//! pass. Also proves the arithmetic of `common::stats` that the figures of
//! docs/reliability.md and docs/benchmarks.md rest on (nearest-rank
//! percentiles, min/median/max over repeats).

mod common;

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::media::run_checked;
use common::stats::{min_median_max, Latencies};
use common::{gen_clip, validate_hls, ClipSpec, TestDir};

const SEGMENT: u32 = 2;

/// Builds an HLS package with plain ffmpeg in segswarm's layout: one `-f hls`
/// process per rendition and per audio track, all with the same timestamp
/// base, plus master.m3u8, job.json and thumbnail.webp.
fn reference_package(source: &Path, out: &Path, rungs: &[u32], audio_tracks: usize) {
    fs::create_dir_all(out).unwrap();
    let mut master = String::from("#EXTM3U\n#EXT-X-VERSION:4\n");
    for track in 0..audio_tracks {
        let dir = out.join(format!("audio/{track}"));
        fs::create_dir_all(&dir).unwrap();
        run_checked(
            Command::new("ffmpeg")
                .args(["-nostdin", "-v", "error", "-y", "-i"])
                .arg(source)
                .args(["-map", &format!("0:a:{track}"), "-vn", "-c:a", "aac"])
                .args(hls_args(&dir)),
        );
        let lang = common::media::AUDIO_LANGUAGES[track];
        master.push_str(&format!(
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"{lang}\",LANGUAGE=\"{lang}\",\
             DEFAULT={},AUTOSELECT=YES,URI=\"audio/{track}/index.m3u8\"\n",
            if track == 0 { "YES" } else { "NO" }
        ));
    }
    for rung in rungs {
        let dir = out.join(format!("{rung}p"));
        fs::create_dir_all(&dir).unwrap();
        run_checked(
            Command::new("ffmpeg")
                .args(["-nostdin", "-v", "error", "-y", "-i"])
                .arg(source)
                .args(["-map", "0:v:0", "-an", "-vf", &short_side_scale(*rung)])
                .args([
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    "-pix_fmt",
                    "yuv420p",
                ])
                .args(["-fps_mode", "passthrough"])
                .args([
                    "-force_key_frames",
                    &format!("expr:gte(t,n_forced*{SEGMENT})"),
                ])
                .args(hls_args(&dir)),
        );
        fix_extinf(&dir.join("index.m3u8"), source);
        let size: u64 = common::seg_files(&dir)
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        let probe = common::ffprobe_json(
            &["-show_entries", "stream=width,height"],
            &dir.join("seg_00000.ts"),
        );
        let (w, h) = (
            &probe["streams"][0]["width"],
            &probe["streams"][0]["height"],
        );
        let audio = if audio_tracks > 0 {
            ",AUDIO=\"aud\""
        } else {
            ""
        };
        let codecs = if audio_tracks > 0 {
            "avc1.42c01e,mp4a.40.2"
        } else {
            "avc1.42c01e"
        };
        // Generous figures: this package only has to be valid.
        let bw = size * 8 * 4;
        master.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={bw},AVERAGE-BANDWIDTH={bw},RESOLUTION={w}x{h},\
             CODECS=\"{codecs}\"{audio}\n{rung}p/index.m3u8\n"
        ));
    }
    fs::write(out.join("master.m3u8"), master).unwrap();
    fs::write(out.join("job.json"), "{\"reference\": true}").unwrap();
    run_checked(
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-i"])
            .arg(source)
            .args(["-frames:v", "1", "-c:v", "libwebp"])
            .arg(out.join("thumbnail.webp")),
    );
}

/// ffmpeg's hls muxer gets the EXTINF of a VFR segment wrong (it counts the
/// last frame as lasting one nominal frame, and worse at the end); rewrite
/// them from the segments' first timestamps and the source's duration.
fn fix_extinf(playlist: &Path, source: &Path) {
    let dir = playlist.parent().unwrap();
    let starts: Vec<f64> = common::seg_files(dir)
        .iter()
        .map(|seg| {
            let probe = common::ffprobe_json(&["-show_entries", "packet=pts_time"], seg);
            common::media::packet_span(&probe).0
        })
        .collect();
    let total = common::probe_source(source).video_duration;
    let mut text = String::new();
    let mut k = 0;
    for line in fs::read_to_string(playlist).unwrap().lines() {
        if line.starts_with("#EXTINF:") {
            let end = starts.get(k + 1).copied().unwrap_or(starts[0] + total);
            text.push_str(&format!("#EXTINF:{:.6},\n", end - starts[k]));
            k += 1;
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    fs::write(playlist, text).unwrap();
}

/// A scale filter that makes the short side `rung` pixels (portrait or not).
fn short_side_scale(rung: u32) -> String {
    format!("scale=w='if(gte(iw,ih),-2,{rung})':h='if(gte(iw,ih),{rung},-2)'")
}

fn hls_args(dir: &Path) -> Vec<String> {
    vec![
        "-copyts".into(),
        "-output_ts_offset".into(),
        "10".into(),
        "-muxdelay".into(),
        "0".into(),
        "-muxpreload".into(),
        "0".into(),
        "-f".into(),
        "hls".into(),
        "-hls_time".into(),
        SEGMENT.to_string(),
        "-hls_playlist_type".into(),
        "vod".into(),
        "-hls_segment_filename".into(),
        dir.join("seg_%05d.ts").display().to_string(),
        dir.join("index.m3u8").display().to_string(),
    ]
}

/// Runs the validator and returns its panic message, failing if it passed.
fn rejection(out: &Path, source: &Path) -> String {
    let result = catch_unwind(AssertUnwindSafe(|| validate_hls(out, source)));
    match result {
        Ok(report) => panic!("validator accepted a broken package: {report:?}"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    }
}

fn clip_and_package(
    dir: &TestDir,
    spec: &ClipSpec,
    rungs: &[u32],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let source = dir.join("source.mp4");
    gen_clip(&source, spec);
    let out = dir.join("hls");
    reference_package(&source, &out, rungs, spec.audio_tracks);
    (source, out)
}

#[test]
fn accepts_a_correct_ffmpeg_package() {
    let dir = TestDir::new("selftest-good");
    let spec = ClipSpec::new(5.0).size(480, 270).audio_tracks(2);
    let (source, out) = clip_and_package(&dir, &spec, &[144, 240]);
    let report = validate_hls(&out, &source);
    assert_eq!(report.rendition_names(), ["144p", "240p"]);
    assert_eq!(
        (
            report.rendition("240p").width,
            report.rendition("240p").height
        ),
        (426, 240)
    );
    assert_eq!(report.rendition("144p").segments, 3);
    assert_eq!(report.rendition("144p").frames, 150);
    assert_eq!(report.audio_tracks.len(), 2);
    assert!((report.video_span - 5.0).abs() < 0.001, "{report:?}");
}

#[test]
fn accepts_a_correct_vfr_package() {
    let dir = TestDir::new("selftest-vfr");
    let spec = ClipSpec::new(4.0).vfr().audio_tracks(0);
    let (source, out) = clip_and_package(&dir, &spec, &[144]);
    let report = validate_hls(&out, &source);
    assert!(report.audio_tracks.is_empty());
    assert!(report.rendition("144p").frames < 120);
}

#[test]
fn rejects_a_gap_between_segments() {
    let dir = TestDir::new("selftest-gap");
    let (source, out) = clip_and_package(&dir, &ClipSpec::new(5.0).audio_tracks(0), &[144]);
    // Shift segment 1 by 100 ms: a gap before it, an overlap after it.
    let seg = out.join("144p/seg_00001.ts");
    let shifted = dir.join("shifted.ts");
    run_checked(
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-copyts", "-i"])
            .arg(&seg)
            .args([
                "-c",
                "copy",
                "-output_ts_offset",
                "0.1",
                "-muxdelay",
                "0",
                "-muxpreload",
                "0",
            ])
            .arg(&shifted),
    );
    fs::rename(&shifted, &seg).unwrap();
    let msg = rejection(&out, &source);
    assert!(msg.contains("gap of 100.000 ms"), "{msg}");
    assert!(msg.contains("overlap of 100.000 ms"), "{msg}");
}

#[test]
fn rejects_a_segment_not_starting_with_a_keyframe() {
    let dir = TestDir::new("selftest-keyframe");
    let (source, out) = clip_and_package(&dir, &ClipSpec::new(4.0).audio_tracks(0), &[144]);
    // Same cut points, but one keyframe only at the start of the clip.
    let rendition = out.join("144p");
    for seg in common::seg_files(&rendition) {
        fs::remove_file(seg).unwrap();
    }
    run_checked(
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-i"])
            .arg(&source)
            .args([
                "-an",
                "-vf",
                "scale=-2:144",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
            ])
            .args(["-g", "1000"])
            .args([
                "-f",
                "segment",
                "-segment_time",
                "2",
                "-break_non_keyframes",
                "1",
            ])
            .args(["-segment_format", "mpegts"])
            .arg(rendition.join("seg_%05d.ts")),
    );
    let msg = rejection(&out, &source);
    assert!(
        msg.contains("seg_00001.ts: first packet is not a keyframe"),
        "{msg}"
    );
}

#[test]
fn rejects_a_dropped_frame() {
    let dir = TestDir::new("selftest-drop");
    let (source, out) = clip_and_package(&dir, &ClipSpec::new(4.0).audio_tracks(0), &[144]);
    // Drop the last frame of segment 0 (a P frame; nothing references it in
    // an ultrafast stream): the boundary shows a 33 ms gap.
    let seg = out.join("144p/seg_00000.ts");
    let cut = dir.join("cut.ts");
    run_checked(
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-copyts", "-i"])
            .arg(&seg)
            .args([
                "-c",
                "copy",
                "-frames:v",
                "59",
                "-muxdelay",
                "0",
                "-muxpreload",
                "0",
            ])
            .arg(&cut),
    );
    fs::rename(&cut, &seg).unwrap();
    let msg = rejection(&out, &source);
    assert!(msg.contains("gap of 33.3"), "{msg}");
}

#[test]
fn rejects_a_frame_missing_inside_a_segment() {
    let dir = TestDir::new("selftest-inner");
    let (source, out) = clip_and_package(&dir, &ClipSpec::new(4.0).audio_tracks(0), &[144]);
    let seg = out.join("144p/seg_00001.ts");
    let cut = dir.join("cut.ts");
    run_checked(
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-copyts", "-i"])
            .arg(&seg)
            .args(["-c", "copy", "-bsf:v", "noise=drop=eq(n\\,30)"])
            .args(["-muxdelay", "0", "-muxpreload", "0"])
            .arg(&cut),
    );
    fs::rename(&cut, &seg).unwrap();
    let msg = rejection(&out, &source);
    assert!(msg.contains("119 frames"), "{msg}");
    assert!(msg.contains("but the source has 120"), "{msg}");
}

#[test]
fn rejects_a_playlist_without_endlist() {
    let dir = TestDir::new("selftest-endlist");
    let (source, out) = clip_and_package(&dir, &ClipSpec::new(4.0).audio_tracks(0), &[144]);
    let playlist = out.join("144p/index.m3u8");
    let text = fs::read_to_string(&playlist).unwrap();
    assert!(text.contains("#EXT-X-ENDLIST"));
    fs::write(&playlist, text.replace("#EXT-X-ENDLIST\n", "")).unwrap();
    let msg = rejection(&out, &source);
    assert!(msg.contains("no EXT-X-ENDLIST"), "{msg}");
}

#[test]
fn rejects_audio_that_does_not_line_up() {
    let dir = TestDir::new("selftest-av");
    let (source, out) = clip_and_package(&dir, &ClipSpec::new(4.0), &[144]);
    // Re-encode the audio track 300 ms late (same layout, valid HLS).
    let audio = out.join("audio/0");
    fs::remove_dir_all(&audio).unwrap();
    fs::create_dir_all(&audio).unwrap();
    let mut args = hls_args(&audio);
    args[2] = "10.3".into();
    run_checked(
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-i"])
            .arg(&source)
            .args(["-map", "0:a:0", "-vn", "-c:a", "aac"])
            .args(args),
    );
    let msg = rejection(&out, &source);
    assert!(msg.contains("from the video"), "{msg}");
}

#[test]
fn accepts_correct_packages_for_every_source_kind() {
    let kinds = [
        ("ntsc", ClipSpec::new(3.0).fps("30000/1001")),
        ("pal", ClipSpec::new(3.0).fps("25")),
        ("odd", ClipSpec::new(3.0).size(321, 241)),
        ("rotated", ClipSpec::new(3.0).rotate(90)),
        ("start3", ClipSpec::new(3.0).start_time(3.0)),
        ("hevc10", ClipSpec::new(3.0).hevc_10bit()),
        ("short", ClipSpec::new(1.5)),
    ];
    for (label, spec) in kinds {
        let dir = TestDir::new(&format!("selftest-{label}"));
        let (source, out) = clip_and_package(&dir, &spec, &[144]);
        let report = validate_hls(&out, &source);
        let r = report.rendition("144p");
        if label == "rotated" {
            assert!(r.height > r.width, "{label}: {r:?}");
        }
        assert!(
            (report.video_span - spec.duration).abs() < 0.05,
            "{label}: span {}",
            report.video_span
        );
    }
}

#[test]
fn percentiles_use_the_nearest_rank() {
    // 1..=100 ms, measured by two tasks and merged.
    let (mut all, mut second_half) = (Latencies::default(), Latencies::default());
    for ms in 1..=100 {
        let task = if ms <= 50 { &mut all } else { &mut second_half };
        task.push(Duration::from_millis(ms));
    }
    all.merge(second_half);
    let ms = |p: f64| all.percentile(p).as_millis();
    assert_eq!((ms(50.0), ms(99.0), ms(100.0)), (50, 99, 100));
    assert_eq!(all.max().as_millis(), 100);
    assert_eq!(Latencies::default().percentile(50.0), Duration::ZERO);
}

#[test]
fn repeats_summarise_as_min_median_max() {
    assert_eq!(min_median_max(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
    assert_eq!(min_median_max(&[4.0, 1.0]), (1.0, 2.5, 4.0));
}
