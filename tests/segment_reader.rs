//! The in-process MPEG-TS reader and the segment verification built on it,
//! against real ffmpeg outputs: what it reads must be what ffprobe (and the
//! SPS bytes ffmpeg copies out) says of the same file, segments the pipeline
//! makes must pass, and truncated, video-less, empty, mis-timed or
//! mis-sized outputs must fail.

mod common;

use common::{
    assert_transcode_ok, ffprobe_json, gen_clip, media::run_checked, run_transcode, ClipSpec,
    TestDir,
};
use segswarm::pipeline::{
    mpegts, probe, Batch, EgressPolicy, Plan, Rendition, RunControl, Segment, Source, SourceFetch,
    TsSegment, VideoOutput,
};
use segswarm::settings::EncodeSettings;
use segswarm::JobId;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What ffprobe and ffmpeg's bitstream copy say of a file's video.
#[derive(Debug, PartialEq)]
struct Reference {
    frames: usize,
    keyframe_first: bool,
    first_pts: Option<u64>,
    width: u32,
    height: u32,
    codec: String,
    has_audio: bool,
}

fn reference(path: &Path) -> Reference {
    let streams = ffprobe_json(&["-show_entries", "stream=codec_type,width,height"], path);
    let streams = streams["streams"].as_array().cloned().unwrap_or_default();
    let video = streams
        .iter()
        .find(|s| s["codec_type"] == "video")
        .unwrap_or_else(|| panic!("{}: no video stream", path.display()));
    let has_audio = streams.iter().any(|s| s["codec_type"] == "audio");
    let packets = ffprobe_json(
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts,flags",
        ],
        path,
    );
    let packets = packets["packets"].as_array().cloned().unwrap_or_default();
    let first = packets.first();
    Reference {
        frames: packets.len(),
        keyframe_first: first
            .and_then(|p| p["flags"].as_str())
            .is_some_and(|f| f.contains('K')),
        first_pts: first.and_then(|p| p["pts"].as_u64()),
        width: video["width"].as_u64().unwrap_or(0) as u32,
        height: video["height"].as_u64().unwrap_or(0) as u32,
        codec: sps_codec(path),
        has_audio,
    }
}

/// `avc1.PPCCLL` from the bytes after the first SPS NAL header, as ffmpeg
/// copies the stream out (independent of the reader under test).
fn sps_codec(path: &Path) -> String {
    let out = run_checked(
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i"])
            .arg(path)
            .args([
                "-map",
                "0:v:0",
                "-copyinkf",
                "-c",
                "copy",
                "-f",
                "h264",
                "-",
            ]),
    );
    let bytes = out.stdout;
    let at = bytes
        .windows(4)
        .position(|w| w == [0, 0, 1, 0x67])
        .unwrap_or_else(|| panic!("{}: no SPS", path.display()));
    let sps = &bytes[at + 4..at + 7];
    format!("avc1.{:02x}{:02x}{:02x}", sps[0], sps[1], sps[2])
}

fn read(path: &Path) -> TsSegment {
    mpegts::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_reads_like_ffprobe(path: &Path) -> TsSegment {
    let info = read(path);
    let expected = reference(path);
    let got = Reference {
        frames: info.frames,
        keyframe_first: info.keyframe_first,
        first_pts: info.first_pts,
        width: info.width,
        height: info.height,
        codec: info.codec.clone(),
        has_audio: info.has_audio,
    };
    assert_eq!(got, expected, "{}", path.display());
    info
}

/// An MPEG-TS encode of a lavfi test picture with these x264 options.
fn encode(path: &Path, size: &str, rate: &str, frames: u32, audio: bool, x264: &[&str]) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={size}:rate={rate}"));
    if audio {
        cmd.args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
            .args(["-map", "0:v", "-map", "1:a", "-c:a", "aac", "-shortest"]);
    }
    cmd.args(["-frames:v", &frames.to_string(), "-c:v", "libx264"])
        .args(x264)
        .args(["-pix_fmt", "yuv420p", "-f", "mpegts"])
        .arg(path);
    run_checked(&mut cmd);
}

