#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cohort::fuzzing::ledger_entry(data));
