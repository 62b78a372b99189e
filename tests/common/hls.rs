//! The HLS validator: checks a finished output folder against its source.
//!
//! [`validate_hls`] panics with a message that names the file and the
//! property that failed; on success it returns figures that tests can assert
//! on further ([`HlsReport`]).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use m3u8_rs::{AlternativeMediaType, MasterPlaylist, MediaPlaylist, MediaPlaylistType, Playlist};
use serde_json::Value;

use super::media::{ffprobe_json, num, probe_source, probe_source_as, SourceMedia, Timeline};
use super::process::seg_files;

/// Boundary tolerance between consecutive segments (seconds).
pub const BOUNDARY_TOLERANCE: f64 = 0.001;
/// How far the audio span and start may differ from the video's (seconds).
pub const AV_TOLERANCE: f64 = 0.100;

/// What [`validate_hls`] found in a valid output folder.
#[derive(Clone, Debug)]
pub struct HlsReport {
    pub master: MasterPlaylist,
    /// Video renditions in master playlist order.
    pub renditions: Vec<RenditionReport>,
    /// Audio renditions in master playlist order.
    pub audio_tracks: Vec<AudioTrackReport>,
    /// Span of the lowest rendition's media (first frame to end of last frame).
    pub video_span: f64,
    pub source: SourceMedia,
}

impl HlsReport {
    pub fn rendition_names(&self) -> Vec<String> {
        self.renditions.iter().map(|r| r.name.clone()).collect()
    }
    pub fn rendition(&self, name: &str) -> &RenditionReport {
        self.renditions
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no rendition {name} in {:?}", self.rendition_names()))
    }
}

/// One video rendition.
#[derive(Clone, Debug)]
pub struct RenditionReport {
    /// Folder name, e.g. "240p".
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub segments: usize,
    pub frames: usize,
    /// Sum of EXTINF durations.
    pub extinf_total: f64,
    /// First frame's pts (absolute, includes the output's timestamp base).
    pub start: f64,
    /// First frame to end of last frame, from the segments' timestamps.
    pub span: f64,
    pub bandwidth: u64,
    pub average_bandwidth: u64,
}

/// One audio rendition.
#[derive(Clone, Debug)]
pub struct AudioTrackReport {
    /// The `<n>` of `audio/<n>/`.
    pub index: usize,
    pub name: String,
    pub language: Option<String>,
    pub segments: usize,
    pub extinf_total: f64,
    pub start: f64,
    pub span: f64,
}

/// Validates the HLS package in `out_dir` produced from `source`.
///
/// Checks: job.json is JSON; thumbnail.webp is a WebP image; master and media
/// playlists parse, are VOD with ENDLIST and list exactly the segment files on
/// disk; every video segment is H.264 yuv420p with even size, starts with a
/// keyframe packet and an I frame; consecutive segments meet within 1 ms; the
/// frames of each rendition have the source's timestamps (relative, within
/// 1 ms each); EXTINF sum and media span equal the source's video duration
/// within one frame; audio renditions are AAC, continuous, and line up with
/// the video within 100 ms; the whole package decodes with ffmpeg without a
/// single error.
pub fn validate_hls(out_dir: &Path, source: &Path) -> HlsReport {
    check_no_warnings(out_dir);
    validate_hls_against(out_dir, probe_source(source))
}

/// A healthy source's package fills nothing: a pod's record of the job
/// (`status.json`, when there is one) has no warnings. This keeps every
/// test of a healthy source a test that nothing was made up, now that a
/// segment short of frames is filled rather than failed.
fn check_no_warnings(out_dir: &Path) {
    let path = out_dir.join("status.json");
    let Ok(text) = fs::read_to_string(&path) else {
        return;
    };
    let record: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let warnings = record["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warnings.is_empty(),
        "{}: a healthy source's job has warnings: {warnings:?}",
        path.display()
    );
}

/// [`validate_hls`] for a damaged source: the package must have the
/// frames segswarm planned (every video packet of the source, whether it
/// decodes or not), at the packets' times, with the same checks otherwise
/// (no gaps, IDR first, duration to the frame, audio continuous, decodes
/// without an error).
pub fn validate_hls_as_planned(out_dir: &Path, source: &Path) -> HlsReport {
    validate_hls_against(out_dir, probe_source_as(source, Timeline::Packets))
}