/// One encode: name, size, frame rate, frames, with audio, x264 options.
type Case = (
    &'static str,
    &'static str,
    &'static str,
    u32,
    bool,
    &'static [&'static str],
);

#[test]
fn reads_what_ffprobe_reads_in_real_encodes() {
    let dir = TestDir::new("ts-reader");
    let cases: [Case; 5] = [
        // 240p baseline, no B-frames, no audio, ffmpeg's default mux delay.
        (
            "240p-baseline",
            "320x240",
            "30",
            45,
            false,
            &["-profile:v", "baseline", "-preset", "veryfast"],
        ),
        // 480p main with B-frames and audio; 854 is not a multiple of 16.
        (
            "480p-main",
            "854x480",
            "30000/1001",
            40,
            true,
            &["-profile:v", "main", "-preset", "fast", "-bf", "3"],
        ),
        // 720p high as segswarm asks for it, with its timestamp base.
        (
            "720p-high",
            "1280x720",
            "25",
            30,
            false,
            &[
                "-profile:v",
                "high",
                "-preset",
                "veryfast",
                "-output_ts_offset",
                "10",
                "-muxdelay",
                "0",
                "-muxpreload",
                "0",
            ],
        ),
        // 1080p: 1088 lines coded, 8 cropped.
        (
            "1080p-high",
            "1920x1080",
            "30",
            8,
            false,
            &["-profile:v", "high", "-preset", "ultrafast"],
        ),
        // 360p main at 23.976 fps, a keyframe every 10 frames, with audio.
        (
            "360p-main",
            "640x360",
            "24000/1001",
            20,
            true,
            &["-profile:v", "main", "-preset", "veryfast", "-g", "10"],
        ),
    ];
    for (name, size, rate, frames, audio, x264) in cases {
        let path = dir.join(format!("{name}.ts"));
        encode(&path, size, rate, frames, audio, x264);
        let info = assert_reads_like_ffprobe(&path);
        assert_eq!(info.frames, frames as usize, "{name}");
        assert!(info.keyframe_first, "{name}");
    }
    // The codec strings differ between the profiles (the check can fail).
    let codecs: Vec<String> = ["240p-baseline", "480p-main", "720p-high"]
        .iter()
        .map(|n| read(&dir.join(format!("{n}.ts"))).codec)
        .collect();
    assert_eq!(codecs[0], "avc1.42c00d");
    assert!(codecs[1].starts_with("avc1.4d"), "{codecs:?}");
    assert!(codecs[2].starts_with("avc1.64"), "{codecs:?}");
}

#[test]
fn a_file_that_starts_on_a_non_idr_frame_reads_as_such() {
    let dir = TestDir::new("ts-reader-nonidr");
    let whole = dir.join("whole.ts");
    encode(
        &whole,
        "320x240",
        "30",
        30,
        false,
        &["-preset", "veryfast", "-g", "30", "-bf", "0"],
    );
    // Start on frame 6, a P frame (-copyinkf), with the SPS copied into
    // every frame so the file still says its size and codec.
    let cut = dir.join("cut.ts");
    run_checked(
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-i"])
            .arg(&whole)
            .args(["-ss", "0.2", "-copyinkf", "-c", "copy"])
            .args(["-bsf:v", "dump_extra=freq=all", "-f", "mpegts"])
            .arg(&cut),
    );
    let info = assert_reads_like_ffprobe(&cut);
    assert_eq!(info.frames, 24);
    assert!(!info.keyframe_first);
}

/// A plan for `source` with these renditions and 2 s segments.
async fn plan_for(source: &Path, ladder: &str) -> Plan {
    let parsed = Source::parse(&source.display().to_string(), None).expect("source");
    let info = probe(&parsed, &local_fetch()).await.expect("probe");
    let settings = EncodeSettings {
        ladder: ladder.parse().expect("ladder"),
        segment_duration: 2,
        ..EncodeSettings::default()
    };
    Plan::new(JobId::new_v4(), parsed, settings, &info).expect("plan")
}

