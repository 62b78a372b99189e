//! A network file system for tests: one folder served by a throwaway
//! `sshd` on a free loopback port, mounted with `sshfs` once per pod, each
//! mount its own client with NFS-like caches (attributes, names and "no
//! such file" kept for [`CACHE_SECONDS`]). A file renamed into place through
//! one mount then stays invisible to a `stat()` through another that looked
//! it up before, as on NFS clients of different hosts.
//!
//! [`NetworkShare::start`] generates the host and client keys in a temp
//! folder and runs `sshd -D -e -f <config>` as a child; [`NetworkShare::mount`]
//! mounts the folder; everything is unmounted (`fusermount -u`) and the
//! server killed on drop, also when the test panics. [`require_network_share`]
//! decides what a test does where FUSE, sshd or sshfs are missing: fail in
//! CI (`CI=true`), skip with a message elsewhere.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pod::free_port;

/// How long each mount caches names, attributes and missing names.
pub const CACHE_SECONDS: u32 = 30;

/// The programs and device a share needs.
const SSHD: &str = "/usr/sbin/sshd";

/// A folder served over SFTP and the sshfs mounts of it.
pub struct NetworkShare {
    // Unmounted before the server stops.
    mounts: Vec<PathBuf>,
    server: Child,
    port: u16,
    keys: PathBuf,
    exported: PathBuf,
}

/// Why a share cannot be made on this machine, if it cannot.
pub fn missing_parts() -> Option<String> {
    let mut missing = Vec::new();
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse".to_string());
    }
    if !Path::new(SSHD).is_file() {
        missing.push(format!("{SSHD} (openssh-server)"));
    }
    for program in ["sshfs", "ssh-keygen", "fusermount3"] {
        let found = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .any(|dir| Path::new(dir).join(program).is_file());
        if !found {
            missing.push(program.to_string());
        }
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// A share of `exported` (created if needed), or None when this machine
/// cannot make one and the test should be skipped. In CI (`CI=true`) a
/// missing part, or a share that does not start, fails the test instead.
pub fn require_network_share(scratch: &Path, exported: &Path) -> Option<NetworkShare> {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let attempt = match missing_parts() {
        Some(missing) => Err(format!(
            "missing {missing} (scripts/install-deps installs them)"
        )),
        None => NetworkShare::start(scratch, exported),
    };
    match attempt {
        Ok(share) => Some(share),
        Err(reason) if in_ci => panic!("no network file system for this test: {reason}"),
        Err(reason) => {
            eprintln!("SKIPPED: no network file system for this test: {reason}");
            None
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetworkShare {
    /// Starts an sshd that serves `exported`, with keys and its config in
    /// `<scratch>/sshd/`; waits until it accepts connections.
    pub fn start(scratch: &Path, exported: &Path) -> Result<NetworkShare, String> {
        let keys = scratch.join("sshd");
        std::fs::create_dir_all(&keys).map_err(|e| format!("create {}: {e}", keys.display()))?;
        std::fs::create_dir_all(exported)
            .map_err(|e| format!("create {}: {e}", exported.display()))?;
        // sshd refuses to start without its privilege separation folder.
        std::fs::create_dir_all("/run/sshd").map_err(|e| format!("create /run/sshd: {e}"))?;
        for key in ["host_key", "client_key"] {
            let path = keys.join(key);
            if !path.exists() {
                let path = path.to_str().ok_or("scratch path is not UTF-8")?;
                run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", path])?;
            }
        }
        let public = std::fs::read(keys.join("client_key.pub")).map_err(|e| e.to_string())?;
        std::fs::write(keys.join("authorized_keys"), public).map_err(|e| e.to_string())?;
        let port = free_port();
        let config = keys.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {keys}/host_key\n\
                 AuthorizedKeysFile {keys}/authorized_keys\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
                 PidFile none\nLogLevel ERROR\nSubsystem sftp internal-sftp\n",
                keys = keys.display()
            ),
        )
        .map_err(|e| format!("write {}: {e}", config.display()))?;
        let log = std::fs::File::create(keys.join("sshd.log")).map_err(|e| e.to_string())?;
        let server = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {SSHD}: {e}"))?;
        let mut share = NetworkShare {
            mounts: Vec::new(),
            server,
            port,
            keys,
            exported: exported.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = share.server.try_wait() {
                return Err(format!("sshd exited with {status}: {}", share.server_log()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "sshd did not listen within 10 s: {}",
                    share.server_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(share)
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.keys.join("sshd.log")).unwrap_or_default()
    }

    /// The folder the share serves (what every mount shows).
    pub fn exported(&self) -> &Path {
        &self.exported
    }

    /// Mounts the share on `mountpoint` (created), as its own client with
    /// NFS-like caches; returns the mount point.
    pub fn mount(&mut self, mountpoint: &Path) -> Result<PathBuf, String> {
        std::fs::create_dir_all(mountpoint)
            .map_err(|e| format!("create {}: {e}", mountpoint.display()))?;
        let user = std::env::var("USER").unwrap_or_else(|_| "root".to_string());
        let remote = format!("{user}@127.0.0.1:{}", self.exported.display());
        let ssh_options = format!(
            "IdentityFile={}/client_key,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,\
             BatchMode=yes,LogLevel=ERROR",
            self.keys.display()
        );
        let t = CACHE_SECONDS;
        let caches =
            format!("dcache_timeout={t},entry_timeout={t},attr_timeout={t},negative_timeout={t}");
        let target = mountpoint.to_str().ok_or("mount point is not UTF-8")?;
        let port = self.port.to_string();
        run(
            "sshfs",
            &[
                "-p",
                &port,
                "-o",
                &ssh_options,
                "-o",
                &caches,
                &remote,
                target,
            ],
        )?;
        self.mounts.push(mountpoint.to_path_buf());
        Ok(mountpoint.to_path_buf())
    }
}

impl Drop for NetworkShare {
    fn drop(&mut self) {
        for mount in self.mounts.drain(..).rev() {
            let target = mount.as_os_str();
            let plain = Command::new("fusermount3").arg("-u").arg(target).status();
            if !plain.is_ok_and(|s| s.success()) {
                // Still busy (a pod that outlived the test): detach it.
                let lazy = Command::new("fusermount3").arg("-uz").arg(target).status();
                if !lazy.is_ok_and(|s| s.success()) {
                    eprintln!("could not unmount {}", mount.display());
                }
            }
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
