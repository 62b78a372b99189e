//! The Redis that the simulated pods share: the one `--redis-url` names, or
//! a kit [`RedisServer`] started for the run; one coordinator per simulated
//! pod; and what Redis spent on a run, from its own accounting (`INFO`).

use crate::common::redis::{info, RedisServer};
use clap::Args;
// Everything this file uses from the library.
use segswarm::{
    coordination::{Metrics, RedisCoordinator, RedisSettings},
    settings::ClaimTtl,
};
use std::sync::Arc;
use std::time::Duration;

/// Flags of the benches that talk to Redis.
#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
    /// Redis to use (default: a redis-server started on a free loopback
    /// port, stopped at the end).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Runs of each figure; the table shows min/median/max over them.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

/// The Redis of one bench run; a server it started stops when dropped.
pub struct SharedRedis {
    pub url: String,
    _server: Option<RedisServer>,
}

impl SharedRedis {
    /// The given URL, or a fresh server on a free loopback port.
    pub fn new(args: &RedisArgs) -> SharedRedis {
        match &args.redis_url {
            Some(url) => SharedRedis {
                url: url.clone(),
                _server: None,
            },
            None => {
                let server = RedisServer::start();
                SharedRedis {
                    url: server.url(),
                    _server: Some(server),
                }
            }
        }
    }

    /// A coordinator of its own, as a pod has: a pool of `pool` connections
    /// and its own pub/sub connection; claims live `ttl` without renewal.
    pub fn coordinator(&self, ttl: Duration, pool: usize) -> anyhow::Result<RedisCoordinator> {
        self.coordinator_counting(ttl, pool, Arc::new(Metrics::new()?))
    }

    /// [`SharedRedis::coordinator`] counting into `metrics` (a pod's, which
    /// its worker shares).
    pub fn coordinator_counting(
        &self,
        ttl: Duration,
        pool: usize,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<RedisCoordinator> {
        let mut settings = RedisSettings::new(self.url.as_str());
        settings.pool_size = pool;
        let ttl = ClaimTtl::from_millis(ttl.as_millis() as u64);
        Ok(RedisCoordinator::new(&settings, ttl, metrics)?)
    }

    /// Deletes every key matching `pattern` (SCAN, then DEL) and returns
    /// their names: a bench's clean-up after a run.
    pub fn delete_keys(&self, pattern: &str) -> anyhow::Result<Vec<String>> {
        let client = redis::Client::open(self.url.as_str())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        let keys: Vec<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut conn)?
            .collect::<Result<_, _>>()?;
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL").arg(&keys).query(&mut conn)?;
        }
        Ok(keys)
    }

    /// Redis's accounting so far; a run's cost is the difference of two.
    pub fn cost(&self) -> RedisCost {
        RedisCost::parse(&info(&self.url, "commandstats"), &info(&self.url, "cpu"))
    }
}

/// Microseconds Redis spent in scripts, their calls, and the CPU seconds of
/// the server process.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisCost {
    pub command_usec: f64,
    pub calls: f64,
    pub cpu_seconds: f64,
}

impl RedisCost {
    /// From the text of `INFO commandstats` and `INFO cpu`.
    fn parse(commandstats: &str, cpu: &str) -> RedisCost {
        let mut cost = RedisCost::default();
        for line in commandstats.lines() {
            // cmdstat_evalsha:calls=1,usec=2,usec_per_call=2.00,...
            let Some((name, fields)) = line.split_once(':') else {
                continue;
            };
            // Scripts only: the commands a script calls are counted again
            // under their own names, and setup commands (HELLO, SUBSCRIBE,
            // SCRIPT LOAD) are not per unit.
            if name != "cmdstat_evalsha" && name != "cmdstat_eval" {
                continue;
            }
            for field in fields.split(',') {
                match field.split_once('=') {
                    Some(("usec", v)) => cost.command_usec += v.parse::<f64>().unwrap_or(0.0),
                    Some(("calls", v)) => cost.calls += v.parse::<f64>().unwrap_or(0.0),
                    _ => {}
                }
            }
        }
        for line in cpu.lines() {
            if let Some((name, value)) = line.split_once(':') {
                if name == "used_cpu_sys" || name == "used_cpu_user" {
                    cost.cpu_seconds += value.trim().parse::<f64>().unwrap_or(0.0);
                }
            }
        }
        cost
    }
}
