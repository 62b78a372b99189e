//! Running ffmpeg and ffprobe as child processes.
//!
//! Owns how a child is spawned (directly, never through a shell, in its own
//! process group so that killing it takes every thread and helper with it),
//! how its `-progress` output is watched for stalls, and how it is killed on
//! cancellation. It does not know what the arguments mean; [`crate::encode`]
//! and [`crate::probe`] build those.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How much of a child's stderr is kept for error messages.
const STDERR_TAIL: usize = 2000;

/// Why a child process did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{program} not found on PATH (install ffmpeg)")]
    NotFound { program: &'static str },
    #[error("could not start {program}: {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("{program} exited with {status}: {stderr}")]
    Failed {
        program: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{program} made no progress for {stalled_for:?} and was killed")]
    Stalled {
        program: &'static str,
        stalled_for: Duration,
    },
    #[error("{program} was canceled")]
    Canceled { program: &'static str },
    #[error("waiting for {program} failed: {source}")]
    Wait {
        program: &'static str,
        source: std::io::Error,
    },
}

impl RunError {
    /// True when the run was stopped on purpose (cancel, shutdown, lost lease).
    pub fn is_canceled(&self) -> bool {
        matches!(self, RunError::Canceled { .. })
    }

    /// True when ffmpeg failed because not one frame reached its filter
    /// graph before the input ended: the input decodes to nothing in the
    /// range asked for. ffmpeg 5.1 then stops with `Cannot determine
    /// format of input stream 0:0 after EOF` (it configures the graph from
    /// the first decoded frame) instead of writing an empty output. Like
    /// [`RunError::is_disk_full`], it reads ffmpeg's text, here and only
    /// here.
    pub fn decoded_nothing(&self) -> bool {
        matches!(self, RunError::Failed { stderr, .. }
            if stderr.contains("Cannot determine format of input stream")
                && stderr.contains("after EOF"))
    }

    /// True when the program failed because the disk was full or a quota
    /// exceeded. ffmpeg says so only in its stderr, with the C library's
    /// text for the errno (the same text `std::io::Error` prints), so this
    /// (with [`RunError::decoded_nothing`]) is where ffmpeg's text is read.
    pub fn is_disk_full(&self) -> bool {
        let RunError::Failed { stderr, .. } = self else {
            return false;
        };
        [nix::errno::Errno::ENOSPC, nix::errno::Errno::EDQUOT]
            .into_iter()
            .any(|errno| {
                let text = std::io::Error::from_raw_os_error(errno as i32).to_string();
                let text = text.split(" (os error").next().unwrap_or_default();
                !text.is_empty() && stderr.contains(text)
            })
    }
}

/// What a run may be told or watched for while it runs.
pub struct RunControl {
    /// Cancels the run: the process group is killed at once.
    pub cancel: CancellationToken,
    /// A run that prints no progress line for this long is killed.
    pub stall_timeout: Duration,
    /// Receives the time of the latest progress line (lease renewal reads it).
    pub progress: Option<watch::Sender<Instant>>,
    /// Told the pid of each child once it is spawned (a batch may run more
    /// than one, one after the other), so that its CPU time can be read
    /// while it runs. Dropped by its owner when its runs have ended, after
    /// the last child has exited: a receiver that finds it closed knows the
    /// processes are gone.
    pub pid: Option<watch::Sender<Option<u32>>>,
}

/// What a successful ffmpeg run leaves besides its outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutput {
    /// The tail of its stderr. At `-v error` a run whose input decodes
    /// cleanly prints nothing; a damaged input makes the decoder complain
    /// here while the run still succeeds.
    pub stderr: String,
}

/// Runs `ffmpeg` with `args` (which must not include `-progress`) at
/// `niceness` (0: the pod's own priority; higher: yields the CPU to others),
/// watching its progress. Returns its stderr's tail on success, or a
/// [`RunError`].
pub async fn run_ffmpeg(
    args: Vec<OsString>,
    niceness: i32,
    control: &RunControl,
) -> Result<RunOutput, RunError> {
    const PROGRAM: &str = "ffmpeg";
    let mut command = child_command(PROGRAM);
    if niceness != 0 {
        lower_priority(&mut command, niceness);
    }
    command.args(["-progress", "pipe:1", "-nostats"]).args(args);
    let mut child = command
        .spawn()
        .map_err(|source| spawn_error(PROGRAM, source))?;
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    if let Some(report) = &control.pid {
        report.send_replace(child.id());
    }
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    // Collect the tail of stderr for the error message.
    let stderr_task = tokio::spawn(async move {
        let mut collected = Vec::new();
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_end(&mut collected).await;
        }
        tail(&collected)
    });

    let (last_tx, last_rx) = watch::channel(Instant::now());
    let progress = control.progress.clone();
    let progress_task = tokio::spawn(async move {
        let Some(stdout) = stdout else { return };
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("progress=") {
                let now = Instant::now();
                let _ = last_tx.send(now);
                if let Some(progress) = &progress {
                    let _ = progress.send(now);
                }
            }
        }
    });

    let stall_timeout = control.stall_timeout;
    let outcome = loop {
        let since_progress = last_rx.borrow().elapsed();
        if since_progress >= stall_timeout {
            break Err(RunError::Stalled {
                program: PROGRAM,
                stalled_for: since_progress,
            });
        }
        let check_in = stall_timeout - since_progress;
        tokio::select! {
            status = child.wait() => break status.map_err(|source| RunError::Wait { program: PROGRAM, source }),
            _ = control.cancel.cancelled() => break Err(RunError::Canceled { program: PROGRAM }),
            _ = tokio::time::sleep(check_in) => continue,
        }
    };

    let status = match outcome {
        Ok(status) => status,
        Err(err) => {
            kill_group(pgid);
            let _ = child.wait().await;
            progress_task.abort();
            stderr_task.abort();
            return Err(err);
        }
    };
    // The group may still hold helpers if ffmpeg spawned any; make sure
    // nothing of this run outlives it.
    kill_group(pgid);
    let _ = progress_task.await;
    let stderr = stderr_task.await.unwrap_or_default();
    if status.success() {
        Ok(RunOutput { stderr })
    } else {
        Err(RunError::Failed {
            program: PROGRAM,
            status,
            stderr,
        })
    }
}

