//! Test media: generate small clips with ffmpeg lavfi sources, probe media
//! with ffprobe.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// What kind of clip [`gen_clip`] makes. Start from [`ClipSpec::new`] and
/// change what the test is about with the builder methods.
#[derive(Clone, Debug)]
pub struct ClipSpec {
    /// Seconds of media.
    pub duration: f64,
    /// Coded width (odd values are allowed; the clip is then 4:4:4).
    pub width: u32,
    /// Coded height (odd values are allowed; the clip is then 4:4:4).
    pub height: u32,
    /// Nominal frame rate as ffmpeg takes it: "30", "30000/1001", "25".
    pub fps: String,
    /// Drop frames irregularly so that frame durations vary.
    pub vfr: bool,
    /// Number of audio tracks (0, 1 or 2); languages eng, fra.
    pub audio_tracks: usize,
    /// Rotation written as container metadata (display matrix), e.g. 90.
    pub rotate: Option<i32>,
    /// Shift every timestamp so that the clip starts at this time.
    pub start_time: Option<f64>,
    /// HEVC 10-bit (yuv420p10le) instead of H.264 8-bit.
    pub hevc_10bit: bool,
    /// Add temporal noise so that encoding takes longer (resume tests).
    pub noisy: bool,
    /// Frames from one keyframe to the next (`-g`): 30, or 250 (x264's own
    /// default, as in a file nobody tuned) for the benches.
    pub keyframe_interval: u32,
}

/// Languages given to the audio tracks, in order.
pub const AUDIO_LANGUAGES: [&str; 2] = ["eng", "fra"];

impl ClipSpec {
    /// A `duration`-second 320x240 30 fps H.264 clip with one audio track.
    pub fn new(duration: f64) -> ClipSpec {
        ClipSpec {
            duration,
            width: 320,
            height: 240,
            fps: "30".into(),
            vfr: false,
            audio_tracks: 1,
            rotate: None,
            start_time: None,
            hevc_10bit: false,
            noisy: false,
            keyframe_interval: 30,
        }
    }
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = height;
        self
    }
    pub fn fps(mut self, fps: &str) -> Self {
        self.fps = fps.into();
        self
    }
    pub fn vfr(mut self) -> Self {
        self.vfr = true;
        self
    }
    pub fn audio_tracks(mut self, n: usize) -> Self {
        assert!(n <= AUDIO_LANGUAGES.len(), "at most 2 audio tracks");
        self.audio_tracks = n;
        self
    }
    pub fn rotate(mut self, degrees: i32) -> Self {
        self.rotate = Some(degrees);
        self
    }
    pub fn start_time(mut self, seconds: f64) -> Self {
        self.start_time = Some(seconds);
        self
    }
    pub fn hevc_10bit(mut self) -> Self {
        self.hevc_10bit = true;
        self
    }
    pub fn noisy(mut self) -> Self {
        self.noisy = true;
        self
    }
    pub fn keyframe_interval(mut self, frames: u32) -> Self {
        self.keyframe_interval = frames;
        self
    }
}

