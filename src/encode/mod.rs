//! Encoding: the one place that builds ffmpeg arguments ([`args`]), the
//! checks an output must pass before it may be published ([`verify`]),
//! reading what an MPEG-TS segment holds ([`mpegts`]) and where its
//! keyframes lie ([`ts_keyframes`], for I-frame playlists), and telling a
//! damaged source from a failed encode, filling what the source lacks
//! ([`damage`]).
//!
//! A [`Batch`] is what one ffmpeg process produces: one segment of one or
//! more video renditions (decode once, split, scale and encode each), or a
//! whole audio rendition, or the thumbnail. Outputs go to in-progress paths
//! given by the caller; this module never renames anything into place and
//! never writes to the source.

mod args;
mod damage;
pub mod mpegts;
pub mod ts_keyframes;
mod verify;

pub use damage::{AudioGap, Filled};
pub use verify::video_codec_string;

use crate::fetch::{FetchError, SourceInput};
use crate::ffmpeg::{run_ffmpeg, RunControl, RunError, RunOutput};
use crate::plan::{Plan, Rendition, Segment};
use crate::storage::AudioWorkDir;
use std::ffi::OsString;
use std::path::PathBuf;

/// Why an encode did not produce a publishable output.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoding {what}: {error}")]
    Run { what: String, error: RunError },
    #[error("encoding {what}: output {path} failed verification: {reason}")]
    Verify {
        what: String,
        path: PathBuf,
        reason: String,
    },
    /// The pod's proxy could not fetch the source for this encode (boxed:
    /// it is the largest variant by far).
    #[error("encoding {what}: source {source_name}: {error}")]
    Fetch {
        what: String,
        source_name: String,
        error: Box<FetchError>,
    },
    /// The source decodes to nothing at all (`media`: "video frame",
    /// "audio") in the unit's range, the same way twice: there is nothing
    /// to fill from. Times on the job's timeline.
    #[error(
        "encoding {what}: the source yields no decodable {media} from {start:.3} s \
         to {end:.3} s (the same twice: it is damaged there)"
    )]
    Undecodable {
        what: String,
        media: &'static str,
        start: f64,
        end: f64,
    },
}

impl EncodeError {
    /// True when the run was stopped on purpose (cancel, shutdown, lost
    /// lease): not the unit's fault.
    pub fn is_canceled(&self) -> bool {
        matches!(self, EncodeError::Run { error, .. } if error.is_canceled())
    }
}

/// One video output of a batch: a rendition and where its segment goes.
#[derive(Debug, Clone)]
pub struct VideoOutput {
    pub rendition: Rendition,
    pub tmp_path: PathBuf,
}

/// What verification read of a batch's outputs that others want to know.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verified {
    /// Per video output: its rendition's name and RFC 6381 codec string.
    pub codecs: Vec<(String, String)>,
    /// What the outputs had to make up for a damaged source; `None` for a
    /// source that decoded whole.
    pub filled: Option<Filled>,
}

/// What one ffmpeg process produces.
#[derive(Debug, Clone)]
pub enum Batch {
    /// Segment `segment` of every listed rendition.
    Video {
        segment: Segment,
        outputs: Vec<VideoOutput>,
    },
    /// A whole audio rendition: a playlist and its segments in `work`.
    Audio { track: usize, work: AudioWorkDir },
    /// The thumbnail image.
    Thumbnail { tmp_path: PathBuf },
}

impl Batch {
    /// Human-readable name for errors and logs.
    pub fn describe(&self) -> String {
        match self {
            Batch::Video { segment, outputs } => {
                let names: Vec<&str> = outputs.iter().map(|o| o.rendition.name.as_str()).collect();
                format!("segment {} of {}", segment.index, names.join(","))
            }
            Batch::Audio { track, .. } => format!("audio track {track}"),
            Batch::Thumbnail { .. } => "thumbnail".to_string(),
        }
    }

    /// CPU priority of this batch's ffmpeg: the thumbnail is never what a
    /// player waits for, so it only takes CPU that the segments and audio
    /// leave (on a 2-core pod it used to slow a new job's first segment).
    pub fn niceness(&self) -> i32 {
        match self {
            Batch::Thumbnail { .. } => 10,
            Batch::Video { .. } | Batch::Audio { .. } => 0,
        }
    }

