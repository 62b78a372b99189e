//! Looking files up on storage that other pods write through their own
//! network file system clients (NFS, a FUSE mount), whose caches may still
//! say "no such file" for a name another client published a moment ago.
//!
//! Owns the fresh lookup ([`revalidate`]) and the listing of what a job
//! folder holds ([`JobLayout::published_units`]). A plain `stat()` of a name
//! this pod looked up before it existed can be answered from a cached
//! negative entry for as long as the mount's cache lasts (30 s with
//! `negative_timeout=30` on FUSE; NFS's default attribute cache up to
//! 60 s). Nothing here writes or deletes a file; the fresh lookup asks the
//! kernel for a hard link that it always refuses (see [`revalidate`]).

use super::JobLayout;
use crate::plan::{Plan, Unit};
use std::collections::HashSet;
use std::io::ErrorKind;
use std::path::Path;

/// True when `path` exists, looked up past any cached negative entry of
/// this pod's mount:
/// 1. its folder is listed: an NFS client revalidates the folder's
///    attributes, and drops its negative entries when the folder changed;
/// 2. the kernel is asked to hard-link the folder itself to `path`. A hard
///    link to a folder is never made (the kernel refuses it with `EPERM`
///    after the lookup of the new name, or `EEXIST` when the name exists),
///    but that lookup is an exclusive-create one, which FUSE never answers
///    from a cached negative entry: the name is looked up again on the
///    server, and the cache holds the answer from then on;
/// 3. `path` is looked up.
pub fn revalidate(path: &Path) -> bool {
    if path.exists() {
        return true;
    }
    let Some(dir) = path.parent() else {
        return false;
    };
    if let Ok(entries) = std::fs::read_dir(dir) {
        let name = path.file_name();
        if entries
            .flatten()
            .any(|e| Some(e.file_name().as_os_str()) == name)
            && path.exists()
        {
            return true;
        }
    }
    // `<dir>/.` is the folder itself even when `dir` is a symlink (a
    // symlink, unlike a folder, could be linked).
    match std::fs::hard_link(dir.join("."), path) {
        Err(err) if err.kind() == ErrorKind::AlreadyExists => {}
        Err(_) => return path.exists(),
        Ok(()) => {
            // Cannot happen (the kernel never links a folder); if some file
            // system did, the name is not ours to keep.
            tracing::error!("{} was linked to its folder; removing it", path.display());
            let _ = std::fs::remove_file(path);
            return false;
        }
    }
    path.exists()
}

impl JobLayout {
    /// True when `unit`'s output exists, looked up with [`revalidate`]: for
    /// a unit another pod is known to have finished (Redis says so) but
    /// that a plain lookup does not show.
    pub fn is_done_fresh(&self, unit: &Unit) -> bool {
        revalidate(&self.unit_output(unit)) && self.is_done(unit)
    }

    /// The units of `plan` whose outputs the job folder holds, found by
    /// listing its folders (one listing per rendition, no lookup of a name
    /// that may not exist, so no negative entry is left in a cache).
    pub fn published_units(&self, plan: &Plan) -> HashSet<Unit> {
        let mut found = HashSet::new();
        for rendition in &plan.renditions {
            let names = listing(&self.rendition_dir(&rendition.name));
            for segment in &plan.segments {
                if names.contains(&super::layout::segment_name(segment.index)) {
                    found.insert(Unit::Video {
                        rendition: rendition.name.clone(),
                        index: segment.index,
                    });
                }
            }
        }
        let top = listing(self.dir());
        if top.contains(super::layout::THUMBNAIL) {
            found.insert(Unit::Thumbnail);
        }
        for track in &plan.audio {
            let unit = Unit::Audio { track: track.track };
            if self.is_done(&unit) {
                found.insert(unit);
            }
        }
        found
    }
}

/// The names in `dir` (empty when it cannot be listed).
fn listing(dir: &Path) -> HashSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_lookup_finds_files_and_creates_nothing() {
        let dir = std::env::temp_dir().join(format!("segswarm-lookup-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let present = dir.join("seg_00000.ts");
        std::fs::write(&present, b"x").unwrap();
        assert!(revalidate(&present));
        let absent = dir.join("seg_00001.ts");
        assert!(!revalidate(&absent));
        assert!(!absent.exists(), "the lookup left something at {absent:?}");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(!revalidate(&dir.join("missing-folder/seg_00000.ts")));
        // Through a symlinked folder: still nothing made, here or there.
        let elsewhere = dir.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("240p")).unwrap();
        assert!(!revalidate(&dir.join("240p/seg_00002.ts")));
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
