//! Prometheus metrics of a pod (or a CLI run): one registry, names with the
//! `segswarm_` prefix, `_total` counters and `_seconds` histograms.
//!
//! Owns metric definitions only; the code that observes an event updates the
//! metric. It never decides anything from a metric's value.

use prometheus::{
    Counter, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric of a pod.
pub struct Metrics {
    pub registry: Registry,
    pub units_completed: IntCounterVec,
    pub units_failed: IntCounterVec,
    pub units_skipped: IntCounter,
    pub unit_encode_seconds: HistogramVec,
    pub units_in_flight: IntGauge,
    /// Slots of every live pod, from the heartbeats (this pod's own alone).
    pub cluster_slots: IntGauge,
    pub storage_write_seconds: Histogram,
    pub bytes_written: IntCounter,
    pub leases_lost: IntCounter,
    pub completed_after_loss: IntCounter,
    /// Units this pod encoded whose output another writer had published
    /// first (its copy dropped), by unit kind.
    pub duplicate_outputs: IntCounterVec,
    /// Units published while their lease could not be confirmed.
    pub unconfirmed_publishes: IntCounter,
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    pub jobs: IntGaugeVec,
    pub ready: Gauge,
    pub webhook_deliveries: IntCounterVec,
    pub watch_jobs: IntCounter,
    /// Claims by result: won, held, already_done, error (one per unit).
    pub claims: IntCounterVec,
    /// Round trip of one claim call to the coordination backend.
    pub claim_seconds: Histogram,
    /// Lease renewals by result: renewed, lost, error.
    pub lease_renewals: IntCounterVec,
    /// Units won after another holder's claim had expired.
    pub takeovers: IntCounter,
    /// Waits for a unit held by another pod.
    pub unit_waits: IntCounter,
    pub unit_wait_seconds: Histogram,
    /// Times the pub/sub connection was re-established after a loss.
    pub pubsub_reconnects: IntCounter,
    /// 1 while the last Redis operation succeeded, 0 after one failed.
    pub redis_up: IntGauge,
    pub mode: IntGaugeVec,
    pub fallbacks: IntCounter,
    /// Video frames repeated in published segments because the source did
    /// not decode to them, by rendition.
    pub filled_frames: IntCounterVec,
    /// Seconds of silence put in audio tracks where the source's audio did
    /// not decode.
    pub filled_silence: Counter,
}

fn buckets_seconds() -> Vec<f64> {
    vec![
        0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0,
    ]
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let units_completed = IntCounterVec::new(
            Opts::new(
                "segswarm_units_completed_total",
                "Units encoded and published by this pod",
            ),
            &["kind", "rendition"],
        )?;
        let units_failed = IntCounterVec::new(
            Opts::new(
                "segswarm_units_failed_total",
                "Failed unit attempts on this pod",
            ),
            &["kind", "rendition"],
        )?;
        let units_skipped = IntCounter::new(
            "segswarm_units_skipped_total",
            "Units found already done on storage",
        )?;
        let unit_encode_seconds = HistogramVec::new(
            HistogramOpts::new(
                "segswarm_unit_encode_seconds",
                "Wall time of one ffmpeg batch",
            )
            .buckets(buckets_seconds()),
            &["kind"],
        )?;
        let units_in_flight = IntGauge::new(
            "segswarm_units_in_flight",
            "Units this pod is encoding right now",
        )?;
        let cluster_slots = IntGauge::new(
            "segswarm_cluster_slots",
            "Slots of every live pod as the heartbeats say (this pod's own without a cluster)",
        )?;
        let storage_write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "segswarm_storage_write_seconds",
                "Time to fsync and rename one output into place",
            )
            .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )?;
        let bytes_written = IntCounter::new(
            "segswarm_bytes_written_total",
            "Bytes of output published to storage",
        )?;
        let leases_lost = IntCounter::new(
            "segswarm_leases_lost_total",
            "Leases found lost while encoding (ffmpeg killed)",
        )?;
        let completed_after_loss = IntCounter::new(
            "segswarm_completed_after_lease_loss_total",
            "Units completed after their lease had been lost",
        )?;
        let duplicate_outputs = IntCounterVec::new(
            Opts::new(
                "segswarm_duplicate_outputs_total",
                "Units encoded here whose output another writer had already published (this copy dropped)",
            ),
            &["kind"],
        )?;
        for kind in ["video", "audio", "thumbnail"] {
            duplicate_outputs.with_label_values(&[kind]);
        }
        let unconfirmed_publishes = IntCounter::new(
            "segswarm_unconfirmed_publishes_total",
            "Units published while their lease could not be confirmed (Redis away, local claims)",
        )?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "segswarm_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["route", "status"],
        )?;
        let http_request_seconds = HistogramVec::new(
            HistogramOpts::new("segswarm_http_request_seconds", "HTTP request latency")
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            &["route"],
        )?;
        let jobs = IntGaugeVec::new(
            Opts::new("segswarm_jobs", "Jobs known to this pod by status"),
            &["status"],
        )?;
        let ready = Gauge::new("segswarm_ready", "1 when the pod reports ready")?;
        let webhook_deliveries = IntCounterVec::new(
            Opts::new(
                "segswarm_webhook_deliveries_total",
                "Webhook delivery attempts by result (delivered, retried, failed)",
            ),
            &["result"],
        )?;
        let watch_jobs = IntCounter::new(
            "segswarm_watch_jobs_total",
            "Jobs created from files in the watch folder",
        )?;
        let claims = IntCounterVec::new(
            Opts::new(
                "segswarm_claims_total",
                "Unit claims by result (won, held, already_done, error)",
            ),
            &["result"],
        )?;
        for result in ["won", "held", "already_done", "error"] {
            claims.with_label_values(&[result]);
        }
        let claim_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "segswarm_claim_seconds",
                "Round trip of one claim call to Redis",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0,
            ]),
        )?;
        let lease_renewals = IntCounterVec::new(
            Opts::new(
                "segswarm_lease_renewals_total",
                "Lease renewals by result (renewed, lost, error)",
            ),
            &["result"],
        )?;
        for result in ["renewed", "lost", "error"] {
            lease_renewals.with_label_values(&[result]);
        }
        let takeovers = IntCounter::new(
            "segswarm_takeovers_total",
            "Units claimed after another holder's claim expired",
        )?;
        let unit_waits = IntCounter::new(
            "segswarm_unit_waits_total",
            "Waits for a unit held by another pod",
        )?;
        let unit_wait_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "segswarm_unit_wait_seconds",
                "Duration of waits for a unit held by another pod",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
        )?;
        let pubsub_reconnects = IntCounter::new(
            "segswarm_pubsub_reconnects_total",
            "Times the Redis pub/sub connection was re-established after a loss",
        )?;
        let redis_up = IntGauge::new(
            "segswarm_redis_up",
            "1 while the last Redis operation succeeded, 0 after one failed",
        )?;
        let mode = IntGaugeVec::new(
            Opts::new(
                "segswarm_mode",
                "1 for the coordination mode in force (distributed or local)",
            ),
            &["mode"],
        )?;
        let fallbacks = IntCounter::new(
            "segswarm_fallbacks_total",
            "Switches from Redis to local coordination because Redis was unreachable",
        )?;
        let filled_frames = IntCounterVec::new(
            Opts::new(
                "segswarm_filled_frames_total",
                "Video frames repeated in published segments where a damaged source did not decode, by rendition",
            ),
            &["rendition"],
        )?;
        let filled_silence = Counter::new(
            "segswarm_filled_silence_seconds_total",
            "Seconds of silence put in audio tracks where a damaged source's audio did not decode",
        )?;
        for collector in [
            Box::new(units_completed.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(filled_frames.clone()),
            Box::new(filled_silence.clone()),
            Box::new(mode.clone()),
            Box::new(fallbacks.clone()),
            Box::new(units_failed.clone()),
            Box::new(units_skipped.clone()),
            Box::new(unit_encode_seconds.clone()),
            Box::new(units_in_flight.clone()),
            Box::new(cluster_slots.clone()),
            Box::new(storage_write_seconds.clone()),
            Box::new(bytes_written.clone()),
            Box::new(leases_lost.clone()),
            Box::new(completed_after_loss.clone()),
            Box::new(duplicate_outputs.clone()),
            Box::new(unconfirmed_publishes.clone()),
            Box::new(http_requests.clone()),
            Box::new(http_request_seconds.clone()),
            Box::new(jobs.clone()),
            Box::new(ready.clone()),
            Box::new(webhook_deliveries.clone()),
            Box::new(watch_jobs.clone()),
            Box::new(claims.clone()),
            Box::new(claim_seconds.clone()),
            Box::new(lease_renewals.clone()),
            Box::new(takeovers.clone()),
            Box::new(unit_waits.clone()),
            Box::new(unit_wait_seconds.clone()),
            Box::new(pubsub_reconnects.clone()),
            Box::new(redis_up.clone()),
        ] {
            registry.register(collector)?;
        }
        Ok(Metrics {
            registry,
            units_completed,
            units_failed,
            units_skipped,
            unit_encode_seconds,
            units_in_flight,
            cluster_slots,
            storage_write_seconds,
            bytes_written,
            leases_lost,
            completed_after_loss,
            duplicate_outputs,
            unconfirmed_publishes,
            http_requests,
            http_request_seconds,
            jobs,
            ready,
            webhook_deliveries,
            watch_jobs,
            claims,
            claim_seconds,
            lease_renewals,
            takeovers,
            unit_waits,
            unit_wait_seconds,
            pubsub_reconnects,
            redis_up,
            mode,
            fallbacks,
            filled_frames,
            filled_silence,
        })
    }

    /// The text exposition format for `/metrics`.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if encoder
            .encode(&self.registry.gather(), &mut buffer)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
