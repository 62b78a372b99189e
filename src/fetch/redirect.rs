//! Following a source URL to the answer that holds its bytes, one checked
//! hop at a time.
//!
//! Each hop: the host is resolved once and every address checked with the
//! egress policy ([`egress::check_url`]); the request goes out on a client
//! that can resolve that one name, to exactly those addresses, and nothing
//! else ([`Pinned`]); the client follows no redirect and uses no HTTP proxy.
//! A redirect (301, 302, 303, 307, 308) is then followed here: its
//! `Location` is resolved against the hop's URL, must be http or https, and
//! is checked the same way before anything connects to it. At most
//! [`MAX_REDIRECTS`] are followed. Only the `Range` header of ffmpeg's
//! request is sent on.

use super::FetchError;
use crate::egress::{self, EgressPolicy};
use reqwest::header::{HeaderValue, LOCATION, RANGE};
use reqwest::{Method, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Redirects followed for one request; one more fails the fetch.
pub const MAX_REDIRECTS: usize = 5;
/// How long connecting to one hop may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a hop may take to answer with its status and headers. The body
/// then streams for as long as ffmpeg reads it (a stalled ffmpeg is killed
/// by its own stall timeout, which closes the fetch).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const USER_AGENT: &str = concat!("segswarm/", env!("CARGO_PKG_VERSION"));

/// The answer with the source's bytes (or an error status), where it came
/// from, and after how many redirects.
pub(super) struct Upstream {
    pub response: reqwest::Response,
    pub url: Url,
    pub hops: usize,
}

/// Fetches `start` with `method` (GET or HEAD) and ffmpeg's `range`,
/// following redirects, every hop checked under `policy`.
pub(super) async fn follow(
    start: &Url,
    policy: EgressPolicy,
    method: &Method,
    range: Option<&HeaderValue>,
) -> Result<Upstream, FetchError> {
    let mut url = start.clone();
    for hops in 0..=MAX_REDIRECTS {
        let addrs = egress::check_url(&url, policy)
            .await
            .map_err(|error| match hops {
                0 => FetchError::Refused(error),
                _ => FetchError::RedirectRefused {
                    to: url.to_string(),
                    error,
                },
            })?;
        let response = send(&url, &addrs, method, range).await?;
        let status = response.status();
        if !is_followed_redirect(status) {
            return Ok(Upstream {
                response,
                url,
                hops,
            });
        }
        let next = response
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|location| url.join(location.trim()).ok())
            .ok_or_else(|| FetchError::BadRedirect {
                url: url.to_string(),
                status: status.as_u16(),
            })?;
        url =
            egress::parse_http_url(next.as_str()).map_err(|error| FetchError::RedirectRefused {
                to: next.to_string(),
                error,
            })?;
        tracing::debug!(from = %start, to = %url, "source redirect");
    }
    Err(FetchError::TooManyRedirects {
        last: url.to_string(),
    })
}

fn is_followed_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// One request to one hop, on a client pinned to the hop's checked
/// addresses.
async fn send(
    url: &Url,
    addrs: &[SocketAddr],
    method: &Method,
    range: Option<&HeaderValue>,
) -> Result<reqwest::Response, FetchError> {
    let failed = |reason: String| FetchError::Upstream {
        url: url.to_string(),
        reason,
    };
    let client = pinned_client(url, addrs).map_err(|err| failed(error_chain(&err)))?;
    let mut request = client.request(method.clone(), url.clone());
    if let Some(range) = range {
        request = request.header(RANGE, range.clone());
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, request.send()).await {
        Err(_) => Err(failed(format!("no answer within {ANSWER_TIMEOUT:?}"))),
        Ok(Err(err)) => Err(failed(error_chain(&err))),
        Ok(Ok(response)) => Ok(response),
    }
}

/// A client for one hop: no redirects, no HTTP proxy from the environment
/// (it would resolve the host again), and, when the policy checked
/// addresses for a name, a resolver that knows only that name.
fn pinned_client(url: &Url, addrs: &[SocketAddr]) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(USER_AGENT);
    // An IP address in the URL is connected to as it is (the client does
    // not resolve it); with no checked addresses the policy allows any.
    if let (Some(domain), false) = (url.domain(), addrs.is_empty()) {
        builder = builder.dns_resolver(Arc::new(Pinned {
            host: domain.to_ascii_lowercase(),
            addrs: addrs.to_vec(),
        }));
    }
    builder.build()
}

/// A resolver that answers for one name, with the addresses the egress
/// policy checked, and fails for any other: the client can connect nowhere
/// else, and never asks DNS a second time.
struct Pinned {
    host: String,
    addrs: Vec<SocketAddr>,
}

impl reqwest::dns::Resolve for Pinned {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let answer: Result<reqwest::dns::Addrs, _> =
            if name.as_str().eq_ignore_ascii_case(&self.host) {
                Ok(Box::new(self.addrs.clone().into_iter()))
            } else {
                Err(format!("{} is not the checked host {}", name.as_str(), self.host).into())
            };
        Box::pin(std::future::ready(answer))
    }
}

/// An error with its causes ("error sending request" says little alone).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::dns::Resolve;

    #[tokio::test]
    async fn the_pinned_resolver_knows_one_name() {
        let addr: SocketAddr = "198.18.161.6:80".parse().unwrap();
        let pinned = Pinned {
            host: "media.example".into(),
            addrs: vec![addr],
        };
        let name = |text: &str| text.parse::<reqwest::dns::Name>().unwrap();
        let found: Vec<SocketAddr> = pinned
            .resolve(name("MEDIA.example"))
            .await
            .unwrap()
            .collect();
        assert_eq!(found, vec![addr]);
        assert!(pinned.resolve(name("other.example")).await.is_err());
    }

    #[tokio::test]
    async fn a_refused_first_hop_is_never_sent() {
        let url = Url::parse("http://127.0.0.1:9/a.mp4").unwrap();
        let result = follow(&url, EgressPolicy::PublicOnly, &Method::GET, None).await;
        assert!(
            matches!(result, Err(FetchError::Refused(_))),
            "{:?}",
            result.err()
        );
    }
}
