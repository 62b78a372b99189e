//! A pod's whole configuration (`segswarm serve`), documented flag by flag
//! in docs/configuration.md.

use super::{EncodeSettings, RunSettings, TestNetwork};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything a pod is configured with. Filled by the binary from flags and
/// `SEGSWARM_*` environment variables, each value validated on the way in.
#[derive(Debug, Clone)]
pub struct PodConfig {
    pub listen: SocketAddr,
    pub storage_dir: PathBuf,
    /// Name of this pod in claims and events.
    pub worker_id: String,
    pub run: RunSettings,
    pub shutdown_grace: Duration,
    /// Bearer token required on `/v1/*` when set.
    pub api_token: Option<String>,
    /// HMAC-SHA256 key for webhook signatures when set.
    pub webhook_secret: Option<String>,
    /// Local sources must lie under one of these (none = local paths refused).
    pub source_roots: Vec<PathBuf>,
    /// Source and callback URLs may point at loopback, private and
    /// link-local addresses (otherwise they are refused; see
    /// [`crate::egress`]).
    pub allow_private_urls: bool,
    /// A network inside 198.18.0.0/15 whose addresses count as public, for
    /// the tests of the egress check (`--egress-test-network`).
    pub egress_test_network: Option<TestNetwork>,
    pub watch_dir: Option<PathBuf>,
    /// Poll the watch folder instead of using inotify (needed on NFS).
    pub watch_poll: bool,
    /// How long a watched file must stop growing before it becomes a job.
    pub watch_settle: Duration,
    /// Settings of jobs that do not say otherwise.
    pub defaults: EncodeSettings,
    /// Segments prefetched after an on-demand request.
    pub prefetch_segments: usize,
    /// How long an HTTP request for a missing segment may wait for it.
    pub segment_wait: Duration,
    /// Redis for coordination with other pods; `None` = local mode.
    pub redis_url: Option<String>,
    /// Keep working with local claims while Redis is unreachable.
    pub fallback_to_local: bool,
    /// Connections in each Redis pool (the coordinator's, the registry's).
    pub redis_pool_size: usize,
}
