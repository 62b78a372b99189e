//! Webhooks: POST a job's JSON to its `callback_url` on `playable`, `done`,
//! `partial` and `failed`, signed with HMAC-SHA256 when a secret is set.
//!
//! Delivery runs in the background with retries and backoff; a failed
//! delivery is logged and counted, and never affects the job. The receiver's
//! address is checked under the pod's [`EgressPolicy`] when the delivery
//! starts, and every attempt goes to the addresses checked (no second DNS
//! lookup, no redirects), so a webhook cannot be turned against the pod's
//! own network.

use crate::egress::{self, EgressError, EgressPolicy};
use hmac::{Hmac, Mac};
use prometheus::IntCounterVec;
use sha2::Sha256;
use std::time::Duration;

/// Header carrying `sha256=<hex HMAC of the body>`.
pub const SIGNATURE_HEADER: &str = "x-segswarm-signature";
/// Header carrying the event name.
pub const EVENT_HEADER: &str = "x-segswarm-event";
/// Attempts per delivery.
const ATTEMPTS: u32 = 5;

/// Sends webhooks.
#[derive(Clone)]
pub struct Webhooks {
    client: reqwest::Client,
    secret: Option<String>,
    first_backoff: Duration,
    deliveries: IntCounterVec,
    egress: EgressPolicy,
}

impl Webhooks {
    pub fn new(secret: Option<String>, deliveries: IntCounterVec) -> Webhooks {
        Webhooks {
            client: client_builder().build().unwrap_or_default(),
            secret,
            first_backoff: Duration::from_secs(1),
            deliveries,
            egress: EgressPolicy::default(),
        }
    }

    /// The same sender, checking receivers under `policy`.
    pub fn with_egress(mut self, policy: EgressPolicy) -> Webhooks {
        self.egress = policy;
        self
    }

    /// A client that sends to `url` only at addresses allowed by the
    /// policy: the host is resolved and checked once, and the client is
    /// pinned to those addresses.
    async fn client_for(&self, url: &str) -> Result<reqwest::Client, EgressError> {
        let parsed = egress::parse_http_url(url)?;
        let addrs = egress::check_url(&parsed, self.egress).await?;
        match parsed.domain() {
            Some(domain) if !addrs.is_empty() => client_builder()
                .resolve_to_addrs(domain, &addrs)
                .build()
                .map_err(|e| EgressError::Invalid(e.to_string())),
            _ => Ok(self.client.clone()),
        }
    }

    /// Delivers `{"event", "job"}` to `url` in the background; `job` is the
    /// job's JSON as the API shows it.
    pub fn deliver(&self, url: String, event: &'static str, job: &impl serde::Serialize) {
        let body = match serde_json::to_vec(&serde_json::json!({ "event": event, "job": job })) {
            Ok(body) => body,
            Err(err) => {
                tracing::warn!("encoding webhook body: {err}");
                return;
            }
        };
        let signature = self.secret.as_deref().map(|secret| sign(secret, &body));
        let hooks = self.clone();
        tokio::spawn(async move {
            let mut backoff = hooks.first_backoff;
            for attempt in 1..=ATTEMPTS {
                // Checked again at every attempt, each pinned to what it
                // checked; a refused address is final, a failed lookup is
                // retried like a failed request.
                let client = match hooks.client_for(&url).await {
                    Ok(client) => Some(client),
                    Err(err @ EgressError::NotPublic { .. })
                    | Err(err @ EgressError::Invalid(_)) => {
                        tracing::warn!("webhook {event} to {url} refused: {err}");
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(attempt, "webhook {event} to {url}: {err}");
                        None
                    }
                };
                if let Some(client) = client {
                    let mut request = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header(EVENT_HEADER, event)
                        .body(body.clone());
                    if let Some(signature) = &signature {
                        request = request.header(SIGNATURE_HEADER, signature);
                    }
                    match request.send().await {
                        Ok(response) if response.status().is_success() => {
                            hooks.deliveries.with_label_values(&["delivered"]).inc();
                            return;
                        }
                        Ok(response) => tracing::warn!(
                            attempt,
                            "webhook {event} to {url}: HTTP {}",
                            response.status()
                        ),
                        Err(err) => tracing::warn!(attempt, "webhook {event} to {url}: {err}"),
                    }
                }
                if attempt < ATTEMPTS {
                    hooks.deliveries.with_label_values(&["retried"]).inc();
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
            hooks.deliveries.with_label_values(&["failed"]).inc();
        });
    }
}

/// How every webhook client is built: 10 s timeout, no redirects.
fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
}

/// `sha256=<hex>` HMAC-SHA256 of `body` with `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn receivers_on_private_addresses_are_refused_unless_allowed() {
        let counter =
            IntCounterVec::new(prometheus::Opts::new("deliveries", "test"), &["result"]).unwrap();
        let hooks = Webhooks::new(None, counter);
        for url in [
            "http://127.0.0.1:9/hook",
            "http://localhost/hook",
            "http://[fe80::1]/",
        ] {
            assert!(
                matches!(
                    hooks.client_for(url).await,
                    Err(EgressError::NotPublic { .. })
                ),
                "{url}"
            );
        }
        let trusting = hooks.with_egress(EgressPolicy::AllowPrivate);
        assert!(trusting.client_for("http://127.0.0.1:9/hook").await.is_ok());
    }

    #[test]
    fn rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe".
        assert_eq!(
            super::sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
