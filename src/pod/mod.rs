//! A pod: `segswarm serve` wired together — storage, coordinator, worker,
//! job manager, watch folder and HTTP server — and its graceful shutdown.
//! What keeps `/readyz` honest while it runs is in [`readiness`].
//!
//! Shutdown on SIGTERM or SIGINT: report not ready, stop taking jobs and
//! units, kill every ffmpeg process group, give held claims back, end event
//! streams, and exit within the configured grace period. Unfinished jobs keep
//! their unfinished status (`processing` or `playable`) in `status.json`, so
//! the next pod resumes them.

use crate::api::{self, AppState, Health};
use crate::config::PodConfig;
mod readiness;

use crate::coord::{Coordinator, FallbackCoordinator, LocalCoordinator, RedisCoordinator};
use crate::egress::EgressPolicy;
use crate::fetch::SourceFetch;
use crate::jobs::registry::Registry;
use crate::jobs::{JobManager, JobSettings};
use crate::metrics::Metrics;
use crate::redis_link::{RedisSettings, RedisSetupError};
use crate::storage::{Storage, StorageError};
use crate::watch::{self, WatchError, WatchSettings};
use crate::webhook::Webhooks;
use crate::worker::{Worker, WorkerSettings};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

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
    Redis(#[from] RedisSetupError),
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
        return Ok(Arc::new(LocalCoordinator::new(config.run.claim_ttl)));
    };
    let redis = RedisCoordinator::new(
        &redis_settings(config, url),
        config.run.claim_ttl,
        metrics.clone(),
    )?;
    if config.fallback_to_local {
        Ok(Arc::new(FallbackCoordinator::new(redis, metrics.clone())))
    } else {
        metrics.mode.with_label_values(&["distributed"]).set(1);
        metrics.mode.with_label_values(&["local"]).set(0);
        Ok(Arc::new(redis))
    }
}

/// How the coordinator and the job registry reach Redis.
fn redis_settings(config: &PodConfig, url: &str) -> RedisSettings {
    RedisSettings {
        pool_size: config.redis_pool_size,
        ..RedisSettings::new(url)
    }
}

/// Runs a pod until SIGTERM or SIGINT, then shuts it down gracefully.
pub async fn serve(config: PodConfig) -> Result<(), PodError> {
    crate::ffmpeg::check_installed().await?;
    let storage = Storage::new(&config.storage_dir);
    storage.check_writable()?;
    let metrics = Arc::new(Metrics::new()?);
    let shutdown = CancellationToken::new();
    let health = Arc::new(Health::default());
    let coord = coordinator(&config, &metrics)?;
    tokio::spawn(readiness::watch_coordination(
        coord.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let egress = EgressPolicy::new(config.allow_private_urls, config.egress_test_network);
    // The pod's one source proxy: the probe and every encode read URL
    // sources through it.
    let fetch = SourceFetch::new(egress);
    let worker = Arc::new(Worker::start(
        WorkerSettings::new(config.worker_id.clone(), config.run.clone()),
        coord,
        metrics.clone(),
        fetch.clone(),
    ));
    let mut source_roots = config.source_roots.clone();
    source_roots.extend(config.watch_dir.iter().cloned());
    let registry = match &config.redis_url {
        Some(url) => Some(Arc::new(Registry::new(
            &redis_settings(&config, url),
            &config.worker_id,
        )?)),
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
            egress,
            fetch: fetch.clone(),
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
    tokio::spawn(readiness::watch_storage(
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
                ledger_dir: storage.watch_ledger_dir(),
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
    fetch.shutdown();
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
