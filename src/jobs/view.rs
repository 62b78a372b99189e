//! A job as the API, the event stream and webhooks show it ([`JobView`]), how
//! this pod builds it, and the part of another pod's view it takes over
//! ([`RemoteView`]).
//!
//! Building a view reads the record, the plan, the worker's counts and (for
//! a job not running here) which segments are on storage; it never changes
//! a job and never formats HTTP responses.

use super::model::{JobMode, JobStatus};
use super::progress::percent;
use super::{JobEntry, JobManager};
use crate::storage::JobLayout;
use crate::sync::lock;
use crate::warning::JobWarning;
use crate::JobId;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};
use utoipa::ToSchema;

/// Per-rendition progress in a [`JobView`].
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RenditionView {
    /// The rendition's name, e.g. `720p`.
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Segments on storage.
    pub done: usize,
    /// Segments in the plan.
    pub total: usize,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobView {
    #[schema(value_type = String, format = Uuid)]
    pub id: JobId,
    pub status: JobStatus,
    /// The source as submitted (a path under a source root, or a URL).
    pub source: String,
    pub mode: JobMode,
    /// Higher runs first.
    pub priority: i32,
    /// Rung names, e.g. `["240p", "720p:2500k"]`.
    pub ladder: Vec<String>,
    /// Seconds.
    pub segment_duration: u32,
    pub callback_url: Option<String>,
    /// RFC 3339, milliseconds.
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Percentage of units done, 0 to 100; never goes back.
    pub progress: f64,
    /// The master playlist plays (audio and the lowest rendition's first
    /// segment exist).
    pub playable: bool,
    /// `/hls/<id>/master.m3u8`
    pub master_url: String,
    /// `/hls/<id>/thumbnail.webp`
    pub thumbnail_url: String,
    /// Seconds, once the source is probed.
    pub duration: Option<f64>,
    pub audio_tracks: Option<usize>,
    pub renditions: Vec<RenditionView>,
    pub error: Option<String>,
    /// What the package had to fill for a damaged source (empty for a
    /// source that decoded whole).
    pub warnings: Vec<JobWarning>,
}

/// What this pod takes from the [`JobView`] another pod sent with an event:
/// the sender's status, playability, error, progress and warnings. Other
/// fields are ignored; a missing field changes nothing here.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RemoteView {
    #[serde(default)]
    pub status: Option<JobStatus>,
    #[serde(default)]
    pub playable: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub progress: Option<f64>,
    #[serde(default)]
    pub warnings: Vec<JobWarning>,
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl JobManager {
    /// The job as this pod sees it now.
    pub(super) fn view(&self, entry: &JobEntry) -> JobView {
        let record = entry.record();
        let plan = lock(&entry.plan).clone();
        let run = lock(&entry.run).clone();
        let live = run.as_ref().filter(|_| !record.status.is_terminal());
        // What this pod saw done, or what the cluster reported if more: the
        // pods' views of a job lag each other a little, and a reader must
        // never see progress go back.
        let progress = match live {
            Some(run) => percent(run.progress()).max(record.progress),
            None => record.progress,
        };
        let renditions = match (&plan, &run) {
            (Some(plan), Some(run)) => run
                .rendition_progress()
                .into_iter()
                .filter_map(|(name, done, total)| {
                    let r = plan.rendition(&name)?;
                    Some(RenditionView {
                        name,
                        width: r.width,
                        height: r.height,
                        done,
                        total,
                    })
                })
                .collect(),
            (Some(plan), None) => {
                let layout = self.storage.job(record.id);
                plan.renditions
                    .iter()
                    .map(|r| RenditionView {
                        name: r.name.clone(),
                        width: r.width,
                        height: r.height,
                        done: plan
                            .segments
                            .iter()
                            .filter(|s| layout.segment(&r.name, s.index).is_file())
                            .count(),
                        total: plan.segments.len(),
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        JobView {
            id: record.id,
            status: record.status,
            source: record.spec.source.to_string(),
            mode: record.spec.mode,
            priority: record.spec.priority,
            ladder: record
                .spec
                .settings
                .ladder
                .0
                .iter()
                .map(|r| r.name())
                .collect(),
            segment_duration: record.spec.settings.segment_duration,
            callback_url: record.spec.callback_url.clone(),
            created_at: rfc3339(record.created_at_ms),
            updated_at: rfc3339(record.updated_at_ms),
            progress,
            playable: record.playable,
            master_url: format!("/hls/{}/{}", record.id, JobLayout::master_uri()),
            thumbnail_url: format!("/hls/{}/{}", record.id, JobLayout::thumbnail_uri()),
            duration: plan.as_ref().map(|p| p.duration),
            audio_tracks: plan.as_ref().map(|p| p.audio.len()),
            renditions,
            error: record.error.clone(),
            warnings: record.warnings.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_view_reads_what_a_job_view_serializes() {
        let mut view = super::super::events::tests::view(42.5);
        view.status = JobStatus::Playable;
        view.playable = true;
        view.error = Some("one rendition failed".into());
        let json = serde_json::to_string(&view).unwrap();
        let remote: RemoteView = serde_json::from_str(&json).unwrap();
        assert_eq!(
            remote,
            RemoteView {
                status: Some(JobStatus::Playable),
                playable: true,
                error: Some("one rendition failed".into()),
                progress: Some(42.5),
                warnings: Vec::new(),
            }
        );
        // Nulls and missing fields change nothing.
        let sparse: RemoteView = serde_json::from_str(r#"{"error":null,"x":1}"#).unwrap();
        assert_eq!(sparse, RemoteView::default());
    }
}