/// Runs a command to completion and panics with its stderr if it fails.
pub fn run_checked(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {:?}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `ffprobe -v error -of json <args>` and parses its output.
pub fn ffprobe_json(args: &[&str], input: &Path) -> Value {
    let out = run_checked(
        Command::new("ffprobe")
            .args(["-v", "error", "-of", "json"])
            .args(args)
            .arg(input),
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ffprobe {args:?} {}: bad JSON: {e}", input.display()))
}

/// A JSON field that ffprobe prints as a decimal string (or "N/A").
pub fn num(v: &Value, key: &str) -> Option<f64> {
    match &v[key] {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// Whether this ffmpeg build has an encoder, e.g. "libx265".
pub fn has_encoder(name: &str) -> bool {
    let out = run_checked(Command::new("ffmpeg").args(["-hide_banner", "-encoders"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(name))
}

/// Generates `path` (its extension picks the container, use `.mp4`) as
/// described by `spec`, then checks with ffprobe that the clip really has the
/// property the spec asks for (varying frame durations, a display matrix, a
/// start time, the audio tracks, the codec), so a test never passes because
/// its source was not what it claimed.
pub fn gen_clip(path: &Path, spec: &ClipSpec) {
    let odd = spec.width % 2 == 1 || spec.height % 2 == 1;
    // testsrc2 rounds its size to even numbers: render one pixel larger and
    // scale down to the odd size.
    let (src_w, src_h) = (spec.width + spec.width % 2, spec.height + spec.height % 2);
    let encoded = if spec.rotate.is_some() {
        path.with_extension("norotate.mp4")
    } else {
        path.to_path_buf()
    };

    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"]);
    cmd.arg(format!(
        "testsrc2=size={src_w}x{src_h}:rate={}:duration={}",
        spec.fps, spec.duration
    ));
    for track in 0..spec.audio_tracks {
        cmd.args(["-f", "lavfi", "-i"]).arg(format!(
            "sine=frequency={}:sample_rate=48000:duration={}",
            440 * (track + 1),
            spec.duration
        ));
    }
    cmd.args(["-map", "0:v"]);
    for track in 0..spec.audio_tracks {
        cmd.args(["-map", &format!("{}:a", track + 1)]);
    }

    let mut filters = Vec::new();
    if odd {
        filters.push(format!("scale={}:{},setsar=1", spec.width, spec.height));
    }
    if spec.noisy {
        filters.push("noise=alls=30:allf=t".to_string());
    }
    if spec.vfr {
        // Drop frames 2 mod 5 and 4 mod 7: durations of 1, 2 and 3 frames.
        filters.push("select='not(eq(mod(n\\,5)\\,2))*not(eq(mod(n\\,7)\\,4))'".to_string());
    }
    if !filters.is_empty() {
        cmd.arg("-vf").arg(filters.join(","));
    }
    if spec.vfr {
        cmd.args(["-fps_mode", "vfr"]);
    }

    if spec.hevc_10bit {
        let codec = if has_encoder("libx265") {
            vec![
                "-c:v",
                "libx265",
                "-x265-params",
                "log-level=error",
                "-tag:v",
                "hvc1",
            ]
        } else {
            vec!["-c:v", "libx264"]
        };
        cmd.args(codec)
            .args(["-preset", "ultrafast", "-pix_fmt", "yuv420p10le"]);
    } else {
        let pix_fmt = if odd { "yuv444p" } else { "yuv420p" };
        cmd.args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            pix_fmt,
        ]);
    }
    cmd.arg("-g").arg(spec.keyframe_interval.to_string());
    if spec.audio_tracks > 0 {
        cmd.args(["-c:a", "aac", "-b:a", "96k"]);
        for (track, language) in AUDIO_LANGUAGES.iter().take(spec.audio_tracks).enumerate() {
            cmd.arg(format!("-metadata:s:a:{track}"))
                .arg(format!("language={language}"));
        }
    }
    if let Some(start) = spec.start_time {
        cmd.arg("-output_ts_offset").arg(start.to_string());
    }
    cmd.arg(&encoded);
    run_checked(&mut cmd);

    if let Some(degrees) = spec.rotate {
        // ffmpeg 5.1 turns the `rotate` tag into a display matrix on remux.
        run_checked(
            Command::new("ffmpeg")
                .args(["-nostdin", "-v", "error", "-y", "-i"])
                .arg(&encoded)
                .args(["-map", "0", "-c", "copy"])
                .arg("-metadata:s:v:0")
                .arg(format!("rotate={degrees}"))
                .arg(path),
        );
        let _ = std::fs::remove_file(&encoded);
    }

    check_clip(path, spec);
}

/// Asserts that a generated clip has the properties its spec asks for.
fn check_clip(path: &Path, spec: &ClipSpec) {
    let src = probe_source(path);
    let expect_codec = if spec.hevc_10bit && has_encoder("libx265") {
        "hevc"
    } else {
        "h264"
    };
    assert_eq!(src.codec, expect_codec, "generated clip {}", path.display());
    if spec.hevc_10bit {
        assert_eq!(
            src.pix_fmt, "yuv420p10le",
            "generated clip should be 10-bit"
        );
    }
    assert_eq!(
        (src.coded_width, src.coded_height),
        (spec.width, spec.height),
        "generated clip size"
    );
    assert_eq!(
        src.audio.len(),
        spec.audio_tracks,
        "generated clip audio tracks"
    );
    let durations: Vec<f64> = src.frames.iter().map(|f| f.duration).collect();
    let min = durations.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = durations.iter().cloned().fold(0.0, f64::max);
    if spec.vfr {
        assert!(
            max > min * 1.5,
            "VFR clip should have varying frame durations, got {min}..{max}"
        );
    } else {
        assert!(
            max - min < 0.002,
            "CFR clip has varying frame durations {min}..{max}"
        );
    }
    if let Some(degrees) = spec.rotate {
        assert_eq!(
            src.rotation.rem_euclid(180),
            degrees.rem_euclid(180),
            "generated clip should carry a display matrix rotating by {degrees}"
        );
        assert_ne!(src.rotation, 0, "generated clip has no display matrix");
    }
    if let Some(start) = spec.start_time {
        assert!(
            (src.video_start - start).abs() < 0.05,
            "generated clip should start at {start}, starts at {}",
            src.video_start
        );
    }
    assert!(
        (src.video_duration - spec.duration).abs() < 0.2,
        "generated clip lasts {} s, asked for {}",
        src.video_duration,
        spec.duration
    );
}

/// One presented video frame of a source, from decoded frame timestamps.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub pts: f64,
    pub duration: f64,
}

/// One audio stream of a source.
#[derive(Clone, Debug)]
pub struct SourceAudio {
    pub start: f64,
    pub span: f64,
    pub language: Option<String>,
}

/// What the validator needs to know about a source file.
#[derive(Clone, Debug)]
pub struct SourceMedia {
    pub path: PathBuf,
    pub codec: String,
    pub pix_fmt: String,
    pub coded_width: u32,
    pub coded_height: u32,
    /// Rotation of the display matrix in degrees (0 when none).
    pub rotation: i32,
    /// Frames in presentation order as a player would show them.
    pub frames: Vec<Frame>,
    /// First frame's presentation time.
    pub video_start: f64,
    /// Last pts + last frame duration − first pts.
    pub video_duration: f64,
    pub audio: Vec<SourceAudio>,
}

impl SourceMedia {
    /// Width and height as displayed (after rotation).
    pub fn display_size(&self) -> (u32, u32) {
        if self.rotation.rem_euclid(180) == 90 {
            (self.coded_height, self.coded_width)
        } else {
            (self.coded_width, self.coded_height)
        }
    }
    pub fn short_side(&self) -> u32 {
        self.coded_width.min(self.coded_height)
    }
    /// The longest frame duration: the tolerance for "within one frame".
    pub fn max_frame_duration(&self) -> f64 {
        self.frames.iter().map(|f| f.duration).fold(0.0, f64::max)
    }
}

/// Where [`SourceMedia::frames`] come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeline {
    /// The frames the source decodes to (a healthy source: every packet).
    Decoded,
    /// The source's video packets, decodable or not: what segswarm plans
    /// on, and what a damaged source's package must still have.
    Packets,
}

/// Probes a source: stream properties, rotation, decoded frame timestamps and
/// audio spans.
pub fn probe_source(path: &Path) -> SourceMedia {
    probe_source_as(path, Timeline::Decoded)
}

/// [`probe_source`] with the frames taken from `timeline`.
pub fn probe_source_as(path: &Path, timeline: Timeline) -> SourceMedia {
    let streams = ffprobe_json(
        &[
            "-show_entries",
            "stream=index,codec_type,codec_name,pix_fmt,width,height,start_time:stream_tags=rotate,language:stream_side_data=rotation",
        ],
        path,
    );
    let streams = streams["streams"].as_array().cloned().unwrap_or_default();
    let video = streams
        .iter()
        .find(|s| s["codec_type"] == "video")
        .unwrap_or_else(|| panic!("{} has no video stream", path.display()));
    let rotation = video["side_data_list"]
        .as_array()
        .and_then(|l| l.iter().find_map(|sd| sd["rotation"].as_i64()))
        .or_else(|| {
            video["tags"]["rotate"]
                .as_str()
                .and_then(|r| r.parse::<i64>().ok())
        })
        .unwrap_or(0) as i32;

    let (entries, list, pts_key, duration_key) = match timeline {
        Timeline::Decoded => (
            "frame=best_effort_timestamp_time,pkt_duration_time",
            "frames",
            "best_effort_timestamp_time",
            "pkt_duration_time",
        ),
        Timeline::Packets => (
            "packet=pts_time,duration_time",
            "packets",
            "pts_time",
            "duration_time",
        ),
    };
    let frames_json = ffprobe_json(&["-select_streams", "v:0", "-show_entries", entries], path);
    let mut frames: Vec<Frame> = frames_json[list]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|f| {
            Some(Frame {
                pts: num(f, pts_key)?,
                duration: num(f, duration_key).unwrap_or(0.0),
            })
        })
        .collect();
    frames.sort_by(|a, b| a.pts.total_cmp(&b.pts));
    assert!(!frames.is_empty(), "{} has no video frames", path.display());
    // Fill unknown durations from the next frame's pts.
    for i in 0..frames.len() {
        if frames[i].duration <= 0.0 {
            frames[i].duration = match frames.get(i + 1) {
                Some(next) => next.pts - frames[i].pts,
                None if i > 0 => frames[i].pts - frames[i - 1].pts,
                None => 0.0,
            };
        }
    }
    let first = frames[0];
    let last = frames[frames.len() - 1];

    let mut audio = Vec::new();
    let audio_streams: Vec<&Value> = streams
        .iter()
        .filter(|s| s["codec_type"] == "audio")
        .collect();
    for (n, stream) in audio_streams.iter().enumerate() {
        let packets = ffprobe_json(
            &[
                "-select_streams",
                &format!("a:{n}"),
                "-show_entries",
                "packet=pts_time,duration_time",
            ],
            path,
        );
        let (start, end) = packet_span(&packets);
        audio.push(SourceAudio {
            start,
            span: end - start,
            language: stream["tags"]["language"].as_str().map(str::to_owned),
        });
    }

    SourceMedia {
        path: path.to_path_buf(),
        codec: video["codec_name"].as_str().unwrap_or_default().to_owned(),
        pix_fmt: video["pix_fmt"].as_str().unwrap_or_default().to_owned(),
        coded_width: video["width"].as_u64().unwrap_or(0) as u32,
        coded_height: video["height"].as_u64().unwrap_or(0) as u32,
        rotation,
        video_start: first.pts,
        video_duration: last.pts + last.duration - first.pts,
        frames,
        audio,
    }
}

/// (first pts, max of pts + duration) over ffprobe `packets`.
pub fn packet_span(packets: &Value) -> (f64, f64) {
    let mut start = f64::INFINITY;
    let mut end = f64::NEG_INFINITY;
    for p in packets["packets"].as_array().into_iter().flatten() {
        if let Some(pts) = num(p, "pts_time") {
            start = start.min(pts);
            end = end.max(pts + num(p, "duration_time").unwrap_or(0.0));
        }
    }
    assert!(start.is_finite(), "no packets with timestamps");
    (start, end)
}
