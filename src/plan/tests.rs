//! The planner's rules, on made-up probes.

use super::*;
use crate::config::Ladder;
use crate::probe::{AudioInfo, VideoInfo};

fn info(width: u32, height: u32, rotation: u32, frames: Vec<f64>) -> SourceInfo {
    SourceInfo {
        format: "mov".into(),
        duration: 0.0,
        start_time: 0.0,
        video: VideoInfo {
            stream_index: 0,
            codec: "h264".into(),
            width,
            height,
            sample_aspect: (1, 1),
            rotation,
            pix_fmt: "yuv420p".into(),
            frame_times: frames,
            keyframe_times: vec![0.0],
            last_frame_duration: 1.0 / 30.0,
        },
        audio: vec![],
        truncated: None,
    }
}

fn cfr(count: usize, fps: f64) -> Vec<f64> {
    (0..count).map(|i| i as f64 / fps).collect()
}

#[test]
fn ladder_is_filtered_and_even() {
    let r = renditions_for(&Ladder::default().0, 1280.0, 720.0);
    let names: Vec<_> = r
        .iter()
        .map(|r| (r.name.as_str(), r.width, r.height))
        .collect();
    assert_eq!(
        names,
        vec![
            ("240p", 426, 240),
            ("360p", 640, 360),
            ("480p", 854, 480),
            ("720p", 1280, 720)
        ]
    );
    let portrait = renditions_for(&Ladder::default().0, 720.0, 1280.0);
    assert_eq!((portrait[0].width, portrait[0].height), (240, 426));
    let odd = renditions_for(&Ladder::default().0, 321.0, 241.0);
    assert_eq!(
        (odd[0].name.as_str(), odd[0].width, odd[0].height),
        ("240p", 320, 240)
    );
    let tiny = renditions_for(&Ladder::default().0, 160.0, 120.0);
    assert_eq!(
        (tiny[0].name.as_str(), tiny[0].width, tiny[0].height),
        ("120p", 160, 120)
    );
}

#[test]
fn segments_cover_every_frame_once() {
    let frames = cfr(300, 30000.0 / 1001.0);
    let segments = cut_segments(&frames, &[0.0], 1001.0 / 30000.0, 2.0, 0.0, MP4);
    assert_eq!(segments.iter().map(|s| s.frames).sum::<usize>(), 300);
    for pair in segments.windows(2) {
        assert_eq!(pair[0].first_frame + pair[0].frames, pair[1].first_frame);
    }
    let total: f64 = segments.iter().map(|s| s.duration).sum();
    assert!((total - 300.0 * 1001.0 / 30000.0).abs() < 1e-9);
    assert_eq!(segments[1].first_frame, 60);
}

const MP4: Container = Container::Indexed;
const TS: Container = Container::Unindexed;

#[test]
fn seek_goes_before_the_keyframe_and_trim_to_the_first_frame() {
    // 10 fps, 2 s segments, keyframes at 0 s and 3 s, source start 1 s,
    // no index (MPEG-TS).
    let frames: Vec<f64> = (0..60).map(|i| 1.0 + f64::from(i) / 10.0).collect();
    let segments = cut_segments(&frames, &[1.0, 4.0], 0.1, 2.0, 1.0, TS);
    assert_eq!((segments[0].seek, segments[0].trim_from), (0.0, None));
    // Segment 1 (from 3.0 s) is decoded from the keyframe at 1.0 s.
    assert_eq!(segments[1].seek, 0.0);
    let trim = segments[1].trim_from.unwrap();
    assert!((trim - 2.95).abs() < 1e-9, "{trim}");
    // Segment 2 (from 5.0 s) from the keyframe at 4.0 s, 1 s earlier.
    assert!((segments[2].seek - (4.0 - 1.0 - SEEK_MARGIN)).abs() < 1e-9);
    // Without keyframe times: the segment's own start, half a frame early.
    let segments = cut_segments(&frames, &[], 0.1, 2.0, 1.0, TS);
    assert!((segments[2].seek - (5.0 - 1.0 - 0.05)).abs() < 1e-9);
}

