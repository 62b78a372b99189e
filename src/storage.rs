//! The storage layout and the only way files become visible on it.
//!
//! Owns every path of a job's folder (one place knows the layout) and the
//! publish step: write under `.tmp/`, fsync, rename into place, fsync the
//! folder. A reader never sees a partial file under a final name. Storage
//! never deletes a file another pod may be serving: only an explicit purge
//! of a whole job, and the sweep of abandoned `.tmp/` leftovers, remove
//! files.

use crate::plan::{Plan, Unit};
use crate::JobId;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// An I/O error with the file it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct StorageError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl StorageError {
    pub fn new(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        StorageError {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the disk is full (or over quota): worth saying plainly.
    pub fn is_disk_full(&self) -> bool {
        matches!(self.source.raw_os_error(), Some(28) | Some(122))
    }
}

/// The storage root shared by every pod: `<root>/jobs/<job-id>/...`.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

impl Storage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Storage { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.root.join("jobs")
    }

    pub fn job(&self, id: JobId) -> JobLayout {
        JobLayout::new(self.jobs_dir().join(id.to_string()))
    }

    /// Creates the root and checks it is writable, with a clear error if not.
    pub fn check_writable(&self) -> Result<(), StorageError> {
        let jobs = self.jobs_dir();
        std::fs::create_dir_all(&jobs).map_err(|e| StorageError::new("creating", &jobs, e))?;
        let probe = jobs.join(format!(".write-check-{}", uuid::Uuid::new_v4()));
        std::fs::write(&probe, b"ok").map_err(|e| StorageError::new("writing to", &jobs, e))?;
        std::fs::remove_file(&probe).map_err(|e| StorageError::new("removing", &probe, e))?;
        Ok(())
    }

    /// Bytes available to this process on the storage's file system, and
    /// the file system's size (`statvfs`). Cheap enough to call every second.
    pub fn free_space(&self) -> Result<FreeSpace, StorageError> {
        let stats = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| StorageError::new("measuring free space of", &self.root, e.into()))?;
        let block = stats.fragment_size() as u64;
        Ok(FreeSpace {
            available: (stats.blocks_available() as u64).saturating_mul(block),
            total: (stats.blocks() as u64).saturating_mul(block),
        })
    }
}

/// Free space on the storage's file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeSpace {
    /// What an unprivileged writer may still use.
    pub available: u64,
    /// The file system's size.
    pub total: u64,
}

/// The paths of one job's folder.
///
/// ```text
/// job.json  master.m3u8  thumbnail.webp
/// <rendition>/index.m3u8  <rendition>/seg_00000.ts ...
/// audio/<track>/index.m3u8  audio/<track>/seg_00000.ts ...
/// .tmp/   in-progress files, named per claim token
/// ```
#[derive(Debug, Clone)]
pub struct JobLayout {
    dir: PathBuf,
}

impl JobLayout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JobLayout { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn job_json(&self) -> PathBuf {
        self.dir.join("job.json")
    }

    pub fn master_playlist(&self) -> PathBuf {
        self.dir.join("master.m3u8")
    }

    pub fn thumbnail(&self) -> PathBuf {
        self.dir.join("thumbnail.webp")
    }

    pub fn rendition_dir(&self, rendition: &str) -> PathBuf {
        self.dir.join(rendition)
    }

    pub fn media_playlist(&self, rendition: &str) -> PathBuf {
        self.rendition_dir(rendition).join("index.m3u8")
    }

    pub fn segment(&self, rendition: &str, index: usize) -> PathBuf {
        self.rendition_dir(rendition).join(segment_name(index))
    }

    pub fn audio_dir(&self, track: usize) -> PathBuf {
        self.dir.join("audio").join(track.to_string())
    }

    pub fn audio_playlist(&self, track: usize) -> PathBuf {
        self.audio_dir(track).join("index.m3u8")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join(".tmp")
    }

    /// A fresh in-progress path for `name`, unique to `token`.
    pub fn tmp_path(&self, token: &str, name: &str) -> PathBuf {
        self.tmp_dir().join(format!("{token}-{name}"))
    }

    /// The file whose existence means `unit` is done. For audio this is the
    /// playlist, published after all of its segments.
    pub fn unit_output(&self, unit: &Unit) -> PathBuf {
        match unit {
            Unit::Audio { track } => self.audio_playlist(*track),
            Unit::Thumbnail => self.thumbnail(),
            Unit::Video { rendition, index } => self.segment(rendition, *index),
        }
    }

