//! Fuzz target: see fuzz/README.md and `segswarm::fuzzing::media_playlist`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| segswarm::fuzzing::media_playlist(data));
