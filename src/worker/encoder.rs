//! The seam between the worker and whatever makes a batch's outputs.
//!
//! [`Encoder`] runs one claimed [`Batch`] to its in-progress paths and
//! checks them; [`Ffmpeg`] is the one every pod and `segswarm transcode`
//! use. The simulation benchmark puts an encoder that sleeps for a measured
//! cost behind the same worker, so the scheduler and coordinator it measures
//! are the real ones. An encoder never publishes, claims or renames: the
//! worker does that with what it wrote.

use crate::encode::{Batch, EncodeError, Verified};
use crate::fetch::SourceFetch;
use crate::ffmpeg::RunControl;
use crate::plan::Plan;
use async_trait::async_trait;

/// Produces a batch's outputs at their in-progress paths.
#[async_trait]
pub trait Encoder: Send + Sync {
    /// Runs `batch` of `plan` under `control` (cancel, stall timeout,
    /// progress) and verifies what it wrote; an `Ok` output may be
    /// published as it is, and what verification read of it (the codec
    /// strings) goes to the job's playlists.
    async fn encode(
        &self,
        batch: &Batch,
        plan: &Plan,
        control: RunControl,
    ) -> Result<Verified, EncodeError>;
}

/// The real encoder: one ffmpeg process per batch, reading the source
/// through the pod's [`SourceFetch`] (a path of its own for each run), then
/// the checks of [`crate::encode`].
#[derive(Debug, Clone)]
pub struct Ffmpeg {
    fetch: SourceFetch,
}

impl Ffmpeg {
    pub fn new(fetch: SourceFetch) -> Ffmpeg {
        Ffmpeg { fetch }
    }
}

#[async_trait]
impl Encoder for Ffmpeg {
    async fn encode(
        &self,
        batch: &Batch,
        plan: &Plan,
        control: RunControl,
    ) -> Result<Verified, EncodeError> {
        let input = self
            .fetch
            .open(&plan.source)
            .await
            .map_err(|error| EncodeError::Fetch {
                what: batch.describe(),
                source_name: plan.source.to_string(),
                error: Box::new(error),
            })?;
        batch.run(plan, &input, control).await
    }
}
