//! Watching that what a job publishes is final: a published file is never
//! replaced or removed, and a playlist only grows.
//!
//! [`FinalityWatch`] polls a job folder on its own thread (`.tmp/` and dot
//! files skipped, they are not served) and records:
//! - every media file (segments, init segments, images) by inode at first
//!   sight: a later poll that finds another inode under that name (a file
//!   renamed over it) or none is a violation;
//! - every media playlist's segment count and ENDLIST: a version with fewer
//!   segments, or without ENDLIST after one had it, is a violation;
//! - the master playlist's variants: one that disappears is a violation.
//!
//! It reads what a player or CDN polling the folder would see; a change
//! between two polls (faster than the period) can be missed, so the period
//! is short (100 ms in the tests).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use m3u8_rs::Playlist;

/// What a [`FinalityWatch`] saw.
#[derive(Debug, Default)]
pub struct FinalityReport {
    /// How many times the folder was read.
    pub polls: usize,
    /// Media files seen, by path: the inode first seen.
    pub files: BTreeMap<PathBuf, u64>,
    /// Media playlists seen, by path: (segments, ENDLIST) last read.
    pub playlists: BTreeMap<PathBuf, (usize, bool)>,
    /// Distinct playlist versions read (path, segments, ENDLIST).
    pub playlist_versions: usize,
    /// Every broken promise, with when (seconds since the start) and what.
    pub violations: Vec<String>,
}

/// A thread polling a job folder; [`FinalityWatch::finish`] stops it.
pub struct FinalityWatch {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<FinalityReport>>,
}

impl FinalityWatch {
    /// Polls `job_dir` every `every`.
    pub fn start(job_dir: &Path, every: Duration) -> FinalityWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let dir = job_dir.to_path_buf();
        let handle = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut report = FinalityReport::default();
            let mut master = BTreeSet::new();
            let mut versions = BTreeSet::new();
            loop {
                let last = flag.load(Ordering::Relaxed);
                let at = started.elapsed().as_secs_f64();
                poll(&dir, at, &mut report, &mut master, &mut versions);
                if last {
                    report.playlist_versions = versions.len();
                    return report;
                }
                std::thread::sleep(every);
            }
        });
        FinalityWatch {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops polling after one last pass and returns what was seen.
    pub fn finish(mut self) -> FinalityReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("finished once")
            .join()
            .expect("finality watch thread panicked")
    }
}

fn is_media(name: &str) -> bool {
    [".ts", ".m4s", ".mp4", ".webp", ".jpg", ".vtt"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// Every servable file under `dir` (not `.tmp/`, not dot files).
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => files(&path, out),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
}

fn poll(
    dir: &Path,
    at: f64,
    report: &mut FinalityReport,
    master: &mut BTreeSet<String>,
    versions: &mut BTreeSet<(PathBuf, usize, bool)>,
) {
    report.polls += 1;
    let mut now = Vec::new();
    files(dir, &mut now);
    let present: BTreeSet<&PathBuf> = now.iter().collect();
    for (path, inode) in &report.files {
        if !present.contains(path) {
            report.violations.push(format!(
                "{at:.1} s: {} (inode {inode}) was removed",
                path.display()
            ));
        }
    }
    for path in &now {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(name) = name else { continue };
        if is_media(&name) {
            let Ok(meta) = std::fs::metadata(path) else {
                continue; // removed between the listing and now: next poll
            };
            let first = *report.files.entry(path.clone()).or_insert(meta.ino());
            if first != meta.ino() {
                report.violations.push(format!(
                    "{at:.1} s: {} was replaced (inode {first} -> {})",
                    path.display(),
                    meta.ino()
                ));
                report.files.insert(path.clone(), meta.ino());
            }
        } else if name.ends_with(".m3u8") {
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            match m3u8_rs::parse_playlist_res(&bytes) {
                Ok(Playlist::MediaPlaylist(playlist)) => {
                    let now = (playlist.segments.len(), playlist.end_list);
                    versions.insert((path.clone(), now.0, now.1));
                    if let Some(&(segments, ended)) = report.playlists.get(path) {
                        if now.0 < segments {
                            report.violations.push(format!(
                                "{at:.1} s: {} shrank from {segments} to {} segments",
                                path.display(),
                                now.0
                            ));
                        }
                        if ended && !now.1 {
                            report
                                .violations
                                .push(format!("{at:.1} s: {} lost ENDLIST", path.display()));
                        }
                    }
                    report.playlists.insert(path.clone(), now);
                }
                Ok(Playlist::MasterPlaylist(playlist)) => {
                    let variants: BTreeSet<String> =
                        playlist.variants.iter().map(|v| v.uri.clone()).collect();
                    for gone in master.difference(&variants) {
                        report.violations.push(format!(
                            "{at:.1} s: the master playlist no longer lists {gone}"
                        ));
                    }
                    master.extend(variants);
                }
                Err(_) => report
                    .violations
                    .push(format!("{at:.1} s: {} does not parse", path.display())),
            }
        }
    }
}
