//! SIGTERM with a job in flight: the pod exits within its grace period and
//! leaves no ffmpeg behind; a new pod on the same storage finishes the job
//! without redoing the units that were finished.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{
    ffmpeg_processes_mentioning, gen_clip, metric_value, seg_files, validate_hls, wait_for,
    ClipSpec, FfmpegWrapper, Pod, TestDir,
};

const GRACE_SECONDS: u64 = 10;

/// (inode, mtime in ns) of every published output of a job folder.
fn outputs(job_dir: &Path) -> BTreeMap<PathBuf, (u64, i128)> {
    let mut files = Vec::new();
    for rendition in ["240p", "360p"] {
        files.extend(seg_files(&job_dir.join(rendition)));
    }
    files.extend(seg_files(&job_dir.join("audio/0")));
    files.push(job_dir.join("thumbnail.webp"));
    files
        .into_iter()
        .filter_map(|p| {
            let meta = std::fs::metadata(&p).ok()?;
            let mtime = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
            Some((p, (meta.ino(), mtime)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_job_then_new_pod_resumes() {
    let dir = TestDir::new("pod-sigterm");
    let source = dir.join("source.mp4");
    // Noise at the medium preset with one slot: segments take a while, so
    // SIGTERM lands mid-job.
    gen_clip(&source, &ClipSpec::new(16.0).size(640, 360).noisy());
    let storage = dir.join("storage");
    let wrapper = FfmpegWrapper::new(dir.path(), None, false);
    let start = || {
        Pod::builder(&storage)
            .env("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())
            .env("SEGSWARM_SLOTS", "1")
            .env("SEGSWARM_PRESET", "medium")
            .env("SEGSWARM_SHUTDOWN_GRACE", GRACE_SECONDS.to_string())
            .path_prefix(&wrapper.bin_dir)
            .start()
    };
    let mut pod = start().await;
    let job = pod
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let job_dir = pod.job_dir(&id);
    let storage_text = storage.to_str().unwrap().to_string();

    // Wait for two segments of the lowest rendition and an encode running.
    let lowest = job_dir.join("240p");
    assert!(
        wait_for(Duration::from_secs(240), || seg_files(&lowest).len() >= 2
            && ffmpeg_processes_mentioning(&storage_text)
                .iter()
                .any(|(_, cmd)| cmd.contains("p-seg_")))
        .await,
        "the job did not get going"
    );
    let job = pod.job(&id).await;
    assert!(
        ["processing", "playable"].contains(&job["status"].as_str().unwrap()),
        "the job should be mid-way at SIGTERM: {job}"
    );
    let before = outputs(&job_dir);
    let finished_segments: Vec<String> = before
        .keys()
        .filter_map(|p| {
            let rendition = p.parent()?.file_name()?.to_str()?;
            let name = p.file_name()?.to_str()?;
            (rendition.ends_with('p')).then(|| format!("-{rendition}-{name}"))
        })
        .collect();
    assert!(finished_segments.len() >= 2);
    let units_before = finished_segments.len()
        + usize::from(job_dir.join("thumbnail.webp").is_file())
        + usize::from(job_dir.join("audio/0/index.m3u8").is_file());
    let invocations_before = wrapper.invocations().len();

    let sent = Instant::now();
    pod.sigterm();
    let status = pod
        .wait_exit(Duration::from_secs(GRACE_SECONDS + 20))
        .await
        .expect("pod did not exit after SIGTERM");
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(GRACE_SECONDS),
        "SIGTERM'd pod took {took:?}, grace is {GRACE_SECONDS} s"
    );
    assert!(status.success(), "pod exited with {status}");
    let leftovers = ffmpeg_processes_mentioning(&storage_text);
    assert!(leftovers.is_empty(), "ffmpeg left behind: {leftovers:?}");
    let record: Value =
        serde_json::from_slice(&std::fs::read(job_dir.join("status.json")).unwrap()).unwrap();
    assert!(
        ["processing", "playable"].contains(&record["status"].as_str().unwrap_or("")),
        "an unfinished job stays unfinished on storage: {record}"
    );
    drop(pod);

    // A new pod on the same storage picks the job up and finishes it.
    let pod = start().await;
    let job = pod.wait_terminal(&id, Duration::from_secs(300)).await;
    assert_eq!(job["status"], "done", "{job}");
    let events = pod.events(&id).await.collect(Duration::from_secs(10)).await;
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"));

    let after = outputs(&job_dir);
    for (path, stamp) in &before {
        assert_eq!(
            after.get(path),
            Some(stamp),
            "{} was rewritten by the resumed job",
            path.display()
        );
    }
    let redone: Vec<String> = wrapper.invocations()[invocations_before..]
        .iter()
        .filter(|(_, args)| finished_segments.iter().any(|s| args.contains(s.as_str())))
        .map(|(_, args)| args.clone())
        .collect();
    assert!(
        redone.is_empty(),
        "finished units encoded again: {redone:?}"
    );
    let metrics = pod.metrics().await;
    let skipped = metric_value(&metrics, "segswarm_units_skipped_total", &[]).unwrap_or(0.0);
    assert!(
        skipped >= units_before as f64 && skipped > 0.0,
        "units_skipped_total {skipped}, {units_before} units were done on storage"
    );
    validate_hls(&job_dir, &source);
}
