//! Figure 8: a simulated cluster on the real scheduler. `--pods` workers
//! (the library's `Worker`: its slots, schedule, claims, leases, publishing
//! and playlists) run in this process, each with its own `RedisCoordinator`
//! on one shared Redis, all on one storage folder, and each is given the
//! same job at the same instant, as pods that adopted a job are once they
//! have its plan. Only the encoder is simulated: [`SleepEncoder`] sleeps for
//! a batch's CPU cost on one core (measured by `scripts/bench-rung-costs`)
//! and writes outputs the worker can publish.
//!
//! Per pod count: the makespan (first `add_job` to the job finished on every
//! pod), efficiency = (ideal cost / slots of the cluster) / makespan, where
//! the ideal cost batches each segment's renditions once (one decode); how
//! busy the slots were; start idle (until every pod runs a unit); tail idle
//! (per pod, makespan minus the end of its last encode, mean over pods);
//! claims. Times are wall seconds of the run, at `--time-scale`.

use crate::report::Report;
use crate::shared_redis::{RedisArgs, SharedRedis};
use anyhow::{bail, ensure, Context};
use async_trait::async_trait;
use clap::Args;
use futures_util::future::join_all;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
// Everything this file uses from the library.
use segswarm::{
    coordination::{Coordinator, Metrics, RedisCoordinator},
    pipeline::{
        AudioInfo, Batch, EncodeError, Plan, RunControl, RunError, Source, SourceInfo, Storage,
        VideoInfo,
    },
    settings::{ClaimTtl, EncodeSettings, RunSettings, Slots},
    simulation::{Encoder, JobOptions, Worker, WorkerSettings},
    JobId, JobOutcome,
};

#[derive(Args, Debug)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Numbers of simulated pods, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,32,64")]
    pub pods: Vec<usize>,
    /// Slots per pod (default 1: a simulated pod is one core running one
    /// batch, the unit the costs were measured in).
    #[arg(long, default_value_t = 1)]
    pub slots: usize,
    /// Factor on every simulated encode time (0.1: ten times faster).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Seconds of the simulated source (1920x1080, 30 fps, one stereo audio
    /// track; default ladder, default segment duration).
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,
    /// Costs to use instead of the built-in ones: the JSON file
    /// `scripts/bench-rung-costs` writes (target/bench-rung-costs/costs.json).
    #[arg(long)]
    pub costs: Option<PathBuf>,
    /// Claim TTL of the pods, ms (a pod's default: 30 s).
    #[arg(long, default_value_t = 30_000)]
    pub claim_ttl_ms: u64,
    /// Folder for the job's storage (default /dev/shm, else $TMPDIR).
    #[arg(long)]
    pub storage_dir: Option<PathBuf>,
    /// Let the pods run the real ffprobe for the master playlist's codec
    /// strings (default: a stand-in script that prints segment 0's codec at
    /// once; see [`stand_in_ffprobe`]).
    #[arg(long)]
    pub real_ffprobe: bool,
    /// Write `pods,repeat,t_s,pod,units_running` rows to this CSV: one row
    /// per pod at the start, then one whenever a pod's running units change.
    #[arg(long)]
    pub trace: Option<PathBuf>,
}

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
    /// Measured by `scripts/bench-rung-costs` (REPEAT=3, medians) on
    /// 2026-12-01, on the 2-core VM shared with other builds (AMD EPYC,
    /// load average 2-11 during the run): see docs/benchmarks.md, figure 8.
    fn default() -> Self {
        Costs {
            decode_ms_per_frame: 4.950,
            batch_overhead_ms: 320.0,
            rung_ms_per_frame: [
                ("240p", 1.967),
                ("360p", 4.433),
                ("480p", 7.267),
                ("720p", 17.767),
                ("1080p", 25.033),
            ]
            .into_iter()
            .map(|(name, ms)| (name.to_string(), ms))
            .collect(),
            audio_ms_per_source_second: 22.0,
            thumbnail_ms: 536.6,
        }
    }
}

