//! Fuzz target: see fuzz/README.md and `segswarm::fuzzing::submit_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| segswarm::fuzzing::submit_request(data));
