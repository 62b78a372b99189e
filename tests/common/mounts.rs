//! Real file systems for storage faults: a small tmpfs (a disk that fills
//! up) and a read-only bind mount (a folder nobody can write, root
//! included). Mounting needs root or CAP_SYS_ADMIN: the constructors return
//! the reason they could not mount, so a test can say why it skips. A
//! [`Mount`] is unmounted when dropped, also when the test panics.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mount point this test created; unmounted on drop.
pub struct Mount {
    dir: PathBuf,
}

/// Runs `mount <args>`; Err with its output when it fails.
fn mount(args: &[&str]) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Mount {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. `3m`)
    /// on `dir`, creating `dir`.
    pub fn tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let target = dir.to_str().ok_or("mount point is not UTF-8")?;
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            target,
        ])?;
        Ok(Mount {
            dir: dir.to_path_buf(),
        })
    }

    /// Binds `dir` onto itself read-only: writes fail with EROFS, for root
    /// too (unlike mode 0555).
    pub fn read_only_bind(dir: &Path) -> Result<Mount, String> {
        let target = dir.to_str().ok_or("mount point is not UTF-8")?;
        mount(&["--bind", target, target])?;
        let mounted = Mount {
            dir: dir.to_path_buf(),
        };
        mount(&["-o", "remount,bind,ro", target])?;
        Ok(mounted)
    }

    /// Changes a tmpfs's size in place; its files stay.
    pub fn resize(&self, size: &str) {
        let target = self.dir.to_str().unwrap();
        mount(&["-o", &format!("remount,size={size}"), target]).unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let target = self.dir.as_os_str();
        let plain = Command::new("umount").arg(target).status();
        if !plain.is_ok_and(|s| s.success()) {
            // Still busy (a process that outlived the test): detach it now,
            // the kernel frees it when the last user goes.
            let lazy = Command::new("umount").arg("-l").arg(target).status();
            if !lazy.is_ok_and(|s| s.success()) {
                eprintln!("could not unmount {}", self.dir.display());
            }
        }
    }
}
