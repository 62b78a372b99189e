//! The binary under test, scratch directories and process bookkeeping
//! (leftover ffmpeg processes, a process's memory and CPU time).

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the `segswarm` binary that cargo built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_segswarm"))
}

/// A scratch directory under the system temp dir, unique per test.
///
/// It is removed when the test passes and kept (its path is printed) when the
/// test panics, so a failing run leaves its media and HLS output to inspect.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates `$TMPDIR/segswarm-test-<label>-<uuid>`.
    pub fn new(label: &str) -> TestDir {
        let path = std::env::temp_dir().join(format!(
            "segswarm-test-{label}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(name)`.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed; kept scratch dir {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs `segswarm transcode <input> <out> <extra...>` with `--no-progress` and
/// returns its output whatever the exit status.
pub fn run_transcode(input: impl AsRef<OsStr>, out: &Path, extra: &[&str]) -> Output {
    transcode_command(input, out, extra)
        .output()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin().display()))
}

/// The command [`run_transcode`] runs, for tests that need to spawn it
/// themselves (to kill it, for example).
pub fn transcode_command(input: impl AsRef<OsStr>, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("transcode")
        .arg(input)
        .arg(out)
        .arg("--no-progress")
        .args(extra)
        .env_remove("REDIS_URL");
    cmd
}

/// Asserts that a transcode run succeeded and printed the documented summary
/// line last; returns its stdout.
pub fn assert_transcode_ok(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "segswarm transcode failed with {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    assert!(
        !stderr.contains("panicked"),
        "segswarm transcode panicked:\n{stderr}"
    );
    // A healthy source fills nothing (damaged sources: tests/damaged_sources.rs).
    assert!(
        !stderr.contains("the source is damaged") && !stderr.contains("is cut off"),
        "segswarm transcode filled frames of a source it should decode whole:\n{stderr}"
    );
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
    assert!(
        last.is_some_and(|l| l.starts_with("done:") && l.contains("renditions")),
        "last stdout line should be the `done: N renditions, ...` summary, got {last:?}\n\
         --- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    stdout
}

/// Sorted `seg_*.ts` files of one rendition folder (empty if it does not exist).
pub fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("seg_") && n.ends_with(".ts"))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Live (non-zombie) ffmpeg/ffprobe processes whose command line mentions
/// `needle`, as `(pid, cmdline)`.
pub fn ffmpeg_processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some(program) = args.first() else {
            continue;
        };
        let name = Path::new(program)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !(name == "ffmpeg" || name == "ffprobe") {
            continue;
        }
        // A zombie's cmdline is empty, so reaching here means it is alive, but
        // check the state anyway in case the kernel raced us.
        let state = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        let cmdline = args.join(" ");
        if !zombie && cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Resident memory (`VmRSS` in `/proc/<pid>/status`) of one process, not its
/// children, in MB.
pub fn rss_mb(pid: u32) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}:\n{status}"));
    kb / 1024.0
}

/// CPU time (user + system) of one process so far, all its threads, in
/// seconds: `/proc/<pid>/stat` counts clock ticks of 1/100 s (the Linux
/// user ABI). `std::process::id()` gives this process's own.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // After the command name: state is field 0, utime 11, stime 12.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => panic!("cannot read utime and stime from /proc/{pid}/stat: {stat}"),
    }
}

/// CPU time (user + system) of one process and of the children it has
/// waited for (`cutime` + `cstime`: for a pod, the ffmpeg and ffprobe runs
/// it reaped), in seconds of `/proc/<pid>/stat`'s 1/100 s ticks.
pub fn cpu_seconds_with_children(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // After the command name: utime 11, stime 12, cutime 13, cstime 14.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: Option<Vec<f64>> = (11..=14)
        .map(|i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .collect();
    match ticks {
        Some(ticks) => ticks.iter().sum::<f64>() / 100.0,
        None => panic!("cannot read CPU times from /proc/{pid}/stat: {stat}"),
    }
}
