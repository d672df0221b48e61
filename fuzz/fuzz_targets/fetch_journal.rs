#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blackpony::fuzz_checks::fetch_journal(data));
