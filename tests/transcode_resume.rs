//! A transcode killed with SIGKILL mid-way resumes: the rerun skips what was
//! finished, completes the rest, and the killed run leaves no ffmpeg behind.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use common::process::transcode_command;
use common::{
    assert_transcode_ok, ffmpeg_processes_mentioning, gen_clip, run_transcode, seg_files,
    validate_hls, ClipSpec, TestDir,
};

const ARGS: &[&str] = &[
    "--segment-duration",
    "2",
    "--concurrency",
    "1",
    "--ladder",
    "240p,360p",
    "--preset",
    "medium",
];

/// Polls `condition` every 20 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

#[test]
fn sigkill_then_rerun_resumes() {
    let dir = TestDir::new("resume");
    let source = dir.join("source.mp4");
    // Noisy 640x360 at the medium preset: each segment takes a while to
    // encode, so the kill lands while the job is in progress.
    gen_clip(&source, &ClipSpec::new(12.0).size(640, 360).noisy());
    let out = dir.join("out");
    let lowest = out.join("240p");

    let mut child = transcode_command(&source, &out, ARGS)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn segswarm");
    let pgid = Pid::from_raw(child.id() as i32);

    let started = wait_until(Duration::from_secs(120), || {
        seg_files(&lowest).len() >= 2 || matches!(child.try_wait(), Ok(Some(_)))
    });
    let early_exit = child.try_wait().expect("try_wait");
    if early_exit.is_none() {
        killpg(pgid, Signal::SIGKILL).expect("kill the transcode's process group");
    }
    let status = child.wait().expect("wait");
    assert!(
        started,
        "no 2 segments in {} within 120 s",
        lowest.display()
    );
    assert!(
        early_exit.is_none(),
        "the transcode finished ({status:?}) before it could be killed; make the clip longer"
    );

    // Nothing the killed run started may keep running: ffmpeg children must
    // die with their parent (they are in their own process group, so killing
    // ours does not reach them). Give the kernel a moment to deliver.
    let needle = out.to_string_lossy().into_owned();
    let no_orphans = wait_until(Duration::from_secs(2), || {
        ffmpeg_processes_mentioning(&needle).is_empty()
    });
    assert!(
        no_orphans,
        "ffmpeg processes of the killed run are still alive: {:#?}",
        ffmpeg_processes_mentioning(&needle)
    );

    let master_before = out.join("master.m3u8");
    let finished_before: BTreeMap<PathBuf, (u64, SystemTime)> = seg_files(&lowest)
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).unwrap();
            (p, (m.ino(), m.modified().unwrap()))
        })
        .collect();
    assert!(finished_before.len() >= 2);
    if master_before.exists() {
        // Playlists written mid-job must not claim the job is complete.
        let text = std::fs::read_to_string(&master_before).unwrap_or_default();
        assert!(
            !text.contains("#EXT-X-ENDLIST"),
            "master.m3u8 of a killed job has ENDLIST"
        );
    }

    let rerun = run_transcode(&source, &out, ARGS);
    let stdout = assert_transcode_ok(&rerun);
    let skipped = stdout
        .lines()
        .find_map(|l| l.strip_prefix("resume: skipped "))
        .unwrap_or_else(|| panic!("no `resume: skipped N of M` line in:\n{stdout}"));
    let (n, rest) = skipped
        .split_once(" of ")
        .unwrap_or_else(|| panic!("bad resume line: {skipped}"));
    eprintln!("resume: skipped {skipped}");
    let n: usize = n.trim().parse().expect("N in `resume: skipped N of M`");
    let m: usize = rest
        .split_whitespace()
        .next()
        .and_then(|m| m.parse().ok())
        .expect("M in `resume: skipped N of M`");
    assert!(
        n >= finished_before.len() && n < m,
        "resume skipped {n} of {m} units; {} segments of 240p were finished before the kill",
        finished_before.len()
    );

    // Finished segments are skipped, not encoded again.
    for (path, (ino, mtime)) in &finished_before {
        let m = std::fs::metadata(path).unwrap();
        assert_eq!(
            (m.ino(), m.modified().unwrap()),
            (*ino, *mtime),
            "{} was rewritten by the resumed run",
            path.display()
        );
    }

    let report = validate_hls(&out, &source);
    assert_eq!(report.rendition_names(), ["240p", "360p"]);
    assert_eq!(report.rendition("240p").segments, 6);
}

/// The orphan check above must be able to fail: it finds a live ffmpeg by a
/// path on its command line, and stops finding it once it is gone.
#[test]
fn orphan_scan_sees_a_running_ffmpeg() {
    let dir = TestDir::new("orphan-scan");
    let marker = dir.join("marker-output.nut");
    let mut ffmpeg = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=64x64:rate=5:duration=60")
        .args(["-f", "nut"])
        .arg(&marker)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ffmpeg");
    let needle = dir.path().to_string_lossy().into_owned();
    let seen = wait_until(Duration::from_secs(10), || {
        !ffmpeg_processes_mentioning(&needle).is_empty()
    });
    ffmpeg.kill().expect("kill ffmpeg");
    ffmpeg.wait().expect("wait ffmpeg");
    assert!(
        seen,
        "the scan did not find ffmpeg writing {}",
        marker.display()
    );
    assert!(
        ffmpeg_processes_mentioning(&needle).is_empty(),
        "the scan still finds a reaped ffmpeg"
    );
}

/// Running the command again on a finished folder skips every unit and
/// exits at once with the same, still valid, output.
#[test]
fn rerun_of_finished_folder_skips_everything() {
    let dir = TestDir::new("resume-done");
    let source = dir.join("source.mp4");
    gen_clip(&source, &ClipSpec::new(4.0).size(320, 240));
    let out = dir.join("out");
    let args = [
        "--segment-duration",
        "2",
        "--ladder",
        "240p",
        "--preset",
        "ultrafast",
    ];
    let first = run_transcode(&source, &out, &args);
    assert_transcode_ok(&first);
    let before = std::fs::metadata(out.join("240p").join("seg_00000.ts")).expect("segment 0");

    let started = Instant::now();
    let second = run_transcode(&source, &out, &args);
    assert_transcode_ok(&second);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a rerun with nothing to do took {:?}",
        started.elapsed()
    );
    let stdout = String::from_utf8_lossy(&second.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("resume: skipped "))
        .unwrap_or_else(|| panic!("no resume line in {stdout}"));
    let numbers: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(numbers[2], numbers[4], "not everything was skipped: {line}");
    let after = std::fs::metadata(out.join("240p").join("seg_00000.ts")).expect("segment 0");
    assert_eq!(before.ino(), after.ino(), "segment 0 was rewritten");
    validate_hls(&out, &source);
}
