//! Reading what an MPEG-TS segment holds, in process: how many video frames
//! (access units), whether the first is an IDR picture, its presentation
//! time, the picture size and the RFC 6381 codec string from its sequence
//! parameter set, and whether the stream has audio.
//!
//! This is what lets verification and the master playlist do without one
//! ffprobe process per segment. It reads the transport stream with
//! `mpeg2ts` and the parameter set with `h264-reader`, and it only reads: it
//! never decodes a picture (a decode check is still ffmpeg's job, in the
//! tests) and never writes a file. It understands what segswarm's own
//! outputs are (one H.264 stream, one PES packet per frame, as ffmpeg's
//! mpegts muxer writes them); it is no general demuxer.

use h264_reader::annexb::AnnexBReader;
use h264_reader::nal::sps::SeqParameterSet;
use h264_reader::nal::{Nal, RefNal, UnitType};
use h264_reader::push::NalInterest;
use mpeg2ts::es::StreamType;
use mpeg2ts::ts::{ReadTsPacket, TsPacket, TsPacketReader, TsPayload};
use std::io::Read;
use std::path::Path;

/// The ticks of PES timestamps: 90 kHz.
pub const TS_CLOCK: u64 = 90_000;

/// What one MPEG-TS segment holds, as far as its video stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsSegment {
    /// Video access units: PES packets of the video stream (one per frame).
    pub frames: usize,
    /// The first access unit holds an IDR slice (NAL unit type 5).
    pub keyframe_first: bool,
    /// Presentation time of the first access unit, in 90 kHz ticks.
    pub first_pts: Option<u64>,
    /// Picture size from the first sequence parameter set, after cropping.
    pub width: u32,
    pub height: u32,
    /// RFC 6381 codec string of the video, `avc1.PPCCLL` (profile_idc,
    /// constraint flags byte, level_idc; lower-case hex).
    pub codec: String,
    /// The encoder's tick from the SPS timing information, as seconds
    /// `(numerator, denominator)`: `2 × num_units_in_tick / time_scale`.
    /// x264 writes its time base there (one frame, at ffmpeg's frame rate).
    pub tick: Option<(u64, u64)>,
    /// The program lists an audio stream.
    pub has_audio: bool,
}

/// Why a segment could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TsError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("does not demux: {0}")]
    Demux(String),
    #[error("no H.264 video stream")]
    NoVideo,
    #[error("the video stream has no frames")]
    NoFrames,
    #[error("the first frame has no sequence parameter set")]
    NoSps,
    #[error("unreadable sequence parameter set: {0}")]
    BadSps(String),
}

impl From<mpeg2ts::Error> for TsError {
    fn from(error: mpeg2ts::Error) -> Self {
        // The crate's Display adds its own source location; the reason (or
        // the I/O error, for a file cut inside a packet) is what tells.
        match error.io_error {
            Some(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                TsError::Demux("the file ends inside a TS packet".into())
            }
            Some(io) => TsError::Io(io),
            None => TsError::Demux(error.reason),
        }
    }
}

/// Reads the segment at `path` (blocking file I/O: call it off the async
/// runtime's threads).
pub fn read(path: &Path) -> Result<TsSegment, TsError> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    // A file cut inside a packet: say so, rather than what the packet
    // parser trips on.
    if len % TsPacket::SIZE as u64 != 0 {
        return Err(TsError::Demux(format!(
            "cut short: {len} bytes is no whole number of {}-byte TS packets",
            TsPacket::SIZE
        )));
    }
    parse(std::io::BufReader::with_capacity(1 << 16, file))
}