/// The checks of [`validate_hls`] against a probed source.
pub fn validate_hls_against(out_dir: &Path, source: SourceMedia) -> HlsReport {
    check_job_json(out_dir);
    check_thumbnail(out_dir);

    let master_path = out_dir.join("master.m3u8");
    let master = match parse_playlist(&master_path) {
        Playlist::MasterPlaylist(m) => m,
        Playlist::MediaPlaylist(_) => {
            panic!("{} is a media playlist", master_path.display())
        }
    };
    assert!(
        !master.variants.is_empty(),
        "{}: no EXT-X-STREAM-INF",
        master_path.display()
    );

    let audio_tracks = check_audio_tracks(out_dir, &master, &source);
    let has_audio = !audio_tracks.is_empty();

    let mut renditions = Vec::new();
    for variant in master.variants.iter().filter(|v| !v.is_i_frame) {
        let playlist_path = out_dir.join(&variant.uri);
        let name = variant
            .uri
            .strip_suffix("/index.m3u8")
            .unwrap_or_else(|| panic!("variant URI {} is not <rendition>/index.m3u8", variant.uri))
            .to_owned();
        let rendition = check_video_rendition(&name, &playlist_path, &source);

        let ctx = format!("master.m3u8 variant {name}");
        let resolution = variant
            .resolution
            .unwrap_or_else(|| panic!("{ctx}: no RESOLUTION"));
        assert_eq!(
            (resolution.width, resolution.height),
            (rendition.width as u64, rendition.height as u64),
            "{ctx}: RESOLUTION differs from the segments' size"
        );
        let codecs = variant
            .codecs
            .clone()
            .unwrap_or_else(|| panic!("{ctx}: no CODECS"));
        assert!(
            codecs.contains("avc1."),
            "{ctx}: CODECS={codecs} lacks avc1"
        );
        if has_audio {
            assert!(
                codecs.contains("mp4a."),
                "{ctx}: CODECS={codecs} lacks mp4a"
            );
            assert_eq!(
                variant.audio.as_deref(),
                Some("aud"),
                "{ctx}: AUDIO group should be \"aud\""
            );
        } else {
            assert_eq!(variant.audio, None, "{ctx}: AUDIO without audio tracks");
        }
        let average = variant
            .average_bandwidth
            .unwrap_or_else(|| panic!("{ctx}: no AVERAGE-BANDWIDTH"));
        assert!(
            average > 0 && variant.bandwidth >= average,
            "{ctx}: BANDWIDTH={} must be >= AVERAGE-BANDWIDTH={average} > 0",
            variant.bandwidth
        );
        // BANDWIDTH is the peak segment bit rate of the variant including its
        // audio, so it can't be below the video's own peak (5 % slack).
        let (video_peak, video_average) = measured_bitrates(&playlist_path);
        assert!(
            variant.bandwidth as f64 >= video_peak * 0.95,
            "{ctx}: BANDWIDTH={} is below the measured video peak {video_peak:.0} bit/s",
            variant.bandwidth
        );
        assert!(
            average as f64 >= video_average * 0.9,
            "{ctx}: AVERAGE-BANDWIDTH={average} is below the measured video average {video_average:.0} bit/s"
        );
        renditions.push(RenditionReport {
            bandwidth: variant.bandwidth,
            average_bandwidth: average,
            ..rendition
        });
    }
    let names: BTreeSet<&str> = renditions.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names.len(),
        renditions.len(),
        "master.m3u8 lists a rendition twice"
    );

    let lowest = renditions
        .iter()
        .min_by_key(|r| r.width.min(r.height))
        .expect("at least one rendition");
    let video_span = lowest.span;

    for track in &audio_tracks {
        let ctx = format!("audio/{}", track.index);
        assert!(
            (track.span - video_span).abs() <= AV_TOLERANCE,
            "{ctx}: audio span {:.3} s vs video span {video_span:.3} s differ by more than {AV_TOLERANCE} s",
            track.span
        );
    }
    check_av_alignment(lowest.start, &source, &audio_tracks);

    check_decodes(out_dir);

    HlsReport {
        master,
        renditions,
        audio_tracks,
        video_span,
        source,
    }
}

fn check_job_json(out_dir: &Path) {
    let path = out_dir.join("job.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let job: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}\n{text}", path.display()));
    assert!(job.is_object(), "{} is not a JSON object", path.display());
}

fn check_thumbnail(out_dir: &Path) {
    let path = out_dir.join("thumbnail.webp");
    assert!(path.is_file(), "{} is missing", path.display());
    let probe = ffprobe_json(&["-show_entries", "stream=codec_name,width,height"], &path);
    let stream = &probe["streams"][0];
    assert_eq!(
        stream["codec_name"],
        "webp",
        "{} is not a WebP image",
        path.display()
    );
    assert!(
        stream["width"].as_u64().unwrap_or(0) > 0,
        "{} has no size",
        path.display()
    );
}

