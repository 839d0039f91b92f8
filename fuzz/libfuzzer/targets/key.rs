//! libFuzzer's entry point for the `key` target; the properties are
//! `tollgate_fuzz::key`, which `cargo test -p tollgate-fuzz` replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| tollgate_fuzz::key::check(input));
