//! Measured figures: latency samples summarised as percentiles, for the
//! `FIGURE:` lines tests print (copied into docs/reliability.md) and the
//! benches' latencies, and the min/median/max of a figure over repeated runs
//! (the benches' tables, docs/benchmarks.md).

use std::time::Duration;

/// Latency samples of one group of requests.
#[derive(Default, Clone, Debug)]
pub struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    pub fn push(&mut self, sample: Duration) {
        self.samples.push(sample);
    }

    /// Adds every sample of `other` (latencies measured by several tasks).
    pub fn merge(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The nearest-rank percentile `p` (0..=100); zero without samples.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    pub fn max(&self) -> Duration {
        self.samples.iter().copied().max().unwrap_or_default()
    }

    /// `n=.. p50=.. p90=.. p99=.. max=.. ms` with one decimal.
    pub fn summary(&self) -> String {
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        format!(
            "n={} p50={} p90={} p99={} max={} ms",
            self.len(),
            ms(self.percentile(50.0)),
            ms(self.percentile(90.0)),
            ms(self.percentile(99.0)),
            ms(self.max())
        )
    }
}

/// Min, median (mean of the middle two for an even count) and max of one
/// figure's values; panics without values.
pub fn min_median_max(values: &[f64]) -> (f64, f64, f64) {
    assert!(!values.is_empty(), "a figure without values");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    };
    (sorted[0], median, sorted[sorted.len() - 1])
}
