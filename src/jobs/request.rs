//! A job request from outside the pod (`POST /v1/jobs`, the watch folder)
//! and how it becomes a [`JobSpec`]: validation against the pod's
//! [`JobSettings`], then the egress check of its URLs.
//!
//! It reads nothing but the metadata of a local source and resolves nothing
//! but the hosts of the URLs it checks; it never starts work or keeps state.

use super::model::JobSpec;
use super::JobError;
use crate::config::{validate_segment_duration, EncodeSettings, Ladder};
use crate::egress::EgressPolicy;
use crate::fetch::SourceFetch;
use crate::source::Source;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use utoipa::ToSchema;

/// A ladder given as `["240p","360p"]` or `"240p,360p"`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LadderInput {
    List(Vec<String>),
    Text(String),
}

/// The body of `POST /v1/jobs`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// An absolute path under one of the pod's source roots, or an
    /// `http(s)` URL.
    pub source: String,
    /// Rungs such as `360p` or `360p:900k` (default: the pod's ladder).
    pub ladder: Option<LadderInput>,
    /// Seconds, 2 to 10 (default: the pod's).
    pub segment_duration: Option<u32>,
    /// Higher runs first (default 0).
    pub priority: Option<i32>,
    /// Default `ingest`.
    pub mode: Option<super::JobMode>,
    /// Receives `playable`, `done`, `partial` and `failed` webhooks.
    pub callback_url: Option<String>,
}

/// Settings of the manager that come from the pod's configuration.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub defaults: EncodeSettings,
    pub source_roots: Vec<PathBuf>,
    pub prefetch_segments: usize,
    pub segment_wait: Duration,
    /// Which addresses source and callback URLs may point at.
    pub egress: EgressPolicy,
    /// The pod's source proxy, which the probe reads URL sources through.
    pub fetch: SourceFetch,
}

impl SubmitRequest {
    /// Checks the request against the pod's settings and makes it a job
    /// spec: everything but the address checks of its URLs, which need DNS
    /// ([`JobSpec::check_egress`]). It reads nothing but the metadata of a
    /// local source.
    pub fn validate(self, settings: &JobSettings) -> Result<JobSpec, JobError> {
        let source = Source::parse(&self.source, Some(&settings.source_roots))?;
        let defaults = &settings.defaults;
        let ladder = match self.ladder {
            None => defaults.ladder.clone(),
            Some(LadderInput::List(names)) => Ladder::from_names(&names)?,
            Some(LadderInput::Text(text)) => text.parse()?,
        };
        let segment_duration = match self.segment_duration {
            None => defaults.segment_duration,
            Some(seconds) => validate_segment_duration(seconds)?,
        };
        // Kept in the normalised form that `check_egress` and the webhook
        // sender look at.
        let callback_url = match self.callback_url {
            None => None,
            Some(url) => Some(
                crate::egress::parse_http_url(&url)
                    .map_err(|error| JobError::BadCallback { url, error })?
                    .to_string(),
            ),
        };
        Ok(JobSpec {
            source,
            settings: EncodeSettings {
                ladder,
                segment_duration,
                ..defaults.clone()
            },
            priority: self.priority.unwrap_or(0),
            mode: self.mode.unwrap_or_default(),
            callback_url,
        })
    }
}

impl JobSpec {
    /// Checks that the source URL and the callback URL point at addresses
    /// `policy` allows (resolving their hosts).
    pub async fn check_egress(&self, policy: EgressPolicy) -> Result<(), JobError> {
        self.source.check_egress(policy).await?;
        if let Some(url) = &self.callback_url {
            let bad = |error| JobError::BadCallback {
                url: url.clone(),
                error,
            };
            let parsed = crate::egress::parse_http_url(url).map_err(bad)?;
            crate::egress::check_url(&parsed, policy)
                .await
                .map_err(bad)?;
        }
        Ok(())
    }
}
