//! Watching a job folder while it is being written: every file a reader can
//! see under a final name must be whole, whatever goes wrong meanwhile.
//!
//! [`FolderWatch`] polls the folder on its own thread and checks each new or
//! changed file once (`.tmp/` is skipped, it is not served):
//! - a video segment (`<rendition>/seg_*.ts`): ffprobe reads it without an
//!   error, its first packet is a keyframe, and it has the expected number
//!   of frames;
//! - an audio segment (`audio/<track>/seg_*.ts`): ffprobe reads it without an
//!   error and it has packets;
//! - a playlist: it parses, and every segment a media playlist lists exists
//!   (true of an ingest job, whose playlists list what was published).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use m3u8_rs::Playlist;

/// What a [`FolderWatch`] saw.
#[derive(Debug, Default)]
pub struct WatchReport {
    /// How many times the folder was listed.
    pub snapshots: usize,
    /// How many file versions were checked (a rewritten playlist counts
    /// once per version).
    pub files_checked: usize,
    /// Video and audio segments checked.
    pub segments_checked: usize,
    /// Every file that was not whole, with the reason.
    pub violations: Vec<String>,
}

/// A thread polling a job folder; [`FolderWatch::finish`] stops it.
pub struct FolderWatch {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<WatchReport>>,
}

impl FolderWatch {
    /// Polls `job_dir` every `every`; video segments must have
    /// `frames_per_segment` frames.
    pub fn start(job_dir: &Path, frames_per_segment: usize, every: Duration) -> FolderWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let dir = job_dir.to_path_buf();
        let handle = std::thread::spawn(move || {
            let mut report = WatchReport::default();
            let mut seen = HashSet::new();
            loop {
                // One last pass after the stop, so the final state is checked.
                let last = flag.load(Ordering::Relaxed);
                check_folder(&dir, frames_per_segment, &mut seen, &mut report);
                if last {
                    return report;
                }
                std::thread::sleep(every);
            }
        });
        FolderWatch {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops polling after one last pass and returns what was seen.
    pub fn finish(mut self) -> WatchReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("finished once")
            .join()
            .expect("folder watch thread panicked")
    }
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Files of `dir` (not recursive), sorted; empty when it does not exist.
fn list(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn name_of(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

enum Kind {
    Video,
    Audio,
    Playlist,
}

fn check_folder(
    dir: &Path,
    frames: usize,
    seen: &mut HashSet<(PathBuf, u64, u64, i64, i64)>,
    report: &mut WatchReport,
) {
    report.snapshots += 1;
    let mut files = Vec::new();
    for entry in list(dir) {
        let name = name_of(&entry).to_string();
        if entry.is_dir() && name == "audio" {
            for track in list(&entry).into_iter().filter(|p| p.is_dir()) {
                files.extend(list(&track).into_iter().map(|f| (f, Kind::Audio)));
            }
        } else if entry.is_dir() && !name.starts_with('.') {
            files.extend(list(&entry).into_iter().map(|f| (f, Kind::Video)));
        } else if name.ends_with(".m3u8") {
            files.push((entry, Kind::Playlist));
        }
    }
    for (path, kind) in files {
        let name = name_of(&path).to_string();
        let kind = if name.ends_with(".m3u8") {
            Kind::Playlist
        } else if name.starts_with("seg_") && name.ends_with(".ts") {
            kind
        } else {
            continue;
        };
        // A file can be replaced (a playlist) or vanish between the listing
        // and the check; check each version once.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let key = (
            path.clone(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
        );
        if !seen.insert(key) {
            continue;
        }
        report.files_checked += 1;
        let problem = match kind {
            Kind::Video => {
                report.segments_checked += 1;
                check_segment(&path, Some(frames))
            }
            Kind::Audio => {
                report.segments_checked += 1;
                check_segment(&path, None)
            }
            Kind::Playlist => check_playlist(&path),
        };
        if let Some(problem) = problem {
            report
                .violations
                .push(format!("{}: {problem}", path.display()));
        }
    }
}

/// Why a segment is not whole, or None. `frames`: the video frames it must
/// have (None for audio: it must have packets).
fn check_segment(path: &Path, frames: Option<usize>) -> Option<String> {
    let stream = if frames.is_some() { "v:0" } else { "a:0" };
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", stream])
        .args(["-show_entries", "packet=flags", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() || !stderr.is_empty() {
        return Some(format!("ffprobe: {} {stderr}", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let flags: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    match frames {
        Some(expected) => {
            if flags.len() != expected {
                return Some(format!("{} video frames, expected {expected}", flags.len()));
            }
            if !flags[0].starts_with('K') {
                return Some(format!("first packet is not a keyframe ({})", flags[0]));
            }
            None
        }
        None => flags.is_empty().then(|| "no audio packets".to_string()),
    }
}

/// Why a playlist is not whole, or None.
fn check_playlist(path: &Path) -> Option<String> {
    // A vanished file was replaced between the listing and the read; the
    // next pass checks its successor.
    let bytes = std::fs::read(path).ok()?;
    match m3u8_rs::parse_playlist_res(&bytes) {
        Ok(Playlist::MasterPlaylist(master)) => {
            (master.variants.is_empty()).then(|| "master playlist without variants".into())
        }
        Ok(Playlist::MediaPlaylist(media)) => {
            let dir = path.parent().unwrap_or(Path::new("."));
            media
                .segments
                .iter()
                .find(|s| !dir.join(&s.uri).is_file())
                .map(|s| format!("lists {} which does not exist", s.uri))
        }
        Err(e) => Some(format!(
            "does not parse ({e:?}): {:?}",
            String::from_utf8_lossy(&bytes)
        )),
    }
}