/// Reads a transport stream to its end.
pub fn parse(reader: impl Read) -> Result<TsSegment, TsError> {
    let mut packets = TsPacketReader::new(reader);
    let mut video_pid = None;
    let mut has_audio = false;
    let mut frames = 0usize;
    let mut first_pts = None;
    // The first access unit's bytes, kept until the second one starts.
    let mut first_unit: Vec<u8> = Vec::new();
    let mut last_counter: Option<u8> = None;
    while let Some(packet) = packets.read_ts_packet()? {
        let TsPacket {
            header,
            adaptation_field,
            payload,
        } = packet;
        let payload = match payload {
            Some(TsPayload::Pmt(pmt)) => {
                for es in &pmt.es_info {
                    if es.stream_type == StreamType::H264 && video_pid.is_none() {
                        video_pid = Some(es.elementary_pid);
                    }
                    has_audio |= is_audio(es.stream_type);
                }
                continue;
            }
            Some(payload) if Some(header.pid) == video_pid => payload,
            _ => continue,
        };
        // A lost or doubled packet in the video stream is a damaged file,
        // unless the muxer said so itself.
        let counter = header.continuity_counter.as_u8();
        let discontinuity = adaptation_field.is_some_and(|a| a.discontinuity_indicator);
        if let Some(last) = last_counter {
            if !discontinuity && counter != (last + 1) % 16 {
                return Err(TsError::Demux(format!(
                    "video packet lost: continuity counter {counter} after {last}"
                )));
            }
        }
        last_counter = Some(counter);
        match payload {
            TsPayload::PesStart(pes) => {
                frames += 1;
                if frames == 1 {
                    first_pts = pes.header.pts.map(|t| t.as_u64());
                    first_unit.extend_from_slice(&pes.data);
                }
            }
            TsPayload::PesContinuation(data) => match frames {
                0 => {
                    return Err(TsError::Demux(
                        "video data before its first PES header".into(),
                    ))
                }
                1 => first_unit.extend_from_slice(&data),
                _ => {}
            },
            _ => {}
        }
    }
    if video_pid.is_none() {
        return Err(TsError::NoVideo);
    }
    if frames == 0 {
        return Err(TsError::NoFrames);
    }
    let unit = read_access_unit(&first_unit)?;
    let sps = unit.sps.ok_or(TsError::NoSps)?;
    let (width, height) = sps
        .pixel_dimensions()
        .map_err(|e| TsError::BadSps(format!("{e:?}")))?;
    let tick = sps
        .vui_parameters
        .as_ref()
        .and_then(|vui| vui.timing_info.as_ref())
        .filter(|t| t.num_units_in_tick > 0 && t.time_scale > 0)
        .map(|t| (2 * u64::from(t.num_units_in_tick), u64::from(t.time_scale)));
    Ok(TsSegment {
        frames,
        keyframe_first: unit.idr,
        first_pts,
        width,
        height,
        codec: codec_string(&sps),
        tick,
        has_audio,
    })
}

fn is_audio(stream_type: StreamType) -> bool {
    matches!(
        stream_type,
        StreamType::AdtsAac
            | StreamType::Mpeg4LoasMultiFormatFramedAudio
            | StreamType::Mpeg1Audio
            | StreamType::Mpeg2HalvedSampleRateAudio
            | StreamType::DolbyDigitalUpToSixChannelAudio
            | StreamType::DolbyDigitalPlusUpTo16ChannelAudio
    )
}

/// `avc1.PPCCLL` from a sequence parameter set.
fn codec_string(sps: &SeqParameterSet) -> String {
    format!(
        "avc1.{:02x}{:02x}{:02x}",
        u8::from(sps.profile_idc),
        u8::from(sps.constraint_flags),
        sps.level_idc
    )
}

/// What the NAL units of one access unit say.
#[derive(Default)]
pub(super) struct AccessUnit {
    pub(super) idr: bool,
    sps: Option<SeqParameterSet>,
    sps_error: Option<String>,
}