#[test]
fn indexed_containers_seek_just_past_the_keyframe() {
    // As above, in an mp4: keyframes at 1 s, 4 s and 7 s (source time),
    // source start 1 s; segments from 3 s, 5 s and 7 s.
    let frames: Vec<f64> = (0..80).map(|i| 1.0 + f64::from(i) / 10.0).collect();
    let segments = cut_segments(&frames, &[1.0, 4.0, 7.0], 0.1, 2.0, 1.0, MP4);
    assert_eq!((segments[0].seek, segments[0].trim_from), (0.0, None));
    // Segment 1 (from 3.0 s): the keyframe at 1.0 s, which is the
    // container start, plus half a millisecond.
    assert!((segments[1].seek - INDEXED_SEEK_PAST_KEYFRAME).abs() < 1e-9);
    // Segment 2 (from 5.0 s): the keyframe at 4.0 s, not a second before.
    let seek = segments[2].seek;
    assert!((seek - (4.0 - 1.0 + INDEXED_SEEK_PAST_KEYFRAME)).abs() < 1e-9);
    assert!(segments[2].trim_from.unwrap() - 1.0 > seek);
    // Segment 3 starts on the keyframe at 7.0 s: half a frame before it,
    // as in every container.
    assert!((segments[3].seek - (7.0 - 1.0 - 0.05)).abs() < 1e-9);
    // The same frames in MPEG-TS: a second before each keyframe.
    let ts = cut_segments(&frames, &[1.0, 4.0, 7.0], 0.1, 2.0, 1.0, TS);
    assert!((ts[2].seek - (4.0 - 1.0 - SEEK_MARGIN)).abs() < 1e-9);
    assert_eq!(ts[3].seek, segments[3].seek);
    // Frames closer together than the nudge (a 4 kHz oddity): the seek
    // stays at or before the trim, never past the segment's first frame.
    let dense: Vec<f64> = (0..4000).map(|i| f64::from(i) * 0.00025).collect();
    let cut = cut_segments(&dense, &[0.0, 0.00475], 0.00025, 0.005, 0.0, MP4);
    assert_eq!(cut[1].first_frame, 20);
    let trim = cut[1].trim_from.unwrap();
    assert!(
        cut[1].seek <= trim + 1e-12 && cut[1].seek > 0.00475,
        "{cut:?}"
    );
}

#[test]
fn containers_with_an_index_are_mov_and_mp4() {
    for indexed in ["mov,mp4,m4a,3gp,3g2,mj2", "mov", "mp4"] {
        assert_eq!(Container::of_format(indexed), Container::Indexed);
    }
    for unindexed in ["mpegts", "matroska,webm", "flv", "", "mpegtsraw"] {
        assert_eq!(Container::of_format(unindexed), Container::Unindexed);
    }
}

#[test]
fn short_tail_is_merged_and_vfr_gap_skips_targets() {
    // 6.2 s at 25 fps with 2 s segments: tail of 0.2 s merges.
    let segments = cut_segments(&cfr(155, 25.0), &[0.0], 0.04, 2.0, 0.0, MP4);
    assert_eq!(segments.len(), 3);
    assert_eq!(segments[2].frames, 55);
    // A 5 s hole in VFR timestamps does not make empty segments.
    let mut frames = cfr(10, 10.0);
    frames.extend((0..10).map(|i| 6.0 + f64::from(i) / 10.0));
    let segments = cut_segments(&frames, &[0.0], 0.1, 2.0, 0.0, MP4);
    assert!(segments.iter().all(|s| s.frames > 0));
    assert_eq!(segments.len(), 2);
}

#[test]
fn plan_is_deterministic_and_orders_units() {
    let mut source_info = info(640, 360, 0, cfr(90, 30.0));
    source_info.audio.push(AudioInfo {
        stream_index: 1,
        codec: "aac".into(),
        channels: 6,
        sample_rate: 48000,
        language: Some("eng".into()),
        title: None,
    });
    let settings = EncodeSettings {
        segment_duration: 2,
        ..EncodeSettings::default()
    };
    let id = JobId::nil();
    let source = Source::Url("http://example.com/a.mp4".into());
    let a = Plan::new(id, source.clone(), settings.clone(), &source_info).unwrap();
    let b = Plan::new(id, source, settings, &source_info).unwrap();
    assert_eq!(a, b);
    let units: Vec<String> = a.units().iter().map(Unit::to_string).collect();
    assert_eq!(
        &units[..4],
        &["audio/0", "video/240p/0", "thumbnail", "video/360p/0"]
    );
    assert_eq!(a.audio[0].channels, 2);
    for unit in a.units() {
        assert_eq!(unit.to_string().parse::<Unit>().unwrap(), unit);
    }
    assert!("video/../0".parse::<Unit>().is_err());
}

#[test]
fn a_cut_off_source_is_planned_on_the_frames_it_has() {
    // 3 s of frames, starting at 1.4 s, in a container claiming 12 s.
    let frames: Vec<f64> = cfr(90, 30.0).iter().map(|t| t + 1.4).collect();
    let mut source_info = info(640, 360, 0, frames);
    source_info.start_time = 1.4;
    source_info.duration = 12.0;
    let source = Source::Url("http://example.com/a.mp4".into());
    let whole = Plan::new(
        JobId::nil(),
        source.clone(),
        Default::default(),
        &source_info,
    )
    .unwrap();
    assert_eq!(whole.truncated, None);
    source_info.truncated = Some("stream 0, offset 0x1d0047: partial file".into());
    let cut = Plan::new(JobId::nil(), source, Default::default(), &source_info).unwrap();
    let truncation = cut.truncated.as_ref().expect("truncated");
    assert_eq!(truncation.claimed_duration, 12.0);
    assert!((cut.duration - 3.0).abs() < 1e-9);
    // The job's timeline starts at the first frame.
    assert_eq!(cut.timeline(1.4), 0.0);
    assert!((cut.timeline(cut.segments[0].start + 2.0) - 2.0).abs() < 1e-9);
    // job.json from before the field reads as a whole source.
    let mut json: serde_json::Value = serde_json::to_value(&whole).unwrap();
    json.as_object_mut().unwrap().remove("truncated");
    let old: Plan = serde_json::from_value(json).unwrap();
    assert_eq!(old, whole);
}
