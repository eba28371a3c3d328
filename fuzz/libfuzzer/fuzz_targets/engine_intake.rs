#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| difftracker_fuzz::intake::run(data));
