//! The sweep of a job's `.tmp/` by claim: in-progress files left by a pod
//! that died (SIGKILL, OOM, a lost node) are removed once nobody can be
//! writing them, also for a job that is finished and will never be started
//! again (the sweep in `publish.rs` runs only when a pod starts a job).
//!
//! Every entry of `.tmp/` is named `<token>-<name>` (`JobLayout::tmp_path`),
//! where the token is the claim's for an encoder's outputs and a random one
//! for [`JobLayout::write_atomic`]. An entry is removed only when both hold:
//! - its token is not the token of a claim held now (the caller reads the
//!   claims *after* listing the folder, so a file created under a claim
//!   that was won meanwhile is either not listed or its claim is seen), and
//! - it was not modified for `min_age` (the stall timeout: an encoder silent
//!   that long is killed, and a `write_atomic` takes milliseconds), which
//!   also covers a pod that coordinates alone while Redis is away and
//!   whose claims this pod cannot see.
//!
//! It never touches anything outside `.tmp/`, so it never deletes a file a
//! pod may be serving.

use super::JobLayout;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// One entry of a job's `.tmp/` when it was listed.
#[derive(Debug, Clone)]
pub struct TmpEntry {
    path: PathBuf,
    /// The claim (or write) token its name starts with, if it has one.
    token: Option<String>,
    modified: SystemTime,
}

/// What a sweep did, and when another look could remove more.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub removed: usize,
    /// Entries kept because a held claim names them.
    pub held: usize,
    /// Entries kept because they were modified too recently; the soonest of
    /// them is old enough after `next_look`.
    pub recent: usize,
    pub next_look: Option<Duration>,
}

/// The token at the start of a `.tmp/` entry's name: a UUID (36
/// characters) followed by `-`.
fn token_of(name: &str) -> Option<&str> {
    let token = name.get(..36)?;
    let rest = name.get(36..)?;
    (rest.starts_with('-') && uuid::Uuid::parse_str(token).is_ok()).then_some(token)
}

impl JobLayout {
    /// The entries of the job's `.tmp/` now (none when it does not exist).
    pub fn tmp_entries(&self) -> Vec<TmpEntry> {
        let Ok(entries) = std::fs::read_dir(self.tmp_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let modified = entry.metadata().and_then(|m| m.modified()).ok()?;
                let name = entry.file_name().to_string_lossy().into_owned();
                Some(TmpEntry {
                    path: entry.path(),
                    token: token_of(&name).map(str::to_string),
                    modified,
                })
            })
            .collect()
    }

    /// Removes the `listed` entries that no claim in `held` names and that
    /// were not modified for `min_age` (see the module doc for why that is
    /// safe). `held` must have been read after `listed`.
    pub fn sweep_unclaimed_tmp(
        &self,
        listed: &[TmpEntry],
        held: &HashSet<String>,
        min_age: Duration,
    ) -> SweepReport {
        let now = SystemTime::now();
        let mut report = SweepReport::default();
        for entry in listed {
            if entry.token.as_ref().is_some_and(|t| held.contains(t)) {
                report.held += 1;
                continue;
            }
            // Read again: a writer may have touched it since it was listed.
            let modified = std::fs::symlink_metadata(&entry.path)
                .and_then(|m| m.modified())
                .unwrap_or(entry.modified);
            let age = now.duration_since(modified).unwrap_or_default();
            if age < min_age {
                report.recent += 1;
                let wait = min_age - age;
                report.next_look = Some(report.next_look.map_or(wait, |w| w.min(wait)));
                continue;
            }
            let result = if entry.path.is_dir() {
                std::fs::remove_dir_all(&entry.path)
            } else {
                std::fs::remove_file(&entry.path)
            };
            match result {
                Ok(()) => report.removed += 1,
                // Another pod's sweep got there first.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    tracing::warn!(path = %entry.path.display(), "removing a stale in-progress file: {err}")
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &std::path::Path, seconds: u64) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(seconds))
            .unwrap();
    }

    #[test]
    fn tokens_are_read_from_names() {
        let token = "0b9d6a3e-4c1f-4a7e-9a51-3f1f1c2d9e77";
        assert_eq!(token_of(&format!("{token}-240p-seg_00001.ts")), Some(token));
        assert_eq!(token_of(&format!("{token}-audio-0")), Some(token));
        assert_eq!(token_of(&format!("{token}x240p")), None);
        assert_eq!(token_of("seg_00001.ts"), None);
        assert_eq!(token_of(""), None);
    }

    #[test]
    fn only_old_entries_of_claims_no_longer_held_are_removed() {
        let root = std::env::temp_dir().join(format!("segswarm-sweep-{}", uuid::Uuid::new_v4()));
        let layout = JobLayout::new(&root);
        std::fs::create_dir_all(layout.tmp_dir()).unwrap();
        let [dead, held, fresh] = [0; 3].map(|_| uuid::Uuid::new_v4().to_string());
        let dead_segment = layout.segment_tmp(&dead, "240p", 3);
        let dead_audio = layout.audio_work_dir(&dead, 0);
        let held_segment = layout.segment_tmp(&held, "360p", 3);
        let fresh_segment = layout.segment_tmp(&fresh, "240p", 4);
        let stray = layout.tmp_dir().join("no-token-here");
        for file in [&dead_segment, &held_segment, &fresh_segment, &stray] {
            std::fs::write(file, b"partial").unwrap();
        }
        std::fs::create_dir_all(dead_audio.path()).unwrap();
        std::fs::write(dead_audio.path().join("seg_00000.ts"), b"a").unwrap();
        for file in [&dead_segment, &held_segment, &stray] {
            age(file, 600);
        }
        std::fs::File::open(dead_audio.path())
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(600))
            .unwrap();

        let listed = layout.tmp_entries();
        assert_eq!(listed.len(), 5);
        let claims = HashSet::from([held.clone()]);
        let report = layout.sweep_unclaimed_tmp(&listed, &claims, Duration::from_secs(60));
        assert_eq!((report.removed, report.held, report.recent), (3, 1, 1));
        let next = report.next_look.expect("the fresh file is looked at again");
        assert!(next <= Duration::from_secs(60) && next > Duration::from_secs(50));
        assert!(!dead_segment.exists() && !dead_audio.path().exists() && !stray.exists());
        assert!(held_segment.exists(), "a held claim's file is kept");
        assert!(fresh_segment.exists(), "a recently written file is kept");

        // Once the claim is gone and the file old, the next look removes it.
        age(&fresh_segment, 600);
        let report = layout.sweep_unclaimed_tmp(
            &layout.tmp_entries(),
            &HashSet::new(),
            Duration::from_secs(60),
        );
        assert_eq!(report.removed, 2);
        assert_eq!(report.next_look, None);
        assert!(layout.tmp_entries().is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
