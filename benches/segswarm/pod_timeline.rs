//! What each pod of a figure 7 run was doing, from what the pod exposes:
//! its `/metrics`, polled at a fixed period. `segswarm_units_in_flight`
//! (units it is encoding now: raised just before a batch's ffmpeg starts,
//! lowered when it exits) and `segswarm_units_completed_total` (units it
//! published) give each pod's **start idle** (submit → the first poll that
//! saw a unit of its running or done) and **tail idle** (the first poll
//! after which it had nothing running and no unit left to publish → the
//! job's end). Both are up to one period late.

use crate::common::metric_value;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One poll of one pod.
#[derive(Clone, Copy, Debug)]
struct Sample {
    t: Duration,
    in_flight: f64,
    completed: f64,
}

/// Polls every pod's `/metrics` until stopped.
pub struct MetricsPoller {
    stop: CancellationToken,
    task: JoinHandle<Vec<Vec<Sample>>>,
}

impl MetricsPoller {
    /// Starts polling `metrics_urls` (one per pod) every `period`, all pods
    /// at once; times are counted from `origin`. A poll that fails is left
    /// out.
    pub fn start(metrics_urls: Vec<String>, origin: Instant, period: Duration) -> MetricsPoller {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap_or_default();
                let mut samples = vec![Vec::new(); metrics_urls.len()];
                let mut ticks = tokio::time::interval(period.max(Duration::from_millis(1)));
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    // Once stopped, one last poll: the state after the end.
                    let stopping = tokio::select! {
                        _ = stop.cancelled() => true,
                        _ = ticks.tick() => false,
                    };
                    let polls = metrics_urls.iter().map(|url| poll(&client, url, origin));
                    for (pod, sample) in futures_util::future::join_all(polls)
                        .await
                        .into_iter()
                        .enumerate()
                    {
                        samples[pod].extend(sample);
                    }
                    if stopping {
                        break;
                    }
                }
                samples
            }
        });
        MetricsPoller { stop, task }
    }

    /// Polls once more, stops; one timeline per pod, in the order of the
    /// URLs.
    pub async fn stop(self) -> anyhow::Result<Vec<PodTimeline>> {
        self.stop.cancel();
        let samples = self
            .task
            .await
            .map_err(|err| anyhow::anyhow!("the metrics poller task failed: {err}"))?;
        Ok(samples
            .into_iter()
            .map(|samples| PodTimeline { samples })
            .collect())
    }
}

async fn poll(client: &reqwest::Client, url: &str, origin: Instant) -> Option<Sample> {
    let sent = origin.elapsed();
    let text = client.get(url).send().await.ok()?.text().await.ok()?;
    Some(Sample {
        t: sent,
        in_flight: metric_value(&text, "segswarm_units_in_flight", &[])?,
        completed: metric_value(&text, "segswarm_units_completed_total", &[]).unwrap_or(0.0),
    })
}

/// The polls of one pod during one run.
pub struct PodTimeline {
    samples: Vec<Sample>,
}

impl PodTimeline {
    /// Units the pod published during the run (its counter's last value
    /// minus its first).
    pub fn units(&self) -> f64 {
        match (self.samples.first(), self.samples.last()) {
            (Some(first), Some(last)) => last.completed - first.completed,
            _ => 0.0,
        }
    }

    /// Time of the first poll that saw a unit of this pod running or done;
    /// None when it never had one.
    pub fn first_unit(&self) -> Option<Duration> {
        let before = self.samples.first()?.completed;
        self.samples
            .iter()
            .find(|s| s.in_flight > 0.0 || s.completed > before)
            .map(|s| s.t)
    }

    /// Time of the first poll after which the pod had no unit running and
    /// had published its last one; None when it never had a unit.
    pub fn last_unit_done(&self) -> Option<Duration> {
        self.first_unit()?;
        let last = self.samples.last()?;
        let busy = self
            .samples
            .iter()
            .rposition(|s| s.in_flight > 0.0 || s.completed < last.completed);
        match busy {
            // Still busy at the last poll (after the job's end): no tail.
            Some(i) => Some(self.samples.get(i + 1).unwrap_or(last).t),
            None => self.samples.first().map(|s| s.t),
        }
    }
}