/// What reads the (local) sources of these tests: the pod's own fetch.
fn local_fetch() -> SourceFetch {
    SourceFetch::new(EgressPolicy::default())
}

fn control() -> RunControl {
    RunControl {
        cancel: CancellationToken::new(),
        stall_timeout: Duration::from_secs(60),
        progress: None,
        pid: None,
    }
}

fn video_batch(plan: &Plan, segment: &Segment, dir: &Path) -> Batch {
    Batch::Video {
        segment: segment.clone(),
        outputs: plan
            .renditions
            .iter()
            .map(|r| VideoOutput {
                rendition: r.clone(),
                tmp_path: dir.join(format!("{}-{}.ts", r.name, segment.index)),
            })
            .collect(),
    }
}

/// Encodes every segment of `plan` (all renditions in one batch each),
/// which verification must pass, and checks what it learned against
/// ffprobe. Returns the segment files, per segment then rendition.
async fn encode_all(plan: &Plan, dir: &Path) -> Vec<Vec<PathBuf>> {
    let fetch = local_fetch();
    let input = fetch.open(&plan.source).await.expect("open the source");
    let mut files = Vec::new();
    for segment in &plan.segments {
        let batch = video_batch(plan, segment, dir);
        let verified = batch
            .run(plan, &input, control())
            .await
            .unwrap_or_else(|e| panic!("segment {}: {e}", segment.index));
        let Batch::Video { outputs, .. } = &batch else {
            unreachable!()
        };
        let mut paths = Vec::new();
        for (output, (name, codec)) in outputs.iter().zip(&verified.codecs) {
            assert_eq!(name, &output.rendition.name);
            let expected = reference(&output.tmp_path);
            assert_eq!(codec, &expected.codec, "{}", output.tmp_path.display());
            assert_eq!(expected.frames, segment.frames);
            let info = assert_reads_like_ffprobe(&output.tmp_path);
            assert_eq!(
                (info.width, info.height),
                (output.rendition.width, output.rendition.height)
            );
            paths.push(output.tmp_path.clone());
        }
        files.push(paths);
    }
    files
}

#[tokio::test]
async fn pipeline_segments_pass_verification_and_read_like_ffprobe() {
    let dir = TestDir::new("ts-verify-sources");
    let mp4 = dir.join("ntsc.mp4");
    gen_clip(&mp4, &ClipSpec::new(4.2).size(640, 360).fps("30000/1001"));
    let vfr = dir.join("vfr.mp4");
    gen_clip(&vfr, &ClipSpec::new(4.2).vfr());
    // An MPEG-TS source: ffmpeg's mux delay puts its frames off the 1/30 s
    // grid of the encoder, so segments start up to half a frame from the
    // source's own times (the PTS rule's second case).
    let ts = dir.join("source.ts");
    encode(&ts, "480x270", "30", 126, true, &["-preset", "ultrafast"]);
    for (source, ladder) in [(&mp4, "240p,360p"), (&vfr, "240p"), (&ts, "240p")] {
        let plan = plan_for(source, ladder).await;
        assert!(plan.segments.len() >= 2, "{}", source.display());
        let out = dir.join(source.file_stem().unwrap());
        std::fs::create_dir_all(&out).unwrap();
        encode_all(&plan, &out).await;
    }
    let plan = plan_for(&ts, "240p").await;
    let first = plan.segments[0].start - plan.start_time;
    assert!(
        ((first * 30.0) - (first * 30.0).round()).abs() > 0.1,
        "the MPEG-TS source should start off the frame grid ({first} s)"
    );
}

