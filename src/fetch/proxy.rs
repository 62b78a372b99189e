//! The loopback HTTP server that ffprobe and ffmpeg read URL sources from.
//!
//! It listens on 127.0.0.1 only, answers `GET` (and `HEAD`) on the paths
//! open in [`Routes`] and 404 on anything else. For each request it fetches
//! the path's source through [`redirect::follow`] and streams the answer
//! back as it arrives (bounded memory: hyper pulls the next chunk when the
//! reader takes the last). The status is passed through (200, 206, 416,
//! errors), with the headers a media reader needs (`Content-Length`,
//! `Content-Range`, `Accept-Ranges`, `Content-Type`, `Content-Encoding`)
//! and no other: never a `Location`, so ffmpeg has nothing to follow. A
//! refused or failed fetch is answered 403 or 502 and kept on the route.

use super::redirect::{self, Upstream};
use super::{FetchError, Route, Routes};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct ProxyState {
    routes: Arc<Routes>,
    stop: CancellationToken,
}

/// Binds 127.0.0.1 on an ephemeral port and serves `routes` until `stop`.
pub(super) async fn start(
    routes: Arc<Routes>,
    stop: CancellationToken,
) -> Result<SocketAddr, FetchError> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|err| FetchError::Listen(err.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|err| FetchError::Listen(err.to_string()))?;
    let app = Router::new()
        .route("/{token}/{name}", get(serve_route))
        .with_state(ProxyState {
            routes,
            stop: stop.clone(),
        });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::warn!("source proxy on {addr}: {err}");
        }
    });
    tracing::debug!("source proxy listening on http://{addr}");
    Ok(addr)
}

async fn serve_route(
    State(state): State<ProxyState>,
    Path((token, _name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let Some(route) = state.routes.get(&token) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // Only a byte range is passed on; anything else ffmpeg sends (its
    // user agent, Icy-MetaData) stays here.
    let range = headers
        .get(header::RANGE)
        .filter(|value| value.as_bytes().starts_with(b"bytes=") && value.len() <= 200);
    match redirect::follow(&route.source, state.routes.policy, &method, range).await {
        Ok(upstream) => answer(&route, upstream, range, &state.stop),
        Err(error) => {
            tracing::warn!("source {}: {error}", route.source);
            let status = if error.is_refusal() {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::BAD_GATEWAY
            };
            route.fail(error);
            status.into_response()
        }
    }
}

/// The origin's answer as ffmpeg gets it, its body streamed.
fn answer(
    route: &Route,
    upstream: Upstream,
    range: Option<&HeaderValue>,
    stop: &CancellationToken,
) -> Response {
    let status = upstream.response.status();
    let shown = |value: Option<&HeaderValue>| {
        value
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    tracing::debug!(
        source = %route.source,
        url = %upstream.url,
        hops = upstream.hops,
        range = %shown(range),
        status = status.as_u16(),
        content_range = %shown(upstream.response.headers().get(header::CONTENT_RANGE)),
        content_length = %shown(upstream.response.headers().get(header::CONTENT_LENGTH)),
        "source fetch"
    );
    // 416 is what a reader probing past the end gets; not a failure.
    if !status.is_success() && status != StatusCode::RANGE_NOT_SATISFIABLE {
        route.fail(FetchError::Status {
            url: upstream.url.to_string(),
            status: status.as_u16(),
        });
        return status.into_response();
    }
    let mut response = Response::builder().status(status);
    // The headers of the origin's answer that reach ffmpeg; no other.
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::ACCEPT_RANGES,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
    ] {
        if let Some(value) = upstream.response.headers().get(&name) {
            response = response.header(name, value.clone());
        }
    }
    // Ends with the pod: a stream still open at shutdown is cut.
    let body = upstream
        .response
        .bytes_stream()
        .take_until(stop.clone().cancelled_owned());
    response
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

#[cfg(test)]
mod tests {
    use super::super::{FetchError, SourceFetch};
    use crate::egress::EgressPolicy;
    use crate::source::Source;
    use axum::response::Redirect;

    /// An origin on loopback: `/a` redirects to `/b`, `/b` serves `bytes`
    /// with Range support (tower-http's `ServeFile`), `/loop` to itself.
    async fn origin(bytes: &[u8]) -> String {
        let path = std::env::temp_dir().join(format!("segswarm-fetch-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, bytes).unwrap();
        let app = axum::Router::new()
            .route("/a", axum::routing::get(|| async { Redirect::to("/b") }))
            .route(
                "/loop",
                axum::routing::get(|| async { Redirect::to("/loop") }),
            )
            .route_service("/b", tower_http::services::ServeFile::new(path));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    #[tokio::test]
    async fn follows_redirects_and_passes_ranges_through() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let origin = origin(&bytes).await;
        // Loopback is allowed here; the refusals need a public first hop,
        // which tests/fetch_redirects.rs makes in network namespaces.
        let fetch = SourceFetch::new(EgressPolicy::AllowPrivate);
        let input = fetch
            .open(&Source::Url(format!("{origin}/a")))
            .await
            .unwrap();
        let answer = client()
            .get(input.ffmpeg_input())
            .header("range", "bytes=1000-1999")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 206);
        let header = |name: &str| {
            answer
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        assert_eq!(
            header("content-range").as_deref(),
            Some("bytes 1000-1999/5000")
        );
        assert_eq!(header("content-length").as_deref(), Some("1000"));
        assert_eq!(header("location"), None);
        assert_eq!(answer.bytes().await.unwrap(), &bytes[1000..2000]);
        let whole = client().get(input.ffmpeg_input()).send().await.unwrap();
        assert_eq!(whole.status().as_u16(), 200);
        assert_eq!(whole.bytes().await.unwrap(), &bytes[..]);
        assert!(input.failure().is_none());

        let looping = fetch
            .open(&Source::Url(format!("{origin}/loop")))
            .await
            .unwrap();
        let answer = client().get(looping.ffmpeg_input()).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 502);
        assert!(matches!(
            looping.failure(),
            Some(FetchError::TooManyRedirects { .. })
        ));

        // A closed path, or one never opened, is not found.
        let closed = looping.ffmpeg_input().to_string();
        drop(looping);
        let answer = client().get(&closed).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 404);
    }
}
