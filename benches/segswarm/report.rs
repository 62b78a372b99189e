//! What a bench prints: a table of min/median/max per figure over the
//! repeats, then one JSON line `{"bench": ..., "repeat": ..., "figures":
//! {name: {"min", "median", "max"}}}` (what `scripts/bench-smoke` checks).

use crate::common::stats::min_median_max;
use std::time::Duration;

/// Figures of one bench, one value per repeat, in the order first added.
pub struct Report {
    bench: &'static str,
    repeat: usize,
    figures: Vec<(String, Vec<f64>)>,
}

impl Report {
    pub fn new(bench: &'static str, repeat: usize) -> Self {
        Report {
            bench,
            repeat,
            figures: Vec::new(),
        }
    }

    /// Adds one repeat's value of the figure `name`.
    pub fn add(&mut self, name: impl Into<String>, value: f64) {
        let name = name.into();
        match self.figures.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => self.figures.push((name, vec![value])),
        }
    }

    /// The table, then the JSON line, on stdout.
    pub fn print(&self) {
        let width = self
            .figures
            .iter()
            .map(|(n, _)| n.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let mut out = format!(
            "{:<width$}  {:>12}  {:>12}  {:>12}\n",
            "figure", "min", "median", "max"
        );
        let mut json = serde_json::Map::new();
        for (name, values) in &self.figures {
            let (min, median, max) = min_median_max(values);
            out.push_str(&format!(
                "{name:<width$}  {:>12}  {:>12}  {:>12}\n",
                fmt(min),
                fmt(median),
                fmt(max)
            ));
            json.insert(
                name.clone(),
                serde_json::json!({"min": min, "median": median, "max": max}),
            );
        }
        let line = serde_json::json!({
            "bench": self.bench,
            "repeat": self.repeat,
            "figures": json,
        });
        out.push_str(&format!("{line}\n"));
        // A closed stdout (`| head`) is not an error of the bench.
        let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes());
    }
}

/// Three decimals below 100, none above.
fn fmt(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

/// A duration in milliseconds, the unit of every latency figure.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
