//! The cluster-wide job registry in Redis, so that any pod answers for any
//! job: submit on one pod, follow, fetch or cancel on another.
//!
//! Owns the job keys and channels below; every key of a job carries the
//! `{<job-id>}` hash tag (one slot per job on Redis Cluster):
//!
//! | key / channel                  | holds                                              |
//! |--------------------------------|----------------------------------------------------|
//! | `segswarm:{<job>}:job`         | hash: `status`, `record` (the job's JSON), `progress_step`, once-flags |
//! | `segswarm:{<job>}:seq`         | the last event id                                  |
//! | `segswarm:{<job>}:history`     | list of the job's last events                      |
//! | channel `segswarm:{<job>}:events` | each event as `<seq> <origin> <name> <job JSON>` |
//! | `segswarm:jobs`                | sorted set of active jobs (priority, then age)     |
//! | channel `segswarm:control`     | `new <job>` and `cancel <job>`                     |
//!
//! Status changes are compare-and-set scripts, so when every pod sees a job
//! end, exactly one of them announces it (event, webhook). The registry
//! holds no truth of its own: after a Redis flush, pods rebuild from the
//! `status.json` and outputs on storage. It never touches storage and never
//! decides a job's status; the job manager does.

use crate::JobId;
use futures_util::StreamExt;
use redis::Script;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events kept per job for late subscribers on other pods.
const HISTORY_LIMIT: usize = 256;
/// How long a finished job's keys stay (late readers, stragglers).
const KEEP_FINISHED: Duration = Duration::from_secs(24 * 60 * 60);
/// The channel of job-level notices.
const CONTROL: &str = "segswarm:control";
/// The set of active jobs (also what KEDA scales on).
const ACTIVE_JOBS: &str = "segswarm:jobs";
const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// A failed registry operation (Redis unreachable or refusing).
#[derive(Debug, thiserror::Error)]
#[error("job registry: {0}")]
pub struct RegistryError(String);

/// What another pod said.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// A job was submitted somewhere.
    New(JobId),
    /// A job was canceled somewhere.
    Cancel(JobId),
    /// A job event emitted by another pod.
    Event {
        job: JobId,
        seq: u64,
        name: String,
        job_json: String,
    },
    /// The subscription was (re)established: notices may have been missed.
    Resync,
}

/// The job registry of one pod.
pub struct Registry {
    client: redis::Client,
    pool: deadpool_redis::Pool,
    /// This pod's worker id; its own events coming back are ignored.
    origin: String,
    transition: Script,
    publish: Script,
    progress: Script,
}

fn job_key(job: JobId) -> String {
    format!("segswarm:{{{job}}}:job")
}

fn err(context: &str, error: impl std::fmt::Display) -> RegistryError {
    RegistryError(format!("{context}: {error}"))
}

/// KEYS: job hash. ARGV: new status, record JSON. Sets the status unless the
/// job already ended or the change goes backwards; 1 when it changed.
const TRANSITION: &str = r"
local current = redis.call('HGET', KEYS[1], 'status')
local ended = {done = true, partial = true, failed = true, canceled = true}
if current and ended[current] then return 0 end
if current == ARGV[1] then return 0 end
if ARGV[1] == 'processing' and current and current ~= 'queued' then return 0 end
if ARGV[1] == 'playable' and current and current ~= 'queued' and current ~= 'processing' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'record', ARGV[2])
return 1
";

/// KEYS: seq, history. ARGV: channel, origin, name, job JSON, history
/// limit, a clock floor for the id. Event ids grow and stay above the clock
/// floor, so ids of events a pod made alone (Redis away) still order.
const PUBLISH: &str = r"
local seq = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') + 1, tonumber(ARGV[6]))
redis.call('SET', KEYS[1], string.format('%.0f', seq))
local message = string.format('%.0f', seq) .. ' ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4]
redis.call('RPUSH', KEYS[2], message)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
redis.call('PUBLISH', ARGV[1], message)
return string.format('%.0f', seq)
";

/// KEYS: job hash. ARGV: step, this pod's percentage. Returns {1, value}
/// when the step is new (this pod reports it, with `value`, never below a
/// value already reported: pods' views of a job lag each other a little),
/// else {0, the highest value reported}.
const PROGRESS: &str = r"
local last = tonumber(redis.call('HGET', KEYS[1], 'progress_step') or '-1')
local reported = tonumber(redis.call('HGET', KEYS[1], 'progress_value') or '0')
if tonumber(ARGV[1]) <= last then return {0, tostring(reported)} end
local value = math.max(reported, tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'progress_step', ARGV[1], 'progress_value', tostring(value))
return {1, tostring(value)}
";

