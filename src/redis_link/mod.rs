//! What the Redis coordinator and the cluster's job registry share: how to
//! reach Redis ([`RedisSettings`]: the URL, the pool size, the operation
//! timeout, validated into one pool builder) and every key and channel name
//! ([`keys`]). Nothing here runs a command of the protocol.

pub mod keys;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::RedisError;
use std::time::Duration;

/// How a pod connects to Redis. Plain values: nothing here opens a
/// connection.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` (TLS).
    pub url: String,
    /// Connections in each command pool (pub/sub has its own).
    pub pool_size: usize,
    /// Longest time one operation may take, connecting included, before it
    /// fails as unavailable.
    pub op_timeout: Duration,
}

impl RedisSettings {
    /// Settings with a pool of 16 connections and a 3 s operation timeout.
    pub fn new(url: impl Into<String>) -> Self {
        RedisSettings {
            url: url.into(),
            pool_size: 16,
            op_timeout: Duration::from_secs(3),
        }
    }

    /// A client for dedicated (pub/sub) connections.
    pub fn client(&self) -> Result<redis::Client, RedisSetupError> {
        redis::Client::open(self.url.as_str()).map_err(|source| RedisSetupError::Url {
            url: redact(&self.url),
            source,
        })
    }

    /// A pool of command connections, each bounded by the operation timeout
    /// (connecting, waiting for a connection, every reply). Opens nothing
    /// yet: connections are made on first use.
    pub fn pool(&self) -> Result<Pool, RedisSetupError> {
        let url = redact(&self.url);
        let connection = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.op_timeout))
            .set_response_timeout(Some(self.op_timeout));
        let manager =
            Manager::new_with_config(self.url.as_str(), connection).map_err(|source| {
                RedisSetupError::Url {
                    url: url.clone(),
                    source,
                }
            })?;
        Pool::builder(manager)
            .max_size(self.pool_size.max(1))
            .wait_timeout(Some(self.op_timeout))
            .create_timeout(Some(self.op_timeout))
            .recycle_timeout(Some(self.op_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|source| RedisSetupError::Pool { url, source })
    }
}

/// Why a Redis client could not be set up (before any network I/O).
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("invalid Redis URL {url}: {source}")]
    Url { url: String, source: RedisError },
    #[error("creating the Redis connection pool for {url}: {source}")]
    Pool {
        url: String,
        source: deadpool_redis::BuildError,
    },
    #[error("the Redis coordinator must be created inside a Tokio runtime")]
    NoRuntime,
}

/// Replaces the password of a URL with `***` for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://:secret@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(redact("rediss://me:secret@host"), "rediss://me:***@host");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
