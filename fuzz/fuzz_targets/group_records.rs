#![no_main]
//! See `sluice_fuzz::group_records`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::group_records(data));
