//! How files become visible: fsync, then into place with **no-replace**
//! semantics for every output (a published file is final), a guarded
//! rewrite for the few files that are rewritten (playlists), and the only
//! deletes (abandoned in-progress files, a purged job).
//!
//! An output (segment, thumbnail, audio segment, `job.json`) is published
//! once: `renameat2(RENAME_NOREPLACE)`, or `link()` then unlink of the
//! temporary name where the file system does not know that flag (FUSE,
//! sshfs, NFS answer EINVAL). Both are atomic, on NFS too. The first
//! complete copy wins; a later writer of the same name gets
//! [`Published::AlreadyThere`] and its copy is dropped, so a player, a CDN
//! or a Range request never sees a file change under it (x264 with two
//! threads does not repeat its bytes, so a second copy would differ).
//!
//! Playlists only grow: [`JobLayout::rewrite_if`] replaces one only when
//! the caller's rule accepts what the file holds at that moment (read just
//! before the rename); `status.json` is a pod's own record, rewritten with
//! [`JobLayout::write_atomic`]. Nothing else replaces a file.

use super::{JobLayout, StorageError};
use m3u8_rs::MediaPlaylist;
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How often [`JobLayout::rewrite_if`] reads and decides again when the
/// file was created by someone else between its read and its publish.
const REWRITE_ROUNDS: usize = 3;

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

/// Who got the name, when an output was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Our copy is the published file now.
    Won,
    /// A file of that name was already published (another pod, an earlier
    /// run); it stays, and our copy was dropped.
    AlreadyThere,
}

/// The result of one publish: who won, and the seconds spent (storage
/// latency: fsync and the rename or link).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Publication {
    pub published: Published,
    pub seconds: f64,
}

/// How an output is put under its final name without replacing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// `renameat2(RENAME_NOREPLACE)`, falling back to [`Placement::Link`]
    /// where the file system does not support it.
    RenameNoReplace,
    /// `link()` to the final name, then unlink of the temporary one. Only
    /// tests ask for it: elsewhere the file system's answer to the
    /// no-replace rename leads there.
    #[cfg(test)]
    Link,
}

/// Publishes a finished file: fsync it, move it to `to` unless a file of
/// that name exists (then `from` is removed and the existing file stays),
/// fsync the destination folder so the publish survives a crash.
pub fn publish(from: &Path, to: &Path) -> Result<Publication, StorageError> {
    publish_with(from, to, Placement::RenameNoReplace)
}

fn publish_with(from: &Path, to: &Path, placement: Placement) -> Result<Publication, StorageError> {
    let started = Instant::now();
    sync_file(from)?;
    let published = place(from, to, placement)?;
    if published == Published::AlreadyThere {
        remove_quietly(from);
    }
    sync_parent(to);
    Ok(Publication {
        published,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn sync_file(path: &Path) -> Result<(), StorageError> {
    let file = File::open(path).map_err(|e| StorageError::new("opening", path, e))?;
    file.sync_all()
        .map_err(|e| StorageError::new("syncing", path, e))
}

/// Puts `from` under the name `to` unless that name exists. On
/// [`Published::AlreadyThere`], `from` is left where it was.
fn place(from: &Path, to: &Path, placement: Placement) -> Result<Published, StorageError> {
    if placement == Placement::RenameNoReplace {
        match rename_no_replace(from, to) {
            Ok(()) => return Ok(Published::Won),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(Published::AlreadyThere),
            // FUSE (sshfs), NFS and some others do not know the flag.
            Err(e) if unsupported(&e) => {}
            Err(e) => return Err(StorageError::new("publishing (no-replace rename)", to, e)),
        }
    }
    link_then_unlink(from, to)
}

fn unsupported(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE).map_err(Into::into)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn rename_no_replace(_from: &Path, _to: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from_raw_os_error(libc::ENOSYS))
}

/// `link()` fails if the name exists, atomically, on NFS too. A link whose
/// reply was lost and retransmitted answers EEXIST although it worked
/// (NFSv3): the name is then our own inode, which counts as won.
fn link_then_unlink(from: &Path, to: &Path) -> Result<Published, StorageError> {
    match std::fs::hard_link(from, to) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            if !same_file(from, to) {
                return Ok(Published::AlreadyThere);
            }
        }
        Err(e) => return Err(StorageError::new("publishing (link)", to, e)),
    }
    // The temporary name is a second link to the published inode; if it
    // cannot be removed now, the `.tmp` sweep removes that name later,
    // never the published file.
    remove_quietly(from);
    Ok(Published::Won)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != ErrorKind::NotFound {
            tracing::debug!("removing {}: {e}", path.display());
        }
    }
}

fn rename_durable(from: &Path, to: &Path) -> Result<(), StorageError> {
    std::fs::rename(from, to).map_err(|e| StorageError::new("renaming into", to, e))?;
    sync_parent(to);
    Ok(())
}

/// Directory fsync is what makes a rename or link durable on most file
/// systems; where a folder cannot be opened for it (some network file
/// systems), the publish is still atomic, so this is best effort.
fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}

/// The bytes of `path`, or `None` when there is no such file.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::new("reading", path, e)),
    }
}

