//! The real pod of figures 2 and 6: `segswarm serve` as it ships (local
//! mode, the binary's own defaults, its own storage) started through the
//! kit's [`PodBuilder`](crate::common::pod::PodBuilder), and the clip it is
//! given.

use crate::common::{gen_clip, ClipSpec, Pod, TestDir};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Generates `<scratch>/src/clip.mp4`: testsrc2 of `width` x `height` at
/// 30 fps with a 440 Hz tone, `seconds` long, a keyframe every 250 frames
/// (x264's own default, as in a file nobody tuned).
pub fn clip(scratch: &TestDir, width: u32, height: u32, seconds: u32) -> anyhow::Result<PathBuf> {
    let dir = scratch.join("src");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("clip.mp4");
    let spec = ClipSpec::new(f64::from(seconds.max(1)))
        .size(width, height)
        .keyframe_interval(250);
    gen_clip(&path, &spec);
    Ok(path)
}

/// Starts run `run`'s pod: storage `<scratch>/data-<run>`, sources allowed
/// from `<scratch>/src`, warnings only in its log; returns once `/healthz`
/// answers.
pub async fn start(scratch: &TestDir, run: usize) -> Pod {
    Pod::builder(&scratch.join(format!("data-{run}")))
        .binary_defaults()
        .env(
            "SEGSWARM_SOURCE_ROOTS",
            scratch.join("src").display().to_string(),
        )
        .env("SEGSWARM_LOG", "warn")
        .start()
        .await
}

/// Submits `source` with the pod's default settings; returns the job's id.
pub async fn submit(pod: &Pod, source: &Path) -> anyhow::Result<String> {
    let job = pod.submit(serde_json::json!({ "source": source })).await;
    job["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no job id in {job}"))
}

/// SIGTERM, then up to 30 s for the pod to exit (the kit kills it when
/// dropped if it is still running).
pub async fn stop(mut pod: Pod) {
    pod.sigterm();
    pod.wait_exit(Duration::from_secs(30)).await;
}