    /// True when `unit`'s final output exists (storage is the truth).
    pub fn is_done(&self, unit: &Unit) -> bool {
        let output = self.unit_output(unit);
        match unit {
            // An audio playlist is published while the track is encoded
            // (EVENT, growing); the track is done once it has ENDLIST.
            Unit::Audio { .. } => crate::hls::is_finished_playlist(&output),
            _ => output.is_file(),
        }
    }

    /// Creates the job folder, `.tmp/` and every output folder of `plan`.
    pub fn create_dirs(&self, plan: &Plan) -> Result<(), StorageError> {
        let mut dirs = vec![self.dir.clone(), self.tmp_dir()];
        dirs.extend(plan.renditions.iter().map(|r| self.rendition_dir(&r.name)));
        dirs.extend(plan.audio.iter().map(|a| self.audio_dir(a.track)));
        for dir in dirs {
            std::fs::create_dir_all(&dir).map_err(|e| StorageError::new("creating", &dir, e))?;
        }
        Ok(())
    }

    /// Writes `bytes` to `path` atomically (tmp, fsync, rename, fsync dir).
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.tmp_path(&uuid::Uuid::new_v4().to_string(), &name);
        let tmp_dir = self.tmp_dir();
        std::fs::create_dir_all(&tmp_dir)
            .map_err(|e| StorageError::new("creating", &tmp_dir, e))?;
        let result = (|| {
            let mut file =
                File::create(&tmp).map_err(|e| StorageError::new("creating", &tmp, e))?;
            file.write_all(bytes)
                .map_err(|e| StorageError::new("writing", &tmp, e))?;
            file.sync_all()
                .map_err(|e| StorageError::new("syncing", &tmp, e))?;
            drop(file);
            rename_durable(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Removes in-progress leftovers not touched for `older_than` (an encoder
    /// killed with its pod). A live encoder writes continuously and one
    /// silent for longer than the stall timeout is killed, so a file this
    /// old belongs to nobody. Returns how many were removed.
    pub fn sweep_tmp(&self, older_than: std::time::Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(self.tmp_dir()) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age > older_than);
            if !stale {
                continue;
            }
            let path = entry.path();
            let result = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if result.is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Removes the whole job folder (purge).
    pub fn remove_all(&self) -> Result<(), StorageError> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StorageError::new("removing", &self.dir, e))
            }
            _ => Ok(()),
        }
    }
}

/// `seg_00000.ts` style name of segment `index`.
pub fn segment_name(index: usize) -> String {
    format!("seg_{index:05}.ts")
}

/// Publishes a finished file: fsync it, rename it over `to`, fsync the
/// destination folder so the rename survives a crash. Returns the seconds
/// spent (storage latency).
pub fn publish(from: &Path, to: &Path) -> Result<f64, StorageError> {
    let started = Instant::now();
    let file = File::open(from).map_err(|e| StorageError::new("opening", from, e))?;
    file.sync_all()
        .map_err(|e| StorageError::new("syncing", from, e))?;
    drop(file);
    rename_durable(from, to)?;
    Ok(started.elapsed().as_secs_f64())
}

fn rename_durable(from: &Path, to: &Path) -> Result<(), StorageError> {
    std::fs::rename(from, to).map_err(|e| StorageError::new("renaming into", to, e))?;
    if let Some(parent) = to.parent() {
        // Directory fsync is what makes the rename durable on most file
        // systems; where a folder cannot be opened for it (some network
        // file systems), the rename is still atomic, so this is best effort.
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// Reads and parses `job.json`.
pub fn read_plan(layout: &JobLayout) -> Result<Option<Plan>, PlanFileError> {
    let path = layout.job_json();
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::new("reading", &path, e).into()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| PlanFileError::Corrupt { path, source })
}

/// Writes `job.json` atomically.
pub fn write_plan(layout: &JobLayout, plan: &Plan) -> Result<(), PlanFileError> {
    let bytes = serde_json::to_vec_pretty(plan).map_err(|source| PlanFileError::Corrupt {
        path: layout.job_json(),
        source,
    })?;
    layout.write_atomic(&layout.job_json(), &bytes)?;
    Ok(())
}

/// Errors reading or writing `job.json`.
#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{path} is not a valid job file: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}