    /// The ffmpeg arguments for this batch, reading the source as `input`
    /// (without `-progress`).
    pub fn ffmpeg_args(&self, plan: &Plan, input: &SourceInput) -> Vec<OsString> {
        args::ffmpeg_args(self, plan, input, args::Recipe::Exact)
    }

    /// Runs ffmpeg for this batch, reading the source as `input` (from
    /// [`crate::fetch::SourceFetch::open`]), then verifies every output. A
    /// video segment the source does not decode to whole, or an audio track
    /// with holes, is filled to the planned timeline when the source is to
    /// blame (the rule is in `damage.rs`), and says so in
    /// [`Verified::filled`].
    pub async fn run(
        &self,
        plan: &Plan,
        input: &SourceInput,
        control: RunControl,
    ) -> Result<Verified, EncodeError> {
        match self {
            Batch::Video { segment, outputs } => {
                damage::run_video(self, plan, input, segment, outputs, &control).await
            }
            Batch::Audio { track, .. } => {
                let whole = (0.0, plan.duration);
                let output =
                    damage::run_decoding(self, plan, input, &control, "audio", whole).await?;
                let mut verified = self.verify(plan).await?;
                verified.filled = damage::audio_gaps(plan, input, *track, &output).await;
                Ok(verified)
            }
            Batch::Thumbnail { .. } => {
                let from = plan.timeline(plan.start_time + plan.thumbnail.time);
                let range = (from, plan.duration);
                damage::run_decoding(self, plan, input, &control, "video frame", range).await?;
                self.verify(plan).await
            }
        }
    }

    /// One ffmpeg run of this batch with `recipe`, reading the source as
    /// `input`.
    async fn run_ffmpeg(
        &self,
        plan: &Plan,
        input: &SourceInput,
        recipe: args::Recipe,
        control: &RunControl,
    ) -> Result<RunOutput, EncodeError> {
        let what = self.describe();
        let ran = run_ffmpeg(
            args::ffmpeg_args(self, plan, input, recipe),
            self.niceness(),
            control,
        )
        .await;
        match (ran, input.failure()) {
            (Ok(output), _) => Ok(output),
            (Err(error), _) if error.is_canceled() => Err(EncodeError::Run { what, error }),
            // The proxy knows why better than ffmpeg ("403 Forbidden").
            (Err(_), Some(error)) => Err(EncodeError::Fetch {
                what,
                source_name: plan.source.to_string(),
                error: Box::new(error),
            }),
            (Err(error), None) => Err(EncodeError::Run { what, error }),
        }
    }

    /// Checks the outputs: a truncated or empty output is a failed attempt,
    /// never a done unit.
    pub async fn verify(&self, plan: &Plan) -> Result<Verified, EncodeError> {
        let failed = |path: PathBuf, reason: String| EncodeError::Verify {
            what: self.describe(),
            path,
            reason,
        };
        match self {
            Batch::Video { segment, outputs } => {
                let mut verified = Verified::default();
                for output in outputs {
                    let info = verify::segment(&output.tmp_path, plan, segment, &output.rendition)
                        .await
                        .map_err(|fault| failed(output.tmp_path.clone(), fault.to_string()))?;
                    verified
                        .codecs
                        .push((output.rendition.name.clone(), info.codec));
                }
                Ok(verified)
            }
            Batch::Audio { work, .. } => verify::audio(work)
                .await
                .map(|()| Verified::default())
                .map_err(|reason| failed(work.playlist(), reason)),
            Batch::Thumbnail { tmp_path } => verify::image(tmp_path, plan.thumbnail.width)
                .await
                .map(|()| Verified::default())
                .map_err(|reason| failed(tmp_path.clone(), reason)),
        }
    }

    /// Removes this batch's in-progress files (after a failed or abandoned
    /// attempt).
    pub fn remove_outputs(&self) {
        match self {
            Batch::Video { outputs, .. } => {
                for output in outputs {
                    let _ = std::fs::remove_file(&output.tmp_path);
                }
            }
            Batch::Audio { work, .. } => {
                let _ = std::fs::remove_dir_all(work.path());
            }
            Batch::Thumbnail { tmp_path } => {
                let _ = std::fs::remove_file(tmp_path);
            }
        }
    }
}