/// Runs `ffprobe` with `args` and returns its stdout. Killed after
/// `timeout`.
pub async fn run_ffprobe(args: Vec<OsString>, timeout: Duration) -> Result<Vec<u8>, RunError> {
    run_ffprobe_with_stderr(args, timeout)
        .await
        .map(|(stdout, _)| stdout)
}

/// Like [`run_ffprobe`], also returning the tail of stderr of a successful
/// run (ffprobe reports damage such as a partial file there and exits 0).
pub async fn run_ffprobe_with_stderr(
    args: Vec<OsString>,
    timeout: Duration,
) -> Result<(Vec<u8>, String), RunError> {
    const PROGRAM: &str = "ffprobe";
    let mut command = child_command(PROGRAM);
    command.args(args);
    let child = command
        .spawn()
        .map_err(|source| spawn_error(PROGRAM, source))?;
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => {
            kill_group(pgid);
            Err(RunError::Stalled {
                program: PROGRAM,
                stalled_for: timeout,
            })
        }
        Ok(Err(source)) => Err(RunError::Wait {
            program: PROGRAM,
            source,
        }),
        Ok(Ok(output)) if output.status.success() => Ok((output.stdout, tail(&output.stderr))),
        Ok(Ok(output)) => Err(RunError::Failed {
            program: PROGRAM,
            status: output.status,
            stderr: tail(&output.stderr),
        }),
    }
}

/// A command for `program`, spawned the one way every child is: no shell,
/// no stdin, output piped, in its own process group, killed if dropped and
/// when this process dies.
fn child_command(program: &str) -> Command {
    let mut command = Command::new(program);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(&mut command);
    command
}

/// Asks the kernel to SIGKILL the child when this process dies, so a pod
/// killed with SIGKILL leaves no ffmpeg behind (its own process group would
/// otherwise survive it).
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only
    // calls prctl(2), which is async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// Makes the child run at `niceness` (it and the threads it starts).
fn lower_priority(command: &mut Command, niceness: i32) {
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setpriority(2), which is async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::setpriority(libc::PRIO_PROCESS, 0, niceness) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

fn spawn_error(program: &'static str, source: std::io::Error) -> RunError {
    if source.kind() == std::io::ErrorKind::NotFound {
        RunError::NotFound { program }
    } else {
        RunError::Spawn { program, source }
    }
}

/// SIGKILLs a process group; a group that is already gone is fine.
fn kill_group(pgid: Option<Pid>) {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}

/// The last [`STDERR_TAIL`] bytes of `bytes` as trimmed text.
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

/// Checks that ffmpeg and ffprobe can be started; the binary calls this at
/// start so a missing install is one clear message, not a failed unit.
pub async fn check_installed() -> Result<(), RunError> {
    for program in ["ffmpeg", "ffprobe"] {
        let program: &'static str = program;
        let status = Command::new(program)
            .arg("-version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(|source| spawn_error(program, source))?;
        if !status.success() {
            return Err(RunError::Failed {
                program,
                status,
                stderr: "`-version` failed".into(),
            });
        }
    }
    Ok(())
}