/// Parses a playlist file with m3u8-rs, panicking with the file's text on error.
pub fn parse_playlist(path: &Path) -> Playlist {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    m3u8_rs::parse_playlist_res(&bytes).unwrap_or_else(|e| {
        panic!(
            "{} does not parse: {e:?}\n{}",
            path.display(),
            String::from_utf8_lossy(&bytes)
        )
    })
}

/// Parses and checks a media playlist: VOD, ENDLIST, EXTINF within the target
/// duration, segment URIs `seg_00000.ts`... matching exactly the files on disk.
/// Returns the playlist and the segment paths.
fn check_media_playlist(path: &Path) -> (MediaPlaylist, Vec<PathBuf>) {
    let playlist = match parse_playlist(path) {
        Playlist::MediaPlaylist(p) => p,
        Playlist::MasterPlaylist(_) => panic!("{} is a master playlist", path.display()),
    };
    let ctx = path.display().to_string();
    assert!(playlist.end_list, "{ctx}: no EXT-X-ENDLIST");
    assert_eq!(
        playlist.playlist_type,
        Some(MediaPlaylistType::Vod),
        "{ctx}: EXT-X-PLAYLIST-TYPE should be VOD"
    );
    assert!(!playlist.segments.is_empty(), "{ctx}: no segments");
    let dir = path.parent().expect("playlist has a parent dir");
    let mut listed = Vec::new();
    for (k, seg) in playlist.segments.iter().enumerate() {
        assert_eq!(seg.uri, format!("seg_{k:05}.ts"), "{ctx}: segment {k} URI");
        assert!(
            seg.duration > 0.0,
            "{ctx}: segment {k} EXTINF {}",
            seg.duration
        );
        assert!(
            (seg.duration as f64).round() as u64 <= playlist.target_duration,
            "{ctx}: segment {k} EXTINF {} exceeds EXT-X-TARGETDURATION {}",
            seg.duration,
            playlist.target_duration
        );
        let file = dir.join(&seg.uri);
        assert!(
            file.is_file(),
            "{ctx}: segment {} is missing",
            file.display()
        );
        listed.push(file);
    }
    let on_disk = seg_files(dir);
    assert_eq!(
        on_disk, listed,
        "{ctx}: segment files on disk differ from the playlist"
    );
    (playlist, listed)
}

/// A video packet of an output segment.
#[derive(Clone, Copy, Debug)]
struct OutFrame {
    segment: usize,
    pts: f64,
    duration: f64,
}

