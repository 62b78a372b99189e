//! Parsing ffprobe's two outputs: the streams JSON (which video stream is
//! the picture, its size, pixel aspect and rotation; the audio streams) and
//! the compact packet list (every frame's timestamp and keyframe flag).
//! Text in, [`SourceInfo`] out: nothing here runs a process.

use super::{AudioInfo, ProbeError, SourceInfo, VideoInfo, MAX_DIMENSION};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct ProbeJson {
    #[serde(default)]
    streams: Vec<StreamJson>,
    format: Option<FormatJson>,
}

#[derive(Deserialize)]
struct FormatJson {
    format_name: Option<String>,
    duration: Option<String>,
    start_time: Option<String>,
}

#[derive(Deserialize)]
struct StreamJson {
    index: u32,
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    sample_aspect_ratio: Option<String>,
    pix_fmt: Option<String>,
    channels: Option<u32>,
    sample_rate: Option<String>,
    #[serde(default)]
    disposition: BTreeMap<String, i64>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    side_data_list: Vec<serde_json::Value>,
}

/// Parses `ffprobe -show_format -show_streams -of json` output.
pub(super) fn parse_streams(source_name: &str, json: &[u8]) -> Result<SourceInfo, ProbeError> {
    let parsed: ProbeJson = serde_json::from_slice(json).map_err(|err| ProbeError::Parse {
        source_name: source_name.to_string(),
        reason: err.to_string(),
    })?;
    let format = parsed.format.ok_or_else(|| ProbeError::Unreadable {
        source_name: source_name.to_string(),
        reason: "no container format found".into(),
    })?;
    let video_stream = parsed
        .streams
        .iter()
        .find(|s| {
            s.codec_type.as_deref() == Some("video")
                && s.disposition.get("attached_pic").copied().unwrap_or(0) == 0
                && s.width.unwrap_or(0) > 0
        })
        .ok_or_else(|| ProbeError::NoVideo(source_name.to_string()))?;
    let (width, height) = (
        video_stream.width.unwrap_or(0),
        video_stream.height.unwrap_or(0),
    );
    if width < 2 || height < 2 || width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(ProbeError::BadDimensions {
            source_name: source_name.to_string(),
            width,
            height,
        });
    }
    let video = VideoInfo {
        stream_index: video_stream.index,
        codec: video_stream.codec_name.clone().unwrap_or_default(),
        width,
        height,
        sample_aspect: parse_ratio(video_stream.sample_aspect_ratio.as_deref()),
        rotation: rotation_of(video_stream),
        pix_fmt: video_stream.pix_fmt.clone().unwrap_or_default(),
        frame_times: Vec::new(),
        keyframe_times: Vec::new(),
        last_frame_duration: 0.0,
    };
    // Renditions keep the display aspect ratio, so a lying pixel aspect
    // (65535:1) would ask the scaler for a frame millions of pixels wide.
    let (display_width, display_height) = video.display_size();
    if display_width > f64::from(MAX_DIMENSION) || display_height > f64::from(MAX_DIMENSION) {
        return Err(ProbeError::BadDisplaySize {
            source_name: source_name.to_string(),
            width,
            height,
            sample_aspect: video.sample_aspect,
        });
    }
    let audio = parsed
        .streams
        .iter()
        .filter(|s| s.codec_type.as_deref() == Some("audio") && s.channels.unwrap_or(0) > 0)
        .map(|s| AudioInfo {
            stream_index: s.index,
            codec: s.codec_name.clone().unwrap_or_default(),
            channels: s.channels.unwrap_or(2),
            sample_rate: s
                .sample_rate
                .as_deref()
                .and_then(|rate| rate.parse().ok())
                .unwrap_or(48_000),
            language: s
                .tags
                .get("language")
                .filter(|lang| !lang.is_empty() && lang.as_str() != "und")
                .cloned(),
            title: s
                .tags
                .get("title")
                .or_else(|| s.tags.get("handler_name"))
                .filter(|title| !is_default_handler(title))
                .cloned(),
        })
        .collect();
    // "nan" and "inf" parse as f64; a header value like that would end up
    // in ffmpeg's arguments and in job.json (where JSON has no NaN).
    let number = |text: &Option<String>| {
        text.as_deref()
            .and_then(|t| t.parse::<f64>().ok())
            .filter(|n| n.is_finite())
    };
    Ok(SourceInfo {
        format: format.format_name.unwrap_or_default(),
        duration: number(&format.duration).unwrap_or(0.0),
        start_time: number(&format.start_time).unwrap_or(0.0),
        video,
        audio,
        truncated: None,
    })
}

/// Muxers write generic handler names that say nothing to a viewer.
fn is_default_handler(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name.trim().is_empty() || lower.contains("handler") || lower.starts_with("core media")
}

