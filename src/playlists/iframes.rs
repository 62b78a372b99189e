//! Trick play: each video rendition's I-frame playlist
//! (`<rendition>/iframes.m3u8`, `EXT-X-I-FRAMES-ONLY`), whose entries are
//! byte ranges of the keyframes inside the rendition's published TS
//! segments, so fast scrubbing needs no extra encode.
//!
//! The byte ranges are read from the published segment files
//! ([`crate::encode::ts_keyframes`]), which are final: every pod that
//! writes the playlist computes the same bytes, whoever encoded the
//! segments. Each segment file's PAT and PMT are named with `EXT-X-MAP`
//! (a byte range that does not start at 0 cannot be demuxed without them),
//! hence playlist version 5 (RFC 8216bis, section 7). The playlist grows
//! with the media playlist under the same rule ([`super::growth`]): never
//! fewer entries, ENDLIST once the rendition is complete and never lost.
//!
//! Only for progressive listings: an on-demand job's segments do not exist
//! when its playlists are written, so it has no I-frame playlists. Nothing
//! here decides which segments are published; the packager says how many
//! its media playlist lists.

use super::growth::{self, MediaState};
use super::{bandwidth, PackageError};
use crate::encode::mpegts::TS_CLOCK;
use crate::encode::ts_keyframes::{self, KeyframeIndex};
use crate::hls;
use crate::plan::{Plan, Segment};
use crate::storage::JobLayout;
use m3u8_rs::{ByteRange, Map, MediaPlaylist, MediaPlaylistType, MediaSegment};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Version of I-frame playlists: `EXT-X-MAP` in an I-frames-only playlist
/// needs 5.
const VERSION: usize = 5;

/// One entry of an I-frame playlist: a keyframe inside a segment file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IFrame {
    pub segment: usize,
    /// Bytes of the file's PAT and PMT, from byte 0 (the `EXT-X-MAP`).
    pub map_len: u64,
    pub offset: u64,
    pub length: u64,
    /// Seconds until the next keyframe, or the end of the segment.
    pub duration: f64,
}

/// The I-frames of one segment from its keyframe index: durations from the
/// keyframes' timestamps relative to the first one (which starts the
/// segment), the last one lasting to the segment's planned end, so the
/// entries of a segment add up to its duration exactly.
pub fn segment_iframes(index: &KeyframeIndex, segment: &Segment) -> Vec<IFrame> {
    let first_pts = index.keyframes.first().and_then(|k| k.pts);
    let starts: Vec<f64> = index
        .keyframes
        .iter()
        .map(|k| match (k.pts, first_pts) {
            (Some(pts), Some(first)) => pts.saturating_sub(first) as f64 / TS_CLOCK as f64,
            _ => 0.0,
        })
        .collect();
    index
        .keyframes
        .iter()
        .enumerate()
        .map(|(i, keyframe)| {
            let end = starts.get(i + 1).copied().unwrap_or(segment.duration);
            IFrame {
                segment: segment.index,
                map_len: index.header_len,
                offset: keyframe.offset,
                length: keyframe.length,
                duration: (end - starts[i]).max(0.0),
            }
        })
        .collect()
}

/// The text of an I-frame playlist listing `iframes`: VOD with ENDLIST
/// when `finished`, else EVENT.
pub fn iframe_playlist(iframes: &[IFrame], target_duration: u64, finished: bool) -> Vec<u8> {
    let mut last_segment = None;
    let segments = iframes
        .iter()
        .map(|iframe| {
            let uri = JobLayout::segment_uri(iframe.segment);
            // One EXT-X-MAP per segment file: it applies until the next.
            let map = (last_segment != Some(iframe.segment)).then(|| Map {
                uri: uri.clone(),
                byte_range: Some(ByteRange {
                    length: iframe.map_len,
                    offset: Some(0),
                }),
                ..Map::default()
            });
            last_segment = Some(iframe.segment);
            MediaSegment {
                uri,
                duration: iframe.duration as f32,
                byte_range: Some(ByteRange {
                    length: iframe.length,
                    offset: Some(iframe.offset),
                }),
                map,
                ..MediaSegment::empty()
            }
        })
        .collect();
    hls::set_float_precision();
    let playlist = MediaPlaylist {
        version: Some(VERSION),
        target_duration,
        segments,
        end_list: finished,
        playlist_type: Some(if finished {
            MediaPlaylistType::Vod
        } else {
            MediaPlaylistType::Event
        }),
        i_frames_only: true,
        independent_segments: true,
        ..MediaPlaylist::default()
    };
    let mut bytes = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = playlist.write_to(&mut bytes);
    bytes
}

/// A published segment: (rendition, segment index).
type SegmentKey = (String, usize);

/// The keyframes of a job's published segments, read once per pod: a
/// published segment never changes.
#[derive(Default)]
pub struct IFrameIndex {
    read: Mutex<HashMap<SegmentKey, Arc<Vec<IFrame>>>>,
}

