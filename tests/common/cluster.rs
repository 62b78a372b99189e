//! Several pods that form one cluster: one real `redis-server`, one shared
//! storage folder, the same source roots, and a distinct
//! `SEGSWARM_WORKER_ID` per pod (`pod-a`, `pod-b`, ...).
//!
//! [`Cluster`] starts pods by name (each with its own extra environment and,
//! if wanted, its own `ffmpeg` wrapper), kills or SIGTERMs them, and sums a
//! metric over the pods that are still running. [`hold_wrapper`] makes an
//! `ffmpeg` wrapper that holds matching encodes for a while before running
//! the real ffmpeg, so that a pod keeps a claim long enough to observe it;
//! [`traced_wrapper`] does the same and also records which pod ran each
//! encode, into one log that several pods share ([`FfmpegWrapper::encodes`]).
//! The free functions read a job's state: its units from the API, its claims
//! and done set from Redis, and the identity of its published files.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::pod::{metric_value, which, FfmpegWrapper, Pod, PodBuilder};
use super::process::seg_files;
use super::redis::RedisServer;

/// A Redis server and the pods that share it and one storage folder.
pub struct Cluster {
    // Pods are dropped (killed) before the Redis server.
    pods: Vec<Member>,
    root: PathBuf,
    storage: PathBuf,
    pub redis: RedisServer,
    envs: Vec<(String, String)>,
}

struct Member {
    name: String,
    pod: Pod,
    alive: bool,
}

impl Cluster {
    /// Starts a Redis server; pods store into `<root>/storage` and may read
    /// sources anywhere under `root`.
    pub fn new(root: &Path) -> Cluster {
        Cluster::with_redis(root, RedisServer::start())
    }

    /// As [`Cluster::new`], with a Redis server the caller started (e.g.
    /// one that also listens on network namespaces' links).
    pub fn with_redis(root: &Path, redis: RedisServer) -> Cluster {
        Cluster {
            root: root.to_path_buf(),
            storage: root.join("storage"),
            redis,
            envs: Vec::new(),
            pods: Vec::new(),
        }
    }

    /// An environment variable given to every pod started from now on.
    pub fn env(mut self, key: &str, value: impl AsRef<str>) -> Self {
        self.envs.retain(|(k, _)| k != key);
        self.envs
            .push((key.to_string(), value.as_ref().to_string()));
        self
    }

    pub fn storage(&self) -> &Path {
        &self.storage
    }

