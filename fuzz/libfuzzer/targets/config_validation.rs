//! libFuzzer's entry point for the `config_validation` target; the properties are
//! `tollgate_fuzz::config_validation`, which `cargo test -p tollgate-fuzz` replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| tollgate_fuzz::config_validation::check(input));
