//! Fuzz targets for the core: the code that reads bytes Tollgate does not
//! control (a client's key and headers, the control plane's answers, the
//! entries it left in shared data) and the validation between those bytes
//! and what the filter enforces.
//!
//! Each target is a plain function of `&[u8]` that panics when one of its
//! properties fails, so the same function runs two ways: under libFuzzer,
//! coverage-guided, from `fuzz/libfuzzer` (`cargo xtask fuzz`), and over the
//! committed corpus in `fuzz/corpus/<target>/` as an ordinary test
//! (`tests/corpus.rs`), which keeps every crash once found as a regression
//! case. Panicking is right here: this is test code, never a request's path.
//!
//! - [`key`]: the API key format;
//! - [`credential`]: where a request carries its key, and taking it off;
//! - [`json_differential`]: the hand-written JSON against serde_json;
//! - [`sync_decode`]: a sync answer's body to the config entries and back;
//! - [`config_validation`]: wire plans, keys and anonymous access into
//!   validated config, from structured input.

pub mod config_validation;
pub mod credential;
pub mod json_differential;
pub mod key;
pub mod sync_decode;

mod validated;

/// A target: panics when one of its properties fails on the input.
pub type Check = fn(&[u8]);

/// Every target, by the name of its corpus directory and libFuzzer binary.
pub const TARGETS: &[(&str, Check)] = &[
    ("key", key::check),
    ("credential", credential::check),
    ("json_differential", json_differential::check),
    ("sync_decode", sync_decode::check),
    ("config_validation", config_validation::check),
];
