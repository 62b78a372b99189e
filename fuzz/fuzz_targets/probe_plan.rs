//! Fuzz target: see fuzz/README.md and `segswarm::fuzzing::probe_and_plan`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| segswarm::fuzzing::probe_and_plan(data));
