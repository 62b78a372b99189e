//! Reading a job's source for ffprobe and ffmpeg, so that they never
//! connect to a remote host themselves.
//!
//! A local file is handed to them as it is (`file:<path>`, protocol
//! whitelist `file`). A URL source is read through the pod's own loopback
//! HTTP proxy, [`SourceFetch`]: one per pod (pods do not share loopback),
//! bound on 127.0.0.1 at an ephemeral port the first time a URL is read,
//! stopped with the pod. Every ffprobe or ffmpeg run gets its own
//! unguessable path on it (a [`SourceInput`]:
//! `http://127.0.0.1:<port>/<token>/<name>`, protocol whitelist `http,tcp`),
//! which is closed when the run ends; so a path lives exactly as long as
//! the job has a process reading its source on this pod.
//!
//! For every request on an open path, the proxy fetches the source itself
//! ([`redirect`]): each host is resolved once, every address is checked
//! with the pod's [`EgressPolicy`], the connection goes only to the
//! addresses checked (pinned), redirects are followed here, at most
//! [`MAX_REDIRECTS`], each hop checked the same way, and the answer
//! (`Range` passed through, 206 / `Content-Range` / `Content-Length` as the
//! origin sent them) is streamed back ([`proxy`]). When a fetch fails, the
//! path keeps why, so the probe's or the encode's error names the refused
//! redirect instead of ffmpeg's "403 Forbidden".
//!
//! This module owns the proxy and its paths. It never writes to storage,
//! never buffers a whole source, never connects to an address the policy
//! has not checked, and never hands ffmpeg a redirect, a cookie or any
//! upstream header beyond the few a media reader needs.

mod proxy;
mod redirect;

pub use redirect::MAX_REDIRECTS;

use crate::egress::{self, EgressError, EgressPolicy};
use crate::source::Source;
use crate::sync::lock;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use url::Url;

/// Why the pod could not fetch a source (or one of its redirects).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Invalid(EgressError),
    /// The source's own host, checked again when it is fetched (its DNS
    /// answer may have changed since the job was submitted).
    #[error("refused: {0}")]
    Refused(EgressError),
    #[error("redirect to {to} refused: {error}")]
    RedirectRefused { to: String, error: EgressError },
    #[error("{url} answered a redirect ({status}) without a usable Location header")]
    BadRedirect { url: String, status: u16 },
    #[error("more than {MAX_REDIRECTS} redirects (the last one to {last})")]
    TooManyRedirects { last: String },
    #[error("fetching {url}: {reason}")]
    Upstream { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("starting the source proxy on 127.0.0.1: {0}")]
    Listen(String),
    #[error("the pod is shutting down")]
    ShuttingDown,
}

impl FetchError {
    /// A refusal by the egress policy (rather than a failed fetch).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            FetchError::Refused(_) | FetchError::RedirectRefused { .. }
        )
    }
}

/// The pod's source proxy: one loopback listener, started on first use,
/// and the paths open on it. Cheap to clone; stops when [`shutdown`] is
/// called or the last clone is dropped.
///
/// [`shutdown`]: SourceFetch::shutdown
#[derive(Clone)]
pub struct SourceFetch {
    inner: Arc<Inner>,
}