impl IFrameIndex {
    /// The I-frames of the first `count` segments of `rendition`, up to
    /// the first that cannot be read (not visible here yet, or not a
    /// readable segment: logged). The flag says whether all `count` were.
    fn iframes(
        &self,
        plan: &Plan,
        layout: &JobLayout,
        rendition: &str,
        count: usize,
    ) -> (Vec<IFrame>, bool) {
        let mut all = Vec::new();
        for segment in plan.segments.iter().take(count) {
            let key = (rendition.to_string(), segment.index);
            let known = crate::sync::lock(&self.read).get(&key).cloned();
            let iframes = match known {
                Some(iframes) => iframes,
                None => {
                    let path = layout.segment(rendition, segment.index);
                    match ts_keyframes::read(&path) {
                        Ok(index) => {
                            let iframes = Arc::new(segment_iframes(&index, segment));
                            crate::sync::lock(&self.read).insert(key, iframes.clone());
                            iframes
                        }
                        Err(error) => {
                            if path.is_file() {
                                tracing::warn!(
                                    path = %path.display(),
                                    %error,
                                    "no keyframe index for the I-frame playlist"
                                );
                            }
                            return (all, false);
                        }
                    }
                }
            };
            all.extend(iframes.iter().copied());
        }
        (all, true)
    }
}

impl super::Packager {
    /// Brings a rendition's I-frame playlist up to its media playlist,
    /// which lists `listed`, if that grows the file.
    pub(super) fn update_iframes(
        &self,
        rendition: &str,
        listed: MediaState,
    ) -> Result<(), PackageError> {
        let path = self.layout.iframe_playlist(rendition);
        let on_file = growth::read_media_state(&path)?;
        let (iframes, all_read) =
            self.iframes
                .iframes(&self.plan, &self.layout, rendition, listed.segments);
        let wanted = MediaState {
            segments: iframes.len(),
            finished: listed.finished && all_read,
        };
        let grows = match on_file {
            Some(current) => growth::media_grows(current, wanted),
            None => wanted.segments > 0,
        };
        if grows {
            let target = hls::target_duration(self.plan.segments.iter().map(|s| s.duration));
            let bytes = iframe_playlist(&iframes, target, wanted.finished);
            growth::write_media(&self.layout, &path, &bytes, wanted)?;
        }
        Ok(())
    }

    /// The master's entry for a rendition's I-frame playlist, once the
    /// playlist exists: peak bit/s over the I-frames of the segments
    /// published so far (map bytes included: a player fetches them too).
    pub(super) fn iframe_variant(
        &self,
        rendition: &str,
        codec: &str,
    ) -> Option<hls::IFrameVariant> {
        let plan_rendition = self.plan.rendition(rendition)?;
        if !self.layout.iframe_playlist(rendition).is_file() {
            return None;
        }
        let listed = self.layout.media_playlist(rendition);
        let count = growth::read_media_state(&listed)
            .ok()
            .flatten()
            .map_or(0, |state| state.segments);
        let (iframes, _) = self
            .iframes
            .iframes(&self.plan, &self.layout, rendition, count);
        let sizes = iframes
            .iter()
            .map(|iframe| (iframe.length + iframe.map_len, iframe.duration));
        let (peak, _) = bandwidth(sizes).unwrap_or((plan_rendition.maxrate, 0));
        Some(hls::IFrameVariant {
            uri: JobLayout::iframe_playlist_uri(rendition),
            bandwidth: peak,
            codecs: codec.to_string(),
            width: plan_rendition.width,
            height: plan_rendition.height,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::ts_keyframes::Keyframe;

    fn segment(index: usize, duration: f64) -> Segment {
        Segment {
            index,
            first_frame: index * 60,
            frames: 60,
            start: index as f64 * duration,
            seek: 0.0,
            trim_from: None,
            duration,
        }
    }

    #[test]
    fn iframes_of_a_segment_add_up_to_its_duration() {
        let index = KeyframeIndex {
            header_len: 564,
            keyframes: vec![
                Keyframe {
                    offset: 564,
                    length: 188 * 40,
                    pts: Some(900_000),
                },
                Keyframe {
                    offset: 188 * 90,
                    length: 188 * 30,
                    pts: Some(900_000 + 90_000),
                },
            ],
        };
        let iframes = segment_iframes(&index, &segment(3, 2.5));
        assert_eq!(iframes.len(), 2);
        assert_eq!(iframes[0].duration, 1.0);
        assert_eq!(iframes[1].duration, 1.5);
        assert!(iframes.iter().all(|i| i.segment == 3 && i.map_len == 564));
    }

    #[test]
    fn the_playlist_maps_each_segment_file_once_and_parses() {
        let iframe = |segment, offset| IFrame {
            segment,
            map_len: 564,
            offset,
            length: 188 * 10,
            duration: 1.0,
        };
        let list = [iframe(0, 564), iframe(0, 188 * 50), iframe(1, 564)];
        let growing = iframe_playlist(&list, 2, false);
        let text = String::from_utf8_lossy(&growing);
        assert!(text.contains("#EXT-X-I-FRAMES-ONLY"), "{text}");
        assert!(text.contains("#EXT-X-VERSION:5"), "{text}");
        assert_eq!(text.matches("#EXT-X-MAP:").count(), 2, "{text}");
        assert!(!hls::has_endlist(&growing));
        let parsed = hls::parse_media_playlist(&iframe_playlist(&list, 2, true)).unwrap();
        assert!(parsed.i_frames_only && parsed.end_list);
        assert_eq!(parsed.segments.len(), 3);
        let second = &parsed.segments[1];
        assert_eq!(second.uri, "seg_00000.ts");
        let range = second.byte_range.clone().unwrap();
        assert_eq!((range.length, range.offset), (1880, Some(188 * 50)));
        let map = parsed.segments[2].map.clone().unwrap();
        assert_eq!(map.uri, "seg_00001.ts");
        assert_eq!(MediaState::of(&growing).map(|s| s.segments), Some(3));
    }
}
