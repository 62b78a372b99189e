//! What a job reads from: a local file or an http(s) URL.
//!
//! Owns the checks that happen before ffmpeg ever sees a source (scheme,
//! existence, allowed roots, the address a URL points at) and the format
//! whitelist ffprobe and ffmpeg get for it, so that a hostile source cannot
//! make them open playlists of other files or hosts. What they are given as
//! `-i`, and with which protocols, is [`crate::fetch`]'s: a URL is read
//! through the pod's own proxy, never by ffmpeg itself. It never opens or
//! writes the source itself.

use crate::egress::{self, EgressError, EgressPolicy};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// Errors about a source that make it unusable before probing.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {0}: no such file")]
    Missing(PathBuf),
    #[error("source {0}: not a regular file")]
    NotAFile(PathBuf),
    #[error("source {path}: cannot read it: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("source {0:?}: unsupported URL scheme (only http and https URLs or local paths are accepted)")]
    UnsupportedScheme(String),
    #[error("source {0}: local paths are not accepted here (set SEGSWARM_SOURCE_ROOTS to allow folders)")]
    LocalNotAllowed(PathBuf),
    #[error("source {0}: outside the allowed source roots")]
    OutsideRoots(PathBuf),
    #[error("source is empty")]
    Empty,
    #[error("source {url}: {error}")]
    Url { url: String, error: EgressError },
}

/// The demuxers ffprobe and ffmpeg may use on a source: real media
/// containers and raw video streams, each reading only the one file or URL.
/// Left out on purpose: playlists and lists that open other files or hosts
/// (`hls`, `dash`, `concat`, `sdp`, ...) and image sequences (`image2`).
/// Demuxer names as `ffmpeg -demuxers` prints them; `mov` also covers mp4,
/// m4v and 3gp, `matroska` also webm.
pub const MEDIA_FORMATS: &str = "mov,mp4,matroska,webm,mpegts,avi,flv,mpeg,mxf,asf,ogg,nut,ivf,dv,\
h264,hevc,m4v,mpegvideo,obu,yuv4mpegpipe,gif";

/// A validated source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "location", rename_all = "lowercase")]
pub enum Source {
    /// A local file, canonicalized.
    File(PathBuf),
    /// An http or https URL, read through the pod's proxy
    /// ([`crate::fetch`]).
    Url(String),
}

impl Source {
    /// Parses and checks what a user gave: a path or a URL. `roots` limits
    /// local files to those folders: `None` allows any local file (the CLI
    /// on the user's own machine), `Some(&[])` refuses local files (a pod
    /// without configured roots).
    pub fn parse(text: &str, roots: Option<&[PathBuf]>) -> Result<Source, SourceError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SourceError::Empty);
        }
        if let Some((scheme, _)) = text.split_once("://") {
            let scheme = scheme.to_ascii_lowercase();
            return if scheme == "http" || scheme == "https" {
                // Keep the normalised form: it is what the host check in
                // `check_egress` looked at, and what the proxy fetches.
                let url = egress::parse_http_url(text).map_err(|error| SourceError::Url {
                    url: text.to_string(),
                    error,
                })?;
                Ok(Source::Url(url.to_string()))
            } else {
                Err(SourceError::UnsupportedScheme(text.to_string()))
            };
        }
        // ffmpeg reads `proto:rest` as a protocol; refuse anything that looks
        // like one rather than guess (a file named `concat:x` is still
        // reachable as `./concat:x`).
        if let Some((prefix, _)) = text.split_once(':') {
            if !prefix.is_empty()
                && !prefix.contains('/')
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+')
            {
                return Err(SourceError::UnsupportedScheme(text.to_string()));
            }
        }
        let path = Path::new(text);
        let canonical = match path.canonicalize() {
            Ok(canonical) => canonical,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(SourceError::Missing(path.to_path_buf()))
            }
            Err(err) => {
                return Err(SourceError::Unreadable {
                    path: path.to_path_buf(),
                    source: err,
                })
            }
        };
        let meta = std::fs::metadata(&canonical).map_err(|source| SourceError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        if !meta.is_file() {
            return Err(SourceError::NotAFile(path.to_path_buf()));
        }
        if let Some(roots) = roots {
            if roots.is_empty() {
                return Err(SourceError::LocalNotAllowed(path.to_path_buf()));
            }
            let inside = roots.iter().any(|root| {
                root.canonicalize()
                    .map(|root| canonical.starts_with(root))
                    .unwrap_or(false)
            });
            if !inside {
                return Err(SourceError::OutsideRoots(path.to_path_buf()));
            }
        }
        Ok(Source::File(canonical))
    }

    /// Checks where a URL source points under `policy` (resolving its
    /// host); local files pass. Call it after [`Source::parse`] wherever a
    /// source comes from someone else.
    pub async fn check_egress(&self, policy: EgressPolicy) -> Result<(), SourceError> {
        match self {
            Source::File(_) => Ok(()),
            Source::Url(text) => {
                let url_error = |error| SourceError::Url {
                    url: text.clone(),
                    error,
                };
                let url = egress::parse_http_url(text).map_err(url_error)?;
                egress::check_url(&url, policy).await.map_err(url_error)?;
                Ok(())
            }
        }
    }

    /// The demuxers ffprobe and ffmpeg may use while reading this source
    /// (`-format_whitelist`): [`MEDIA_FORMATS`].
    pub fn format_whitelist(&self) -> &'static str {
        MEDIA_FORMATS
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Url(url) => write!(f, "{url}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_other_schemes() {
        for text in [
            "ftp://x/y.mp4",
            "file:///etc/passwd",
            "concat:a|b",
            "rtmp://x",
        ] {
            assert!(
                matches!(
                    Source::parse(text, None),
                    Err(SourceError::UnsupportedScheme(_))
                ),
                "{text}"
            );
        }
        assert!(matches!(
            Source::parse("https://example.com/a.mp4", Some(&[])),
            Ok(Source::Url(_))
        ));
    }

    #[test]
    fn missing_and_outside_roots() {
        assert!(matches!(
            Source::parse("/definitely/not/here.mp4", None),
            Err(SourceError::Missing(_))
        ));
        assert!(matches!(
            Source::parse("/etc/hostname", Some(&[PathBuf::from("/tmp")])),
            Err(SourceError::OutsideRoots(_)) | Err(SourceError::Missing(_))
        ));
        assert!(matches!(
            Source::parse("/etc/hostname", Some(&[])),
            Err(SourceError::LocalNotAllowed(_)) | Err(SourceError::Missing(_))
        ));
    }
}
