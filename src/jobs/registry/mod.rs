//! The cluster-wide job registry in Redis, so that any pod answers for any
//! job: submit on one pod, follow, fetch or cancel on another.
//!
//! Owns the registry's use of the keys and channels named in
//! [`crate::redis_link::keys`] (every key of a job carries the `{<job-id>}`
//! hash tag: one slot per job on Redis Cluster), the scripts in
//! `scripts.rs` and the wire format of events between pods in `wire.rs`:
//! `<seq> <origin> <name> <job JSON>`. It connects the way the coordinator
//! does ([`RedisSettings`]: the same pool size and operation timeout).
//!
//! Status changes are compare-and-set scripts, so when every pod sees a job
//! end, exactly one of them announces it (event, webhook). The registry
//! holds no truth of its own: after a Redis flush, pods rebuild from the
//! `status.json` and outputs on storage. It never touches storage and never
//! decides a job's status; the job manager does.

mod scripts;
mod wire;

pub use wire::{Incoming, RemoteEvent};

use super::events::HISTORY_LIMIT;
use super::model::{JobEventKind, JobStatus};
use crate::redis_link::keys::{self, JobKeys};
use crate::redis_link::{RedisSettings, RedisSetupError};
use crate::JobId;
use futures_util::StreamExt;
use redis::Script;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a finished job's keys stay (late readers, stragglers).
const KEEP_FINISHED: Duration = Duration::from_secs(24 * 60 * 60);

/// A failed registry operation (Redis unreachable or refusing).
#[derive(Debug, thiserror::Error)]
#[error("job registry: {0}")]
pub struct RegistryError(String);

/// The registry's answer to "may this pod report this progress step?".
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProgressStep {
    /// The step is new cluster-wide: this pod reports it, with this value
    /// (never below a value already reported).
    Report(f64),
    /// Another pod reported this step or a later one; the highest value
    /// reported so far.
    Reported(f64),
}

/// The job registry of one pod.
pub struct Registry {
    client: redis::Client,
    pool: deadpool_redis::Pool,
    /// Longest time one operation may take.
    op_timeout: Duration,
    /// This pod's worker id; its own events coming back are ignored.
    origin: String,
    transition: Script,
    publish: Script,
    progress: Script,
}

fn err(context: &str, error: impl std::fmt::Display) -> RegistryError {
    RegistryError(format!("{context}: {error}"))
}

