//! Flag values that several subcommands turn into the library's validated
//! settings, with the flag's name in the error.

use anyhow::Context;
use segswarm::settings::{validate_preset, validate_segment_duration, EncodeSettings, Ladder};

/// The encoding settings of `--ladder`, `--segment-duration` and
/// `--preset`, each checked; `flags` names them in errors.
pub fn encode_settings(
    ladder: &str,
    segment_duration: u32,
    preset: &str,
    flags: [&'static str; 3],
) -> anyhow::Result<EncodeSettings> {
    Ok(EncodeSettings {
        ladder: ladder.parse::<Ladder>().context(flags[0])?,
        segment_duration: validate_segment_duration(segment_duration).context(flags[1])?,
        preset: validate_preset(preset).context(flags[2])?,
        ..EncodeSettings::default()
    })
}
