//! Job warnings: what a job's package had to make up for a damaged source,
//! so that it could still end `done` with its planned timeline.
//!
//! A [`JobWarning`] names its kind, the unit it concerns, the damaged time
//! range (seconds on the job's timeline: 0 is the source's first frame,
//! from the plan) and how much was filled. The worker makes them (a video
//! segment whose missing frames were repeated, an audio track whose gaps
//! were filled with silence, a source cut off before its end); the jobs
//! layer carries them in the job object, its events and the registry. Plain
//! data with serde (the names are the wire names); it never does I/O.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most warnings kept per job. A badly damaged long source could otherwise
/// make thousands (one per unit); the filled-frames metric counts them all.
pub const MAX_WARNINGS: usize = 100;

/// What a warning is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// A video segment decoded to fewer frames than planned (the same count
    /// twice): the missing frames repeat their neighbours.
    DamagedSource,
    /// An audio track did not decode in places: the gaps are silence.
    DamagedAudio,
    /// The source ends before the end its container claims (a cut-off
    /// upload): the package covers what is there.
    TruncatedSource,
}

impl WarningKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WarningKind::DamagedSource => "damaged_source",
            WarningKind::DamagedAudio => "damaged_audio",
            WarningKind::TruncatedSource => "truncated_source",
        }
    }
}

/// One warning of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobWarning {
    pub kind: WarningKind,
    /// The unit whose output was filled (`video/240p/1`, `audio/0`); none
    /// for a warning about the source as a whole.
    pub unit: Option<String>,
    /// The video rendition of the unit.
    pub rendition: Option<String>,
    /// The audio track of the unit.
    pub track: Option<usize>,
    /// Start of the damaged range, seconds on the job's timeline.
    pub start: f64,
    /// End of the damaged range, seconds on the job's timeline.
    pub end: f64,
    /// Video frames repeated to keep the planned frame count.
    pub frames_filled: usize,
    /// Seconds of audio filled with silence.
    pub silence_filled: f64,
    /// The same, in words.
    pub message: String,
}

impl JobWarning {
    /// What makes two warnings the same one (a unit filled by two pods, or
    /// heard twice): kind and unit.
    pub fn key(&self) -> String {
        format!(
            "{}:{}",
            self.kind.as_str(),
            self.unit.as_deref().unwrap_or("source")
        )
    }
}

/// Adds `new` warnings to `list` (sorted by time, then key; one per key; at
/// most [`MAX_WARNINGS`]). Returns true when `list` changed.
pub fn merge(list: &mut Vec<JobWarning>, new: impl IntoIterator<Item = JobWarning>) -> bool {
    let mut changed = false;
    for warning in new {
        if list.len() >= MAX_WARNINGS || list.iter().any(|w| w.key() == warning.key()) {
            continue;
        }
        list.push(warning);
        changed = true;
    }
    if changed {
        list.sort_by(|a, b| {
            a.start
                .total_cmp(&b.start)
                .then_with(|| a.key().cmp(&b.key()))
        });
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(rendition: &str, start: f64) -> JobWarning {
        JobWarning {
            kind: WarningKind::DamagedSource,
            unit: Some(format!("video/{rendition}/1")),
            rendition: Some(rendition.into()),
            track: None,
            start,
            end: start + 4.0,
            frames_filled: 29,
            silence_filled: 0.0,
            message: String::new(),
        }
    }

    #[test]
    fn merging_keeps_one_per_unit_in_time_order() {
        let mut list = Vec::new();
        assert!(merge(&mut list, [video("360p", 4.0), video("240p", 4.0)]));
        assert!(!merge(&mut list, [video("240p", 4.0)]), "heard twice");
        assert!(merge(
            &mut list,
            [video("240p", 0.0)].map(|mut w| {
                w.unit = Some("video/240p/0".into());
                w
            })
        ));
        let units: Vec<_> = list.iter().map(|w| w.unit.clone().unwrap()).collect();
        assert_eq!(units, ["video/240p/0", "video/240p/1", "video/360p/1"]);
    }

    #[test]
    fn merging_stops_at_the_limit() {
        let mut list = Vec::new();
        let many = (0..MAX_WARNINGS + 5).map(|i| {
            let mut w = video("240p", i as f64);
            w.unit = Some(format!("video/240p/{i}"));
            w
        });
        merge(&mut list, many);
        assert_eq!(list.len(), MAX_WARNINGS);
    }

    #[test]
    fn the_wire_names_are_snake_case() {
        let json = serde_json::to_value(video("240p", 4.0)).unwrap();
        assert_eq!(json["kind"], "damaged_source");
        assert_eq!(json["unit"], "video/240p/1");
        assert_eq!(json["frames_filled"], 29);
        for kind in [
            WarningKind::DamagedSource,
            WarningKind::DamagedAudio,
            WarningKind::TruncatedSource,
        ] {
            let text = serde_json::to_string(&kind).unwrap();
            assert_eq!(text, format!("\"{}\"", kind.as_str()));
        }
    }
}