    /// `<storage>/jobs/<id>`.
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.storage.join("jobs").join(id)
    }

    /// A builder for a member named `name`: shared Redis, storage and source
    /// roots, the cluster's environment, `SEGSWARM_WORKER_ID=name`.
    pub fn builder(&self, name: &str) -> PodBuilder {
        self.builder_on(name, &self.storage)
    }

    /// [`Cluster::builder`] for a member that stores into `storage`
    /// instead of the shared folder (its own mount of it, for example).
    pub fn builder_on(&self, name: &str, storage: &Path) -> PodBuilder {
        let mut builder = Pod::builder(storage)
            .env("REDIS_URL", self.redis.url())
            .env("SEGSWARM_SOURCE_ROOTS", self.root.to_str().unwrap())
            .env("SEGSWARM_WORKER_ID", name);
        for (k, v) in &self.envs {
            builder = builder.env(k, v);
        }
        builder
    }

    /// Starts a member with the cluster's settings.
    pub async fn start(&mut self, name: &str) -> &Pod {
        let builder = self.builder(name);
        self.start_with(name, builder).await
    }

    /// Starts a member from a builder made by [`Cluster::builder`].
    pub async fn start_with(&mut self, name: &str, builder: PodBuilder) -> &Pod {
        assert!(
            self.pods.iter().all(|m| m.name != name || !m.alive),
            "pod {name} is already running"
        );
        let pod = builder.start().await;
        self.pods.retain(|m| m.name != name);
        self.pods.push(Member {
            name: name.to_string(),
            pod,
            alive: true,
        });
        self.pod(name)
    }

    /// The member named `name` (running or not).
    pub fn pod(&self, name: &str) -> &Pod {
        &self
            .pods
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
            .pod
    }

    fn member_mut(&mut self, name: &str) -> &mut Member {
        self.pods
            .iter_mut()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Names of the members still running.
    pub fn alive(&self) -> Vec<String> {
        self.pods
            .iter()
            .filter(|m| m.alive)
            .map(|m| m.name.clone())
            .collect()
    }

    /// Running members, with their names.
    pub fn running(&self) -> impl Iterator<Item = (&str, &Pod)> {
        self.pods
            .iter()
            .filter(|m| m.alive)
            .map(|m| (m.name.as_str(), &m.pod))
    }

    /// SIGKILLs a member and reaps it.
    pub fn kill(&mut self, name: &str) {
        let member = self.member_mut(name);
        member.pod.kill();
        member.alive = false;
    }

    /// Sends SIGTERM to a member; it is no longer counted as running.
    pub fn sigterm(&mut self, name: &str) {
        let member = self.member_mut(name);
        member.pod.sigterm();
        member.alive = false;
    }

    /// Waits for a member that was sent SIGTERM to exit.
    pub async fn wait_exit(&mut self, name: &str, limit: Duration) -> bool {
        self.member_mut(name).pod.wait_exit(limit).await.is_some()
    }

    /// `name{labels}` summed over the running members.
    pub async fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut total = 0.0;
        for (_, pod) in self.running() {
            total += metric_value(&pod.metrics().await, name, labels).unwrap_or(0.0);
        }
        total
    }

    /// `name{labels}` of every running member, by member name.
    pub async fn metric_per_pod(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(String, f64)> {
        let mut values = Vec::new();
        for (pod_name, pod) in self.running() {
            let value = metric_value(&pod.metrics().await, name, labels).unwrap_or(0.0);
            values.push((pod_name.to_string(), value));
        }
        values
    }

    /// Waits until every running member reports `name{labels} == value`;
    /// returns how long that took.
    pub async fn wait_metric_everywhere(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        value: f64,
        limit: Duration,
    ) -> Option<Duration> {
        let start = Instant::now();
        loop {
            let mut all = true;
            for (_, pod) in self.running() {
                if metric_value(&pod.metrics().await, name, labels) != Some(value) {
                    all = false;
                    break;
                }
            }
            if all {
                return Some(start.elapsed());
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running member reports coordination mode `mode`
    /// (`local` or `distributed`); returns how long that took, or panics
    /// after `limit` with each member's value and the logs.
    pub async fn wait_mode(&self, mode: &str, limit: Duration) -> Duration {
        let labels = [("mode", mode)];
        match self
            .wait_metric_everywhere("segswarm_mode", &labels, 1.0, limit)
            .await
        {
            Some(took) => took,
            None => panic!(
                "not every pod was in {mode} mode within {limit:?}: {:?}\n{}",
                self.metric_per_pod("segswarm_mode", &labels).await,
                self.logs()
            ),
        }
    }

    /// Polls `GET /v1/jobs/<id>` on every running member until each reports
    /// one of `statuses`; returns the jobs by member name.
    pub async fn wait_status_everywhere(
        &self,
        id: &str,
        statuses: &[&str],
        limit: Duration,
    ) -> Vec<(String, serde_json::Value)> {
        let mut jobs = Vec::new();
        for (name, pod) in self.running() {
            jobs.push((name.to_string(), pod.wait_status(id, statuses, limit).await));
        }
        jobs
    }

    /// Every pod's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for member in &self.pods {
            text.push_str(&format!(
                "--- {} log\n{}\n",
                member.name,
                member.pod.log_text()
            ));
        }
        text
    }
}

/// An `ffmpeg` wrapper in `dir` that logs every invocation like
/// [`FfmpegWrapper`] (`<unix time> <args>`) and, when the arguments contain
/// `pattern`, waits `hold` before running the real ffmpeg (or until
/// [`FfmpegWrapper::release_holds`]), giving up (exit 1, without running
/// ffmpeg) as soon as the pod that started it is gone, so that a killed pod
/// leaves nothing behind.
pub fn hold_wrapper(dir: &Path, pattern: &str, hold: Duration) -> FfmpegWrapper {
    let log = dir.join("ffmpeg-invocations.log");
    write_wrapper(dir, &log, false, Some((pattern, hold)))
}

/// An `ffmpeg` wrapper in `dir` that appends `<unix time> <pod pid> <own
/// pid> <args>` to `log` (which several pods' wrappers may share; read it
/// with [`FfmpegWrapper::encodes`]) and holds encodes matching `hold` like
/// [`hold_wrapper`]. Its own pid is the pid of the ffmpeg it becomes.
pub fn traced_wrapper(dir: &Path, log: &Path, hold: Option<(&str, Duration)>) -> FfmpegWrapper {
    write_wrapper(dir, log, true, hold)
}

fn write_wrapper(
    dir: &Path,
    log: &Path,
    with_pids: bool,
    hold: Option<(&str, Duration)>,
) -> FfmpegWrapper {
    let bin_dir = dir.join("wrapper-bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let real = which("ffmpeg");
    let line = if with_pids {
        "printf '%s %s %s %s\\n' \"$(date +%s.%N)\" \"$PPID\" \"$$\" \"$*\""
    } else {
        "printf '%s %s\\n' \"$(date +%s.%N)\" \"$*\""
    };
    let hold = match hold {
        None => String::new(),
        Some((pattern, hold)) => {
            let ticks = (hold.as_millis() / 20).max(1);
            let release = bin_dir.join(RELEASE_FILE);
            format!(
                "case \"$*\" in *'{pattern}'*)\n\
                 \x20 i=0\n\
                 \x20 while [ $i -lt {ticks} ]; do\n\
                 \x20   kill -0 $PPID 2>/dev/null || exit 1\n\
                 \x20   [ -e '{release}' ] && break\n\
                 \x20   sleep 0.02\n\
                 \x20   i=$((i+1))\n\
                 \x20 done;;\n\
                 esac\n",
                release = release.display()
            )
        }
    };
    let script = format!(
        "#!/bin/sh\n{line} >> '{log}'\n{hold}exec '{real}' \"$@\"\n",
        log = log.display(),
        real = real.display()
    );
    let path = bin_dir.join("ffmpeg");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    FfmpegWrapper {
        bin_dir,
        log: log.to_path_buf(),
    }
}

/// The file whose existence ends every hold of a wrapper early
/// ([`FfmpegWrapper::release_holds`]).
const RELEASE_FILE: &str = "release-holds";

/// One ffmpeg run logged by a [`traced_wrapper`].
#[derive(Clone, Debug)]
pub struct Encode {
    /// Unix time at which the pod started it.
    pub time: f64,
    /// The `segswarm serve` that started it.
    pub pod_pid: u32,
    /// The ffmpeg process (the wrapper execs it).
    pub pid: u32,
    /// The units it makes, named as in Redis: `video/240p/3`, `audio/0`,
    /// `thumbnail`.
    pub units: Vec<String>,
}

impl FfmpegWrapper {
    /// Ends the holds of this wrapper's encodes now (those waiting go on
    /// to run ffmpeg) and of every later one.
    pub fn release_holds(&self) {
        std::fs::write(self.bin_dir.join(RELEASE_FILE), b"").unwrap();
    }

    /// Every run logged by a [`traced_wrapper`], in log order.
    pub fn encodes(&self) -> Vec<Encode> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut fields = line.splitn(4, ' ');
                Some(Encode {
                    time: fields.next()?.parse().ok()?,
                    pod_pid: fields.next()?.parse().ok()?,
                    pid: fields.next()?.parse().ok()?,
                    units: units_of_args(fields.next()?),
                })
            })
            .collect()
    }
}

