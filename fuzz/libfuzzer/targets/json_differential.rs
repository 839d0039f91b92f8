//! libFuzzer's entry point for the `json_differential` target; the properties are
//! `tollgate_fuzz::json_differential`, which `cargo test -p tollgate-fuzz` replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| tollgate_fuzz::json_differential::check(input));
