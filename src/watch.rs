//! The watch folder: a video file that appears in `SEGSWARM_WATCH_DIR` and
//! stops growing becomes a job, exactly once.
//!
//! Owns noticing files (notify's native watcher, or its polling watcher for
//! NFS where inotify does not see other hosts' writes), waiting until a file
//! has settled, and the ledger that remembers which files became jobs (one
//! marker file per source under `<storage>/watch/`, so a restart does not
//! submit them again). It never moves, changes or deletes a source.

use crate::jobs::{JobManager, SubmitRequest};
use crate::metrics::Metrics;
use notify::{Config, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// File extensions taken as videos.
const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "m4v", "mov", "mkv", "webm", "avi", "ts", "mts", "m2ts", "mpg", "mpeg", "flv", "wmv",
    "mxf", "3gp", "ogv",
];

/// Errors starting the watcher.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watching {dir}: {source}")]
    Notify { dir: PathBuf, source: notify::Error },
    #[error("creating {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Settings of the watch folder.
pub struct WatchSettings {
    pub dir: PathBuf,
    pub poll: bool,
    /// A file must keep its size and mtime this long before it is submitted.
    pub settle: Duration,
    /// Where the ledger of submitted files lives.
    pub ledger_dir: PathBuf,
}

/// Starts watching; runs until `stop` is cancelled.
pub fn start(
    settings: WatchSettings,
    manager: Arc<JobManager>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<(), WatchError> {
    for dir in [&settings.dir, &settings.ledger_dir] {
        std::fs::create_dir_all(dir).map_err(|source| WatchError::Io {
            dir: dir.clone(),
            source,
        })?;
    }
    let (tx, rx) = mpsc::unbounded_channel::<PathBuf>();
    let handler = move |result: notify::Result<notify::Event>| {
        if let Ok(event) = result {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    };
    let notify_error = |source| WatchError::Notify {
        dir: settings.dir.clone(),
        source,
    };
    let watcher: Box<dyn Watcher + Send> = if settings.poll {
        let config = Config::default().with_poll_interval(Duration::from_secs(1));
        Box::new(PollWatcher::new(handler, config).map_err(notify_error)?)
    } else {
        Box::new(RecommendedWatcher::new(handler, Config::default()).map_err(notify_error)?)
    };
    let mut watcher = watcher;
    watcher
        .watch(&settings.dir, RecursiveMode::NonRecursive)
        .map_err(notify_error)?;
    tokio::spawn(settle_loop(settings, watcher, rx, manager, metrics, stop));
    Ok(())
}

/// A file seen and not yet submitted: its last size and mtime, and since when
/// they have not changed.
struct Candidate {
    size: u64,
    modified: Option<SystemTime>,
    stable_since: Instant,
}

async fn settle_loop(
    settings: WatchSettings,
    _watcher: Box<dyn Watcher + Send>,
    mut events: mpsc::UnboundedReceiver<PathBuf>,
    manager: Arc<JobManager>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut candidates: HashMap<PathBuf, Candidate> = HashMap::new();
    // Files already there at start count too (the ledger skips old ones).
    if let Ok(entries) = std::fs::read_dir(&settings.dir) {
        for entry in entries.flatten() {
            note(&mut candidates, entry.path());
        }
    }
    let tick = (settings.settle / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            path = events.recv() => match path {
                Some(path) => note(&mut candidates, path),
                None => return,
            },
            _ = tokio::time::sleep(tick) => {}
        }
        let mut settled = Vec::new();
        candidates.retain(|path, candidate| {
            let Ok(meta) = std::fs::metadata(path) else {
                return false; // gone
            };
            let modified = meta.modified().ok();
            if meta.len() != candidate.size || modified != candidate.modified {
                candidate.size = meta.len();
                candidate.modified = modified;
                candidate.stable_since = Instant::now();
                return true;
            }
            if candidate.size > 0 && candidate.stable_since.elapsed() >= settings.settle {
                settled.push((path.clone(), candidate.size, modified));
                return false;
            }
            true
        });
        for (path, size, modified) in settled {
            submit_once(&settings, &manager, &metrics, &path, size, modified).await;
        }
    }
}

fn note(candidates: &mut HashMap<PathBuf, Candidate>, path: PathBuf) {
    if !is_video(&path) || candidates.contains_key(&path) {
        return;
    }
    let Ok(meta) = std::fs::metadata(&path) else {
        return;
    };
    if !meta.is_file() {
        return;
    }
    candidates.insert(
        path,
        Candidate {
            size: meta.len(),
            modified: meta.modified().ok(),
            stable_since: Instant::now(),
        },
    );
}

fn is_video(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.') {
        return false; // hidden and partial-upload files
    }
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| VIDEO_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

/// Submits a settled file unless the ledger says it already became a job.
async fn submit_once(
    settings: &WatchSettings,
    manager: &Arc<JobManager>,
    metrics: &Metrics,
    path: &Path,
    size: u64,
    modified: Option<SystemTime>,
) {
    let stamp = modified
        .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut hasher = Sha256::new();
    hasher.update(path.as_os_str().as_encoded_bytes());
    hasher.update(size.to_le_bytes());
    hasher.update(stamp.to_le_bytes());
    let key: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let marker = settings.ledger_dir.join(key);
    // create_new: if two pods share the folder and storage, one wins.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
    {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => return,
        Err(err) => {
            tracing::warn!("watch ledger {}: {err}", marker.display());
            return;
        }
    }
    let request = SubmitRequest {
        source: path.display().to_string(),
        ladder: None,
        segment_duration: None,
        priority: None,
        mode: None,
        callback_url: None,
    };
    match manager.submit(request).await {
        Ok(job) => {
            metrics.watch_jobs.inc();
            let _ = std::fs::write(&marker, job.id.to_string());
            tracing::info!(job = %job.id, "watch folder: {} became a job", path.display());
        }
        Err(err) => {
            tracing::warn!("watch folder: {} not submitted: {err}", path.display());
            let _ = std::fs::remove_file(&marker);
        }
    }
}