fn check_video_rendition(
    name: &str,
    playlist_path: &Path,
    source: &SourceMedia,
) -> RenditionReport {
    let (playlist, segments) = check_media_playlist(playlist_path);
    let ctx = format!("rendition {name}");

    let mut size: Option<(u32, u32)> = None;
    let mut frames: Vec<OutFrame> = Vec::new();
    let mut per_segment = Vec::new();
    for (k, seg) in segments.iter().enumerate() {
        let sctx = format!("{ctx}: {}", seg.display());
        let probe = ffprobe_json(
            &[
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=codec_name,pix_fmt,width,height:packet=pts_time,dts_time,duration_time,flags",
            ],
            seg,
        );
        let packets = probe["packets"].as_array().cloned().unwrap_or_default();
        assert!(!packets.is_empty(), "{sctx}: no video packets");
        let first_flags = packets[0]["flags"].as_str().unwrap_or_default();
        assert!(
            first_flags.contains('K'),
            "{sctx}: first packet is not a keyframe (flags {first_flags})"
        );
        let stream = &probe["streams"][0];
        assert_eq!(stream["codec_name"], "h264", "{sctx}: codec");
        assert_eq!(stream["pix_fmt"], "yuv420p", "{sctx}: pix_fmt");
        let w = stream["width"].as_u64().unwrap_or(0) as u32;
        let h = stream["height"].as_u64().unwrap_or(0) as u32;
        assert!(
            w > 0 && h > 0 && w % 2 == 0 && h % 2 == 0,
            "{sctx}: size {w}x{h} must be even"
        );
        match size {
            None => size = Some((w, h)),
            Some(s) => assert_eq!(s, (w, h), "{sctx}: size changes between segments"),
        }

        let first_frame = ffprobe_json(
            &[
                "-select_streams",
                "v:0",
                "-read_intervals",
                "%+#1",
                "-show_entries",
                "frame=pict_type,key_frame",
            ],
            seg,
        );
        let f = &first_frame["frames"][0];
        assert!(
            f["pict_type"] == "I" && f["key_frame"] == 1,
            "{sctx}: first frame is not an I/key frame: {f}"
        );

        let mut seg_frames: Vec<OutFrame> = packets
            .iter()
            .map(|p| OutFrame {
                segment: k,
                pts: num(p, "pts_time")
                    .unwrap_or_else(|| panic!("{sctx}: packet without pts: {p}")),
                duration: num(p, "duration_time").unwrap_or(0.0),
            })
            .collect();
        seg_frames.sort_by(|a, b| a.pts.total_cmp(&b.pts));
        for pair in seg_frames.windows(2) {
            assert!(
                pair[1].pts - pair[0].pts > 0.0005,
                "{sctx}: two frames share pts {}",
                pair[0].pts
            );
        }
        // The fixed timestamp base keeps every DTS positive (a negative DTS
        // in segment 0 is what leaving the base out looks like).
        if let Some(p) = packets
            .iter()
            .find(|p| num(p, "dts_time").is_some_and(|d| d < 0.0))
        {
            panic!("{sctx}: negative DTS: {p}");
        }
        per_segment.push(seg_frames.len());
        frames.extend(seg_frames);
    }
    let (width, height) = size.expect("at least one segment");

    check_rendition_size(name, width, height, source);
    let span = check_timeline(&ctx, &frames, &per_segment, source);

    let extinf_total: f64 = playlist.segments.iter().map(|s| s.duration as f64).sum();
    let one_frame = source.max_frame_duration() + 0.001;
    assert!(
        (extinf_total - source.video_duration).abs() <= one_frame,
        "{ctx}: EXTINF total {extinf_total:.4} s vs source video {:.4} s (more than one frame apart)",
        source.video_duration
    );

    RenditionReport {
        name: name.to_owned(),
        width,
        height,
        segments: segments.len(),
        frames: frames.len(),
        extinf_total,
        start: frames[0].pts,
        span,
        bandwidth: 0,
        average_bandwidth: 0,
    }
}

/// Size rules: even (checked per segment), short side ≤ the source's, short
/// side = the rung's height (±1 for odd sources), orientation and aspect of
/// the displayed source (rotation applied).
fn check_rendition_size(name: &str, width: u32, height: u32, source: &SourceMedia) {
    let ctx = format!("rendition {name} ({width}x{height})");
    let short = width.min(height);
    let long = width.max(height);
    assert!(
        short <= source.short_side(),
        "{ctx}: short side above the source's {}",
        source.short_side()
    );
    if let Some(rung) = name.strip_suffix('p').and_then(|n| n.parse::<u32>().ok()) {
        assert!(
            short.abs_diff(rung) <= 1,
            "{ctx}: short side should be {rung}"
        );
    } else {
        panic!("{ctx}: rendition name is not <height>p");
    }
    let (dw, dh) = source.display_size();
    assert_eq!(
        width >= height,
        dw >= dh,
        "{ctx}: orientation differs from the displayed source {dw}x{dh} (rotation {})",
        source.rotation
    );
    let expected_long = short as f64 * dw.max(dh) as f64 / dw.min(dh) as f64;
    assert!(
        (long as f64 - expected_long).abs() <= 2.5,
        "{ctx}: aspect ratio differs from the displayed source {dw}x{dh} (expected long side ≈ {expected_long:.1})"
    );
}

