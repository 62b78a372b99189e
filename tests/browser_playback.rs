//! A real browser plays the output to the end: headless Chromium with hls.js
//! (tests/browser/play.mjs) on a transcoded 6 s clip with audio.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_transcode_ok, gen_clip, run_transcode, validate_hls, ClipSpec, TestDir};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Installs the pinned hls.js and playwright-core if they are missing. Never
/// skips: a missing node toolchain is a failure, not a pass.
fn ensure_node_modules() {
    let dir = browser_dir();
    if dir.join("node_modules/hls.js/dist/hls.min.js").is_file()
        && dir
            .join("node_modules/playwright-core/package.json")
            .is_file()
    {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .output()
        .expect("run npm ci (install node and npm: scripts/install-deps)");
    assert!(
        out.status.success(),
        "npm ci in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn chromium_plays_the_package_to_the_end() {
    ensure_node_modules();
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

    let played = Command::new("node")
        .arg(browser_dir().join("play.mjs"))
        .arg(&out)
        .arg("60")
        .output()
        .expect("run node tests/browser/play.mjs");
    let stdout = String::from_utf8_lossy(&played.stdout);
    let stderr = String::from_utf8_lossy(&played.stderr);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("play.mjs printed no JSON\n{stdout}\n{stderr}"));
    let result: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("play.mjs printed bad JSON ({e}): {line}"));

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
    assert!(
        played.status.success(),
        "play.mjs exited with {:?}: {result}\n{stderr}",
        played.status
    );
}
