//! Simulated pods for figures 3 and 4: tasks of the bench process, each pod
//! with its own `RedisCoordinator` (its own connection pool and pub/sub
//! connection, like a real pod), driving the same coordinator calls as the
//! worker: claim a batch (segment k of every rendition, one script), produce
//! each unit, complete it (which publishes the notice). They do not run the
//! full `Worker`: its encoder is ffmpeg.

use crate::common::stats::Latencies;
use crate::shared_redis::SharedRedis;
use anyhow::ensure;
// Everything this file uses from the library.
use segswarm::{
    coordination::{ClaimOutcome, Coordinator, Lease, RedisCoordinator},
    pipeline::Unit,
    JobId,
};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Rendition names of a batch: a batch of `n` claims the first `n`.
pub const RENDITIONS: [&str; 10] = [
    "240p", "360p", "480p", "720p", "1080p", "1440p", "2160p", "r8", "r9", "r10",
];

/// What a simulated pod does with a unit it won.
#[derive(Clone)]
pub enum Work {
    /// Write a tiny file below this folder (no-op encoder).
    File(PathBuf),
    /// Sleep this long (an encode on another machine).
    Sleep(Duration),
}

/// The job every pod of one run works on, and how each pod works.
pub struct PodPlan {
    pub segments: usize,
    /// Renditions per segment, claimed together.
    pub batch: usize,
    /// Concurrent batches per pod.
    pub slots: usize,
    pub work: Work,
}

/// What all pods of one run did.
#[derive(Default)]
pub struct RunStats {
    pub completed: usize,
    pub claim_calls: usize,
    pub claim: Latencies,
}

impl RunStats {
    fn add(&mut self, other: RunStats) {
        self.completed += other.completed;
        self.claim_calls += other.claim_calls;
        self.claim.merge(other.claim);
    }
}

/// One run: `pods` pods (coordinators with `pool` connections each) on one
/// fresh job; returns what they did and the wall time from the moment every
/// pod listens for notices to the last completion.
pub async fn run_pods(
    redis: &SharedRedis,
    pods: usize,
    plan: PodPlan,
    pool: usize,
) -> anyhow::Result<(RunStats, Duration)> {
    let job = JobId::new_v4();
    let plan = Arc::new(plan);
    let mut coords = Vec::new();
    for _ in 0..pods {
        let coord = Arc::new(redis.coordinator(Duration::from_secs(30), pool)?);
        coord.ping().await?;
        coords.push(coord);
    }
    // Let every pub/sub connection subscribe before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !coords.iter().all(|c| c.notices_connected()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (p, coord) in coords.iter().enumerate() {
        tasks.spawn(run_pod(
            coord.clone(),
            job,
            p * plan.segments / pods,
            plan.clone(),
            format!("bench-pod-{p}"),
        ));
    }
    let mut total = RunStats::default();
    while let Some(joined) = tasks.join_next().await {
        total.add(joined??);
    }
    let wall = started.elapsed();
    let expected = plan.segments * plan.batch;
    ensure!(
        total.completed == expected,
        "{} units completed, {expected} expected",
        total.completed
    );
    if let Some(coord) = coords.first() {
        coord.forget(job).await?;
    }
    Ok((total, wall))
}

/// One simulated pod: `slots` tasks walking the segments from `start`,
/// skipping those it heard are done, claiming each segment's renditions in
/// one script, producing and completing what it won.
async fn run_pod(
    coord: Arc<RedisCoordinator>,
    job: JobId,
    start: usize,
    plan: Arc<PodPlan>,
    worker_id: String,
) -> anyhow::Result<RunStats> {
    let cursor = Arc::new(AtomicUsize::new(0));
    let done: Arc<Mutex<HashSet<usize>>> = Arc::default();
    // Learn what other pods finished, as the worker does from notices.
    let listener = {
        let done = done.clone();
        let mut notices = coord.unit_notices();
        tokio::spawn(async move {
            loop {
                match notices.recv().await {
                    Ok(notice) => {
                        if let (true, Unit::Video { index, .. }) = (notice.done, &notice.unit) {
                            if let Ok(mut done) = done.lock() {
                                done.insert(*index);
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
        })
    };
    let mut slots = tokio::task::JoinSet::new();
    for _ in 0..plan.slots {
        let (coord, cursor, done, plan, worker_id) = (
            coord.clone(),
            cursor.clone(),
            done.clone(),
            plan.clone(),
            worker_id.clone(),
        );
        slots.spawn(async move {
            let mut stats = RunStats::default();
            loop {
                let step = cursor.fetch_add(1, Ordering::Relaxed);
                if step >= plan.segments {
                    break;
                }
                let index = (start + step) % plan.segments;
                if done.lock().map(|d| d.contains(&index)).unwrap_or(false) {
                    continue;
                }
                let units: Vec<Unit> = RENDITIONS[..plan.batch]
                    .iter()
                    .map(|r| Unit::Video {
                        rendition: (*r).to_string(),
                        index,
                    })
                    .collect();
                let started = Instant::now();
                let outcomes = coord.claim(job, &units, &worker_id).await?;
                stats.claim.push(started.elapsed());
                stats.claim_calls += 1;
                let leases: Vec<Lease> = outcomes
                    .into_iter()
                    .filter_map(|o| match o {
                        ClaimOutcome::Won { lease, .. } => Some(lease),
                        _ => None,
                    })
                    .collect();
                if leases.is_empty() {
                    continue;
                }
                match &plan.work {
                    Work::Sleep(d) => tokio::time::sleep(*d * leases.len() as u32).await,
                    Work::File(dir) => {
                        // One blocking task per batch, like one ffmpeg per
                        // batch writing every rendition's file.
                        let paths: Vec<PathBuf> = leases
                            .iter()
                            .map(|l| dir.join(l.unit.to_string().replace('/', "_")))
                            .collect();
                        tokio::task::spawn_blocking(move || {
                            paths
                                .iter()
                                .try_for_each(|path| std::fs::write(path, b"segment"))
                        })
                        .await??;
                    }
                }
                for lease in &leases {
                    coord.complete(lease).await?;
                    stats.completed += 1;
                }
            }
            anyhow::Ok(stats)
        });
    }
    let mut total = RunStats::default();
    while let Some(joined) = slots.join_next().await {
        total.add(joined??);
    }
    listener.abort();
    Ok(total)
}