/// Checks that the rendition's frames are the source's frames: boundaries meet
/// within 1 ms, same count, same relative timestamps. Returns the span.
fn check_timeline(
    ctx: &str,
    frames: &[OutFrame],
    per_segment: &[usize],
    source: &SourceMedia,
) -> f64 {
    let out0 = frames[0].pts;
    let src0 = source.frames[0].pts;
    // Duration of an output frame: the source frame at the same relative time
    // (MPEG-TS does not store durations, ffprobe guesses from the frame rate,
    // which is wrong for VFR), else what ffprobe reports.
    let duration_of = |f: &OutFrame| -> f64 {
        let rel = f.pts - out0;
        let i = source
            .frames
            .partition_point(|s| s.pts - src0 < rel - BOUNDARY_TOLERANCE);
        match source.frames.get(i) {
            Some(s) if (s.pts - src0 - rel).abs() <= BOUNDARY_TOLERANCE => s.duration,
            _ => f.duration,
        }
    };

    let mut boundary_errors = Vec::new();
    for pair in frames.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.segment == b.segment {
            continue;
        }
        let gap = b.pts - (a.pts + duration_of(&a));
        if gap.abs() > BOUNDARY_TOLERANCE {
            let what = if gap > 0.0 { "gap" } else { "overlap" };
            boundary_errors.push(format!(
                "  seg {} ends at {:.6} (last pts {:.6}), seg {} starts at {:.6}: {what} of {:.3} ms",
                a.segment,
                a.pts + duration_of(&a),
                a.pts,
                b.segment,
                b.pts,
                gap.abs() * 1000.0
            ));
        }
    }
    assert!(
        boundary_errors.is_empty(),
        "{ctx}: segment boundaries do not meet within {} ms:\n{}",
        BOUNDARY_TOLERANCE * 1000.0,
        boundary_errors.join("\n")
    );

    assert_eq!(
        frames.len(),
        source.frames.len(),
        "{ctx}: {} frames (per segment {per_segment:?}) but the source has {}",
        frames.len(),
        source.frames.len()
    );
    for (i, (out, src)) in frames.iter().zip(&source.frames).enumerate() {
        let (o, s) = (out.pts - out0, src.pts - src0);
        assert!(
            (o - s).abs() <= BOUNDARY_TOLERANCE,
            "{ctx}: frame {i} (segment {}) is at +{o:.6} s, the source's at +{s:.6} s",
            out.segment
        );
    }

    let last = frames[frames.len() - 1];
    let span = last.pts + duration_of(&last) - out0;
    let one_frame = source.max_frame_duration() + 0.001;
    assert!(
        (span - source.video_duration).abs() <= one_frame,
        "{ctx}: media span {span:.4} s vs source video {:.4} s (more than one frame apart)",
        source.video_duration
    );
    span
}

/// (peak, average) bit rate of a media playlist's segments, from file sizes
/// and EXTINF.
fn measured_bitrates(playlist_path: &Path) -> (f64, f64) {
    let Playlist::MediaPlaylist(playlist) = parse_playlist(playlist_path) else {
        unreachable!("checked before")
    };
    let dir = playlist_path.parent().expect("parent");
    let mut peak = 0.0f64;
    let mut bytes = 0u64;
    let mut seconds = 0.0f64;
    for seg in &playlist.segments {
        let size = fs::metadata(dir.join(&seg.uri))
            .map(|m| m.len())
            .unwrap_or(0);
        bytes += size;
        seconds += seg.duration as f64;
        peak = peak.max(size as f64 * 8.0 / seg.duration as f64);
    }
    (peak, bytes as f64 * 8.0 / seconds)
}

