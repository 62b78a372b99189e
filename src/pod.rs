//! A pod: `segswarm serve` wired together — storage, coordinator, worker,
//! job manager, watch folder and HTTP server — and its graceful shutdown.
//!
//! Shutdown on SIGTERM or SIGINT: report not ready, stop taking jobs and
//! units, kill every ffmpeg process group, give held claims back, end event
//! streams, and exit within the configured grace period. Unfinished jobs keep
//! their unfinished status (`processing` or `playable`) in `status.json`, so
//! the next pod resumes them.

use crate::api::{self, AppState, Health};
use crate::config::PodConfig;
use crate::coord::redis::RedisSettings;
use crate::coord::{Coordinator, FallbackCoordinator, LocalCoordinator, RedisCoordinator};
use crate::jobs::registry::Registry;
use crate::jobs::{JobManager, JobSettings};
use crate::metrics::Metrics;
use crate::storage::{Storage, StorageError};
use crate::watch::{self, WatchError, WatchSettings};
use crate::webhook::Webhooks;
use crate::worker::{Worker, WorkerEvent, WorkerSettings};
use nix::errno::Errno;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How often storage is checked for `/readyz` (a small file is written).
const STORAGE_CHECK_EVERY: Duration = Duration::from_secs(10);
/// How often a storage marked full is checked for freed space.
const FREE_SPACE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a unit that failed for lack of space keeps `/readyz` failing
/// when no space is freed and no other unit fails that way.
const DISK_FULL_HOLD: Duration = Duration::from_secs(300);
/// How often the coordination backend is checked for `/readyz`.
const COORDINATION_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Why a pod could not start.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Ffmpeg(#[from] crate::ffmpeg::RunError),
    #[error("storage folder is not usable: {0}")]
    Storage(#[from] StorageError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Redis(#[from] crate::coord::redis::RedisSetupError),
    #[error(transparent)]
    Registry(crate::jobs::registry::RegistryError),
}

/// Local claims without `REDIS_URL`; Redis with it, wrapped in the fallback
/// to local claims unless that is turned off.
fn coordinator(
    config: &PodConfig,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn Coordinator>, PodError> {
    let Some(url) = &config.redis_url else {
        metrics.mode.with_label_values(&["local"]).set(1);
        metrics.mode.with_label_values(&["distributed"]).set(0);
        return Ok(Arc::new(LocalCoordinator::new(config.claim_ttl)));
    };
    let mut settings = RedisSettings::new(url.clone(), config.claim_ttl);
    settings.pool_size = config.redis_pool_size;
    let redis = RedisCoordinator::new(settings, metrics.clone())?;
    if config.fallback_to_local {
        Ok(Arc::new(FallbackCoordinator::new(redis, metrics.clone())))
    } else {
        metrics.mode.with_label_values(&["distributed"]).set(1);
        metrics.mode.with_label_values(&["local"]).set(0);
        Ok(Arc::new(redis))
    }
}

/// Runs a pod until SIGTERM or SIGINT, then shuts it down gracefully.
pub async fn run(config: PodConfig) -> Result<(), PodError> {
    crate::ffmpeg::check_installed().await?;
    let storage = Storage::new(&config.storage_dir);
    storage.check_writable()?;
    let metrics = Arc::new(Metrics::new()?);
    let shutdown = CancellationToken::new();
    let health = Arc::new(Health::default());
    let coord = coordinator(&config, &metrics)?;
    tokio::spawn(watch_coordination(
        coord.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let worker = Arc::new(Worker::start(
        WorkerSettings {
            worker_id: config.worker_id.clone(),
            slots: config.slots,
            spare_slots: config.spare_slots,
            stall_timeout: config.stall_timeout,
            max_attempts: config.max_attempts,
            retry_backoff: config.retry_backoff,
            held_recheck: Duration::from_secs(1),
        },
        coord,
        metrics.clone(),
    ));
    let mut source_roots = config.source_roots.clone();
    source_roots.extend(config.watch_dir.iter().cloned());
    let registry = match &config.redis_url {
        Some(url) => Some(Arc::new(
            Registry::new(url, &config.worker_id).map_err(PodError::Registry)?,
        )),
        None => None,
    };
    let manager = JobManager::start(
        storage.clone(),
        worker.clone(),
        JobSettings {
            defaults: config.defaults.clone(),
            source_roots,
            prefetch_segments: config.prefetch_segments,
            segment_wait: config.segment_wait,
            egress: crate::egress::EgressPolicy::from_allow_private(config.allow_private_urls),
        },
        Webhooks::new(
            config.webhook_secret.clone(),
            metrics.webhook_deliveries.clone(),
        ),
        registry,
        shutdown.clone(),
    );
    let resumed = manager.resume_from_storage()?;
    if resumed > 0 {
        tracing::info!("resuming {resumed} unfinished job(s) from storage");
    }
    tokio::spawn(watch_storage(
        storage.clone(),
        health.clone(),
        worker.subscribe(),
        shutdown.clone(),
    ));
    if let Some(dir) = &config.watch_dir {
        watch::start(
            WatchSettings {
                dir: dir.clone(),
                poll: config.watch_poll,
                settle: config.watch_settle,
                ledger_dir: storage.root().join("watch"),
            },
            manager.clone(),
            metrics.clone(),
            shutdown.clone(),
        )?;
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| PodError::Listen {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().unwrap_or(config.listen);
    let router = api::router(AppState {
        manager: manager.clone(),
        metrics,
        api_token: config.api_token.clone(),
        health: health.clone(),
        shutdown: shutdown.clone(),
    });
    let server = tokio::spawn(std::future::IntoFuture::into_future(
        axum::serve(listener, router).with_graceful_shutdown(shutdown.clone().cancelled_owned()),
    ));
    tracing::info!(
        worker_id = %config.worker_id,
        storage = %config.storage_dir.display(),
        "segswarm pod listening on http://{local_addr}"
    );

    let mut terminate = signal(SignalKind::terminate()).map_err(PodError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(PodError::Signals)?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
    }

    let deadline = Instant::now() + config.shutdown_grace;
    health.shutting_down.store(true, Ordering::Relaxed);
    manager.begin_shutdown();
    // Kill ffmpeg and release claims first: other pods can take the units
    // while this one finishes its HTTP responses.
    if tokio::time::timeout_at(deadline.into(), worker.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("worker did not stop within the grace period");
    }
    shutdown.cancel();
    match tokio::time::timeout_at(deadline.into(), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => tracing::warn!("HTTP server: {err}"),
        Ok(Err(err)) => tracing::warn!("HTTP server task: {err}"),
        Err(_) => tracing::warn!("open HTTP connections cut at the end of the grace period"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Keeps `/readyz` honest about coordination: without the fallback, a pod
/// that cannot reach Redis cannot take work and says so (it keeps retrying).
async fn watch_coordination(
    coord: Arc<dyn Coordinator>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    loop {
        let problem = coord.check().await;
        *health
            .coordination_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = problem;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(COORDINATION_CHECK_EVERY) => {}
        }
    }
}

/// Keeps `/readyz` honest about storage: a folder that cannot be written (a
/// full disk, a lost mount) takes the pod out of rotation.
///
/// The write check's few bytes can fit on a disk that has no room left for
/// a segment (a failed encode removes its partial file, freeing what it
/// took), so a unit that failed for lack of space also marks the storage
/// full, until space is freed or [`DISK_FULL_HOLD`] passes without another
/// such failure.
async fn watch_storage(
    storage: Storage,
    health: Arc<Health>,
    mut events: broadcast::Receiver<WorkerEvent>,
    stop: CancellationToken,
) {
    let mut write_problem = None;
    let mut next_write_check = Instant::now();
    let mut full: Option<DiskFull> = None;
    let mut events_open = true;
    loop {
        if Instant::now() >= next_write_check {
            write_problem = match storage.check_writable() {
                Ok(()) => None,
                Err(err) if err.is_disk_full() => Some(format!("storage full: {err}")),
                Err(err) => Some(format!("storage not writable: {err}")),
            };
            next_write_check = Instant::now() + STORAGE_CHECK_EVERY;
        }
        if full.as_ref().is_some_and(|f| f.is_over(&storage)) {
            tracing::info!("storage has room again");
            full = None;
        }
        *health
            .storage_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = write_problem
            .clone()
            .or_else(|| full.as_ref().map(|f| f.problem.clone()));
        tokio::select! {
            _ = stop.cancelled() => return,
            event = events.recv(), if events_open => match event {
                Ok(WorkerEvent::UnitFailed { error, .. }) => {
                    if let Some(reason) = disk_full_reason(&error) {
                        full = Some(DiskFull::now(&storage, &reason));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => events_open = false,
                _ => {}
            },
            _ = tokio::time::sleep(FREE_SPACE_CHECK_EVERY) => {}
        }
    }
}

/// A unit failed because the storage was full: when, and how much room
/// there was just after (its partial output removed).
struct DiskFull {
    at: Instant,
    available: Option<u64>,
    problem: String,
}

impl DiskFull {
    fn now(storage: &Storage, reason: &str) -> DiskFull {
        let space = storage.free_space().ok();
        let free = space
            .map(|s| format!("{} bytes free", s.available))
            .unwrap_or_else(|| "free space unknown".to_string());
        DiskFull {
            at: Instant::now(),
            available: space.map(|s| s.available),
            problem: format!(
                "storage full: a unit could not be written to {} ({reason}; {free})",
                storage.root().display()
            ),
        }
    }

    /// True once clearly more room exists than at the failure (at least
    /// 1 MiB or 1 % of the file system more), or the mark is old.
    fn is_over(&self, storage: &Storage) -> bool {
        if self.at.elapsed() > DISK_FULL_HOLD {
            return true;
        }
        match (self.available, storage.free_space()) {
            (Some(before), Ok(now)) => {
                let margin = (now.total / 100).max(1 << 20);
                now.available > before.saturating_add(margin)
            }
            _ => false,
        }
    }
}

/// The C library's text for a full disk or an exceeded quota, when a unit's
/// error (ours, or ffmpeg's stderr, which prints the same `strerror` text)
/// contains it.
fn disk_full_reason(error: &str) -> Option<String> {
    [Errno::ENOSPC, Errno::EDQUOT]
        .into_iter()
        .find_map(|errno| {
            let text = std::io::Error::from_raw_os_error(errno as i32).to_string();
            let text = text.split(" (os error").next().unwrap_or_default();
            (!text.is_empty() && error.contains(text)).then(|| text.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::disk_full_reason;

    #[test]
    fn disk_full_is_recognised_in_unit_errors() {
        // ffmpeg's stderr on a full disk, as a unit's error carries it.
        let ffmpeg = "encoding segment 1 of 240p: ffmpeg exited with exit status: 1: \
                      Error writing trailer of /data/jobs/x/.tmp/a-240p-seg_00001.ts: \
                      No space left on device";
        assert_eq!(
            disk_full_reason(ffmpeg).as_deref(),
            Some("No space left on device")
        );
        // Our own storage errors name the errno the same way.
        let ours = crate::storage::StorageError::new(
            "writing",
            std::path::Path::new("/data/jobs/x/.tmp/index.m3u8"),
            std::io::Error::from_raw_os_error(nix::errno::Errno::EDQUOT as i32),
        );
        assert!(disk_full_reason(&ours.to_string()).is_some(), "{ours}");
        assert_eq!(
            disk_full_reason("ffmpeg exited with signal: 9 (SIGKILL)"),
            None
        );
    }
}