/// Splits an access unit (Annex B byte stream) into NAL units: notes an IDR
/// slice and parses the first sequence parameter set.
pub(super) fn read_access_unit(bytes: &[u8]) -> Result<AccessUnit, TsError> {
    let mut unit = AccessUnit::default();
    {
        let mut reader = AnnexBReader::accumulate(|nal: RefNal<'_>| {
            let Ok(header) = nal.header() else {
                return NalInterest::Ignore;
            };
            match header.nal_unit_type() {
                UnitType::SliceLayerWithoutPartitioningIdr => {
                    unit.idr = true;
                    NalInterest::Ignore
                }
                UnitType::SeqParameterSet if unit.sps.is_none() && unit.sps_error.is_none() => {
                    if !nal.is_complete() {
                        return NalInterest::Buffer;
                    }
                    match SeqParameterSet::from_bits(nal.rbsp_bits()) {
                        Ok(sps) => unit.sps = Some(sps),
                        Err(e) => unit.sps_error = Some(format!("{e:?}")),
                    }
                    NalInterest::Ignore
                }
                _ => NalInterest::Ignore,
            }
        });
        reader.push(bytes);
        reader.reset();
    }
    match (unit.sps.is_some(), unit.sps_error.take()) {
        (false, Some(error)) => Err(TsError::BadSps(error)),
        _ => Ok(unit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpeg2ts::es::StreamId;
    use mpeg2ts::pes::PesHeader;
    use mpeg2ts::time::Timestamp;
    use mpeg2ts::ts::payload::{Bytes, Pat, Pes, Pmt};
    use mpeg2ts::ts::{
        ContinuityCounter, EsInfo, Pid, ProgramAssociation, TransportScramblingControl, TsHeader,
        TsPacketWriter, VersionNumber, WriteTsPacket,
    };

    /// x264's sequence parameter sets (taken from real encodes of a 30 fps
    /// source: time base 1/30) for 320x240 Constrained Baseline level 1.3,
    /// 1920x1080 High level 4.0 (1088 lines coded, 8 cropped) and 854x480
    /// Main level 3.1 (864 columns coded).
    const SPS_240P_BASELINE: &[u8] = &[
        0x67, 0x42, 0xc0, 0x0d, 0xda, 0x05, 0x07, 0xec, 0x04, 0x40, 0x00, 0x00, 0x03, 0x00, 0x40,
        0x00, 0x00, 0x0f, 0x03, 0xc5, 0x0a, 0xa8,
    ];
    const SPS_1080P_HIGH: &[u8] = &[
        0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0xc0, 0x44, 0x00, 0x00,
        0x03, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0xf0, 0x3c, 0x60, 0xc6, 0x58,
    ];
    const SPS_480P_MAIN: &[u8] = &[
        0x67, 0x4d, 0x40, 0x1f, 0xec, 0xa0, 0x6c, 0x1e, 0xf3, 0x78, 0x08, 0x80, 0x00, 0x00, 0x03,
        0x00, 0x80, 0x00, 0x00, 0x1e, 0x07, 0x8c, 0x18, 0xcb,
    ];
    const AUD: &[u8] = &[0x09, 0xf0];
    /// The first bytes of an IDR slice and of a non-IDR slice (their content
    /// does not matter here).
    const IDR_SLICE: &[u8] = &[0x65, 0x88, 0x84, 0x00, 0x33, 0xff];
    const P_SLICE: &[u8] = &[0x41, 0x9a, 0x21, 0x6c, 0x41, 0x0f];

    const VIDEO_PID: u16 = 0x100;
    const AUDIO_PID: u16 = 0x101;

    /// Annex B bytes of NAL units.
    fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|nal| [&[0u8, 0, 0, 1][..], nal].concat())
            .collect()
    }

    /// A transport stream the way ffmpeg's muxer lays one out: PAT, PMT,
    /// then each access unit as one PES packet (length 0) split over TS
    /// packets, with continuity counters.
    struct Stream {
        writer: TsPacketWriter<Vec<u8>>,
        counters: std::collections::HashMap<u16, ContinuityCounter>,
    }

    impl Stream {
        fn new(with_video: bool, with_audio: bool) -> Stream {
            let mut stream = Stream {
                writer: TsPacketWriter::new(Vec::new()),
                counters: Default::default(),
            };
            let pat = Pat {
                transport_stream_id: 1,
                version_number: VersionNumber::new(),
                table: vec![ProgramAssociation {
                    program_num: 1,
                    program_map_pid: Pid::new(0x1000).unwrap(),
                }],
            };
            stream.write(0, TsPayload::Pat(pat));
            let mut es_info = Vec::new();
            if with_video {
                es_info.push(EsInfo {
                    stream_type: StreamType::H264,
                    elementary_pid: Pid::new(VIDEO_PID).unwrap(),
                    descriptors: vec![],
                });
            }
            if with_audio {
                es_info.push(EsInfo {
                    stream_type: StreamType::AdtsAac,
                    elementary_pid: Pid::new(AUDIO_PID).unwrap(),
                    descriptors: vec![],
                });
            }
            let pmt = Pmt {
                program_num: 1,
                pcr_pid: Some(Pid::new(VIDEO_PID).unwrap()),
                version_number: VersionNumber::new(),
                program_info: vec![],
                es_info,
            };
            stream.write(0x1000, TsPayload::Pmt(pmt));
            stream
        }

        fn write(&mut self, pid: u16, payload: TsPayload) {
            let counter = self.counters.entry(pid).or_default();
            let header = TsHeader {
                transport_error_indicator: false,
                transport_priority: false,
                pid: Pid::new(pid).unwrap(),
                transport_scrambling_control: TransportScramblingControl::NotScrambled,
                continuity_counter: *counter,
            };
            counter.increment();
            let packet = TsPacket {
                header,
                adaptation_field: None,
                payload: Some(payload),
            };
            self.writer.write_ts_packet(&packet).unwrap();
        }

        /// One access unit as a PES packet with this PTS.
        fn access_unit(&mut self, pid: u16, pts: u64, bytes: &[u8]) {
            let header = PesHeader {
                stream_id: StreamId::new(0xe0),
                priority: false,
                data_alignment_indicator: true,
                copyright: false,
                original_or_copy: false,
                pts: Some(Timestamp::new(pts).unwrap()),
                dts: None,
                escr: None,
            };
            // 184 bytes of payload, less the 14-byte PES header.
            let (head, mut rest) = bytes.split_at(bytes.len().min(170));
            let pes = Pes {
                header,
                pes_packet_len: 0,
                data: Bytes::new(head).unwrap(),
            };
            self.write(pid, TsPayload::PesStart(pes));
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(rest.len().min(Bytes::MAX_SIZE));
                self.write(pid, TsPayload::PesContinuation(Bytes::new(chunk).unwrap()));
                rest = tail;
            }
        }

        fn bytes(self) -> Vec<u8> {
            self.writer.into_stream()
        }
    }

    /// A stream of `frames` frames at 30 fps from 10 s, the first an IDR
    /// with its parameter set when `idr_first`.
    fn segment(frames: usize, idr_first: bool, with_audio: bool) -> Vec<u8> {
        segment_with(SPS_240P_BASELINE, frames, idr_first, with_audio)
    }

    fn segment_with(sps: &[u8], frames: usize, idr_first: bool, with_audio: bool) -> Vec<u8> {
        let mut stream = Stream::new(true, with_audio);
        // Long enough to span several TS packets.
        let padding = vec![0x5a; 400];
        for i in 0..frames {
            let nals: Vec<&[u8]> = if i == 0 && idr_first {
                vec![AUD, sps, IDR_SLICE, &padding]
            } else if i == 0 {
                vec![AUD, sps, P_SLICE, &padding]
            } else {
                vec![AUD, P_SLICE, &padding]
            };
            stream.access_unit(VIDEO_PID, 900_000 + 3000 * i as u64, &annex_b(&nals));
        }
        stream.bytes()
    }

    #[test]
    fn reads_frames_keyframe_pts_size_and_codec() {
        let info = parse(&segment(12, true, false)[..]).unwrap();
        assert_eq!(
            info,
            TsSegment {
                frames: 12,
                keyframe_first: true,
                first_pts: Some(900_000),
                width: 320,
                height: 240,
                codec: "avc1.42c00d".into(),
                tick: Some((2, 60)),
                has_audio: false,
            }
        );
    }

    #[test]
    fn reads_cropped_sizes_and_other_profiles() {
        for (sps, width, height, codec) in [
            (SPS_1080P_HIGH, 1920, 1080, "avc1.640028"),
            (SPS_480P_MAIN, 854, 480, "avc1.4d401f"),
        ] {
            let info = parse(&segment_with(sps, 2, true, false)[..]).unwrap();
            assert_eq!((info.width, info.height), (width, height));
            assert_eq!(info.codec, codec);
            assert_eq!(info.tick, Some((2, 60)));
        }
    }

    #[test]
    fn notices_a_first_frame_that_is_no_idr() {
        let info = parse(&segment(3, false, false)[..]).unwrap();
        assert!(!info.keyframe_first);
        assert_eq!(info.frames, 3);
    }

    #[test]
    fn notices_audio_in_the_program() {
        assert!(parse(&segment(2, true, true)[..]).unwrap().has_audio);
    }

    #[test]
    fn a_stream_without_video_is_refused() {
        let mut stream = Stream::new(false, true);
        stream.access_unit(AUDIO_PID, 900_000, &[0xff, 0xf1, 0x50, 0x80]);
        assert!(matches!(parse(&stream.bytes()[..]), Err(TsError::NoVideo)));
        let empty = Stream::new(true, false).bytes();
        assert!(matches!(parse(&empty[..]), Err(TsError::NoFrames)));
    }

    #[test]
    fn a_stream_cut_inside_a_packet_is_refused() {
        let bytes = segment(4, true, false);
        let cut = &bytes[..bytes.len() - 100];
        let err = parse(cut).unwrap_err();
        assert!(matches!(err, TsError::Demux(_)), "{err}");
    }

    #[test]
    fn a_lost_video_packet_is_refused() {
        let bytes = segment(4, true, false);
        // Drop the fourth TS packet (the first frame's second one).
        let damaged = [&bytes[..3 * 188], &bytes[4 * 188..]].concat();
        let err = parse(&damaged[..]).unwrap_err();
        assert!(err.to_string().contains("continuity counter"), "{err}");
    }

    #[test]
    fn a_first_frame_without_sps_is_refused() {
        let mut stream = Stream::new(true, false);
        stream.access_unit(VIDEO_PID, 900_000, &annex_b(&[AUD, IDR_SLICE]));
        assert!(matches!(parse(&stream.bytes()[..]), Err(TsError::NoSps)));
    }

    #[test]
    fn garbage_is_refused() {
        let err = parse(&[0u8; 188 * 3][..]).unwrap_err();
        assert!(matches!(err, TsError::Demux(_)), "{err}");
    }
}
