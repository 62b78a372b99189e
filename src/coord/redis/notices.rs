//! The pod's one pub/sub connection: unit notices (`done <unit>`,
//! `free <unit>`) fanned out to every waiter of this pod.
//!
//! It pattern-subscribes once to every job's unit channel rather than to each
//! job's channel as waiters come and go: one subscription that never changes
//! has no subscribe/unsubscribe races between waiters of the same job, needs
//! no reference counting, and is re-established by a single command after a
//! reconnect. The cost is that every pod receives every job's notices, which
//! is one short message per finished unit (a few per second for a busy
//! cluster). Plain PUBLISH reaches pattern subscribers on any node of a Redis
//! Cluster, so this also works there.
//!
//! The listener reconnects with exponential backoff and pings the server so
//! a silently dead connection is noticed. Notices sent while it is away are
//! lost; waiters learn of every (re)connect through a watch of the link
//! state and look at the unit again, and while there is no connection they poll. It owns no state
//! of the protocol and never writes to Redis.

use crate::coord::UnitNotice;
use crate::metrics::Metrics;
use crate::plan::Unit;
use crate::redis_link::keys;
use crate::JobId;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long connecting and subscribing may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle connection is checked with PING.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Without a pub/sub connection, waiters look at their unit this often.
const POLL_WITHOUT_NOTICES: Duration = Duration::from_millis(250);

/// One unit notice: this unit of this job changed (done or freed).
#[derive(Debug, Clone)]
struct Notice {
    job: JobId,
    unit: String,
}

/// The receiving side shared by waiters: notices and the link state. It only
/// wakes waiters; it never says whether a unit is done or free (waiters ask
/// Redis).
pub(super) struct Notices {
    notices: broadcast::Sender<Notice>,
    /// Units announced done or freed by any pod (this one included).
    unit_notices: broadcast::Sender<UnitNotice>,
    /// Whether the pattern subscription is active; every change wakes
    /// waiters.
    link: watch::Receiver<bool>,
}

impl Notices {
    /// Every notice from now on, parsed.
    pub(super) fn unit_notices(&self) -> broadcast::Receiver<UnitNotice> {
        self.unit_notices.subscribe()
    }

    /// A waiter for one unit, subscribed from now on.
    pub(super) fn waiter(&self, job: JobId, unit: &Unit) -> Waiter {
        let mut link = self.link.clone();
        link.mark_unchanged();
        Waiter {
            job,
            unit: unit.to_string(),
            notices: self.notices.subscribe(),
            link,
            link_alive: true,
        }
    }

    pub(super) fn connected(&self) -> bool {
        *self.link.borrow()
    }
}

/// One `wait_for` call's subscription: wakes on a notice for its unit, on a
/// change of the link, or at a given instant.
pub(super) struct Waiter {
    job: JobId,
    unit: String,
    notices: broadcast::Receiver<Notice>,
    link: watch::Receiver<bool>,
    link_alive: bool,
}

impl Waiter {
    /// Whether notices flow right now; read before checking the unit, so a
    /// drop after that check shows up as a link change.
    pub(super) fn link_connected(&mut self) -> bool {
        self.link_alive && *self.link.borrow_and_update()
    }

