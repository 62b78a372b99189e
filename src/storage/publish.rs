//! How files become visible: fsync, rename into place, fsync the folder;
//! and the only deletes (abandoned in-progress files, a purged job).
//!
//! Every file a reader can see got there through [`publish`] or
//! [`JobLayout::write_atomic`], so it is whole under its final name.

use super::{JobLayout, StorageError};
use m3u8_rs::MediaPlaylist;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A playlist on storage that could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum PlaylistError {
    #[error(transparent)]
    Read(#[from] StorageError),
    #[error("playlist {path} does not parse: {reason}")]
    Parse { path: PathBuf, reason: String },
}

/// Reads and parses the media playlist at `path`.
pub fn read_playlist(path: &Path) -> Result<MediaPlaylist, PlaylistError> {
    let bytes = std::fs::read(path).map_err(|e| StorageError::new("reading", path, e))?;
    crate::hls::parse_media_playlist(&bytes).map_err(|reason| PlaylistError::Parse {
        path: path.to_path_buf(),
        reason,
    })
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

impl JobLayout {
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
        match std::fs::remove_dir_all(self.dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StorageError::new("removing", self.dir(), e))
            }
            _ => Ok(()),
        }
    }
}
