//! Telling a damaged source from a failed encode, and keeping the planned
//! timeline when the source is to blame.
//!
//! **Video.** A run whose ffmpeg exited cleanly and whose every output is a
//! well-formed segment (the rendition's size, an IDR picture first) holding
//! the same number `n` of frames, fewer than planned, is a *shortfall*
//! ([`SegmentFault::Short`]). The rule: the same command runs once more, at
//! once, on this pod. The same `n` again means the source decodes that way:
//! decoding is deterministic, so a damaged source loses the same frames
//! every time, while an encoder that crashes, stalls or is killed ends with
//! an error (retried as before), and a hiccup that cuts a run short (a
//! source read failing for a moment) does not repeat itself to the frame.
//! Then:
//! - `n > 0`: a third run with [`Recipe::Fill`] makes the segment with its
//!   planned frame count and times, missing frames repeating their
//!   neighbours; it must pass verification like any output, and says what
//!   it filled ([`Filled::Frames`]);
//! - `n = 0`: there is nothing to fill from:
//!   [`EncodeError::Undecodable`], which fails the unit for good.
//!
//! A different count the second time is a failed attempt as any other; a
//! whole segment the second time is published. A healthy source pays
//! nothing: one run, as before. When nothing at all decodes, ffmpeg 5.1
//! does not end cleanly with an empty output but fails
//! ([`RunError::decoded_nothing`](crate::ffmpeg::RunError::decoded_nothing)):
//! that counts as 0 frames, under the same rule, and the audio track and
//! the thumbnail follow it too ([`run_decoding`]).
//!
//! **Audio.** The recipe fills holes with silence in every run (args.rs),
//! which changes nothing when there is none. Whether there were: at
//! `-v error`, ffmpeg prints nothing for a track that decodes cleanly, so a
//! run with an empty stderr had none. Otherwise one ffprobe decodes the
//! track and lists its frames' times, and the holes longer than
//! [`AUDIO_GAP_FILLED`] are the ones that were filled
//! ([`Filled::Silence`]).
//!
//! It never publishes and reads the source only through ffmpeg and ffprobe
//! with the job's protocol and format whitelists, through the pod's fetch
//! proxy for a remote source (the [`SourceInput`] the encode was given).

use super::args::{Recipe, AUDIO_GAP_FILLED};
use super::verify::{self, SegmentFault};
use super::{Batch, EncodeError, Verified, VideoOutput};
use crate::fetch::SourceInput;
use crate::ffmpeg::{run_ffprobe, RunControl, RunOutput};
use crate::plan::{Plan, Segment};
use std::ffi::OsString;
use std::time::Duration;

/// How long listing a track's decoded audio frames may take (it decodes
/// the whole track; AAC decodes at several hundred times real time).
const AUDIO_SCAN_TIMEOUT: Duration = Duration::from_secs(300);

/// What a batch's outputs had to make up for a damaged source.
#[derive(Debug, Clone, PartialEq)]
pub enum Filled {
    /// Every video output of the batch holds `planned` frames of which the
    /// source decoded `decoded`; the others repeat their neighbours.
    Frames { decoded: usize, planned: usize },
    /// The audio track decoded with these holes, filled with silence.
    Silence { gaps: Vec<AudioGap> },
}

/// A hole in a track's decoded audio, in seconds on the job's timeline (0
/// is the source's first video frame).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AudioGap {
    pub start: f64,
    pub end: f64,
}

/// What one exact run of a video batch gave.
enum Outcome {
    /// Every output passed.
    Whole(Verified),
    /// Every output is well formed and holds these many frames, fewer than
    /// planned.
    Short(usize),
}

