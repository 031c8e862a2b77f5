#![no_main]
//! See `sluice_fuzz::dispatch_stream` and `sluice_fuzz::dispatch`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::dispatch_stream(data));