/// Verification of one file as rendition `rendition` of `segment`.
async fn verify(plan: &Plan, segment: &Segment, rendition: &Rendition, file: &Path) -> String {
    let batch = Batch::Video {
        segment: segment.clone(),
        outputs: vec![VideoOutput {
            rendition: rendition.clone(),
            tmp_path: file.to_path_buf(),
        }],
    };
    match batch.verify(plan).await {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn damaged_or_wrong_outputs_fail_verification() {
    let dir = TestDir::new("ts-verify-bad");
    let source = dir.join("clip.mp4");
    gen_clip(&source, &ClipSpec::new(4.0));
    let plan = plan_for(&source, "240p").await;
    let files = encode_all(&plan, dir.path()).await;
    let rendition = &plan.renditions[0];
    let (segment, good) = (&plan.segments[1], &files[1][0]);
    assert_eq!(verify(&plan, segment, rendition, good).await, "");

    let bytes = std::fs::read(good).unwrap();
    // Cut in the middle, inside a TS packet.
    let mut middle = bytes.len() / 2;
    if middle % 188 == 0 {
        middle += 100;
    }
    let cut = dir.join("cut-in-packet.ts");
    std::fs::write(&cut, &bytes[..middle]).unwrap();
    let err = verify(&plan, segment, rendition, &cut).await;
    assert!(
        err.contains("no whole number of 188-byte TS packets"),
        "{err}"
    );
    // Cut in the middle, on a packet boundary: frames are missing.
    let cut = dir.join("cut-on-packet.ts");
    std::fs::write(&cut, &bytes[..bytes.len() / 2 / 188 * 188]).unwrap();
    let err = verify(&plan, segment, rendition, &cut).await;
    assert!(
        err.contains(&format!("expected {}", segment.frames)),
        "{err}"
    );
    assert!(err.contains("frames"), "{err}");

    // Empty, and no video at all.
    let empty = dir.join("empty.ts");
    std::fs::write(&empty, b"").unwrap();
    let err = verify(&plan, segment, rendition, &empty).await;
    assert!(err.contains("empty file"), "{err}");
    let audio_only = dir.join("audio.ts");
    run_checked(
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
            .args(["sine=frequency=440:sample_rate=48000:duration=2"])
            .args(["-c:a", "aac", "-f", "mpegts"])
            .arg(&audio_only),
    );
    let err = verify(&plan, segment, rendition, &audio_only).await;
    assert!(err.contains("no H.264 video stream"), "{err}");

    // The right file checked as the wrong segment: segment 0 has as many
    // frames but starts 2 s earlier.
    assert_eq!(plan.segments[0].frames, segment.frames);
    let err = verify(&plan, &plan.segments[0], rendition, good).await;
    assert!(err.contains("first frame at PTS"), "{err}");
    // One frame late.
    let mut late = segment.clone();
    late.start += 1.0 / 30.0;
    let err = verify(&plan, &late, rendition, good).await;
    assert!(err.contains("first frame at PTS"), "{err}");
    // The wrong size.
    let mut wide = rendition.clone();
    wide.width += 2;
    let err = verify(&plan, segment, &wide, good).await;
    assert!(err.contains("size 320x240, expected 322x240"), "{err}");
}

#[test]
fn the_master_playlist_lists_the_codec_of_each_renditions_segments() {
    let dir = TestDir::new("ts-master-codecs");
    let source = dir.join("clip.mp4");
    gen_clip(&source, &ClipSpec::new(4.0).size(1280, 720));
    let out = dir.join("out");
    assert_transcode_ok(&run_transcode(
        &source,
        &out,
        &["--ladder", "240p,720p", "--segment-duration", "2"],
    ));
    let master = std::fs::read_to_string(out.join("master.m3u8")).unwrap();
    let mut seen = Vec::new();
    for rendition in ["240p", "720p"] {
        let codec = sps_codec(&out.join(rendition).join("seg_00001.ts"));
        let line = master
            .lines()
            .find(|l| l.contains(&format!("RESOLUTION={}", resolution(rendition))))
            .unwrap_or_else(|| panic!("{rendition} not in\n{master}"));
        assert!(
            line.contains(&format!("CODECS=\"{codec},mp4a.40.2\"")),
            "{rendition}: {line}"
        );
        seen.push(codec);
    }
    // Different levels: the master does not list one string for all.
    assert_ne!(seen[0], seen[1]);
}

fn resolution(rendition: &str) -> &'static str {
    match rendition {
        "240p" => "426x240",
        _ => "1280x720",
    }
}