    /// Returns at `wake` at the latest, sooner on a notice for the unit or a
    /// change of the link. Without notices (`connected` false) it returns
    /// after a short poll interval.
    pub(super) async fn wait(&mut self, wake: Instant, connected: bool) {
        let wake = if connected {
            wake
        } else {
            wake.min(Instant::now() + POLL_WITHOUT_NOTICES)
        };
        let (job, unit) = (self.job, self.unit.as_str());
        let notices = &mut self.notices;
        let link = &mut self.link;
        let link_alive = self.link_alive;
        tokio::select! {
            () = matching_notice(notices, job, unit) => {}
            changed = link.changed(), if link_alive => {
                if changed.is_err() {
                    // The listener is gone (coordinator dropped): only the
                    // timer and polling remain.
                    self.link_alive = false;
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// Returns on a notice for `unit` of `job`, or when notices may have been
/// missed (the receiver lagged); never if the channel closed.
async fn matching_notice(notices: &mut broadcast::Receiver<Notice>, job: JobId, unit: &str) {
    loop {
        match notices.recv().await {
            Ok(notice) if notice.job == job && notice.unit == unit => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// The background task that owns the pub/sub connection. It forwards
/// notices and reports the link state; it never writes to Redis.
pub(super) struct PubSubListener {
    client: ::redis::Client,
    notices: broadcast::Sender<Notice>,
    unit_notices: broadcast::Sender<UnitNotice>,
    link: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl PubSubListener {
    pub(super) fn new(client: ::redis::Client, metrics: Arc<Metrics>) -> (Notices, Self) {
        let (notices, _) = broadcast::channel(1024);
        let (unit_notices, _) = broadcast::channel(4096);
        let (link, link_rx) = watch::channel(false);
        (
            Notices {
                notices: notices.clone(),
                unit_notices: unit_notices.clone(),
                link: link_rx,
            },
            PubSubListener {
                client,
                notices,
                unit_notices,
                link,
                metrics,
            },
        )
    }

    /// Connects, listens, reconnects with backoff; returns when `stop` fires.
    pub(super) async fn run(self, stop: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        let mut connected_before = false;
        let mut failing = false;
        loop {
            let attempt = tokio::select! {
                () = stop.cancelled() => break,
                attempt = tokio::time::timeout(CONNECT_TIMEOUT, self.subscribe()) => attempt,
            };
            match attempt {
                Ok(Ok(pubsub)) => {
                    if connected_before {
                        self.metrics.pubsub_reconnects.inc();
                        tracing::info!("Redis pub/sub connection re-established");
                    }
                    connected_before = true;
                    failing = false;
                    backoff = FIRST_BACKOFF;
                    self.metrics.redis_up.set(1);
                    self.link.send_replace(true);
                    let why = self.listen(pubsub, &stop).await;
                    self.link.send_replace(false);
                    if stop.is_cancelled() {
                        break;
                    }
                    tracing::warn!("Redis pub/sub connection lost ({why}); reconnecting");
                }
                Ok(Err(err)) => self.connect_failed(&mut failing, &err.to_string()),
                Err(_) => self.connect_failed(&mut failing, "timed out"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.link.send_replace(false);
    }

    fn connect_failed(&self, failing: &mut bool, why: &str) {
        self.metrics.redis_up.set(0);
        // Once per outage at warn level, then quietly while it lasts.
        if *failing {
            tracing::debug!("Redis pub/sub connect failed: {why}");
        } else {
            tracing::warn!("Redis pub/sub connect failed: {why}; retrying with backoff");
        }
        *failing = true;
    }

    async fn subscribe(&self) -> Result<::redis::aio::PubSub, ::redis::RedisError> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.psubscribe(keys::UNITS_PATTERN).await?;
        Ok(pubsub)
    }

    /// Forwards notices until the connection is lost or `stop` fires;
    /// returns why it ended.
    async fn listen(&self, pubsub: ::redis::aio::PubSub, stop: &CancellationToken) -> String {
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.reset();
        loop {
            tokio::select! {
                () = stop.cancelled() => return "stopped".into(),
                message = stream.next() => match message {
                    Some(message) => self.forward(&message),
                    None => return "connection closed".into(),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(CONNECT_TIMEOUT, sink.ping::<::redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(err)) => return format!("ping failed: {err}"),
                        Err(_) => return "ping timed out".into(),
                    }
                }
            }
        }
    }

    fn forward(&self, message: &::redis::Msg) {
        let Some(job) = keys::job_of_units_channel(message.get_channel_name()) else {
            return;
        };
        let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else {
            return;
        };
        let Some((kind, unit)) = payload.split_once(' ') else {
            return;
        };
        if let Ok(parsed) = unit.parse::<Unit>() {
            let _ = self.unit_notices.send(UnitNotice {
                job,
                unit: parsed,
                done: kind == "done",
            });
        }
        // No receiver (nobody waiting) is fine.
        let _ = self.notices.send(Notice {
            job,
            unit: unit.to_string(),
        });
    }
}
