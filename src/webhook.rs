//! Webhooks: POST a job's JSON to its `callback_url` on `playable`, `done`,
//! `partial` and `failed`, signed with HMAC-SHA256 when a secret is set.
//!
//! Delivery runs in the background with retries and backoff; a failed
//! delivery is logged and counted, and never affects the job.

use crate::jobs::JobView;
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
}

impl Webhooks {
    pub fn new(secret: Option<String>, deliveries: IntCounterVec) -> Webhooks {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Webhooks {
            client,
            secret,
            first_backoff: Duration::from_secs(1),
            deliveries,
        }
    }

    /// Delivers `{"event", "job"}` to `url` in the background.
    pub fn deliver(&self, url: String, event: &'static str, job: JobView) {
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
                let mut request = hooks
                    .client
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
    #[test]
    fn rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe".
        assert_eq!(
            super::sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