impl Registry {
    pub fn new(url: &str, origin: &str) -> Result<Registry, RegistryError> {
        let client = redis::Client::open(url).map_err(|e| err("Redis URL", e))?;
        let pool = deadpool_redis::Config::from_url(url)
            .builder()
            .map_err(|e| err("Redis pool", e))?
            .max_size(4)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(OP_TIMEOUT))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|e| err("Redis pool", e))?;
        Ok(Registry {
            client,
            pool,
            // The origin is one word of the event message.
            origin: origin.replace(char::is_whitespace, "_"),
            transition: Script::new(TRANSITION),
            publish: Script::new(PUBLISH),
            progress: Script::new(PROGRESS),
        })
    }

    async fn connection(&self, context: &str) -> Result<deadpool_redis::Connection, RegistryError> {
        self.pool.get().await.map_err(|e| err(context, e))
    }

    /// Runs one Redis future with the operation timeout.
    async fn bounded<T>(
        &self,
        context: &str,
        future: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout(OP_TIMEOUT, future).await {
            Ok(result) => result.map_err(|e| err(context, e)),
            Err(_) => Err(err(context, "no answer in time")),
        }
    }

    /// Records a new job and tells every pod about it.
    pub async fn announce(
        &self,
        job: JobId,
        record_json: &str,
        priority: i32,
        created_ms: u64,
    ) -> Result<(), RegistryError> {
        let mut conn = self.connection("announce").await?;
        // Higher priority first, then older first: ZRANGE gives the order.
        let score = -(f64::from(priority)) * 1e13 + created_ms as f64;
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(job_key(job))
            .arg("status")
            .arg("queued")
            .arg("record")
            .arg(record_json)
            .ignore()
            .cmd("ZADD")
            .arg(ACTIVE_JOBS)
            .arg(score)
            .arg(job.to_string())
            .ignore()
            .cmd("PUBLISH")
            .arg(CONTROL)
            .arg(format!("new {job}"))
            .ignore();
        self.bounded("announce", pipe.query_async::<()>(&mut *conn))
            .await
    }

    /// Sets the job's status if that is a forward change no other pod made
    /// first. True when this pod made it (and so announces it).
    pub async fn transition(
        &self,
        job: JobId,
        status: &str,
        record_json: &str,
    ) -> Result<bool, RegistryError> {
        let mut conn = self.connection("transition").await?;
        let mut invocation = self.transition.key(job_key(job));
        invocation.arg(status).arg(record_json);
        let changed: i64 = self
            .bounded("transition", invocation.invoke_async(&mut *conn))
            .await?;
        Ok(changed == 1)
    }

    /// True for the first pod to ask for `flag` of `job` (one-off events).
    pub async fn once(&self, job: JobId, flag: &str) -> Result<bool, RegistryError> {
        let mut conn = self.connection("once").await?;
        let set: i64 = self
            .bounded(
                "once",
                redis::cmd("HSETNX")
                    .arg(job_key(job))
                    .arg(flag)
                    .arg(1)
                    .query_async(&mut *conn),
            )
            .await?;
        Ok(set == 1)
    }

    /// `Some(percentage to report)` when `step` is a new progress step
    /// cluster-wide (this pod reports it), `None` when another pod did.
    pub async fn advance_progress(
        &self,
        job: JobId,
        step: u64,
        percent: f64,
    ) -> Result<Option<f64>, RegistryError> {
        let mut conn = self.connection("progress").await?;
        let mut invocation = self.progress.key(job_key(job));
        invocation.arg(step).arg(percent);
        let (new, value): (i64, String) = self
            .bounded("progress", invocation.invoke_async(&mut *conn))
            .await?;
        let value: f64 = value.parse().map_err(|e| err("progress", e))?;
        Ok((new == 1).then_some(value))
    }

    /// Publishes an event to every pod; returns its id.
    pub async fn publish_event(
        &self,
        job: JobId,
        name: &str,
        job_json: &str,
        clock_floor: u64,
    ) -> Result<u64, RegistryError> {
        let mut conn = self.connection("publish").await?;
        let mut invocation = self.publish.key(format!("segswarm:{{{job}}}:seq"));
        invocation
            .key(format!("segswarm:{{{job}}}:history"))
            .arg(format!("segswarm:{{{job}}}:events"))
            .arg(&self.origin)
            .arg(name)
            .arg(job_json)
            .arg(HISTORY_LIMIT)
            .arg(clock_floor);
        let seq: String = self
            .bounded("publish", invocation.invoke_async(&mut *conn))
            .await?;
        seq.parse().map_err(|e| err("publish", e))
    }

    /// The job's recorded events, oldest first.
    pub async fn history(&self, job: JobId) -> Result<Vec<Incoming>, RegistryError> {
        let mut conn = self.connection("history").await?;
        let messages: Vec<String> = self
            .bounded(
                "history",
                redis::cmd("LRANGE")
                    .arg(format!("segswarm:{{{job}}}:history"))
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut *conn),
            )
            .await?;
        Ok(messages
            .iter()
            .filter_map(|m| parse_event(job, m).map(|(_, event)| event))
            .collect())
    }

    /// The job's record JSON, if Redis knows the job.
    pub async fn record(&self, job: JobId) -> Result<Option<String>, RegistryError> {
        let mut conn = self.connection("record").await?;
        self.bounded(
            "record",
            redis::cmd("HGET")
                .arg(job_key(job))
                .arg("record")
                .query_async(&mut *conn),
        )
        .await
    }

    /// Tells every pod to stop the job.
    pub async fn cancel(&self, job: JobId) -> Result<(), RegistryError> {
        let mut conn = self.connection("cancel").await?;
        self.bounded(
            "cancel",
            redis::cmd("PUBLISH")
                .arg(CONTROL)
                .arg(format!("cancel {job}"))
                .query_async::<i64>(&mut *conn),
        )
        .await
        .map(|_| ())
    }

    /// Takes an ended job off the active set; its keys expire later.
    pub async fn finished(&self, job: JobId) -> Result<(), RegistryError> {
        let mut conn = self.connection("finished").await?;
        let seconds = KEEP_FINISHED.as_secs();
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(ACTIVE_JOBS)
            .arg(job.to_string())
            .ignore();
        for key in ["job", "seq", "history"] {
            pipe.cmd("EXPIRE")
                .arg(format!("segswarm:{{{job}}}:{key}"))
                .arg(seconds)
                .ignore();
        }
        self.bounded("finished", pipe.query_async::<()>(&mut *conn))
            .await
    }

    /// Listens to the control channel and every job's events until `stop`,
    /// reconnecting with backoff; sends what other pods said to `sink`.
    pub async fn listen(&self, sink: mpsc::UnboundedSender<Incoming>, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(CONTROL).await?;
                pubsub.psubscribe("segswarm:{*}:events").await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(OP_TIMEOUT, subscribed).await {
                Ok(Ok(pubsub)) => {
                    backoff = Duration::from_millis(100);
                    let _ = sink.send(Incoming::Resync);
                    let mut stream = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            message = stream.next() => match message {
                                Some(message) => {
                                    if let Some(incoming) = self.parse(&message) {
                                        let _ = sink.send(incoming);
                                    }
                                }
                                None => break,
                            },
                        }
                    }
                    tracing::warn!("job registry subscription lost; reconnecting");
                }
                Ok(Err(error)) => tracing::debug!("job registry subscribe failed: {error}"),
                Err(_) => tracing::debug!("job registry subscribe timed out"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn parse(&self, message: &redis::Msg) -> Option<Incoming> {
        let channel = message.get_channel_name();
        let payload = std::str::from_utf8(message.get_payload_bytes()).ok()?;
        if channel == CONTROL {
            let (verb, job) = payload.split_once(' ')?;
            let job = job.parse().ok()?;
            return match verb {
                "new" => Some(Incoming::New(job)),
                "cancel" => Some(Incoming::Cancel(job)),
                _ => None,
            };
        }
        let job: JobId = channel
            .strip_prefix("segswarm:{")?
            .strip_suffix("}:events")?
            .parse()
            .ok()?;
        let (origin, event) = parse_event(job, payload)?;
        (origin != self.origin).then_some(event)
    }
}

/// Parses `<seq> <origin> <name> <job JSON>` into (origin, event).
fn parse_event(job: JobId, message: &str) -> Option<(String, Incoming)> {
    let mut parts = message.splitn(4, ' ');
    let seq = parts.next()?.parse().ok()?;
    let origin = parts.next()?.to_string();
    let name = parts.next()?.to_string();
    let job_json = parts.next()?.to_string();
    Some((
        origin,
        Incoming::Event {
            job,
            seq,
            name,
            job_json,
        },
    ))
}
