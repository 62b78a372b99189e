//! How a process writes its log lines (`SEGSWARM_LOG_FORMAT`): text for a
//! person at a terminal, or one JSON object per line for log pipelines
//! (Kubernetes, Loki, Elasticsearch) that index fields such as `job` and
//! `unit`. Only the format is decided here; the binary installs the
//! subscriber.

use super::ConfigError;
use std::str::FromStr;

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `2026-12-01T10:00:00Z  INFO segswarm::worker: unit done job=… unit=…`
    #[default]
    Text,
    /// `{"timestamp":…,"level":"INFO","target":…,"message":"unit done","job":…,"unit":…}`
    Json,
}

impl FromStr for LogFormat {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<LogFormat, ConfigError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" | "" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(ConfigError::LogFormat(text.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_parse_and_anything_else_is_refused() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!("JSON".parse(), Ok(LogFormat::Json));
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!("".parse(), Ok(LogFormat::Text));
        assert_eq!(
            "logfmt".parse::<LogFormat>(),
            Err(ConfigError::LogFormat("logfmt".into()))
        );
        assert!(ConfigError::LogFormat("x".into())
            .to_string()
            .contains("text or json"));
    }
}
