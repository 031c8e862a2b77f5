#![no_main]
//! See `sluice_fuzz::request_header`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::request_header(data));
