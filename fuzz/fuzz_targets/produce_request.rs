#![no_main]
//! See `sluice_fuzz::produce_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::produce_request(data));
