//! Tollgate's pure core, shared by the proxy-wasm filter and the control plane.
//!
//! Everything here is plain Rust with no host calls and no clock of its own, so
//! the same code is unit-tested natively, on wasm32, and runs inside Envoy:
//! - [`access`]: key scopes and client-IP allow-lists;
//! - [`credential`]: where a request carries its key, and taking it off before upstream;
//! - [`key`]: the API key format (`tg_<body>_<checksum>`) and the one hash both sides use;
//! - [`wire`]: the JSON the control plane sends to the filter, defined once;
//! - [`json`]: that JSON read and written without serde, for filter.wasm's size;
//! - [`config`]: wire types validated into the config the filter enforces;
//! - [`bucket`]: token buckets with time as an argument;
//! - [`fleet`]: this Envoy's shares of fleet-wide limits, and the rule that applies them;
//! - [`cache`]: a VM's memo of parsed config, valid for one applied version;
//! - [`store`]: the narrow shared-data trait (and an in-memory fake with CAS conflicts);
//! - [`layout`]: how config and bucket state are laid out in shared data;
//! - [`period`]: monthly quota periods, calendar or from a billing anchor day;
//! - [`decide`]: `decide(facts, store, now) -> Decision`, the whole per-request verdict;
//! - [`response`]: turning a decision into headers and problem+json bodies.

// No panics where requests are decided; tests may.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod access;
pub mod bucket;
pub mod cache;
pub mod config;
pub mod credential;
pub mod decide;
pub mod fleet;
pub mod json;
pub mod key;
pub mod layout;
pub mod period;
pub mod response;
pub mod store;
pub mod usage;
pub mod wire;

#[cfg(any(test, feature = "test-util"))]
pub mod fixtures;
#[cfg(test)]
pub(crate) mod testing;
