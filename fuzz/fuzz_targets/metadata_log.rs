#![no_main]
//! See `sluice_fuzz::metadata_log`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::metadata_log(data));
