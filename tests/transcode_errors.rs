//! Bad sources and bad arguments get a clear `error: ...` on stderr and a
//! non-zero exit, never a panic, and never a playable-looking output.

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::{gen_clip, run_transcode, ClipSpec, TestDir};

/// Asserts the run failed cleanly and that stderr mentions one of `hints`
/// (case-insensitive); returns stderr.
fn assert_clean_failure(output: &Output, out_dir: &Path, hints: &[&str]) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let context = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(
        output.status.code().is_some_and(|c| c != 0),
        "expected a non-zero exit code, got {:?}\n{context}",
        output.status
    );
    assert!(!stderr.contains("panicked"), "segswarm panicked\n{context}");
    assert!(
        stderr.lines().any(|l| l.starts_with("error:")),
        "stderr should have an `error: <message>` line\n{context}"
    );
    let lower = stderr.to_lowercase();
    assert!(
        hints.iter().any(|h| lower.contains(&h.to_lowercase())),
        "stderr should mention one of {hints:?}\n{context}"
    );
    assert!(
        !out_dir.join("master.m3u8").exists(),
        "a failed job must not produce master.m3u8\n{context}"
    );
    stderr
}

const ARGS: &[&str] = &["--segment-duration", "2", "--preset", "ultrafast"];

#[test]
fn text_file() {
    let dir = TestDir::new("err-text");
    let source = dir.join("notes.mp4");
    fs::write(&source, "this is not a video, just some text\n".repeat(50)).unwrap();
    let out = dir.join("out");
    assert_clean_failure(
        &run_transcode(&source, &out, ARGS),
        &out,
        &[
            "notes.mp4",
            "not a video",
            "no video stream",
            "invalid data",
        ],
    );
}

#[test]
fn truncated_mp4() {
    let dir = TestDir::new("err-trunc");
    let full = dir.join("full.mp4");
    gen_clip(&full, &ClipSpec::new(4.0));
    let bytes = fs::read(&full).unwrap();
    let source = dir.join("cut.mp4");
    fs::write(&source, &bytes[..bytes.len() * 3 / 10]).unwrap();
    let out = dir.join("out");
    assert_clean_failure(
        &run_transcode(&source, &out, ARGS),
        &out,
        &[
            "cut.mp4",
            "truncated",
            "not a video",
            "no video stream",
            "moov",
        ],
    );
}

// A cut-off mp4 whose index (moov) is at the front still probes: it is
// packaged as far as it goes, with a warning (tests/damaged_sources.rs).

#[test]
fn zero_byte_file() {
    let dir = TestDir::new("err-empty");
    let source = dir.join("empty.mp4");
    fs::write(&source, b"").unwrap();
    let out = dir.join("out");
    assert_clean_failure(
        &run_transcode(&source, &out, ARGS),
        &out,
        &["empty.mp4", "empty", "not a video", "no video stream"],
    );
}

#[test]
fn missing_file() {
    let dir = TestDir::new("err-missing");
    let source = dir.join("does-not-exist.mp4");
    let out = dir.join("out");
    assert_clean_failure(
        &run_transcode(&source, &out, ARGS),
        &out,
        &["does-not-exist.mp4"],
    );
}

#[test]
fn ftp_url_is_unsupported() {
    let dir = TestDir::new("err-ftp");
    let out = dir.join("out");
    assert_clean_failure(
        &run_transcode("ftp://example.invalid/x.mp4", &out, ARGS),
        &out,
        &["unsupported", "ftp"],
    );
}

#[test]
fn file_url_is_unsupported() {
    // A file:// URL must not be a way around the protocol whitelist.
    let dir = TestDir::new("err-fileurl");
    let out = dir.join("out");
    assert_clean_failure(
        &run_transcode("file:///etc/passwd", &out, ARGS),
        &out,
        &["unsupported", "file://"],
    );
}

#[test]
fn segment_duration_out_of_range() {
    let dir = TestDir::new("err-segdur");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(1.0));
    for bad in ["1", "11"] {
        let out = dir.join(format!("out-{bad}"));
        let output = run_transcode(&source, &out, &["--segment-duration", bad]);
        assert!(
            output.status.code().is_some_and(|c| c != 0),
            "--segment-duration {bad} must be refused\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("segment-duration"),
            "stderr should name the flag: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!out.join("master.m3u8").exists());
    }
}

#[test]
fn unknown_ladder_rung() {
    let dir = TestDir::new("err-ladder");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(1.0));
    let out = dir.join("out");
    assert_clean_failure(
        &run_transcode(&source, &out, &["--ladder", "240p,huge"]),
        &out,
        &["huge", "ladder"],
    );
}
