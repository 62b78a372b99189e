//! The simulated encoder of figure 9 ([`crate::simulate`]): what one batch
//! costs on this machine ([`Costs`], measured by
//! `scripts/bench-rung-costs`), an [`Encoder`] that sleeps for it and
//! writes outputs the worker can publish ([`SleepEncoder`]), and the record
//! of every encode of a run ([`EncodeLog`]).

use anyhow::{ensure, Context};
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
// Everything this file uses from the library.
use segswarm::{
    pipeline::{mpegts, Batch, EncodeError, Plan, RunControl, RunError, Verified},
    simulation::Encoder,
};

/// CPU milliseconds of the pieces of a job on one core, one thread: the
/// JSON of `scripts/bench-rung-costs`.
#[derive(Debug, Clone, Deserialize)]
pub struct Costs {
    /// Decoding one frame of the 1080p source.
    pub decode_ms_per_frame: f64,
    /// One ffmpeg process: start-up, probing the input, the first frame.
    pub batch_overhead_ms: f64,
    /// Scaling and encoding one frame, per rendition name.
    pub rung_ms_per_frame: BTreeMap<String, f64>,
    /// The audio track (AAC 128k) per second of source.
    pub audio_ms_per_source_second: f64,
    /// The thumbnail (start-up and webp) besides decoding up to its time.
    pub thumbnail_ms: f64,
}

impl Default for Costs {
    /// Measured with `REPEAT=3 scripts/bench-rung-costs` on 2026-12-01
    /// (medians of 3; one batch's samples differ by up to 24 %) on the
    /// 2-core VM (AMD EPYC, ffmpeg 5.1.9) shared with other engineers'
    /// builds and benches, load average 8.8 to 9.5 during the run:
    /// docs/benchmarks.md, figure 9.
    fn default() -> Self {
        Costs {
            decode_ms_per_frame: 5.0167,
            batch_overhead_ms: 300.0,
            rung_ms_per_frame: [
                ("240p", 3.3667),
                ("360p", 5.3),
                ("480p", 8.8667),
                ("720p", 14.7667),
                ("1080p", 26.8),
            ]
            .into_iter()
            .map(|(name, ms)| (name.to_string(), ms))
            .collect(),
            audio_ms_per_source_second: 22.0,
            thumbnail_ms: 554.5,
        }
    }
}

impl Costs {
    pub fn read(path: &Path) -> anyhow::Result<Costs> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    fn rung(&self, rendition: &str) -> f64 {
        self.rung_ms_per_frame
            .get(rendition)
            .copied()
            .unwrap_or(0.0)
    }

    /// One batch: one process, one decode of the segment's frames, one
    /// encode per rendition.
    pub fn batch_ms(&self, batch: &Batch, plan: &Plan) -> f64 {
        match batch {
            Batch::Video { segment, outputs } => {
                let per_frame = self.decode_ms_per_frame
                    + outputs
                        .iter()
                        .map(|o| self.rung(&o.rendition.name))
                        .sum::<f64>();
                self.batch_overhead_ms + per_frame * segment.frames as f64
            }
            Batch::Audio { .. } => self.audio_ms_per_source_second * plan.duration,
            Batch::Thumbnail { .. } => {
                let fps = plan.total_frames as f64 / plan.duration;
                self.thumbnail_ms + self.decode_ms_per_frame * plan.thumbnail.time * fps
            }
        }
    }

    /// The whole job done the ideal way: each segment one batch of every
    /// rendition, the audio track, the thumbnail.
    pub fn job_ms(&self, plan: &Plan) -> f64 {
        let per_frame = self.decode_ms_per_frame
            + plan
                .renditions
                .iter()
                .map(|r| self.rung(&r.name))
                .sum::<f64>();
        let video: f64 = plan
            .segments
            .iter()
            .map(|s| self.batch_overhead_ms + per_frame * s.frames as f64)
            .sum();
        let fps = plan.total_frames as f64 / plan.duration;
        video
            + self.audio_ms_per_source_second * plan.duration * plan.audio.len() as f64
            + self.thumbnail_ms
            + self.decode_ms_per_frame * plan.thumbnail.time * fps
    }
}

/// One encode a simulated pod ran (or began and was stopped).
#[derive(Debug, Clone)]
pub struct Encode {
    pub pod: usize,
    pub start: Instant,
    pub end: Instant,
    /// What it should have taken (its cost at the run's time scale).
    pub cost: Duration,
    /// It ran to its end (not canceled, nothing failed).
    pub finished: bool,
    pub units: usize,
    pub video: bool,
    /// What it was (`segment 7 of 720p,1080p`, `audio track 0`).
    pub what: String,
}

/// What the encoders of one run did.
#[derive(Default)]
pub struct EncodeLog(Mutex<Vec<Encode>>);

impl EncodeLog {
    fn push(&self, encode: Encode) {
        if let Ok(mut log) = self.0.lock() {
            log.push(encode);
        }
    }

    pub fn take(&self) -> Vec<Encode> {
        self.0
            .lock()
            .map(|mut log| std::mem::take(&mut *log))
            .unwrap_or_default()
    }
}

/// How often the simulated encoder reports progress (ffmpeg's `-progress`
/// period): the worker renews leases only while progress comes.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// The simulated encoder of one pod: sleeps for the batch's cost, then
/// writes what the worker publishes and returns the codec strings the real
/// verification would have read. A video segment is a one-frame H.264
/// MPEG-TS file ([`TinySegment`]: a pod reads the codec of another pod's
/// segment 0 for its master playlist), the thumbnail a small file at its
/// in-progress path; the audio track is written the way
/// ffmpeg's hls muxer writes it (a segment and a rewritten EVENT playlist
/// every segment duration of source, ENDLIST at the end), so the worker
/// publishes it while it runs and the job plays after its first segment.
pub struct SleepEncoder {
    pub pod: usize,
    pub costs: Arc<Costs>,
    /// Factor on every cost (0.1: ten times faster than measured).
    pub time_scale: f64,
    /// What every video segment holds.
    pub segment: Arc<TinySegment>,
    pub log: Arc<EncodeLog>,
}

