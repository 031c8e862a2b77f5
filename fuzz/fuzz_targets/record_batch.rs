#![no_main]
//! See `sluice_fuzz::record_batch`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::record_batch(data));