struct Inner {
    routes: Arc<Routes>,
    listening: tokio::sync::OnceCell<SocketAddr>,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What the proxy serves: the open paths, and the policy every fetch is
/// checked against.
struct Routes {
    policy: EgressPolicy,
    open: Mutex<HashMap<String, Arc<Route>>>,
}

impl Routes {
    fn get(&self, token: &str) -> Option<Arc<Route>> {
        lock(&self.open).get(token).cloned()
    }
}

/// One open path: the source URL it reads, and the first reason a fetch on
/// it failed.
struct Route {
    source: Url,
    failure: Mutex<Option<FetchError>>,
}

impl Route {
    fn fail(&self, error: FetchError) {
        let mut failure = lock(&self.failure);
        if failure.is_none() {
            *failure = Some(error);
        }
    }
}

impl SourceFetch {
    /// A proxy that fetches under `policy`. Nothing is bound until a URL
    /// source is opened.
    pub fn new(policy: EgressPolicy) -> SourceFetch {
        SourceFetch {
            inner: Arc::new(Inner {
                routes: Arc::new(Routes {
                    policy,
                    open: Mutex::new(HashMap::new()),
                }),
                listening: tokio::sync::OnceCell::new(),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// What one ffprobe or ffmpeg run passes as `-i` for `source`, with its
    /// protocol whitelist; for a URL, a new path on the proxy, open until
    /// the returned input is dropped.
    pub async fn open(&self, source: &Source) -> Result<SourceInput, FetchError> {
        let text = match source {
            Source::File(path) => return Ok(SourceInput::file(path)),
            Source::Url(text) => text,
        };
        let url = egress::parse_http_url(text).map_err(FetchError::Invalid)?;
        if self.inner.stop.is_cancelled() {
            return Err(FetchError::ShuttingDown);
        }
        let addr = self
            .inner
            .listening
            .get_or_try_init(|| proxy::start(self.inner.routes.clone(), self.inner.stop.clone()))
            .await?;
        // 122 random bits: another local process cannot guess an open path.
        let token = uuid::Uuid::new_v4().simple().to_string();
        let argument = format!("http://{addr}/{token}/{}", file_name(&url));
        let route = Arc::new(Route {
            source: url,
            failure: Mutex::new(None),
        });
        lock(&self.inner.routes.open).insert(token.clone(), route.clone());
        Ok(SourceInput {
            argument,
            protocols: "http,tcp",
            route: Some(OpenRoute {
                token,
                route,
                routes: self.inner.routes.clone(),
            }),
        })
    }

    /// Stops the proxy: no new path opens, and answers being streamed end.
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
    }
}

impl fmt::Debug for SourceFetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceFetch")
            .field("policy", &self.inner.routes.policy)
            .field("listening", &self.inner.listening.get())
            .finish()
    }
}

/// The last part of the URL's path when it is a plain file name (ffmpeg
/// reads hints from the extension), else `source`.
fn file_name(url: &Url) -> &str {
    url.path_segments()
        .and_then(|mut segments| segments.next_back())
        .filter(|name| {
            !name.is_empty()
                && name.len() <= 100
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
        .unwrap_or("source")
}

/// What one ffprobe or ffmpeg run reads: the `-i` argument and the
/// protocols it may use. For a URL source it holds the path open on the
/// proxy, and closes it when dropped.
pub struct SourceInput {
    argument: String,
    protocols: &'static str,
    route: Option<OpenRoute>,
}

/// A path open on the proxy; closed on drop.
struct OpenRoute {
    token: String,
    route: Arc<Route>,
    routes: Arc<Routes>,
}

impl Drop for OpenRoute {
    fn drop(&mut self) {
        lock(&self.routes.open).remove(&self.token);
    }
}

impl SourceInput {
    /// A local file, read directly (`file:` keeps a path that contains a
    /// colon from being read as a protocol).
    pub fn file(path: &std::path::Path) -> SourceInput {
        SourceInput {
            argument: format!("file:{}", path.display()),
            protocols: "file",
            route: None,
        }
    }

    /// What to pass to `-i`.
    pub fn ffmpeg_input(&self) -> &str {
        &self.argument
    }

    /// `-protocol_whitelist`: `file` for a local file; `http,tcp` for the
    /// proxy on loopback (never `https` or `tls`: ffmpeg reaches no other
    /// host).
    pub fn protocol_whitelist(&self) -> &'static str {
        self.protocols
    }

    /// Why the proxy could not fetch the source for this run, if it could
    /// not: the reason to report instead of what ffmpeg saw of it.
    pub fn failure(&self) -> Option<FetchError> {
        self.route
            .as_ref()
            .and_then(|open| lock(&open.route.failure).clone())
    }

    /// `text` (ffmpeg's or ffprobe's words) with the proxy's path replaced
    /// by the source URL it stands for.
    pub fn explain(&self, text: &str) -> String {
        match &self.route {
            Some(open) => text.replace(&self.argument, open.route.source.as_str()),
            None => text.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_pass_and_urls_get_a_path_of_their_own() {
        let fetch = SourceFetch::new(EgressPolicy::PublicOnly);
        let file = fetch
            .open(&Source::File("/media/a:b.mp4".into()))
            .await
            .unwrap();
        assert_eq!(file.ffmpeg_input(), "file:/media/a:b.mp4");
        assert_eq!(file.protocol_whitelist(), "file");

        let source = Source::Url("http://example.com/movies/clip.mp4?sig=1".into());
        let first = fetch.open(&source).await.unwrap();
        let second = fetch.open(&source).await.unwrap();
        assert_eq!(first.protocol_whitelist(), "http,tcp");
        assert!(first.ffmpeg_input().starts_with("http://127.0.0.1:"));
        assert!(first.ffmpeg_input().ends_with("/clip.mp4"));
        assert_ne!(first.ffmpeg_input(), second.ffmpeg_input());
        assert_eq!(lock(&fetch.inner.routes.open).len(), 2);
        let said = format!("{}: Server returned 403", first.ffmpeg_input());
        assert_eq!(
            first.explain(&said),
            "http://example.com/movies/clip.mp4?sig=1: Server returned 403"
        );
        drop(first);
        assert_eq!(lock(&fetch.inner.routes.open).len(), 1);
        fetch.shutdown();
        assert!(matches!(
            fetch.open(&source).await,
            Err(FetchError::ShuttingDown)
        ));
    }

    #[test]
    fn odd_names_become_source() {
        for (url, name) in [
            ("http://h/a/b.ts", "b.ts"),
            ("http://h/", "source"),
            ("http://h/a%20b.mp4", "source"),
            ("http://h/dir/", "source"),
        ] {
            assert_eq!(file_name(&Url::parse(url).unwrap()), name, "{url}");
        }
    }
}
