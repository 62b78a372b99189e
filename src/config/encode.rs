//! What a job asks of the encoder: the rendition ladder, the segment
//! duration, the x264 preset.
//!
//! Owns parsing and validation of `--ladder` (and the API's ladder),
//! `--segment-duration` and `--preset`. It knows nothing about sources;
//! filtering the ladder to a source is the planner's job.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Allowed segment durations in seconds (inclusive).
pub const SEGMENT_DURATION_RANGE: std::ops::RangeInclusive<u32> = 2..=10;
/// Default segment duration in seconds.
pub const DEFAULT_SEGMENT_DURATION: u32 = 6;
/// The default ladder: name, short-side height, video bitrate in bit/s.
pub const DEFAULT_LADDER: &[(u32, u64)] = &[
    (240, 400_000),
    (360, 800_000),
    (480, 1_400_000),
    (720, 2_800_000),
    (1080, 5_000_000),
];
/// Most rungs a ladder may have; more is a mistake, not a ladder.
pub const MAX_RUNGS: usize = 10;
/// x264 presets accepted by `--preset`.
pub const PRESETS: &[&str] = &[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
];

/// One rung of the ladder: a target short-side height and a video bitrate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rung {
    /// Short side of the output in pixels (height for landscape sources).
    pub height: u32,
    /// Target video bitrate in bit/s.
    pub bitrate: u64,
}

impl Rung {
    /// The rendition name, e.g. `360p`; also the folder name on storage.
    pub fn name(&self) -> String {
        format!("{}p", self.height)
    }

    /// A bitrate for heights outside the default table: about 0.1 bit per
    /// pixel at 30 fps for 16:9, which matches the table's 240p rung.
    pub fn default_bitrate(height: u32) -> u64 {
        if let Some((_, rate)) = DEFAULT_LADDER.iter().find(|(h, _)| *h == height) {
            return *rate;
        }
        let h = u64::from(height);
        (h * h * 7).div_ceil(1000) * 1000
    }
}

impl FromStr for Rung {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::BadRung(text.to_string());
        let text = text.trim();
        let (name, rate) = match text.split_once(':') {
            Some((name, rate)) => (name, Some(rate)),
            None => (text, None),
        };
        let height: u32 = name
            .strip_suffix('p')
            .and_then(|h| h.parse().ok())
            .ok_or_else(bad)?;
        if !(64..=4320).contains(&height) {
            return Err(ConfigError::RungHeight(height));
        }
        let bitrate = match rate {
            None => Rung::default_bitrate(height),
            Some(rate) => parse_bitrate(rate).ok_or_else(bad)?,
        };
        Ok(Rung { height, bitrate })
    }
}

/// Parses `800k`, `2.8M` or `400000` into bit/s.
fn parse_bitrate(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, scale) = match text.chars().last()? {
        'k' | 'K' => (&text[..text.len() - 1], 1e3),
        'm' | 'M' => (&text[..text.len() - 1], 1e6),
        _ => (text, 1.0),
    };
    let value: f64 = number.parse().ok()?;
    let bits = (value * scale).round();
    (10_000.0..=200_000_000.0)
        .contains(&bits)
        .then_some(bits as u64)
}

/// An ordered list of rungs, lowest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ladder(pub Vec<Rung>);

impl Default for Ladder {
    fn default() -> Self {
        Ladder(
            DEFAULT_LADDER
                .iter()
                .map(|&(height, bitrate)| Rung { height, bitrate })
                .collect(),
        )
    }
}

impl FromStr for Ladder {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut rungs = text
            .split(',')
            .filter(|part| !part.trim().is_empty())
            .map(Rung::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Ladder::validate(&mut rungs)?;
        Ok(Ladder(rungs))
    }
}

