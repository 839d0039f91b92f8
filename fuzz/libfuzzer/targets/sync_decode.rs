//! libFuzzer's entry point for the `sync_decode` target; the properties are
//! `tollgate_fuzz::sync_decode`, which `cargo test -p tollgate-fuzz` replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| tollgate_fuzz::sync_decode::check(input));
