//! A unit of work and its name: what is claimed, encoded and published
//! (`audio/<track>`, `thumbnail`, `video/<rendition>/<index>`), the name
//! Redis keys and notices carry. Naming only: which units a job has is the
//! plan's.

use std::fmt;
use std::str::FromStr;

/// A unit of work: the thing that is claimed, encoded and published.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// A whole audio rendition (one continuous encode).
    Audio {
        track: usize,
    },
    Thumbnail,
    /// One segment of one video rendition.
    Video {
        rendition: String,
        index: usize,
    },
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unit::Audio { track } => write!(f, "audio/{track}"),
            Unit::Thumbnail => write!(f, "thumbnail"),
            Unit::Video { rendition, index } => write!(f, "video/{rendition}/{index}"),
        }
    }
}

/// A unit name that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid unit name {0:?}")]
pub struct BadUnit(pub String);

impl FromStr for Unit {
    type Err = BadUnit;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadUnit(text.to_string());
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            ["thumbnail"] => Ok(Unit::Thumbnail),
            ["audio", track] => Ok(Unit::Audio {
                track: track.parse().map_err(|_| bad())?,
            }),
            ["video", rendition, index] if is_rendition_name(rendition) => Ok(Unit::Video {
                rendition: rendition.to_string(),
                index: index.parse().map_err(|_| bad())?,
            }),
            _ => Err(bad()),
        }
    }
}

/// Rendition names are `<digits>p`; nothing else may become a folder name.
pub fn is_rendition_name(name: &str) -> bool {
    name.strip_suffix('p')
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

impl Unit {
    /// The rendition of a video unit.
    pub fn rendition(&self) -> Option<&str> {
        match self {
            Unit::Video { rendition, .. } => Some(rendition),
            _ => None,
        }
    }

    /// Metric label for the kind of unit.
    pub fn kind(&self) -> &'static str {
        match self {
            Unit::Audio { .. } => "audio",
            Unit::Thumbnail => "thumbnail",
            Unit::Video { .. } => "video",
        }
    }
}