/// The units an ffmpeg command line makes, from its in-progress output
/// paths (`.tmp/<token>-240p-seg_00003.ts`, `.tmp/<token>-audio-0/...`,
/// `.tmp/<token>-thumbnail.webp`).
fn units_of_args(args: &str) -> Vec<String> {
    let mut units = Vec::new();
    for arg in args.split_whitespace() {
        let Some((_, name)) = arg.split_once("/.tmp/") else {
            continue;
        };
        let unit = if let Some((head, tail)) = name.split_once("-seg_") {
            let rendition = head.rsplit('-').next().unwrap_or(head);
            let index: Option<u64> = tail.strip_suffix(".ts").and_then(|n| n.parse().ok());
            match index {
                Some(index) if !name.contains('/') => format!("video/{rendition}/{index}"),
                _ => continue,
            }
        } else if let Some((head, _)) = name.split_once("/index.m3u8") {
            let track = head.rsplit('-').next().unwrap_or(head);
            format!("audio/{track}")
        } else if name.ends_with("-thumbnail.webp") {
            "thumbnail".to_string()
        } else {
            continue;
        };
        if !units.contains(&unit) {
            units.push(unit);
        }
    }
    units
}

/// The id of a job as the API returns it.
pub fn job_id(job: &Value) -> String {
    job["id"].as_str().expect("job id").to_string()
}

