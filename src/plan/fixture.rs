//! A small plan for unit tests across the crate: 240p and 360p, 6 s
//! segments of 180 frames, one audio track.

use super::{AudioTrack, Plan, Rendition, Segment, Thumbnail};
use crate::config::EncodeSettings;

/// A plan of `segments` segments in 240p and 360p with one audio track.
pub(crate) fn plan(segments: usize) -> Plan {
    let rendition = |name: &str, height| Rendition {
        name: name.into(),
        width: height * 16 / 9,
        height,
        bitrate: 400_000,
        maxrate: 480_000,
        bufsize: 800_000,
        threads: 1,
    };
    Plan {
        version: crate::plan::PLAN_VERSION,
        job_id: crate::JobId::nil(),
        source: crate::source::Source::Url("http://example.com/a.mp4".into()),
        settings: EncodeSettings::default(),
        start_time: 0.0,
        video_stream: 0,
        duration: 6.0 * segments as f64,
        total_frames: 180 * segments,
        renditions: vec![rendition("240p", 240), rendition("360p", 360)],
        segments: (0..segments)
            .map(|index| Segment {
                index,
                first_frame: index * 180,
                frames: 180,
                start: 6.0 * index as f64,
                seek: 0.0,
                trim_from: None,
                duration: 6.0,
            })
            .collect(),
        audio: vec![AudioTrack {
            track: 0,
            stream_index: 1,
            name: "audio".into(),
            language: None,
            channels: 2,
            bitrate: 128_000,
        }],
        thumbnail: Thumbnail {
            time: 0.0,
            width: 640,
            height: 360,
        },
        truncated: None,
    }
}
