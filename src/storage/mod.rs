//! The storage layout and the only way files become visible on it.
//!
//! Owns every path and file name under the storage root ([`Storage`] for the
//! root, [`JobLayout`] for one job's folder: one place knows the layout) and
//! the publish step: write under `.tmp/`, fsync, then into place with
//! no-replace semantics, fsync the folder ([`publish`]). A reader never
//! sees a partial file under a final name, and a published output is
//! final: a second writer of the same name gets [`Published::AlreadyThere`].
//! Only playlists are rewritten, and only when the caller's rule accepts
//! the file they replace ([`JobLayout::rewrite_if`]). Storage never deletes
//! a file another pod may be serving: only an explicit purge of a whole
//! job, and the sweeps of abandoned `.tmp/` leftovers (by age when a job
//! starts, by claim in [`sweep`]), remove files. It
//! knows nothing of what a playlist says beyond reading one back
//! ([`read_playlist`]).
//! Lookups that must see past a network file system's cached "no such
//! file" go through [`revalidate`] (`lookup.rs`).

mod layout;
mod lookup;
mod plan_file;
mod publish;
mod sweep;

pub use layout::{AudioWorkDir, JobLayout};
pub use lookup::revalidate;
pub use plan_file::{read_plan, write_plan, PlanFileError};
pub use publish::{publish, read_playlist, PlaylistError, Published};

use std::path::{Path, PathBuf};

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

/// The storage root shared by every pod: `<root>/jobs/<job-id>/...` and the
/// watch folder's ledger `<root>/watch/`.
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

    pub fn job(&self, id: crate::JobId) -> JobLayout {
        JobLayout::new(self.jobs_dir().join(id.to_string()))
    }

    /// Where the watch folder remembers which files became jobs (one marker
    /// per source file).
    pub fn watch_ledger_dir(&self) -> PathBuf {
        self.root.join("watch")
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
