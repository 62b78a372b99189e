//! A job's warnings as the worker makes them: what a verified batch filled
//! for a damaged source ([`Filled`]), one warning per unit, and the plan's
//! own (a source cut off before its end). Each is counted in the metrics,
//! kept on the [`JobRun`] and announced as [`WorkerEvent::Warnings`].
//!
//! A batch's warnings are recorded after it is verified and before it is
//! published, and kept through the coordinator (in Redis, in a cluster)
//! first, so a unit is never done (for any pod) before its warnings can be
//! read. It decides nothing about the unit: a filled output is published
//! like any verified one.

use super::job_run::JobRun;
use super::{Shared, WorkerEvent};
use crate::coord::Lease;
use crate::encode::{Batch, Filled};
use crate::plan::{Plan, Unit};
use crate::warning::{JobWarning, WarningKind};
use std::sync::Arc;

impl Shared {
    /// Records what `batch` filled: kept through the coordinator, metrics,
    /// the job's warnings, an event.
    pub(super) async fn record_filled(
        &self,
        job: &Arc<JobRun>,
        batch: &Batch,
        leases: &[Lease],
        filled: &Filled,
    ) {
        let warnings = batch_warnings(&job.plan, batch, leases, filled);
        let kept: Vec<(String, String)> = warnings
            .iter()
            .filter_map(|w| Some((w.key(), serde_json::to_string(w).ok()?)))
            .collect();
        if let Err(err) = self.coord.keep_warnings(job.id(), &kept).await {
            // The job's events carry them anyway.
            tracing::warn!(job = %job.id(), "keeping warnings: {err}");
        }
        for warning in &warnings {
            if let Some(rendition) = &warning.rendition {
                self.metrics
                    .filled_frames
                    .with_label_values(&[rendition])
                    .inc_by(warning.frames_filled as u64);
            }
            self.metrics.filled_silence.inc_by(warning.silence_filled);
            tracing::info!(job = %job.id(), unit = ?warning.unit, "{}", warning.message);
        }
        let added = job.add_warnings(warnings);
        if !added.is_empty() {
            let _ = self.events.send(WorkerEvent::Warnings {
                job: job.id(),
                warnings: added,
            });
        }
    }
}

/// One warning per unit of a batch that filled `filled`.
fn batch_warnings(
    plan: &Plan,
    batch: &Batch,
    leases: &[Lease],
    filled: &Filled,
) -> Vec<JobWarning> {
    match (batch, filled) {
        (Batch::Video { segment, .. }, Filled::Frames { decoded, planned }) => {
            let start = plan.timeline(segment.start);
            let end = start + segment.duration;
            let missing = planned.saturating_sub(*decoded);
            leases
                .iter()
                .filter_map(|lease| match &lease.unit {
                    Unit::Video { rendition, index } => Some(JobWarning {
                        kind: WarningKind::DamagedSource,
                        unit: Some(lease.unit.to_string()),
                        rendition: Some(rendition.clone()),
                        track: None,
                        start,
                        end,
                        frames_filled: missing,
                        silence_filled: 0.0,
                        message: format!(
                            "segment {index} of {rendition} ({start:.3}-{end:.3} s): the source \
                             is damaged there and decodes to {decoded} of its {planned} frames; \
                             {missing} frame(s) repeat their neighbours"
                        ),
                    }),
                    _ => None,
                })
                .collect()
        }
        (Batch::Audio { track, .. }, Filled::Silence { gaps }) => {
            let (Some(first), Some(last)) = (gaps.first(), gaps.last()) else {
                return Vec::new();
            };
            let silence: f64 = gaps.iter().map(|gap| gap.end - gap.start).sum();
            let silence = (silence * 1e6).round() / 1e6;
            vec![JobWarning {
                kind: WarningKind::DamagedAudio,
                unit: Some(Unit::Audio { track: *track }.to_string()),
                rendition: None,
                track: Some(*track),
                start: first.start,
                end: last.end,
                frames_filled: 0,
                silence_filled: silence,
                message: format!(
                    "audio track {track} ({:.3}-{:.3} s): the source's audio does not decode \
                     in {} place(s); {silence:.3} s filled with silence",
                    first.start,
                    last.end,
                    gaps.len()
                ),
            }]
        }
        _ => Vec::new(),
    }
}