fn check_audio_tracks(
    out_dir: &Path,
    master: &MasterPlaylist,
    source: &SourceMedia,
) -> Vec<AudioTrackReport> {
    let alternatives: Vec<_> = master
        .alternatives
        .iter()
        .filter(|a| a.media_type == AlternativeMediaType::Audio)
        .collect();
    assert_eq!(
        alternatives.len(),
        source.audio.len(),
        "master.m3u8: {} EXT-X-MEDIA TYPE=AUDIO for a source with {} audio track(s)",
        alternatives.len(),
        source.audio.len()
    );
    if source.audio.is_empty() {
        assert!(
            !out_dir.join("audio").exists(),
            "audio/ exists for a source without audio"
        );
        return Vec::new();
    }
    let names: BTreeSet<&str> = alternatives.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names.len(),
        alternatives.len(),
        "EXT-X-MEDIA NAMEs must be unique"
    );

    let mut tracks = Vec::new();
    for alt in alternatives {
        assert_eq!(alt.group_id, "aud", "EXT-X-MEDIA {}: GROUP-ID", alt.name);
        let uri = alt
            .uri
            .clone()
            .unwrap_or_else(|| panic!("EXT-X-MEDIA {}: no URI", alt.name));
        let index: usize = uri
            .strip_prefix("audio/")
            .and_then(|r| r.strip_suffix("/index.m3u8"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("EXT-X-MEDIA URI {uri} is not audio/<n>/index.m3u8"));
        assert!(
            index < source.audio.len(),
            "{uri}: the source has {} audio track(s)",
            source.audio.len()
        );
        if let Some(lang) = &source.audio[index].language {
            assert_eq!(
                alt.language.as_ref(),
                Some(lang),
                "EXT-X-MEDIA {uri}: LANGUAGE should be the source track's"
            );
        }

        let playlist_path = out_dir.join(&uri);
        let (playlist, segments) = check_media_playlist(&playlist_path);
        // The codec of the whole rendition, through ffmpeg's HLS demuxer: a
        // tiny last segment (a few packets) is too short for ffprobe to
        // identify on its own.
        let rendition = ffprobe_json(
            &[
                "-allowed_extensions",
                "ALL",
                "-show_entries",
                "stream=codec_name",
            ],
            &playlist_path,
        );
        assert_eq!(
            rendition["streams"][0]["codec_name"], "aac",
            "{uri}: audio codec"
        );
        // Packets per segment: (pts, duration if known).
        let mut per_segment: Vec<Vec<(f64, Option<f64>)>> = Vec::new();
        for seg in &segments {
            let probe = ffprobe_json(
                &[
                    "-select_streams",
                    "a:0",
                    "-show_entries",
                    "packet=pts_time,duration_time",
                ],
                seg,
            );
            let packets: Vec<(f64, Option<f64>)> = probe["packets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((num(p, "pts_time")?, num(p, "duration_time"))))
                .collect();
            assert!(!packets.is_empty(), "{}: no audio packets", seg.display());
            per_segment.push(packets);
        }
        // AAC frames all last the same; use that where ffprobe has none.
        let frame = per_segment
            .iter()
            .flatten()
            .find_map(|(_, d)| *d)
            .unwrap_or_else(|| panic!("{uri}: no audio packet has a duration"));
        // Inside a segment too: a hole in the audio (a damaged source's
        // packets the decoder refused) must have been filled.
        for (k, packets) in per_segment.iter().enumerate() {
            let mut sorted = packets.clone();
            sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
            for pair in sorted.windows(2) {
                let end = pair[0].0 + pair[0].1.unwrap_or(frame);
                assert!(
                    (pair[1].0 - end).abs() <= BOUNDARY_TOLERANCE,
                    "{uri}: segment {k} has a hole or overlap in its audio: a packet ends at \
                     {end:.6}, the next starts at {:.6}",
                    pair[1].0
                );
            }
        }
        let mut start = f64::INFINITY;
        let mut end = f64::NEG_INFINITY;
        let mut prev_end: Option<f64> = None;
        for (k, packets) in per_segment.iter().enumerate() {
            let s = packets.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
            let e = packets
                .iter()
                .map(|(pts, d)| pts + d.unwrap_or(frame))
                .fold(f64::NEG_INFINITY, f64::max);
            if let Some(pe) = prev_end {
                assert!(
                    (s - pe).abs() <= BOUNDARY_TOLERANCE,
                    "{uri}: segment {k} starts at {s:.6}, segment {} ended at {pe:.6}",
                    k - 1
                );
            }
            prev_end = Some(e);
            start = start.min(s);
            end = end.max(e);
        }
        tracks.push(AudioTrackReport {
            index,
            name: alt.name.clone(),
            language: alt.language.clone(),
            segments: segments.len(),
            extinf_total: playlist.segments.iter().map(|s| s.duration as f64).sum(),
            start,
            span: end - start,
        });
    }
    let indexes: BTreeSet<usize> = tracks.iter().map(|t| t.index).collect();
    assert_eq!(
        indexes.len(),
        tracks.len(),
        "two EXT-X-MEDIA share an audio folder"
    );
    tracks
}

/// The audio must start where it starts in the source relative to the video
/// (same timestamp base), within [`AV_TOLERANCE`].
fn check_av_alignment(video_start: f64, source: &SourceMedia, tracks: &[AudioTrackReport]) {
    for track in tracks {
        let out_offset = track.start - video_start;
        let src_offset = source.audio[track.index].start - source.video_start;
        assert!(
            (out_offset - src_offset).abs() <= AV_TOLERANCE,
            "audio/{}: starts {out_offset:+.3} s from the video, {src_offset:+.3} s in the source",
            track.index
        );
    }
}

/// Decodes every stream of the package with ffmpeg; any error output fails.
fn check_decodes(out_dir: &Path) {
    let out = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-v",
            "error",
            "-allowed_extensions",
            "ALL",
            "-i",
        ])
        .arg(out_dir.join("master.m3u8"))
        .args(["-map", "0", "-f", "null", "-"])
        .output()
        .expect("spawn ffmpeg");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "ffmpeg decode of {}/master.m3u8 reported errors ({:?}):\n{stderr}",
        out_dir.display(),
        out.status
    );
}
