//! A real browser plays the output to the end: headless Chromium with hls.js
//! (tests/browser/play.mjs) on a transcoded 6 s clip with audio.

mod common;

use common::browser::run_node_json;
use common::{assert_transcode_ok, gen_clip, run_transcode, validate_hls, ClipSpec, TestDir};

#[test]
fn chromium_plays_the_package_to_the_end() {
    let dir = TestDir::new("browser");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(6.0).size(480, 270));
    let out = dir.join("out");
    assert_transcode_ok(&run_transcode(
        &source,
        &out,
        &[
            "--segment-duration",
            "2",
            "--ladder",
            "240p",
            "--preset",
            "ultrafast",
        ],
    ));
    validate_hls(&out, &source);

    let out_arg = out.to_string_lossy();
    let (exited_ok, result) = run_node_json("play.mjs", &[&out_arg, "60"]);

    assert_eq!(
        result["fatalErrors"].as_array().map(Vec::len),
        Some(0),
        "hls.js fatal errors: {result}"
    );
    assert_eq!(result["ended"], true, "playback did not end: {result}");
    let current = result["currentTime"].as_f64().unwrap_or(-1.0);
    let duration = result["duration"].as_f64().unwrap_or(-1.0);
    assert!(
        (current - duration).abs() <= 0.2,
        "stopped at {current} of {duration}: {result}"
    );
    assert!(
        (duration - 6.0).abs() <= 0.2,
        "the browser sees {duration} s for a 6 s clip: {result}"
    );
    assert_eq!(
        result["audioTracks"],
        serde_json::json!(["eng"]),
        "hls.js should see the audio rendition: {result}"
    );
    assert!(exited_ok, "play.mjs exited with an error: {result}");
}