/// The warning a plan carries itself: its source was cut off.
pub(super) fn plan_warnings(plan: &Plan) -> Vec<JobWarning> {
    let Some(truncation) = &plan.truncated else {
        return Vec::new();
    };
    let start = plan.duration;
    let end = truncation.claimed_duration.max(start);
    vec![JobWarning {
        kind: WarningKind::TruncatedSource,
        unit: None,
        rendition: None,
        track: None,
        start,
        end,
        frames_filled: 0,
        silence_filled: 0.0,
        message: format!(
            "the source is cut off: its frames end at {start:.3} s of the {end:.3} s its \
             container claims ({}); the package covers what is there",
            truncation.detail
        ),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{AudioGap, VideoOutput};
    use crate::worker::units::tests::plan;

    fn lease(unit: Unit) -> Lease {
        Lease {
            job: crate::JobId::nil(),
            unit,
            token: "t".into(),
            worker_id: "w".into(),
        }
    }

    #[test]
    fn a_filled_video_batch_warns_once_per_rendition() {
        let plan = plan(3);
        let segment = plan.segments[1].clone();
        let outputs = plan
            .renditions
            .iter()
            .map(|r| VideoOutput {
                rendition: r.clone(),
                tmp_path: format!("/tmp/{}.ts", r.name).into(),
            })
            .collect();
        let batch = Batch::Video { segment, outputs };
        let leases: Vec<Lease> = plan
            .renditions
            .iter()
            .map(|r| {
                lease(Unit::Video {
                    rendition: r.name.clone(),
                    index: 1,
                })
            })
            .collect();
        let filled = Filled::Frames {
            decoded: 151,
            planned: 180,
        };
        let warnings = batch_warnings(&plan, &batch, &leases, &filled);
        assert_eq!(warnings.len(), plan.renditions.len());
        let first = &warnings[0];
        assert_eq!(first.kind, WarningKind::DamagedSource);
        assert_eq!(first.unit.as_deref(), Some("video/240p/1"));
        assert_eq!(first.frames_filled, 29);
        assert_eq!((first.start, first.end), (6.0, 12.0));
        assert!(
            first.message.contains("151 of its 180 frames"),
            "{}",
            first.message
        );
    }

    #[test]
    fn filled_audio_warns_with_the_span_of_its_gaps() {
        let plan = plan(3);
        let work = crate::storage::JobLayout::new("/tmp/x").audio_work_dir("t", 0);
        let batch = Batch::Audio { track: 0, work };
        let gaps = vec![
            AudioGap {
                start: 6.5,
                end: 6.6,
            },
            AudioGap {
                start: 7.0,
                end: 7.05,
            },
        ];
        let warnings = batch_warnings(
            &plan,
            &batch,
            &[lease(Unit::Audio { track: 0 })],
            &Filled::Silence { gaps },
        );
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].kind, WarningKind::DamagedAudio);
        assert_eq!((warnings[0].start, warnings[0].end), (6.5, 7.05));
        assert!((warnings[0].silence_filled - 0.15).abs() < 1e-9);
    }

    #[test]
    fn only_a_cut_off_plan_warns_by_itself() {
        let mut plan = plan(3);
        assert!(plan_warnings(&plan).is_empty());
        plan.truncated = Some(crate::plan::Truncation {
            claimed_duration: 30.0,
            detail: "partial file".into(),
        });
        let warnings = plan_warnings(&plan);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].kind, WarningKind::TruncatedSource);
        assert_eq!(warnings[0].end, 30.0);
        assert_eq!(warnings[0].key(), "truncated_source:source");
    }
}