#[async_trait]
impl Encoder for SleepEncoder {
    async fn encode(
        &self,
        batch: &Batch,
        plan: &Plan,
        control: RunControl,
    ) -> Result<Verified, EncodeError> {
        let start = Instant::now();
        let cost =
            Duration::from_secs_f64(self.costs.batch_ms(batch, plan) * self.time_scale / 1e3);
        let result = match batch {
            Batch::Video { outputs, .. } => {
                sleep(start + cost, batch, &control).await.and_then(|()| {
                    outputs
                        .iter()
                        .try_for_each(|o| write(batch, &o.tmp_path, &self.segment.bytes))
                })
            }
            Batch::Thumbnail { tmp_path } => sleep(start + cost, batch, &control)
                .await
                .and_then(|()| write(batch, tmp_path, b"simulated thumbnail")),
            Batch::Audio { work, .. } => {
                let segment = f64::from(plan.settings.segment_duration);
                let count = ((plan.duration / segment) - 1e-9).ceil().max(1.0) as usize;
                let mut listed = Vec::new();
                let mut result = Ok(());
                for index in 0..count {
                    let seconds = (plan.duration - segment * index as f64).min(segment);
                    let due = start + cost.mul_f64(segment * (index + 1) as f64 / plan.duration);
                    let name = format!("seg_{index:05}.ts");
                    result = sleep(due.min(start + cost), batch, &control)
                        .await
                        .and_then(|()| write(batch, &work.file(&name), b"simulated audio"));
                    if result.is_err() {
                        break;
                    }
                    listed.push((name, seconds));
                    let text = audio_playlist(&listed, segment, index + 1 == count);
                    result = write_whole(batch, &work.playlist(), text.as_bytes());
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
        };
        let (units, codecs) = match batch {
            Batch::Video { outputs, .. } => (
                outputs.len(),
                outputs
                    .iter()
                    .map(|o| (o.rendition.name.clone(), self.segment.codec.clone()))
                    .collect(),
            ),
            _ => (1, Vec::new()),
        };
        self.log.push(Encode {
            pod: self.pod,
            start,
            end: Instant::now(),
            cost,
            finished: result.is_ok(),
            units,
            video: matches!(batch, Batch::Video { .. }),
            what: batch.describe(),
        });
        result.map(|()| Verified {
            codecs,
            filled: None,
        })
    }
}

/// Sleeps until `until`, reporting progress; a canceled run stops at once.
async fn sleep(until: Instant, batch: &Batch, control: &RunControl) -> Result<(), EncodeError> {
    loop {
        if let Some(progress) = &control.progress {
            let _ = progress.send(Instant::now());
        }
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        let step = (until - now).min(PROGRESS_INTERVAL);
        tokio::select! {
            _ = control.cancel.cancelled() => {
                return Err(EncodeError::Run {
                    what: batch.describe(),
                    error: RunError::Canceled { program: "simulated encoder" },
                });
            }
            _ = tokio::time::sleep(step) => {}
        }
    }
}

fn write(batch: &Batch, path: &Path, bytes: &[u8]) -> Result<(), EncodeError> {
    std::fs::write(path, bytes).map_err(|error| EncodeError::Verify {
        what: batch.describe(),
        path: path.to_path_buf(),
        reason: format!("writing the simulated output: {error}"),
    })
}

/// Writes `path` whole under its name (as the hls muxer's `temp_file`).
fn write_whole(batch: &Batch, path: &Path, bytes: &[u8]) -> Result<(), EncodeError> {
    let tmp = path.with_extension("m3u8.tmp");
    write(batch, &tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(|error| EncodeError::Verify {
        what: batch.describe(),
        path: path.to_path_buf(),
        reason: format!("renaming the simulated playlist: {error}"),
    })
}

/// The hls muxer's EVENT playlist of the segments so far.
fn audio_playlist(segments: &[(String, f64)], target: f64, finished: bool) -> String {
    let mut text = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{}\n#EXT-X-MEDIA-SEQUENCE:0\n\
         #EXT-X-PLAYLIST-TYPE:EVENT\n",
        target.ceil() as u64
    );
    for (name, seconds) in segments {
        text.push_str(&format!("#EXTINF:{seconds:.6},\n{name}\n"));
    }
    if finished {
        text.push_str("#EXT-X-ENDLIST\n");
    }
    text
}

/// Every simulated video segment: one 64x64 H.264 (High) frame in
/// MPEG-TS, made once with ffmpeg, and its codec string.
pub struct TinySegment {
    pub bytes: Vec<u8>,
    pub codec: String,
}

/// Makes the [`TinySegment`] in `dir` (and removes its file).
pub fn tiny_segment(dir: &Path) -> anyhow::Result<TinySegment> {
    let path = dir.join("tiny-segment.ts");
    let status = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("color=c=gray:s=64x64:r=30")
        .args(["-frames:v", "1", "-c:v", "libx264", "-profile:v", "high"])
        .args(["-pix_fmt", "yuv420p", "-f", "mpegts"])
        .arg(&path)
        .status()
        .context("running ffmpeg for the simulated segment")?;
    ensure!(
        status.success(),
        "ffmpeg for the simulated segment: {status}"
    );
    let bytes = std::fs::read(&path)?;
    let codec = mpegts::read(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .codec;
    std::fs::remove_file(&path)?;
    Ok(TinySegment { bytes, codec })
}
