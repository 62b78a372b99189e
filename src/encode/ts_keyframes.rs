//! Where the keyframes of a published MPEG-TS segment lie, in bytes: what an
//! I-frame playlist (`EXT-X-I-FRAMES-ONLY`, trick play) points at.
//!
//! Read from the segment file itself, never from the encoder's view of it:
//! a published file is final, so every pod that reads it finds the same
//! byte ranges whoever encoded it (bytes of multi-threaded rungs are not
//! reproducible, so a second encode could differ). It only reads, like
//! [`super::mpegts`], and understands segswarm's own outputs (one H.264
//! stream, one PES packet per frame); it is no general demuxer.

use super::mpegts::{read_access_unit, TsError};
use mpeg2ts::es::StreamType;
use mpeg2ts::ts::{ReadTsPacket, TsPacket, TsPacketReader, TsPayload};
use std::io::Read;
use std::path::Path;

/// The byte layout of one segment, as far as trick play goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyframeIndex {
    /// Bytes from the start of the file to the first video packet: the
    /// PAT and PMT (and the SDT ffmpeg writes before them). A byte range
    /// that does not start at 0 cannot be demuxed without them, so I-frame
    /// playlists name them with `EXT-X-MAP` (RFC 8216bis, 4.4.4.5: the
    /// Media Initialization Section of a TS segment is its PAT and PMT).
    pub header_len: u64,
    /// Every IDR access unit, in file order.
    pub keyframes: Vec<Keyframe>,
}

/// One IDR access unit: the TS packets from the one that starts its PES
/// packet up to (not including) the one that starts the next video frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keyframe {
    /// Byte offset of its first TS packet.
    pub offset: u64,
    /// Length in bytes (whole TS packets).
    pub length: u64,
    /// Presentation time, 90 kHz ticks.
    pub pts: Option<u64>,
}

/// Reads the segment at `path` (blocking file I/O: call it off the async
/// runtime's threads).
pub fn read(path: &Path) -> Result<KeyframeIndex, TsError> {
    let file = std::fs::File::open(path)?;
    scan(std::io::BufReader::with_capacity(1 << 16, file))
}

/// How much of an access unit is kept to tell an IDR: its first slice's
/// NAL header follows the access unit delimiter, parameter sets and SEI,
/// a few hundred bytes in; the rest of the picture is not needed.
const KEPT_BYTES: usize = 64 * 1024;

/// An access unit being read: where it starts and its first bytes.
struct Pending {
    offset: u64,
    pts: Option<u64>,
    bytes: Vec<u8>,
}

/// Reads a transport stream to its end and lists its keyframes.
pub fn scan(reader: impl Read) -> Result<KeyframeIndex, TsError> {
    let mut packets = TsPacketReader::new(reader);
    let mut video_pid = None;
    let mut header_len = None;
    let mut keyframes = Vec::new();
    let mut pending: Option<Pending> = None;
    let mut offset: u64 = 0;
    let packet_size = TsPacket::SIZE as u64;
    while let Some(packet) = packets.read_ts_packet()? {
        let at = offset;
        offset += packet_size;
        let payload = match packet.payload {
            Some(TsPayload::Pmt(pmt)) => {
                if video_pid.is_none() {
                    video_pid = pmt
                        .es_info
                        .iter()
                        .find(|es| es.stream_type == StreamType::H264)
                        .map(|es| es.elementary_pid);
                }
                continue;
            }
            Some(payload) if video_pid.is_some() && Some(packet.header.pid) == video_pid => payload,
            _ => continue,
        };
        match payload {
            TsPayload::PesStart(pes) => {
                header_len.get_or_insert(at);
                if let Some(done) = pending.take() {
                    keyframes.extend(finish(done, at)?);
                }
                pending = Some(Pending {
                    offset: at,
                    pts: pes.header.pts.map(|t| t.as_u64()),
                    bytes: pes.data.to_vec(),
                });
            }
            TsPayload::PesContinuation(data) => match pending.as_mut() {
                Some(unit) if unit.bytes.len() < KEPT_BYTES => unit.bytes.extend_from_slice(&data),
                Some(_) => {}
                None => {
                    return Err(TsError::Demux(
                        "video data before its first PES header".into(),
                    ))
                }
            },
            _ => {}
        }
    }
    if video_pid.is_none() {
        return Err(TsError::NoVideo);
    }
    let header_len = header_len.ok_or(TsError::NoFrames)?;
    if let Some(done) = pending.take() {
        keyframes.extend(finish(done, offset)?);
    }
    Ok(KeyframeIndex {
        header_len,
        keyframes,
    })
}

/// The keyframe an access unit ending at byte `end` is, if it is an IDR.
fn finish(unit: Pending, end: u64) -> Result<Option<Keyframe>, TsError> {
    let idr = read_access_unit(&unit.bytes)?.idr;
    Ok(idr.then_some(Keyframe {
        offset: unit.offset,
        length: end - unit.offset,
        pts: unit.pts,
    }))
}