fn parse_ratio(text: Option<&str>) -> (u32, u32) {
    text.and_then(|t| t.split_once(':'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .filter(|&(a, b): &(u32, u32)| a > 0 && b > 0)
        .unwrap_or((1, 1))
}

/// Rotation in degrees, normalised to 0/90/180/270, from the display matrix
/// side data or the legacy `rotate` tag.
fn rotation_of(stream: &StreamJson) -> u32 {
    let from_side_data = stream.side_data_list.iter().find_map(|entry| {
        entry
            .get("rotation")
            .and_then(|value| value.as_f64().or_else(|| value.as_str()?.parse().ok()))
    });
    let degrees = from_side_data
        .or_else(|| stream.tags.get("rotate").and_then(|r| r.parse().ok()))
        .unwrap_or(0.0);
    let quarter_turns = (degrees / 90.0).round() as i64;
    (quarter_turns.rem_euclid(4) * 90) as u32
}

/// Parses `compact` packet lines into sorted frame times and the last
/// frame's duration. Discarded packets are not frames; packets without a pts
/// fall back to their dts.
pub(super) fn parse_packets(output: &[u8]) -> (Vec<f64>, Vec<f64>, f64) {
    let text = String::from_utf8_lossy(output);
    let mut times = Vec::new();
    let mut keyframes = Vec::new();
    let mut durations = Vec::new();
    for line in text.lines() {
        let mut pts = None;
        let mut dts = None;
        let mut duration = None;
        let mut discarded = false;
        let mut keyframe = false;
        for field in line.split('|') {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            match key {
                "pts_time" => pts = value.parse::<f64>().ok(),
                "dts_time" => dts = value.parse::<f64>().ok(),
                "duration_time" => duration = value.parse::<f64>().ok(),
                "flags" => {
                    discarded = value.contains('D');
                    keyframe = value.contains('K');
                }
                _ => {}
            }
        }
        if discarded {
            continue;
        }
        if let Some(time) = pts.or(dts).filter(|t| t.is_finite()) {
            times.push((time, duration));
            if keyframe {
                keyframes.push(time);
            }
        }
    }
    times.sort_by(|a, b| a.0.total_cmp(&b.0));
    times.dedup_by(|a, b| (a.0 - b.0).abs() < 1e-6);
    for (_, duration) in &times {
        if let Some(d) = duration.filter(|d| *d > 0.0) {
            durations.push(d);
        }
    }
    let frame_times: Vec<f64> = times.iter().map(|(t, _)| *t).collect();
    let last_duration = times
        .last()
        .and_then(|(_, d)| d.filter(|d| *d > 0.0))
        .or_else(|| median_interval(&frame_times))
        .unwrap_or(1.0 / 30.0);
    keyframes.sort_by(f64::total_cmp);
    keyframes.dedup_by(|a, b| (*a - *b).abs() < 1e-6);
    (frame_times, keyframes, last_duration)
}

fn median_interval(times: &[f64]) -> Option<f64> {
    let mut gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    if gaps.is_empty() {
        return None;
    }
    gaps.sort_by(f64::total_cmp);
    Some(gaps[gaps.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_sorted_by_pts_and_discard_skipped() {
        let out = b"pts_time=0.000000|dts_time=-0.066667|duration_time=0.033333|flags=K_\n\
pts_time=0.100000|dts_time=-0.033333|duration_time=0.033333|flags=__\n\
pts_time=0.033333|dts_time=0.000000|duration_time=0.033333|flags=__\n\
pts_time=0.066667|dts_time=0.033333|duration_time=0.033333|flags=_D\n";
        let (times, keyframes, last) = parse_packets(out);
        assert_eq!(times, vec![0.0, 0.033333, 0.1]);
        assert_eq!(keyframes, vec![0.0]);
        assert!((last - 0.033333).abs() < 1e-9);
    }

    #[test]
    fn rotation_and_video_choice() {
        let json = br#"{"format":{"format_name":"mov","duration":"2.0","start_time":"0.5"},
          "streams":[{"index":0,"codec_type":"video","codec_name":"mjpeg","width":300,"height":300,"disposition":{"attached_pic":1}},
                     {"index":1,"codec_type":"video","codec_name":"h264","width":1280,"height":720,
                      "side_data_list":[{"side_data_type":"Display Matrix","rotation":-90}]},
                     {"index":2,"codec_type":"audio","codec_name":"aac","channels":2,"sample_rate":"44100","tags":{"language":"fra"}}]}"#;
        let info = parse_streams("x", json).unwrap();
        assert_eq!(info.video.stream_index, 1);
        assert_eq!(info.video.rotation, 270);
        assert_eq!(info.video.display_size(), (720.0, 1280.0));
        assert_eq!(info.audio[0].language.as_deref(), Some("fra"));
        assert_eq!(info.start_time, 0.5);
    }

    #[test]
    fn refuses_huge_headers() {
        let json = br#"{"format":{"format_name":"mov"},"streams":[{"index":0,"codec_type":"video","width":16384,"height":16384}]}"#;
        assert!(matches!(
            parse_streams("x", json),
            Err(ProbeError::BadDimensions { .. })
        ));
        let json = br#"{"format":{"format_name":"mp3"},"streams":[{"index":0,"codec_type":"audio","channels":2}]}"#;
        assert!(matches!(
            parse_streams("x", json),
            Err(ProbeError::NoVideo(_))
        ));
    }
}