impl Registry {
    /// The registry of the pod `origin`. Opens nothing yet: connections are
    /// made on first use.
    pub fn new(settings: &RedisSettings, origin: &str) -> Result<Registry, RedisSetupError> {
        Ok(Registry {
            client: settings.client()?,
            pool: settings.pool()?,
            op_timeout: settings.op_timeout,
            // The origin is one word of the event message.
            origin: origin.replace(char::is_whitespace, "_"),
            transition: Script::new(scripts::TRANSITION),
            publish: Script::new(scripts::PUBLISH),
            progress: Script::new(scripts::PROGRESS),
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
        match tokio::time::timeout(self.op_timeout, future).await {
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
            .arg(JobKeys::new(job).job())
            .arg("status")
            .arg(JobStatus::Queued.as_str())
            .arg("record")
            .arg(record_json)
            .ignore()
            .cmd("ZADD")
            .arg(keys::ACTIVE_JOBS)
            .arg(score)
            .arg(job.to_string())
            .ignore()
            .cmd("PUBLISH")
            .arg(keys::CONTROL_CHANNEL)
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
        status: JobStatus,
        record_json: &str,
    ) -> Result<bool, RegistryError> {
        let mut conn = self.connection("transition").await?;
        let mut invocation = self.transition.key(JobKeys::new(job).job());
        invocation.arg(status.as_str()).arg(record_json);
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
                    .arg(JobKeys::new(job).job())
                    .arg(flag)
                    .arg(1)
                    .query_async(&mut *conn),
            )
            .await?;
        Ok(set == 1)
    }

    /// Whether this pod reports progress `step` (at `percent`) of `job`,
    /// and the value to report or already reported.
    pub async fn advance_progress(
        &self,
        job: JobId,
        step: u64,
        percent: f64,
    ) -> Result<ProgressStep, RegistryError> {
        let mut conn = self.connection("progress").await?;
        let mut invocation = self.progress.key(JobKeys::new(job).job());
        invocation.arg(step).arg(percent);
        let (new, value): (i64, String) = self
            .bounded("progress", invocation.invoke_async(&mut *conn))
            .await?;
        let value: f64 = value.parse().map_err(|e| err("progress", e))?;
        Ok(if new == 1 {
            ProgressStep::Report(value)
        } else {
            ProgressStep::Reported(value)
        })
    }

    /// Publishes an event to every pod; returns its id.
    pub async fn publish_event(
        &self,
        job: JobId,
        kind: JobEventKind,
        job_json: &str,
        clock_floor: u64,
    ) -> Result<u64, RegistryError> {
        let mut conn = self.connection("publish").await?;
        let mut invocation = self.publish.key(JobKeys::new(job).seq());
        invocation
            .key(JobKeys::new(job).history())
            .arg(JobKeys::new(job).events_channel())
            .arg(&self.origin)
            .arg(kind.as_str())
            .arg(job_json)
            .arg(HISTORY_LIMIT)
            .arg(clock_floor);
        let seq: String = self
            .bounded("publish", invocation.invoke_async(&mut *conn))
            .await?;
        seq.parse().map_err(|e| err("publish", e))
    }

    /// The job's recorded events, oldest first (this pod's own included;
    /// messages that do not parse are left out).
    pub async fn history(&self, job: JobId) -> Result<Vec<RemoteEvent>, RegistryError> {
        let mut conn = self.connection("history").await?;
        let messages: Vec<String> = self
            .bounded(
                "history",
                redis::cmd("LRANGE")
                    .arg(JobKeys::new(job).history())
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut *conn),
            )
            .await?;
        Ok(messages
            .iter()
            .filter_map(|m| wire::parse_event(job, m).map(|(_, event)| event))
            .collect())
    }

    /// The job's record JSON, if Redis knows the job.
    pub async fn record(&self, job: JobId) -> Result<Option<String>, RegistryError> {
        let mut conn = self.connection("record").await?;
        self.bounded(
            "record",
            redis::cmd("HGET")
                .arg(JobKeys::new(job).job())
                .arg("record")
                .query_async(&mut *conn),
        )
        .await
    }

    /// Keeps the job's plan (`job.json`'s text) beside its record and tells
    /// every pod it is there: a pod that adopted the job starts on it at
    /// once, without reading shared storage (whose caches may not show the
    /// file yet) or probing the source again.
    pub async fn publish_plan(&self, job: JobId, plan_json: &str) -> Result<(), RegistryError> {
        let mut conn = self.connection("publish plan").await?;
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(JobKeys::new(job).job())
            .arg("plan")
            .arg(plan_json)
            .ignore()
            .cmd("PUBLISH")
            .arg(keys::CONTROL_CHANNEL)
            .arg(format!("planned {job}"))
            .ignore();
        self.bounded("publish plan", pipe.query_async::<()>(&mut *conn))
            .await
    }

    /// The job's plan JSON, once the pod that planned it published it.
    pub async fn plan(&self, job: JobId) -> Result<Option<String>, RegistryError> {
        let mut conn = self.connection("plan").await?;
        self.bounded(
            "plan",
            redis::cmd("HGET")
                .arg(JobKeys::new(job).job())
                .arg("plan")
                .query_async(&mut *conn),
        )
        .await
    }

    /// The job's warnings as the pods' coordinators kept them (JSON texts).
    pub async fn warnings(&self, job: JobId) -> Result<Vec<String>, RegistryError> {
        let mut conn = self.connection("warnings").await?;
        self.bounded(
            "warnings",
            redis::cmd("HVALS")
                .arg(JobKeys::new(job).warnings())
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
                .arg(keys::CONTROL_CHANNEL)
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
            .arg(keys::ACTIVE_JOBS)
            .arg(job.to_string())
            .ignore();
        for key in JobKeys::new(job).registry_keys() {
            pipe.cmd("EXPIRE").arg(key).arg(seconds).ignore();
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
                pubsub.subscribe(keys::CONTROL_CHANNEL).await?;
                pubsub.psubscribe(keys::EVENTS_PATTERN).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(self.op_timeout, subscribed).await {
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
        if channel == keys::CONTROL_CHANNEL {
            return wire::parse_control(payload);
        }
        let job = keys::job_of_events_channel(channel)?;
        let (origin, event) = wire::parse_event(job, payload)?;
        (origin != self.origin).then_some(Incoming::Event(event))
    }
}