/// Units of a planned job as the API reports it: every video segment of
/// every rendition, each audio track and the thumbnail.
pub fn unit_count(job: &Value) -> usize {
    let video: u64 = job["renditions"]
        .as_array()
        .expect("renditions")
        .iter()
        .map(|r| r["total"].as_u64().unwrap_or(0))
        .sum();
    video as usize + job["audio_tracks"].as_u64().unwrap_or(0) as usize + 1
}

/// Polls until the job is planned on `pod` (renditions listed).
pub async fn wait_planned(pod: &Pod, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = pod.job(id).await;
        if job["renditions"].as_array().is_some_and(|r| !r.is_empty()) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} not planned: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Claim keys of a job in Redis with their values (`<token> <worker>`).
pub fn claims(cluster: &Cluster, id: &str) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for key in cluster.redis.keys(&format!("segswarm:{{{id}}}:claim:*")) {
        let value: Option<String> = cluster.redis.command(&["GET", &key]);
        if let Some(value) = value {
            found.insert(key, value);
        }
    }
    found
}

/// The unit name of a claim key (`video/240p/0`).
pub fn unit_of(key: &str) -> &str {
    key.split_once(":claim:").map(|(_, u)| u).unwrap_or(key)
}

/// The units of a job in Redis's done set.
pub fn done_units(cluster: &Cluster, id: &str) -> Vec<String> {
    cluster
        .redis
        .command(&["SMEMBERS", &format!("segswarm:{{{id}}}:done")])
}

/// (inode, mtime in ns) of every published output of a job folder: the
/// segments of `renditions`, audio track 0 and the thumbnail. A file that
/// is published again gets a new inode (rename), so equal stamps mean the
/// file was never replaced.
pub fn output_stamps(job_dir: &Path, renditions: &[&str]) -> BTreeMap<PathBuf, (u64, i128)> {
    let mut files = Vec::new();
    for rendition in renditions {
        files.extend(seg_files(&job_dir.join(rendition)));
    }
    files.extend(seg_files(&job_dir.join("audio/0")));
    files.push(job_dir.join("audio/0/index.m3u8"));
    files.push(job_dir.join("thumbnail.webp"));
    files
        .into_iter()
        .filter_map(|p| {
            let meta = std::fs::metadata(&p).ok()?;
            let mtime = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
            Some((p, (meta.ino(), mtime)))
        })
        .collect()
}
