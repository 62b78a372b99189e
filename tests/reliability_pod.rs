//! Single-pod faults and load (issue #7): a storage folder that fills up, an
//! ffmpeg killed from outside mid-unit, ffmpeg missing at start, a storage
//! folder that cannot be written, SIGTERM while players wait for on-demand
//! segments, and a burst of concurrent HLS requests and submissions.
//!
//! Real parts only: `segswarm serve` child processes, the real ffmpeg,
//! lavfi clips a few seconds long, a real tmpfs and bind mount. Every test
//! prints what it measured on `FIGURE:` lines, which docs/reliability.md
//! quotes.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::sync::Barrier;

use common::integrity::FolderWatch;
use common::mounts::Mount;
use common::pod::which;
use common::process::transcode_command;
use common::stats::Latencies;
use common::{
    decode_errors, ffmpeg_processes_mentioning, gen_clip, hold_wrapper, metric_value, validate_hls,
    wait_for, ClipSpec, FfmpegWrapper, Pod, TestDir,
};

const JOB_LIMIT: Duration = Duration::from_secs(180);

/// `GET <path>` on the pod: status and body text.
async fn get_text(pod: &Pod, path: &str) -> (u16, String) {
    let resp = pod
        .client()
        .get(pod.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_storage_fails_units_cleanly_and_recovers_when_space_returns() {
    let dir = TestDir::new("rel-storage-full");
    let source = dir.join("source.mp4");
    // Noise at 8 Mb/s per rung: one 2 s segment of one rung is about 2.5 MB,
    // so a 3 MB disk takes the audio, the thumbnail and at most one segment.
    gen_clip(&source, &ClipSpec::new(4.0).size(640, 360).noisy());
    let storage = dir.join("storage");
    let disk = match Mount::tmpfs(&storage, "3m") {
        Ok(disk) => disk,
        Err(reason) => {
            eprintln!("SKIP full storage test: cannot mount a tmpfs ({reason})");
            return;
        }
    };
    let wrapper = FfmpegWrapper::new(dir.path(), None, false);
    let backoff_ms = 500;
    // Declared after the mount: dropped (killed) before it is unmounted.
    let pod = Pod::builder(&storage)
        .env("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())
        .env("SEGSWARM_RETRY_BACKOFF_MS", backoff_ms.to_string())
        .env("SEGSWARM_MAX_ATTEMPTS", "3")
        .path_prefix(&wrapper.bin_dir)
        .start()
        .await;
    let (status, body) = get_text(&pod, "/readyz").await;
    assert_eq!(status, 200, "ready before the disk fills: {body}");

    let spec = json!({ "source": source.to_str().unwrap(), "ladder": "240p:8M,360p:8M" });
    let job = pod.submit(spec.clone()).await;
    let id = job["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    // Every file under a final name must be whole at every moment.
    let watch = FolderWatch::start(&pod.job_dir(&id), 60, Duration::from_millis(50));

    let mut full_reported: Option<(Duration, String)> = None;
    let job = loop {
        let (health, body) = get_text(&pod, "/healthz").await;
        assert_eq!(
            health, 200,
            "a full disk must not make the pod unhealthy: {body}"
        );
        let (ready, body) = get_text(&pod, "/readyz").await;
        if ready == 503 && body.contains("storage full") && full_reported.is_none() {
            full_reported = Some((started.elapsed(), body));
        }
        let job = pod.job(&id).await;
        if ["done", "partial", "failed"].contains(&job["status"].as_str().unwrap_or("")) {
            break job;
        }
        assert!(
            started.elapsed() < JOB_LIMIT,
            "the job did not end on a full disk: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let failed_after = started.elapsed();
    let report = watch.finish();

    // The job ends without the outputs that did not fit, with the reason.
    assert_ne!(
        job["status"], "done",
        "the outputs cannot fit in 3 MB: {job}"
    );
    let error = job["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("No space left on device"),
        "the job's error should say the disk is full: {job}"
    );
    let log = pod.log_text();
    // ffmpeg's stderr, carried into the `unit failed` message, names the
    // file it could not write.
    assert!(
        log.contains("unit failed: ")
            && log
                .lines()
                .any(|l| l.contains(storage.to_str().unwrap())
                    && l.contains("No space left on device")),
        "the log should say which file on the full disk could not be written:\n{log}"
    );
    // Retried with backoff: some unit ran max_attempts times, its attempts
    // at least a backoff apart.
    let mut retried = None;
    for rendition in ["240p", "360p"] {
        for index in 0..2 {
            let name = format!("-{rendition}-seg_{index:05}.ts");
            let attempts = wrapper.matching(&name);
            if attempts.len() >= 3 {
                retried = Some((name, attempts));
            }
        }
    }
    let (unit, attempts) = retried.unwrap_or_else(|| {
        panic!(
            "no unit was tried 3 times: {:?}",
            wrapper
                .invocations()
                .iter()
                .map(|i| &i.1)
                .collect::<Vec<_>>()
        )
    });
    let gaps: Vec<f64> = attempts.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps.iter()
            .all(|gap| *gap >= backoff_ms as f64 / 1000.0 * 0.9),
        "attempts of {unit} came {gaps:?} s apart, backoff is {backoff_ms} ms"
    );
    let metrics = pod.metrics().await;
    let failed_units = metric_value(&metrics, "segswarm_units_failed_total", &[]).unwrap_or(0.0);
    assert!(failed_units >= 3.0, "failed attempts counted:\n{metrics}");
    // Readiness said why, naming the storage folder.
    let (reported_after, body) = full_reported.expect("/readyz never reported the full storage");
    assert!(
        body.contains(storage.to_str().unwrap()),
        "/readyz should name the storage folder: {body}"
    );
    // Nothing half-written was ever visible.
    assert!(
        report.violations.is_empty(),
        "files under final names that were not whole:\n{}",
        report.violations.join("\n")
    );
    assert!(
        report.segments_checked >= 1,
        "the audio at least fits: {report:?}"
    );

    // Room again: readiness comes back, and the same job submitted again
    // succeeds.
    disk.resize("64m");
    let resized = Instant::now();
    let ready_again = loop {
        let (status, body) = get_text(&pod, "/readyz").await;
        if status == 200 {
            break resized.elapsed();
        }
        assert!(
            resized.elapsed() < Duration::from_secs(30),
            "/readyz still failing 30 s after space was freed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let retry = pod.submit(spec).await;
    let retry_id = retry["id"].as_str().unwrap().to_string();
    let retry = pod.wait_terminal(&retry_id, JOB_LIMIT).await;
    assert_eq!(
        retry["status"], "done",
        "with room the job succeeds: {retry}"
    );
    validate_hls(&pod.job_dir(&retry_id), &source);

    eprintln!(
        "FIGURE: storage full (3 MB tmpfs, 2 rungs at 8 Mb/s): job ended {} after {:.1} s, \
         {failed_units} failed attempts, {unit} tried {} times {:?} s apart",
        job["status"].as_str().unwrap_or(""),
        failed_after.as_secs_f64(),
        attempts.len(),
        gaps.iter()
            .map(|g| (g * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
    eprintln!(
        "FIGURE: storage full: /readyz reported it {:.1} s after submit; ready again {:.1} s after the disk grew",
        reported_after.as_secs_f64(),
        ready_again.as_secs_f64()
    );
    eprintln!(
        "FIGURE: storage full: job error {:?}; /readyz {body}",
        error.chars().take(240).collect::<String>()
    );
    eprintln!(
        "FIGURE: storage full: {} listings of the job folder, {} file versions checked \
         ({} segments), 0 partial files under a final name",
        report.snapshots, report.files_checked, report.segments_checked
    );
}

/// The folder watch used above catches what it must: a truncated segment,
/// a segment that does not start on a keyframe, a playlist cut short and a
/// playlist that lists a missing segment; a whole segment passes.
#[test]
fn folder_watch_catches_partial_files() {
    let dir = TestDir::new("rel-folder-watch");
    let clip = dir.join("clip.mp4");
    gen_clip(&clip, &ClipSpec::new(2.0));
    let job = dir.join("job");
    let rendition = job.join("240p");
    std::fs::create_dir_all(&rendition).unwrap();
    let whole = rendition.join("seg_00000.ts");
    let status = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-i"])
        .arg(&clip)
        .args(["-map", "0:v", "-c", "copy", "-f", "mpegts"])
        .arg(&whole)
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&whole).unwrap();
    // Cut at a 188-byte packet boundary halfway: demuxes cleanly, too short.
    let half = bytes.len() / 2 / 188 * 188;
    std::fs::write(rendition.join("seg_00001.ts"), &bytes[..half]).unwrap();
    // The second half: no keyframe first.
    std::fs::write(rendition.join("seg_00002.ts"), &bytes[half..]).unwrap();
    std::fs::write(
        rendition.join("index.m3u8"),
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nseg_00000.ts\n#EXTINF:2.0,\nseg_00007.ts\n",
    )
    .unwrap();
    std::fs::write(job.join("master.m3u8"), "#EXTM3U\n#EXT-X-STREAM-INF:BANDW").unwrap();

    let report = FolderWatch::start(&job, 60, Duration::from_millis(10)).finish();
    let named = |name: &str| report.violations.iter().any(|v| v.contains(name));
    assert!(
        !named("seg_00000.ts:"),
        "a whole segment passes: {report:?}"
    );
    for name in [
        "seg_00001.ts",
        "seg_00002.ts",
        "master.m3u8",
        "seg_00007.ts",
    ] {
        assert!(named(name), "{name} not reported: {report:?}");
    }
    assert_eq!(report.segments_checked, 3, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_killed_mid_unit_is_retried_and_the_job_finishes() {
    let dir = TestDir::new("rel-ffmpeg-killed");
    let source = dir.join("source.mp4");
    // Noise at the medium preset: a segment takes a second or more to
    // encode, long enough to kill it in the middle.
    gen_clip(&source, &ClipSpec::new(6.0).size(640, 360).noisy());
    let wrapper = FfmpegWrapper::new(dir.path(), None, false);
    let pod = Pod::builder(&dir.join("storage"))
        .env("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())
        .env("SEGSWARM_PRESET", "medium")
        .env("SEGSWARM_SLOTS", "1")
        .env("SEGSWARM_RETRY_BACKOFF_MS", "500")
        .path_prefix(&wrapper.bin_dir)
        .start()
        .await;
    let job = pod
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let job_dir = pod.job_dir(&id);
    let needle = job_dir.to_str().unwrap().to_string();
    let target = "-240p-seg_00001.ts";

    let mut encoder = None;
    assert!(
        wait_for(JOB_LIMIT, || {
            encoder = ffmpeg_processes_mentioning(&needle)
                .into_iter()
                .find(|(_, cmd)| cmd.contains(target));
            encoder.is_some()
        })
        .await,
        "the encode of {target} never started; pod log:\n{}",
        pod.log_text()
    );
    let (pid, _) = encoder.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        ffmpeg_processes_mentioning(&needle)
            .iter()
            .any(|(p, _)| *p == pid),
        "the encode of {target} ended before it could be killed (too fast a machine?)"
    );
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("SIGKILL ffmpeg");
    let killed_at = Instant::now();
    let killed_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();

    let job = pod.wait_terminal(&id, JOB_LIMIT).await;
    let finished_after = killed_at.elapsed();
    assert_eq!(job["status"], "done", "the killed unit is retried: {job}");
    validate_hls(&job_dir, &source);
    let errors = decode_errors(&pod.url(&format!("/hls/{id}/master.m3u8")));
    assert!(errors.trim().is_empty(), "the job plays:\n{errors}");

    let retry = wrapper
        .matching(target)
        .into_iter()
        .find(|(t, _)| *t > killed_unix)
        .unwrap_or_else(|| panic!("{target} was not encoded again after the kill"));
    let metrics = pod.metrics().await;
    let failed = metric_value(
        &metrics,
        "segswarm_units_failed_total",
        &[("kind", "video")],
    )
    .unwrap_or(0.0);
    assert!(failed >= 1.0, "the killed attempt is counted:\n{metrics}");
    let log = pod.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("unit failed") && l.contains("SIGKILL")),
        "the log says the unit failed because ffmpeg was killed:\n{log}"
    );
    assert!(
        ffmpeg_processes_mentioning(&needle).is_empty(),
        "no ffmpeg of the job left"
    );
    eprintln!(
        "FIGURE: ffmpeg SIGKILLed mid-unit: retried {:.2} s after the kill, job done {:.1} s after it, \
         segswarm_units_failed_total{{kind=\"video\"}} = {failed}",
        retry.0 - killed_unix,
        finished_after.as_secs_f64()
    );
}

/// A folder holding only the given programs (symlinks to the real ones),
/// for a PATH without the others.
fn bin_dir_with(dir: &Path, programs: &[&str]) -> std::path::PathBuf {
    let bin = dir.join(format!("bin-{}", programs.join("-")));
    std::fs::create_dir_all(&bin).unwrap();
    for program in programs {
        std::os::unix::fs::symlink(which(program), bin.join(program)).unwrap();
    }
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_ffmpeg_is_a_clear_error_at_start() {
    let dir = TestDir::new("rel-no-ffmpeg");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(2.0));
    let cases = [
        (
            "no ffmpeg, no ffprobe",
            bin_dir_with(dir.path(), &[]),
            "ffmpeg",
        ),
        (
            "no ffprobe",
            bin_dir_with(dir.path(), &["ffmpeg"]),
            "ffprobe",
        ),
    ];
    for (case, path, missing) in cases {
        let storage = dir.join(format!("storage-{missing}"));
        let started = Instant::now();
        let (status, log) = Pod::builder(&storage)
            .env("PATH", path.to_str().unwrap())
            .run_until_exit(Duration::from_secs(30));
        let took = started.elapsed();
        let status = status.unwrap_or_else(|| {
            panic!("serve ({case}) still running after 30 s instead of refusing to start:\n{log}")
        });
        assert!(!status.success(), "serve ({case}) exited with {status}");
        assert!(
            log.contains(&format!("error: {missing} not found on PATH")),
            "serve ({case}) should name {missing}:\n{log}"
        );
        assert!(!log.contains("panicked"), "{log}");
        assert!(
            !storage.exists(),
            "serve ({case}) checked ffmpeg before touching storage"
        );
        let out = dir.join(format!("out-{missing}"));
        let output = transcode_command(&source, &out, &[])
            .env("PATH", &path)
            .output()
            .expect("run segswarm transcode");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "transcode ({case}): {stderr}"
        );
        assert!(
            stderr.contains(&format!("{missing} not found on PATH")),
            "transcode ({case}) should name {missing}: {stderr}"
        );
        assert!(!out.exists(), "transcode ({case}) wrote nothing");
        eprintln!(
            "FIGURE: {case}: serve exits with {status} after {:.2} s: {}; transcode exits with {}: {}",
            took.as_secs_f64(),
            log.lines().last().unwrap_or_default(),
            output.status,
            stderr.trim()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_storage_is_a_clear_error_at_start() {
    let dir = TestDir::new("rel-storage-unwritable");
    // A file where the storage folder should be.
    let file = dir.join("storage-is-a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    // A folder on a read-only mount (mode 0555 would not stop root).
    let read_only = dir.join("read-only");
    std::fs::create_dir_all(&read_only).unwrap();
    let mount = Mount::read_only_bind(&read_only);
    if let Err(reason) = &mount {
        eprintln!("read-only case skipped: cannot bind-mount ({reason})");
    }
    let mut cases = vec![("a file", file.clone(), "Not a directory")];
    if mount.is_ok() {
        cases.push((
            "a read-only mount",
            read_only.clone(),
            "Read-only file system",
        ));
    }
    for (case, storage, reason) in cases {
        let started = Instant::now();
        let (status, log) = Pod::builder(&storage)
            .env("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())
            .run_until_exit(Duration::from_secs(30));
        let took = started.elapsed();
        let status = status.unwrap_or_else(|| {
            panic!("serve on {case} still running after 30 s instead of refusing:\n{log}")
        });
        assert!(!status.success(), "serve on {case} exited with {status}");
        let line = log
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("no error line for {case}:\n{log}"));
        assert!(
            line.contains("storage folder is not usable")
                && line.contains(storage.to_str().unwrap())
                && line.contains(reason),
            "serve on {case} should name the folder and say why: {line}"
        );
        assert!(!log.contains("panicked"), "{log}");
        eprintln!(
            "FIGURE: storage is {case}: serve exits with {status} after {:.2} s: {line}",
            took.as_secs_f64()
        );
    }
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"not a folder",
        "the file is left alone"
    );
    drop(mount);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_waiting_on_demand_request() {
    let dir = TestDir::new("rel-sigterm-waits");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(8.0).size(640, 360));
    // Every 360p encode is held for a minute: requests for 360p segments
    // wait until the pod stops.
    let wrapper = hold_wrapper(dir.path(), "-360p-seg_", Duration::from_secs(60));
    let grace = 10;
    let mut pod = Pod::builder(&dir.join("storage"))
        .env("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())
        .env("SEGSWARM_SHUTDOWN_GRACE", grace.to_string())
        .path_prefix(&wrapper.bin_dir)
        .start()
        .await;
    let job = pod
        .submit(json!({
            "source": source.to_str().unwrap(),
            "mode": "on_demand",
            "ladder": ["240p", "360p"],
        }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    pod.wait_status(&id, &["playable"], Duration::from_secs(60))
        .await;

    // Six players: every 360p segment, segment 1 three times.
    let segments = [0, 1, 1, 1, 2, 3];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let mut waiting = Vec::new();
    for index in segments {
        let url = pod.url(&format!("/hls/{id}/360p/seg_{index:05}.ts"));
        let client = client.clone();
        waiting.push(tokio::spawn(async move {
            let resp = client.get(&url).send().await;
            let answered = Instant::now();
            match resp {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body = resp.text().await.map_err(|e| e.to_string());
                    (index, Ok((status, body)), answered)
                }
                Err(e) => (index, Err(format!("{e:?}")), answered),
            }
        }));
    }
    let all_held = wait_for(Duration::from_secs(60), || {
        (0..4).all(|i| !wrapper.matching(&format!("-360p-seg_{i:05}.ts")).is_empty())
    })
    .await;
    assert!(
        all_held,
        "the requested encodes did not all start; pod log:\n{}",
        pod.log_text()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "a request was answered before SIGTERM; the encodes should be held"
    );

    let sent = Instant::now();
    pod.sigterm();
    let mut latencies = Latencies::default();
    for request in waiting {
        let (index, result, answered) = request.await.unwrap();
        let after = answered.saturating_duration_since(sent);
        let (status, body) = result.unwrap_or_else(|e| {
            panic!("request for segment {index} got no HTTP answer after SIGTERM: {e}")
        });
        let body = body.unwrap_or_else(|e| panic!("segment {index}: body cut: {e}"));
        assert_eq!(status, 503, "segment {index}: {body}");
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("segment {index}: body is not JSON ({e}): {body}"));
        assert_eq!(json["error"]["code"], "shutting_down", "{json}");
        assert!(
            after < Duration::from_secs(5),
            "segment {index} answered {after:?} after SIGTERM"
        );
        latencies.push(after);
    }
    let status = pod
        .wait_exit(Duration::from_secs(grace + 20))
        .await
        .expect("the pod did not exit after SIGTERM");
    let exited_after = sent.elapsed();
    assert!(status.success(), "pod exited with {status}");
    assert!(
        exited_after < Duration::from_secs(grace),
        "the pod took {exited_after:?} to exit, grace is {grace} s"
    );
    let job_dir = pod.job_dir(&id);
    assert!(
        ffmpeg_processes_mentioning(job_dir.to_str().unwrap()).is_empty(),
        "ffmpeg left behind"
    );
    eprintln!(
        "FIGURE: SIGTERM with 6 requests waiting for on-demand segments: all answered 503 shutting_down, \
         {} after the signal; pod exited {:.2} s after it (grace {grace} s)",
        latencies.summary(),
        exited_after.as_secs_f64()
    );
}

/// What a load request was for, for per-group figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    Master,
    MediaPlaylist,
    Segment,
    Submit,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_hls_gets_and_submissions_all_answered_correctly() {
    let dir = TestDir::new("rel-load");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(6.0).size(640, 360));
    let pod = Pod::builder(&dir.join("storage"))
        .env("SEGSWARM_SOURCE_ROOTS", dir.path().to_str().unwrap())
        .env("SEGSWARM_SLOTS", "1")
        .start()
        .await;
    let job = pod
        .submit(json!({ "source": source.to_str().unwrap() }))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let job = pod.wait_terminal(&id, JOB_LIMIT).await;
    assert_eq!(job["status"], "done", "{job}");
    let job_dir = pod.job_dir(&id);

    // Every file of the finished job, by group, with its bytes.
    let mut files: Vec<(Group, String, Vec<u8>)> = Vec::new();
    let mut add = |group: Group, rel: String| {
        let bytes = std::fs::read(job_dir.join(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        files.push((group, rel, bytes));
    };
    add(Group::Master, "master.m3u8".into());
    for folder in ["240p", "360p", "audio/0"] {
        add(Group::MediaPlaylist, format!("{folder}/index.m3u8"));
        for seg in common::seg_files(&job_dir.join(folder)) {
            let name = seg.file_name().unwrap().to_str().unwrap().to_string();
            add(Group::Segment, format!("{folder}/{name}"));
        }
    }
    let masters: Vec<_> = files.iter().filter(|f| f.0 == Group::Master).collect();
    let playlists: Vec<_> = files
        .iter()
        .filter(|f| f.0 == Group::MediaPlaylist)
        .collect();
    let segments: Vec<_> = files.iter().filter(|f| f.0 == Group::Segment).collect();
    assert!(segments.len() >= 6, "segments: {}", segments.len());
    // 200 GETs: 40 master, 60 media playlists, 100 segments.
    let mut plan: Vec<(Group, String, Vec<u8>)> = Vec::new();
    for i in 0..200 {
        let (group, rel, bytes) = match i % 10 {
            0 | 1 => masters[0],
            2..=4 => playlists[i % playlists.len()],
            _ => segments[i % segments.len()],
        };
        plan.push((*group, rel.clone(), bytes.clone()));
    }

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(300)
        .build()
        .unwrap();
    let barrier = Arc::new(Barrier::new(250));
    let mut tasks = Vec::new();
    for (group, rel, expected) in &plan {
        let url = pod.url(&format!("/hls/{id}/{rel}"));
        tasks.push(spawn_get(&client, url, *group, rel, expected, &barrier));
    }
    for i in 0..50 {
        let url = pod.url("/v1/jobs");
        let (client, barrier) = (client.clone(), barrier.clone());
        // Valid bodies; on-demand so that the queue behind them stays light.
        let body = json!({
            "source": source.to_str().unwrap(),
            "mode": "on_demand",
            "ladder": ["240p"],
            "priority": i % 3,
        });
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let started = Instant::now();
            let resp = client.post(&url).json(&body).send().await;
            let (result, id) = match resp {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let job: Value = resp.json().await.unwrap_or(Value::Null);
                    let id = job["id"].as_str().map(str::to_string);
                    if status == 201 && job["status"] == "queued" && id.is_some() {
                        (Ok(()), id)
                    } else {
                        (Err(format!("{status}: {job}")), None)
                    }
                }
                Err(e) => (Err(format!("{e:?}")), None),
            };
            (Group::Submit, String::new(), result, started.elapsed(), id)
        }));
    }

    let (latencies, failures, mut submitted) = collect(tasks).await;
    assert!(
        failures.is_empty(),
        "{} of 250 requests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    submitted.sort();
    submitted.dedup();
    assert_eq!(submitted.len(), 50, "50 distinct jobs");
    for (group, samples) in &latencies {
        // A sanity ceiling only; the figures are what matters.
        assert!(
            samples.max() < Duration::from_secs(30),
            "{group:?}: {}",
            samples.summary()
        );
    }
    // The queue drains: every submitted job is planned and playable.
    let drained = Instant::now();
    for id in &submitted {
        let job = pod
            .wait_status(id, &["playable", "done"], Duration::from_secs(120))
            .await;
        assert_eq!(job["mode"], "on_demand");
    }
    let drained_after = drained.elapsed();
    let (status, list) = pod.get_json("/v1/jobs?limit=100").await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 51, "{list}");
    let metrics = pod.metrics().await;
    let errors_5xx: f64 = ["500", "502", "503", "504"]
        .iter()
        .map(|s| {
            metric_value(&metrics, "segswarm_http_requests_total", &[("status", s)]).unwrap_or(0.0)
        })
        .sum();
    assert_eq!(errors_5xx, 0.0, "no 5xx answered:\n{metrics}");

    // The same 200 GETs again on the connections of the first burst (the
    // submitted jobs may still encode their audio and thumbnails).
    let barrier = Arc::new(Barrier::new(200));
    let tasks = plan
        .iter()
        .map(|(group, rel, expected)| {
            let url = pod.url(&format!("/hls/{id}/{rel}"));
            spawn_get(&client, url, *group, rel, expected, &barrier)
        })
        .collect();
    let (warm, failures, _) = collect(tasks).await;
    assert!(
        failures.is_empty(),
        "{} of 200 warm requests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    for (group, samples) in &latencies {
        eprintln!(
            "FIGURE: load (200 HLS GETs + 50 POST /v1/jobs at once, new connections, 1 pod, 2 cores): {group:?} {}",
            samples.summary()
        );
    }
    eprintln!(
        "FIGURE: load: the 50 submitted on-demand jobs were all playable {:.1} s after the burst",
        drained_after.as_secs_f64()
    );
    for (group, samples) in warm.iter().filter(|(_, s)| !s.is_empty()) {
        assert!(
            samples.max() < Duration::from_secs(30),
            "{group:?}: {}",
            samples.summary()
        );
        eprintln!(
            "FIGURE: load (200 HLS GETs at once again, reused connections, the 50 jobs planned): {group:?} {}",
            samples.summary()
        );
    }
}

/// What one load request gave: its group, the file, Ok or why not, how long
/// it took, and the id of a job it created.
type Outcome = (Group, String, Result<(), String>, Duration, Option<String>);

/// A GET that waits at `barrier`, then checks for 200 and `expected`'s bytes.
fn spawn_get(
    client: &reqwest::Client,
    url: String,
    group: Group,
    rel: &str,
    expected: &[u8],
    barrier: &Arc<Barrier>,
) -> tokio::task::JoinHandle<Outcome> {
    let (client, barrier) = (client.clone(), barrier.clone());
    let (rel, expected) = (rel.to_string(), expected.to_vec());
    tokio::spawn(async move {
        barrier.wait().await;
        let started = Instant::now();
        let result = match client.get(&url).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.bytes().await {
                    Ok(body) if status == 200 && body.as_ref() == expected.as_slice() => Ok(()),
                    Ok(body) => Err(format!(
                        "{status}, {} bytes (expected 200, {} bytes)",
                        body.len(),
                        expected.len()
                    )),
                    Err(e) => Err(format!("{status}, body cut: {e}")),
                }
            }
            Err(e) => Err(format!("{e:?}")),
        };
        (group, rel, result, started.elapsed(), None)
    })
}

/// Awaits load requests: latencies by group, failures, created job ids.
async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Outcome>>,
) -> (Vec<(Group, Latencies)>, Vec<String>, Vec<String>) {
    let mut latencies: Vec<(Group, Latencies)> = [
        Group::Master,
        Group::MediaPlaylist,
        Group::Segment,
        Group::Submit,
    ]
    .into_iter()
    .map(|g| (g, Latencies::default()))
    .collect();
    let mut failures = Vec::new();
    let mut submitted = Vec::new();
    for task in tasks {
        let (group, rel, result, took, id) = task.await.expect("load request task");
        if let Err(e) = result {
            failures.push(format!("{group:?} {rel}: {e}"));
        }
        submitted.extend(id);
        if let Some((_, samples)) = latencies.iter_mut().find(|(g, _)| *g == group) {
            samples.push(took);
        }
    }
    (latencies, failures, submitted)
}