impl Ladder {
    /// Builds a ladder from rung texts (the API's JSON array form).
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, ConfigError> {
        if names.len() > MAX_RUNGS {
            return Err(ConfigError::TooManyRungs(names.len()));
        }
        let mut rungs = names
            .iter()
            .map(|name| Rung::from_str(name.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ladder::validate(&mut rungs)?;
        Ok(Ladder(rungs))
    }

    fn validate(rungs: &mut [Rung]) -> Result<(), ConfigError> {
        if rungs.is_empty() {
            return Err(ConfigError::EmptyLadder);
        }
        if rungs.len() > MAX_RUNGS {
            return Err(ConfigError::TooManyRungs(rungs.len()));
        }
        rungs.sort_by_key(|rung| rung.height);
        for pair in rungs.windows(2) {
            if pair[0].height == pair[1].height {
                return Err(ConfigError::DuplicateRung(pair[0].name()));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Ladder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(Rung::name).collect();
        write!(f, "{}", names.join(","))
    }
}

/// Checks a segment duration against [`SEGMENT_DURATION_RANGE`].
pub fn validate_segment_duration(seconds: u32) -> Result<u32, ConfigError> {
    if SEGMENT_DURATION_RANGE.contains(&seconds) {
        Ok(seconds)
    } else {
        Err(ConfigError::SegmentDuration(seconds))
    }
}

/// Checks an x264 preset name.
pub fn validate_preset(preset: &str) -> Result<String, ConfigError> {
    if PRESETS.contains(&preset) {
        Ok(preset.to_string())
    } else {
        Err(ConfigError::Preset(preset.to_string()))
    }
}

/// What a job asks for, besides its source: the inputs of the planner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodeSettings {
    pub ladder: Ladder,
    /// Target segment duration in seconds.
    pub segment_duration: u32,
    /// x264 preset.
    pub preset: String,
    /// AAC bitrate per audio track, bit/s.
    pub audio_bitrate: u64,
}

impl Default for EncodeSettings {
    fn default() -> Self {
        EncodeSettings {
            ladder: Ladder::default(),
            segment_duration: DEFAULT_SEGMENT_DURATION,
            preset: "veryfast".to_string(),
            audio_bitrate: 128_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ladder_sorted_with_default_rates() {
        let ladder: Ladder = "720p, 240p,360p:900k".parse().unwrap();
        let names: Vec<_> = ladder.0.iter().map(|r| (r.name(), r.bitrate)).collect();
        assert_eq!(
            names,
            vec![
                ("240p".into(), 400_000),
                ("360p".into(), 900_000),
                ("720p".into(), 2_800_000)
            ]
        );
    }

    #[test]
    fn rejects_bad_ladders() {
        assert!(matches!(
            "".parse::<Ladder>(),
            Err(ConfigError::EmptyLadder)
        ));
        assert!(matches!(
            "abc".parse::<Ladder>(),
            Err(ConfigError::BadRung(_))
        ));
        assert!(matches!(
            "240p,240p".parse::<Ladder>(),
            Err(ConfigError::DuplicateRung(_))
        ));
        assert!(matches!(
            "10p".parse::<Ladder>(),
            Err(ConfigError::RungHeight(10))
        ));
        let many: Vec<String> = (1..=1000).map(|i| format!("{}p", 100 + i)).collect();
        assert!(matches!(
            Ladder::from_names(&many),
            Err(ConfigError::TooManyRungs(1000))
        ));
        assert!(matches!(
            "240p:0k".parse::<Ladder>(),
            Err(ConfigError::BadRung(_))
        ));
    }

    #[test]
    fn segment_duration_bounds() {
        assert!(validate_segment_duration(2).is_ok());
        assert!(validate_segment_duration(10).is_ok());
        assert_eq!(
            validate_segment_duration(0),
            Err(ConfigError::SegmentDuration(0))
        );
        assert!(validate_segment_duration(3600).is_err());
    }

    #[test]
    fn custom_heights_get_a_bitrate() {
        assert_eq!(Rung::default_bitrate(240), 400_000);
        assert_eq!(Rung::default_bitrate(144), 146_000);
    }
}