impl Costs {
    fn read(path: &Path) -> anyhow::Result<Costs> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    fn rung(&self, rendition: &str) -> f64 {
        self.rung_ms_per_frame.get(rendition).copied().unwrap_or(0.0)
    }

    /// One batch: one process, one decode of the segment's frames, one
    /// encode per rendition.
    fn batch_ms(&self, batch: &Batch, plan: &Plan) -> f64 {
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
    fn job_ms(&self, plan: &Plan) -> f64 {
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
struct Encode {
    pod: usize,
    start: Instant,
    end: Instant,
    units: usize,
    video: bool,
}

/// What the encoders of one run did.
#[derive(Default)]
struct EncodeLog(Mutex<Vec<Encode>>);

impl EncodeLog {
    fn push(&self, encode: Encode) {
        if let Ok(mut log) = self.0.lock() {
            log.push(encode);
        }
    }

    fn take(&self) -> Vec<Encode> {
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
/// writes what the worker publishes. A video segment is a one-frame H.264
/// MPEG-TS file (made once with ffmpeg: the packager reads segment 0's codec
/// for the master playlist, once per rendition when it can, and runs
/// ffprobe again at every master rewrite when it cannot), the thumbnail a
/// small file at its in-progress path; the audio track is written the way
/// ffmpeg's hls muxer writes it (a segment and a rewritten EVENT playlist
/// every segment duration of source, ENDLIST at the end), so the worker
/// publishes it while it runs and the job plays after its first segment.
struct SleepEncoder {
    pod: usize,
    costs: Arc<Costs>,
    time_scale: f64,
    segment: Arc<Vec<u8>>,
    log: Arc<EncodeLog>,
}

#[async_trait]
impl Encoder for SleepEncoder {
    async fn encode(
        &self,
        batch: &Batch,
        plan: &Plan,
        control: RunControl,
    ) -> Result<(), EncodeError> {
        let start = Instant::now();
        let cost = Duration::from_secs_f64(self.costs.batch_ms(batch, plan) * self.time_scale / 1e3);
        let result = match batch {
            Batch::Video { outputs, .. } => {
                sleep(start + cost, batch, &control).await.and_then(|()| {
                    outputs
                        .iter()
                        .try_for_each(|o| write(batch, &o.tmp_path, &self.segment))
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
        let units = match batch {
            Batch::Video { outputs, .. } => outputs.len(),
            _ => 1,
        };
        self.log.push(Encode {
            pod: self.pod,
            start,
            end: Instant::now(),
            units,
            video: matches!(batch, Batch::Video { .. }),
        });
        result
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

/// The plan of a `duration`-second 1920x1080 30 fps source with one stereo
/// audio track, default ladder and segment duration, made without a file
/// (nothing reads the source: the encoder sleeps).
fn simulated_plan(duration: f64) -> anyhow::Result<Plan> {
    const FPS: f64 = 30.0;
    let frames = (duration * FPS).round().max(1.0) as usize;
    let frame_times: Vec<f64> = (0..frames).map(|i| i as f64 / FPS).collect();
    // x264's default keyframe interval, as in a file nobody tuned.
    let keyframe_times = frame_times.iter().step_by(250).copied().collect();
    let info = SourceInfo {
        format: "mov,mp4,m4a,3gp,3g2,mj2".into(),
        duration,
        start_time: 0.0,
        video: VideoInfo {
            stream_index: 0,
            codec: "h264".into(),
            width: 1920,
            height: 1080,
            sample_aspect: (1, 1),
            rotation: 0,
            pix_fmt: "yuv420p".into(),
            frame_times,
            keyframe_times,
            last_frame_duration: 1.0 / FPS,
        },
        audio: vec![AudioInfo {
            stream_index: 1,
            codec: "aac".into(),
            channels: 2,
            sample_rate: 48_000,
            language: Some("eng".into()),
            title: None,
        }],
    };
    let source = Source::File(PathBuf::from("/simulated/source-1080p30.mp4"));
    Ok(Plan::new(
        JobId::new_v4(),
        source,
        EncodeSettings::default(),
        &info,
    )?)
}

/// The bytes of every simulated video segment: one 64x64 H.264 (High)
/// frame in MPEG-TS, made once.
fn tiny_segment(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = dir.join("tiny-segment.ts");
    let status = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("color=c=gray:s=64x64:r=30")
        .args(["-frames:v", "1", "-c:v", "libx264", "-profile:v", "high"])
        .args(["-pix_fmt", "yuv420p", "-f", "mpegts"])
        .arg(&path)
        .status()
        .context("running ffmpeg for the simulated segment")?;
    ensure!(status.success(), "ffmpeg for the simulated segment: {status}");
    let bytes = std::fs::read(&path)?;
    std::fs::remove_file(&path)?;
    Ok(bytes)
}

/// Puts a stand-in `ffprobe` first on this process's PATH. The only ffprobe
/// the simulated pods run is the packager's, for the codec of each
/// rendition's segment 0 (the simulated encoder verifies nothing): one run
/// per rendition and pod, about 85 ms of CPU each on this machine. A real
/// pod spends that on its own cores; here 64 pods x 5 renditions would
/// queue 27 s of CPU on the bench machine's two cores around the first
/// master playlists and hold each pod's slot while its packager waits. The
/// stand-in answers what ffprobe answers for an x264 High segment.
fn stand_in_ffprobe(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let script = bin.join("ffprobe");
    std::fs::write(
        &script,
        "#!/bin/sh
# segswarm bench simulate: segment 0's codec, without decoding it.
         echo 'stream|profile=High|codec_type=video|level=40'
",
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin];
    paths.extend(std::env::split_paths(&path));
    // Before any pod runs: no other thread of this process spawns a child
    // or reads the environment yet.
    std::env::set_var("PATH", std::env::join_paths(paths)?);
    Ok(())
}

/// A folder removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(parent: Option<&Path>) -> anyhow::Result<Scratch> {
        let shm = Path::new("/dev/shm");
        let parent = match parent {
            Some(parent) => parent.to_path_buf(),
            None if shm.is_dir() => shm.to_path_buf(),
            None => std::env::temp_dir(),
        };
        let dir = parent.join(format!(
            "segswarm-bench-simulate-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one run measured.
struct RunFigures {
    makespan: f64,
    busy: f64,
    start_idle: f64,
    tail_idle_mean: f64,
    claim_calls: u64,
    claims_won: u64,
    claims_held: u64,
    video_batches: usize,
    encodes: Vec<Encode>,
    started: Instant,
}

/// One simulated pod.
struct Pod {
    worker: Worker,
    coord: Arc<RedisCoordinator>,
    metrics: Arc<Metrics>,
}

pub async fn run(args: &SimulateArgs) -> anyhow::Result<Report> {
    ensure!(args.time_scale > 0.0, "--time-scale must be above 0");
    ensure!(args.duration >= 1.0, "--duration must be at least 1 s");
    let costs = Arc::new(match &args.costs {
        Some(path) => Costs::read(path)?,
        None => Costs::default(),
    });
    let template = simulated_plan(args.duration)?;
    for rendition in &template.renditions {
        if !costs.rung_ms_per_frame.contains_key(&rendition.name) {
            bail!("no cost for rendition {} in the costs", rendition.name);
        }
    }
    let slots = args.slots.max(1);
    let job_seconds = costs.job_ms(&template) / 1e3;
    eprintln!(
        "simulate: {} s source, {} segments x {} renditions + audio + thumbnail = {} units; \
         ideal cost {job_seconds:.1} CPU s at time scale 1, {:.1} s at {}",
        args.duration,
        template.segments.len(),
        template.renditions.len(),
        template.units().len(),
        job_seconds * args.time_scale,
        args.time_scale
    );
    let redis = SharedRedis::new(&args.redis);
    let storage = Scratch::new(args.storage_dir.as_deref())?;
    let segment = Arc::new(tiny_segment(&storage.0)?);
    if !args.real_ffprobe {
        stand_in_ffprobe(&storage.0)?;
    }
    let mut trace = match &args.trace {
        Some(path) => {
            let mut file = std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            );
            writeln!(file, "pods,repeat,t_s,pod,units_running")?;
            Some(file)
        }
        None => None,
    };
    let mut report = Report::new("simulate", args.redis.repeat);
    for repeat in 0..args.redis.repeat.max(1) {
        for &pods in &args.pods {
            let pods = pods.max(1);
            let mut plan = template.clone();
            plan.job_id = JobId::new_v4();
            let figures = run_once(
                args,
                &redis,
                &storage.0,
                pods,
                Arc::new(plan),
                (&costs, &segment),
            )
            .await?;
            let ideal = job_seconds * args.time_scale / (pods * slots) as f64;
            let label = format!("pods={pods}");
            report.add(format!("{label} makespan s"), figures.makespan);
            report.add(format!("{label} ideal s"), ideal);
            report.add(
                format!("{label} efficiency %"),
                100.0 * ideal / figures.makespan,
            );
            report.add(format!("{label} busy %"), 100.0 * figures.busy);
            report.add(format!("{label} start idle s"), figures.start_idle);
            report.add(format!("{label} tail idle mean s"), figures.tail_idle_mean);
            report.add(format!("{label} claim calls"), figures.claim_calls as f64);
            report.add(format!("{label} claims won"), figures.claims_won as f64);
            report.add(format!("{label} claims held"), figures.claims_held as f64);
            report.add(format!("{label} video batches"), figures.video_batches as f64);
            if let Some(file) = trace.as_mut() {
                write_trace(file, pods, repeat, &figures)?;
            }
        }
    }
    if let Some(mut file) = trace {
        file.flush()?;
    }
    Ok(report)
}

/// One run: `pods` workers on one fresh job, from the same `add_job`
/// instant to the job's end on every pod, then everything torn down.
async fn run_once(
    args: &SimulateArgs,
    redis: &SharedRedis,
    storage_root: &Path,
    pods: usize,
    plan: Arc<Plan>,
    (costs, segment): (&Arc<Costs>, &Arc<Vec<u8>>),
) -> anyhow::Result<RunFigures> {
    let slots = args.slots.max(1);
    let log = Arc::new(EncodeLog::default());
    let run_settings = RunSettings {
        slots: Slots::from_setting(Some(slots)),
        claim_ttl: ClaimTtl::from_millis(args.claim_ttl_ms),
        ..RunSettings::default()
    };
    let mut cluster = Vec::new();
    for pod in 0..pods {
        let metrics = Arc::new(Metrics::new()?);
        let coord = Arc::new(redis.coordinator_counting(
            run_settings.claim_ttl.get(),
            slots + 2,
            metrics.clone(),
        )?);
        coord.ping().await?;
        let encoder = Arc::new(SleepEncoder {
            pod,
            costs: costs.clone(),
            time_scale: args.time_scale,
            segment: segment.clone(),
            log: log.clone(),
        });
        let settings = WorkerSettings::new(format!("sim-pod-{pod}"), run_settings.clone());
        let shared: Arc<dyn Coordinator> = coord.clone();
        let worker = Worker::with_encoder(settings, shared, metrics.clone(), encoder);
        cluster.push(Pod {
            worker,
            coord,
            metrics,
        });
    }
    // Every pod hears the others' notices before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.iter().all(|p| p.coord.notices_connected()) {
        ensure!(
            Instant::now() < deadline,
            "pub/sub of {pods} pods not connected within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let storage = Storage::new(storage_root);
    let layout = storage.job(plan.job_id);
    let started = Instant::now();
    let added = join_all(cluster.iter().map(|pod| {
        pod.worker
            .add_job(plan.clone(), layout.clone(), JobOptions::default())
    }))
    .await;
    let mut jobs = Vec::new();
    for job in added {
        jobs.push(job?);
    }
    // Generous: four times the ideal makespan, plus a minute.
    let limit = Duration::from_secs_f64(
        costs.job_ms(&plan) * args.time_scale / 1e3 / (pods * slots) as f64 * 4.0 + 60.0,
    );
    let ended = tokio::time::timeout(
        limit,
        join_all(jobs.iter().map(|job| async {
            let outcome = job.wait().await;
            (outcome, Instant::now())
        })),
    )
    .await
    .with_context(|| format!("{pods} pods did not finish the job within {limit:?}"))?;
    let mut finished = started;
    for (outcome, at) in &ended {
        ensure!(
            *outcome == JobOutcome::Done,
            "a pod ended the job {outcome:?}"
        );
        finished = finished.max(*at);
    }
    let makespan = (finished - started).as_secs_f64();
    let (mut claim_calls, mut claims_won, mut claims_held) = (0, 0, 0);
    for pod in &cluster {
        claim_calls += pod.metrics.claim_seconds.get_sample_count();
        claims_won += pod.metrics.claims.with_label_values(&["won"]).get();
        claims_held += pod.metrics.claims.with_label_values(&["held"]).get();
    }
    // Tear down: no slot left, no connection, no key, no file.
    join_all(cluster.iter().map(|pod| pod.worker.shutdown())).await;
    drop(jobs);
    drop(cluster);
    let left = redis.delete_keys(&format!("segswarm:{{{}}}*", plan.job_id))?;
    if let Some(claim) = left.iter().find(|key| key.contains(":claim:")) {
        eprintln!("simulate: a claim was left in Redis after the job ended: {claim}");
    }
    std::fs::remove_dir_all(layout.dir())
        .with_context(|| format!("removing {}", layout.dir().display()))?;

    let encodes = log.take();
    let capacity = (pods * slots) as f64;
    let busy: f64 = encodes
        .iter()
        .map(|e| (e.end - e.start).as_secs_f64())
        .sum::<f64>()
        / (capacity * makespan);
    let mut first_start = vec![makespan; pods];
    let mut last_end = vec![0.0f64; pods];
    for encode in &encodes {
        let (start, end) = (
            (encode.start - started).as_secs_f64(),
            (encode.end - started).as_secs_f64(),
        );
        first_start[encode.pod] = first_start[encode.pod].min(start);
        last_end[encode.pod] = last_end[encode.pod].max(end);
    }
    Ok(RunFigures {
        makespan,
        busy,
        start_idle: first_start.iter().copied().fold(0.0, f64::max),
        tail_idle_mean: last_end.iter().map(|end| makespan - end).sum::<f64>() / pods as f64,
        claim_calls,
        claims_won,
        claims_held,
        video_batches: encodes.iter().filter(|e| e.video).count(),
        encodes,
        started,
    })
}

/// A pod's units running over time: a row per pod at 0, then one at each
/// start and end of an encode.
fn write_trace(
    file: &mut impl Write,
    pods: usize,
    repeat: usize,
    figures: &RunFigures,
) -> anyhow::Result<()> {
    let mut changes: Vec<(f64, usize, i64)> = Vec::new();
    for encode in &figures.encodes {
        let units = encode.units as i64;
        changes.push((
            (encode.start - figures.started).as_secs_f64(),
            encode.pod,
            units,
        ));
        changes.push((
            (encode.end - figures.started).as_secs_f64(),
            encode.pod,
            -units,
        ));
    }
    // Ends before starts at the same instant.
    changes.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
    let mut running = vec![0i64; pods];
    for pod in 0..pods {
        writeln!(file, "{pods},{repeat},0.000000,{pod},0")?;
    }
    for (t, pod, delta) in changes {
        running[pod] += delta;
        writeln!(file, "{pods},{repeat},{t:.6},{pod},{}", running[pod])?;
    }
    Ok(())
}