/// Runs a video batch: the exact recipe, and when the source falls short
/// of the planned frames the same way twice, the filling recipe.
pub(super) async fn run_video(
    batch: &Batch,
    plan: &Plan,
    input: &SourceInput,
    segment: &Segment,
    outputs: &[VideoOutput],
    control: &RunControl,
) -> Result<Verified, EncodeError> {
    let first = match exact_run(batch, plan, input, segment, outputs, control).await? {
        Outcome::Whole(verified) => return Ok(verified),
        Outcome::Short(frames) => frames,
    };
    let planned = segment.frames;
    let again = match exact_run(batch, plan, input, segment, outputs, control).await? {
        Outcome::Whole(verified) => {
            tracing::warn!(
                batch = %batch.describe(),
                "{first} of {planned} frames, then all of them: not the source's doing"
            );
            return Ok(verified);
        }
        Outcome::Short(frames) => frames,
    };
    if again != first {
        return Err(verify_error(
            batch,
            outputs,
            format!(
                "{first}, then {again} frames, expected {planned}: the source does not decode \
                 the same way twice"
            ),
        ));
    }
    let start = plan.timeline(segment.start);
    if first == 0 {
        return Err(EncodeError::Undecodable {
            what: batch.describe(),
            media: "video frame",
            start,
            end: start + segment.duration,
        });
    }
    tracing::info!(
        batch = %batch.describe(),
        "the source decodes to {first} of {planned} frames, twice: filling the rest"
    );
    batch.run_ffmpeg(plan, input, Recipe::Fill, control).await?;
    let mut verified = batch.verify(plan).await?;
    verified.filled = Some(Filled::Frames {
        decoded: first,
        planned,
    });
    Ok(verified)
}

/// One run of the exact recipe, and what its outputs hold.
async fn exact_run(
    batch: &Batch,
    plan: &Plan,
    input: &SourceInput,
    segment: &Segment,
    outputs: &[VideoOutput],
    control: &RunControl,
) -> Result<Outcome, EncodeError> {
    match batch.run_ffmpeg(plan, input, Recipe::Exact, control).await {
        Err(EncodeError::Run { error, .. }) if error.decoded_nothing() => {
            return Ok(Outcome::Short(0));
        }
        result => result?,
    };
    let mut verified = Verified::default();
    let mut short = None;
    for output in outputs {
        match verify::segment(&output.tmp_path, plan, segment, &output.rendition).await {
            Ok(info) => verified
                .codecs
                .push((output.rendition.name.clone(), info.codec)),
            Err(SegmentFault::Short { frames, .. })
                if short.is_none_or(|counted| counted == frames) =>
            {
                short = Some(frames);
            }
            Err(fault) => return Err(verify_error(batch, outputs, fault.to_string())),
        }
    }
    match short {
        None => Ok(Outcome::Whole(verified)),
        // The renditions of a batch share one decode: all or none fall
        // short.
        Some(frames) if verified.codecs.is_empty() => Ok(Outcome::Short(frames)),
        Some(frames) => Err(verify_error(
            batch,
            outputs,
            format!(
                "{frames} frames in some outputs, all {} in others",
                segment.frames
            ),
        )),
    }
}

/// Runs the batch's ffmpeg (the exact recipe); when not one frame decodes,
/// once more: nothing twice is the source's doing ([`EncodeError::Undecodable`],
/// naming `media` and the unit's `range` on the job's timeline).
pub(super) async fn run_decoding(
    batch: &Batch,
    plan: &Plan,
    input: &SourceInput,
    control: &RunControl,
    media: &'static str,
    range: (f64, f64),
) -> Result<RunOutput, EncodeError> {
    for _ in 0..2 {
        match batch.run_ffmpeg(plan, input, Recipe::Exact, control).await {
            Err(EncodeError::Run { error, .. }) if error.decoded_nothing() => continue,
            result => return result,
        }
    }
    Err(EncodeError::Undecodable {
        what: batch.describe(),
        media,
        start: range.0,
        end: range.1,
    })
}

fn verify_error(batch: &Batch, outputs: &[VideoOutput], reason: String) -> EncodeError {
    EncodeError::Verify {
        what: batch.describe(),
        path: outputs
            .first()
            .map(|o| o.tmp_path.clone())
            .unwrap_or_default(),
        reason,
    }
}

