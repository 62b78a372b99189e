//! Checks an output must pass before it is published (a truncated or empty
//! output is a failed attempt, never a done unit), and reading an output's
//! codec for the master playlist. Each check is one ffprobe of the output;
//! nothing here writes a file.

use crate::ffmpeg::run_ffprobe;
use crate::plan::Rendition;
use crate::storage::AudioWorkDir;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

/// How long a verification ffprobe may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);

async fn ffprobe_compact(path: &Path, entries: &str) -> Result<String, String> {
    let args: Vec<OsString> = vec![
        "-v".into(),
        "error".into(),
        "-protocol_whitelist".into(),
        "file".into(),
        "-show_entries".into(),
        entries.into(),
        "-of".into(),
        "compact".into(),
        path.as_os_str().into(),
    ];
    run_ffprobe(args, VERIFY_TIMEOUT)
        .await
        .map(|out| String::from_utf8_lossy(&out).into_owned())
        .map_err(|e| e.to_string())
}

/// A compact-format line's `key=value` field.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split('|')
        .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
}

/// A video segment must demux, hold exactly the planned frames, start with a
/// keyframe and have the rendition's size.
pub(super) async fn segment(
    path: &Path,
    frames: usize,
    rendition: &Rendition,
) -> Result<(), String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot stat: {e}"))?
        .len();
    if size == 0 {
        return Err("empty file".into());
    }
    let text = ffprobe_compact(
        path,
        "stream=codec_type,width,height:packet=stream_index,flags",
    )
    .await?;
    let video_stream = text
        .lines()
        .find(|l| l.starts_with("stream|") && field(l, "codec_type") == Some("video"))
        .ok_or("no video stream")?;
    let (width, height) = (field(video_stream, "width"), field(video_stream, "height"));
    if width != Some(&rendition.width.to_string()) || height != Some(&rendition.height.to_string())
    {
        return Err(format!(
            "size {}x{}, expected {}x{}",
            width.unwrap_or("?"),
            height.unwrap_or("?"),
            rendition.width,
            rendition.height
        ));
    }
    let packets: Vec<&str> = text.lines().filter(|l| l.starts_with("packet|")).collect();
    if packets.len() != frames {
        return Err(format!("{} frames, expected {frames}", packets.len()));
    }
    match packets.first().and_then(|p| field(p, "flags")) {
        Some(flags) if flags.contains('K') => Ok(()),
        _ => Err("first frame is not a keyframe".into()),
    }
}

/// The audio rendition's playlist must parse, be complete (ENDLIST) and list
/// segments that exist, the first of them holding AAC.
pub(super) async fn audio(work: &AudioWorkDir) -> Result<(), String> {
    let playlist = crate::storage::read_playlist(&work.playlist())
        .map_err(|e| format!("cannot read playlist: {e}"))?;
    if playlist.segments.is_empty() {
        return Err("no audio segments".into());
    }
    if !playlist.end_list {
        return Err("playlist has no ENDLIST: the encode stopped early".into());
    }
    for segment in &playlist.segments {
        let len = std::fs::metadata(work.file(&segment.uri))
            .map_err(|e| format!("segment {}: {e}", segment.uri))?
            .len();
        if len == 0 {
            return Err(format!("segment {} is empty", segment.uri));
        }
    }
    let first = work.file(&playlist.segments[0].uri);
    let text = ffprobe_compact(&first, "stream=codec_name").await?;
    if !text.contains("codec_name=aac") {
        return Err("first segment holds no AAC stream".into());
    }
    Ok(())
}

pub(super) async fn image(path: &Path, width: u32) -> Result<(), String> {
    let text = ffprobe_compact(path, "stream=width").await?;
    if text.contains(&format!("width={width}")) {
        Ok(())
    } else {
        Err(format!("not a {width} px wide image: {}", text.trim()))
    }
}

/// Reads an MPEG-TS segment's video profile and level and turns them into an
/// RFC 6381 codec string (`avc1.64001f`), from the real output.
pub async fn video_codec_string(segment: &Path) -> Option<String> {
    let text = ffprobe_compact(segment, "stream=codec_type,profile,level")
        .await
        .ok()?;
    let line = text
        .lines()
        .find(|l| field(l, "codec_type") == Some("video"))?;
    let level: u32 = field(line, "level")?.parse().ok()?;
    let (profile_idc, constraints) = match field(line, "profile")? {
        "Constrained Baseline" => (0x42, 0xC0),
        "Baseline" => (0x42, 0x00),
        "Main" => (0x4D, 0x40),
        "High" => (0x64, 0x00),
        _ => return None,
    };
    Some(format!(
        "avc1.{profile_idc:02x}{constraints:02x}{level:02x}"
    ))
}
