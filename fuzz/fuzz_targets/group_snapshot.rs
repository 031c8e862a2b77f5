#![no_main]
//! See `sluice_fuzz::group_snapshot`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::group_snapshot(data));