/// The holes an audio run filled, if its ffmpeg said anything (see the
/// module doc); `None` when it had none or they cannot be listed.
pub(super) async fn audio_gaps(
    plan: &Plan,
    input: &SourceInput,
    track: usize,
    run: &RunOutput,
) -> Option<Filled> {
    if run.stderr.trim().is_empty() {
        return None;
    }
    let audio = plan.audio.iter().find(|a| a.track == track)?;
    tracing::info!(job = %plan.job_id, track, "the audio encode reported: {}", run.stderr);
    let args: Vec<OsString> = vec![
        "-v".into(),
        "error".into(),
        "-protocol_whitelist".into(),
        input.protocol_whitelist().into(),
        "-format_whitelist".into(),
        plan.source.format_whitelist().into(),
        "-select_streams".into(),
        audio.stream_index.to_string().into(),
        "-show_entries".into(),
        "stream=sample_rate:frame=best_effort_timestamp_time,nb_samples".into(),
        "-of".into(),
        "compact=p=0".into(),
        input.ffmpeg_input().into(),
    ];
    let listing = match run_ffprobe(args, AUDIO_SCAN_TIMEOUT).await {
        Ok(listing) => listing,
        Err(err) => {
            tracing::warn!(job = %plan.job_id, track, "listing the decoded audio: {err}");
            return None;
        }
    };
    let gaps: Vec<AudioGap> = holes(&String::from_utf8_lossy(&listing), AUDIO_GAP_FILLED)
        .into_iter()
        .map(|(start, end)| AudioGap {
            start: plan.timeline(start),
            end: plan.timeline(end),
        })
        .collect();
    (!gaps.is_empty()).then_some(Filled::Silence { gaps })
}

/// The holes longer than `threshold` seconds between the decoded audio
/// frames of ffprobe's `compact=p=0` listing (`sample_rate=...` for the
/// stream, `best_effort_timestamp_time=...|nb_samples=...` per frame), as
/// (start, end) source times. Lines that do not read are skipped.
fn holes(listing: &str, threshold: f64) -> Vec<(f64, f64)> {
    let field = |line: &str, key: &str| -> Option<f64> {
        line.split('|')
            .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
            .and_then(|value| value.trim().parse().ok())
    };
    let rate = listing
        .lines()
        .find_map(|line| field(line, "sample_rate"))
        .filter(|rate| *rate > 0.0);
    let Some(rate) = rate else {
        return Vec::new();
    };
    let mut frames: Vec<(f64, f64)> = listing
        .lines()
        .filter_map(|line| {
            let time = field(line, "best_effort_timestamp_time")?;
            let samples = field(line, "nb_samples")?;
            Some((time, samples / rate))
        })
        .collect();
    frames.sort_by(|a, b| a.0.total_cmp(&b.0));
    frames
        .windows(2)
        .filter_map(|pair| {
            let end = pair[0].0 + pair[0].1;
            // To the microsecond, as ffprobe gives times.
            let micro = |t: f64| (t * 1e6).round() / 1e6;
            (pair[1].0 - end > threshold).then_some((micro(end), micro(pair[1].0)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_the_gaps_between_decoded_frames() {
        // 48 kHz, 1024-sample frames (21.333 ms); the third frame is lost.
        let listing = "sample_rate=48000\n\
            best_effort_timestamp_time=0.000000|nb_samples=1024\n\
            best_effort_timestamp_time=0.021333|nb_samples=1024\n\
            best_effort_timestamp_time=0.064000|nb_samples=1024\n\
            best_effort_timestamp_time=0.085333|nb_samples=1024\n";
        let found = holes(listing, AUDIO_GAP_FILLED);
        assert_eq!(found.len(), 1);
        let (start, end) = found[0];
        assert_eq!(start, 0.042666, "{start}");
        assert!((end - 0.064).abs() < 1e-9);
    }

    #[test]
    fn a_whole_track_or_an_unreadable_listing_has_no_holes() {
        let whole = "sample_rate=44100\n\
            best_effort_timestamp_time=1.000000|nb_samples=1024\n\
            best_effort_timestamp_time=1.023220|nb_samples=1024\n";
        assert!(holes(whole, AUDIO_GAP_FILLED).is_empty());
        assert!(holes("best_effort_timestamp_time=0|nb_samples=1024\n", 0.005).is_empty());
        assert!(holes("", 0.005).is_empty());
        assert!(holes("sample_rate=N/A\nnb_samples=x\n", 0.005).is_empty());
    }
}
