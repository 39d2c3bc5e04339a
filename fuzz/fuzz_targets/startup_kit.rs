#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cohort::fuzzing::startup_kit(data));
