//! libFuzzer's entry point for the `credential` target; the properties are
//! `tollgate_fuzz::credential`, which `cargo test -p tollgate-fuzz` replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| tollgate_fuzz::credential::check(input));
