#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cohort::fuzzing::setup_ceremony(data));
