//! Headless Chromium through the node scripts in `tests/browser/`: installs
//! the pinned hls.js and playwright-core when missing and runs a script that
//! prints one JSON line.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// `tests/browser/`.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Installs the pinned node modules if they are missing. Never skips: a
/// missing node toolchain is a failure, not a pass.
pub fn ensure_node_modules() {
    let dir = browser_dir();
    if dir.join("node_modules/hls.js/dist/hls.min.js").is_file()
        && dir
            .join("node_modules/playwright-core/package.json")
            .is_file()
    {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .output()
        .expect("run npm ci (install node and npm: scripts/install-deps)");
    assert!(
        out.status.success(),
        "npm ci in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `node tests/browser/<script> <args...>` and returns the last JSON
/// line it printed and whether it exited 0. Panics if it printed none.
pub fn run_node_json(script: &str, args: &[&str]) -> (bool, Value) {
    ensure_node_modules();
    let out = Command::new("node")
        .arg(browser_dir().join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run node {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{script} printed no JSON\n{stdout}\n{stderr}"));
    let value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{script} printed bad JSON ({e}): {line}\n{stderr}"));
    (out.status.success(), value)
}
