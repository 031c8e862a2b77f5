#![no_main]
//! See `sluice_fuzz::fetch_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::fetch_request(data));
