//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz) and for the
//! tests that run them over seed inputs (`tests/reliability_inputs.rs`).
//!
//! Each takes bytes that come from outside the pod, runs them through the
//! same code a pod runs, and panics only when an invariant breaks: a panic
//! here is a bug. Not an API; hidden from the docs.

use crate::config::{EncodeSettings, MAX_RUNGS, SEGMENT_DURATION_RANGE};
use crate::jobs::{JobSettings, SubmitRequest};
use crate::plan::Plan;
use crate::probe::MAX_DIMENSION;
use std::time::Duration;

/// ffprobe's output → [`crate::probe::SourceInfo`] → [`Plan`] → units and
/// `job.json`. `input` is the streams JSON, a NUL byte, then the compact
/// packet list; a first byte picks the segment duration.
pub fn probe_and_plan(input: &[u8]) {
    let Some((&choice, rest)) = input.split_first() else {
        return;
    };
    let (streams_json, packets) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &b""[..]),
    };
    let Ok(info) = crate::probe::parse_probe_output("fuzz", streams_json, packets) else {
        return;
    };
    let span = *SEGMENT_DURATION_RANGE.end() - *SEGMENT_DURATION_RANGE.start() + 1;
    let settings = EncodeSettings {
        segment_duration: SEGMENT_DURATION_RANGE.start() + u32::from(choice) % span,
        ..EncodeSettings::default()
    };
    let source = crate::source::Source::Url("http://example.com/fuzz.mp4".into());
    let Ok(plan) = Plan::new(crate::JobId::nil(), source, settings, &info) else {
        return;
    };
    let frames = info.video.frame_times.len();
    assert!(!plan.segments.is_empty() && plan.segments.len() <= frames);
    assert_eq!(
        plan.segments.iter().map(|s| s.frames).sum::<usize>(),
        frames,
        "segments cover every frame once"
    );
    assert!(plan.segments.iter().all(|s| s.frames > 0));
    for rendition in &plan.renditions {
        assert!(
            rendition.width <= MAX_DIMENSION + 2 && rendition.height <= MAX_DIMENSION + 2,
            "rendition {}x{} beyond the size limit",
            rendition.width,
            rendition.height
        );
    }
    assert!(plan.duration.is_finite() && plan.output_ts_offset().is_finite());
    let units = plan.units();
    assert!(units.iter().all(|unit| plan.contains(unit)));
    // job.json must read back as the same plan.
    let json = serde_json::to_vec(&plan).expect("a plan serialises");
    let read: Plan = serde_json::from_slice(&json).expect("job.json reads back");
    assert_eq!(read, plan);
}

/// A media playlist as ffmpeg's hls muxer writes it for an audio track →
/// our rewritten playlist, which must parse again.
pub fn media_playlist(input: &[u8]) {
    let Ok(playlist) = m3u8_rs::parse_media_playlist_res(input) else {
        return;
    };
    for finished in [false, true] {
        let ours = crate::hls::audio_playlist(&playlist, finished);
        let again = m3u8_rs::parse_media_playlist_res(&ours);
        assert!(
            again.is_ok(),
            "our playlist does not parse: {}",
            String::from_utf8_lossy(&ours)
        );
    }
}

/// A `POST /v1/jobs` body → [`SubmitRequest`] → its validated spec, on a pod
/// without source roots (local paths refused). The DNS part of the URL check
/// is left out; a literal IP host is classified.
pub fn submit_request(input: &[u8]) {
    let Ok(request) = serde_json::from_slice::<SubmitRequest>(input) else {
        return;
    };
    let settings = JobSettings {
        defaults: EncodeSettings::default(),
        source_roots: Vec::new(),
        prefetch_segments: 3,
        segment_wait: Duration::from_secs(1),
        egress: crate::egress::EgressPolicy::PublicOnly,
        fetch: crate::fetch::SourceFetch::new(crate::egress::EgressPolicy::PublicOnly),
    };
    let Ok(spec) = request.validate(&settings) else {
        return;
    };
    let ladder = &spec.settings.ladder.0;
    assert!(!ladder.is_empty() && ladder.len() <= MAX_RUNGS);
    assert!(SEGMENT_DURATION_RANGE.contains(&spec.settings.segment_duration));
    let crate::source::Source::Url(url) = &spec.source else {
        panic!("a local source was accepted without source roots");
    };
    // The stored URL is normalised: parsing it again changes nothing.
    let again = crate::egress::parse_http_url(url).expect("a stored URL parses");
    assert_eq!(again.as_str(), url);
    if let Some(ip) = again
        .host_str()
        .and_then(|h| h.trim_matches(['[', ']']).parse().ok())
    {
        let _ = crate::egress::non_public_kind(ip);
    }
    if let Some(callback) = &spec.callback_url {
        let again = crate::egress::parse_http_url(callback).expect("a stored callback parses");
        assert_eq!(again.as_str(), callback);
    }
}