impl JobLayout {
    /// Writes `bytes` to `path` atomically (tmp, fsync, rename, fsync dir),
    /// replacing what is there. Only for a pod's own record
    /// (`status.json`): outputs go through [`publish`] or
    /// [`JobLayout::publish_bytes`], playlists through
    /// [`JobLayout::rewrite_if`].
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
        let tmp = self.write_tmp(path, bytes)?;
        let result = rename_durable(&tmp, path);
        if result.is_err() {
            remove_quietly(&tmp);
        }
        result
    }

    /// Publishes `bytes` as the file `path` with no-replace semantics (see
    /// [`publish`]): a copy of a file that must stay where it is.
    pub fn publish_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Publication, StorageError> {
        let tmp = self.write_tmp(path, bytes)?;
        let result = publish(&tmp, path);
        if result.is_err() {
            remove_quietly(&tmp);
        }
        result
    }

    /// Writes `bytes` to `path` if `may_replace` accepts what the file
    /// holds (`None`: there is none yet). Returns whether it was written.
    ///
    /// The rule is asked twice: before anything is written, and again
    /// right before the rename, on a fresh read, so the window in which
    /// another writer's file can be replaced without being looked at is
    /// one read and one rename. A file that appears in that window while
    /// there was none is never replaced (it is created with no-replace and
    /// the rule asked again).
    pub fn rewrite_if(
        &self,
        path: &Path,
        bytes: &[u8],
        may_replace: impl Fn(Option<&[u8]>) -> bool,
    ) -> Result<bool, StorageError> {
        if !may_replace(read_optional(path)?.as_deref()) {
            return Ok(false);
        }
        let tmp = self.write_tmp(path, bytes)?;
        let result = (|| {
            for _ in 0..REWRITE_ROUNDS {
                let current = read_optional(path)?;
                if !may_replace(current.as_deref()) {
                    return Ok(false);
                }
                if current.is_some() {
                    rename_durable(&tmp, path)?;
                    return Ok(true);
                }
                if place(&tmp, path, Placement::RenameNoReplace)? == Published::Won {
                    sync_parent(path);
                    return Ok(true);
                }
            }
            Ok(false)
        })();
        remove_quietly(&tmp);
        result
    }

    /// A fresh `.tmp/` file holding `bytes`, fsynced, named after `path`.
    fn write_tmp(&self, path: &Path, bytes: &[u8]) -> Result<PathBuf, StorageError> {
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
                .map_err(|e| StorageError::new("syncing", &tmp, e))
        })();
        match result {
            Ok(()) => Ok(tmp),
            Err(err) => {
                remove_quietly(&tmp);
                Err(err)
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch job folder, removed at the end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(label: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("segswarm-{label}-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
        fn layout(&self) -> JobLayout {
            JobLayout::new(&self.0)
        }
        fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn inode(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    /// The second publish of a name loses: the file keeps the first
    /// writer's bytes and inode, and the loser's copy is gone.
    fn second_publish_loses(placement: Placement) {
        let scratch = Scratch::new("publish");
        let target = scratch.0.join("seg_00000.ts");
        let first = scratch.file("first.tmp", b"first copy");
        let won = publish_with(&first, &target, placement).unwrap();
        assert_eq!(won.published, Published::Won);
        assert!(!first.exists(), "the temporary name stays after a win");
        let published_inode = inode(&target);

        let second = scratch.file("second.tmp", b"second, other bytes");
        let lost = publish_with(&second, &target, placement).unwrap();
        assert_eq!(lost.published, Published::AlreadyThere);
        assert_eq!(std::fs::read(&target).unwrap(), b"first copy");
        assert_eq!(
            inode(&target),
            published_inode,
            "the published file was replaced"
        );
        assert!(!second.exists(), "the loser's copy was not dropped");
    }

    #[test]
    fn second_publish_of_a_name_loses_with_renameat2() {
        second_publish_loses(Placement::RenameNoReplace);
    }

    #[test]
    fn second_publish_of_a_name_loses_with_link() {
        second_publish_loses(Placement::Link);
    }

    #[test]
    fn a_link_answered_exists_for_our_own_inode_counts_as_won() {
        // What a retransmitted NFS LINK looks like: the name already is our
        // file.
        let scratch = Scratch::new("relink");
        let from = scratch.file("ours.tmp", b"ours");
        let to = scratch.0.join("seg_00001.ts");
        std::fs::hard_link(&from, &to).unwrap();
        assert_eq!(link_then_unlink(&from, &to).unwrap(), Published::Won);
        assert!(!from.exists());
        assert_eq!(std::fs::read(&to).unwrap(), b"ours");
    }

    #[test]
    fn publish_bytes_never_replaces() {
        let scratch = Scratch::new("bytes");
        let layout = scratch.layout();
        let target = scratch.0.join("seg_00002.ts");
        let first = layout.publish_bytes(&target, b"one").unwrap();
        assert_eq!(first.published, Published::Won);
        let again = layout.publish_bytes(&target, b"two").unwrap();
        assert_eq!(again.published, Published::AlreadyThere);
        assert_eq!(std::fs::read(&target).unwrap(), b"one");
        let leftovers = std::fs::read_dir(layout.tmp_dir()).unwrap().count();
        assert_eq!(leftovers, 0, "temporary copies left in .tmp");
    }

    /// Longer text wins, as a stand-in for "more segments".
    fn longer(bytes: &[u8]) -> impl Fn(Option<&[u8]>) -> bool + '_ {
        move |current| current.is_none_or(|c| c.len() < bytes.len())
    }

    #[test]
    fn rewrite_if_follows_the_rule_on_what_the_file_holds() {
        let scratch = Scratch::new("rewrite");
        let layout = scratch.layout();
        let path = scratch.0.join("index.m3u8");
        assert!(layout.rewrite_if(&path, b"abc", longer(b"abc")).unwrap());
        assert!(!layout.rewrite_if(&path, b"ab", longer(b"ab")).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        assert!(layout.rewrite_if(&path, b"abcd", longer(b"abcd")).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"abcd");
        let leftovers = std::fs::read_dir(layout.tmp_dir()).unwrap().count();
        assert_eq!(leftovers, 0, "temporary copies left in .tmp");
    }
}
