//! The job domain model: what a job was asked to do ([`JobSpec`]), where it
//! is in its life ([`JobStatus`]), its persisted record ([`JobRecord`],
//! with the warnings its package earned) and the kinds of events its
//! stream carries ([`JobEventKind`]).
//!
//! Plain data with serde: the names here are the wire names (`status.json`,
//! the API and its OpenAPI schemas, the events between pods). It never does I/O and never decides a
//! transition; the job manager does.

use crate::config::EncodeSettings;
use crate::source::Source;
use crate::warning::JobWarning;
use crate::JobId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a job is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobMode {
    /// Encode everything now, lowest rendition first; playlists grow.
    #[default]
    Ingest,
    /// List the whole plan at once; encode segments when they are requested.
    OnDemand,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Processing,
    Playable,
    Done,
    Partial,
    Failed,
    Canceled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Queued,
        JobStatus::Processing,
        JobStatus::Playable,
        JobStatus::Done,
        JobStatus::Partial,
        JobStatus::Failed,
        JobStatus::Canceled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Partial | JobStatus::Failed | JobStatus::Canceled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Playable => "playable",
            JobStatus::Done => "done",
            JobStatus::Partial => "partial",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }

    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// The kind of one entry of a job's event stream: the SSE event name, the
/// webhook's event header and the `<name>` of an event between pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobEventKind {
    Queued,
    Processing,
    ThumbnailReady,
    /// Throttled: at most one per 2 % step cluster-wide.
    Progress,
    Playable,
    /// The job got warnings (a damaged source was filled); once per batch
    /// of warnings cluster-wide.
    Warning,
    Done,
    Partial,
    Failed,
    Canceled,
}

impl JobEventKind {
    pub const ALL: [JobEventKind; 10] = [
        JobEventKind::Queued,
        JobEventKind::Processing,
        JobEventKind::ThumbnailReady,
        JobEventKind::Progress,
        JobEventKind::Playable,
        JobEventKind::Warning,
        JobEventKind::Done,
        JobEventKind::Partial,
        JobEventKind::Failed,
        JobEventKind::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobEventKind::Queued => "queued",
            JobEventKind::Processing => "processing",
            JobEventKind::ThumbnailReady => "thumbnail_ready",
            JobEventKind::Progress => "progress",
            JobEventKind::Playable => "playable",
            JobEventKind::Warning => "warning",
            JobEventKind::Done => "done",
            JobEventKind::Partial => "partial",
            JobEventKind::Failed => "failed",
            JobEventKind::Canceled => "canceled",
        }
    }

    pub fn parse(text: &str) -> Option<JobEventKind> {
        JobEventKind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The status this event announces, for the status events.
    pub fn status(self) -> Option<JobStatus> {
        match self {
            JobEventKind::Queued => Some(JobStatus::Queued),
            JobEventKind::Processing => Some(JobStatus::Processing),
            JobEventKind::Playable => Some(JobStatus::Playable),
            JobEventKind::Done => Some(JobStatus::Done),
            JobEventKind::Partial => Some(JobStatus::Partial),
            JobEventKind::Failed => Some(JobStatus::Failed),
            JobEventKind::Canceled => Some(JobStatus::Canceled),
            JobEventKind::ThumbnailReady | JobEventKind::Progress | JobEventKind::Warning => None,
        }
    }

    /// True for the last event of a stream (a terminal status).
    pub fn is_terminal(self) -> bool {
        self.status().is_some_and(JobStatus::is_terminal)
    }
}

impl From<JobStatus> for JobEventKind {
    /// The event that announces a status.
    fn from(status: JobStatus) -> JobEventKind {
        match status {
            JobStatus::Queued => JobEventKind::Queued,
            JobStatus::Processing => JobEventKind::Processing,
            JobStatus::Playable => JobEventKind::Playable,
            JobStatus::Done => JobEventKind::Done,
            JobStatus::Partial => JobEventKind::Partial,
            JobStatus::Failed => JobEventKind::Failed,
            JobStatus::Canceled => JobEventKind::Canceled,
        }
    }
}

impl std::fmt::Display for JobEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a job was asked to do (validated).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub source: Source,
    pub settings: EncodeSettings,
    pub priority: i32,
    pub mode: JobMode,
    pub callback_url: Option<String>,
}

/// The persisted record of a job (`status.json`, and the registry's copy).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub spec: JobSpec,
    pub status: JobStatus,
    pub error: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub playable: bool,
    /// Percentage of units done: the highest value known cluster-wide (this
    /// pod's reports and other pods' events). The one value the 2 % progress
    /// throttle is decided on (see `jobs/progress.rs`).
    pub progress: f64,
    /// What the package had to fill for a damaged source, from every pod
    /// (sorted by time, one per unit).
    #[serde(default)]
    pub warnings: Vec<JobWarning>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_kind_round_trips_through_its_name_and_serde() {
        for kind in JobEventKind::ALL {
            assert_eq!(JobEventKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<JobEventKind>(&json).unwrap(), kind);
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(JobEventKind::ThumbnailReady.as_str(), "thumbnail_ready");
        assert_eq!(JobEventKind::parse("thumbnailready"), None);
        assert_eq!(JobEventKind::parse("Done"), None);
        assert_eq!(JobEventKind::parse(""), None);
    }

    #[test]
    fn status_events_carry_the_status_name() {
        for status in JobStatus::ALL {
            let kind = JobEventKind::from(status);
            assert_eq!(kind.as_str(), status.as_str());
            assert_eq!(kind.status(), Some(status));
            assert_eq!(kind.is_terminal(), status.is_terminal());
        }
        assert_eq!(JobEventKind::Progress.status(), None);
        assert_eq!(JobEventKind::Warning.status(), None);
        assert!(!JobEventKind::Warning.is_terminal());
        assert!(!JobEventKind::ThumbnailReady.is_terminal());
    }
}
