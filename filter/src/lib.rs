//! Tollgate's proxy-wasm filter: thin glue between Envoy and `tollgate-core`.
//!
//! One HTTP filter and nothing beside it, so that it runs the same way in a
//! plain Envoy, as an Istio `WasmPlugin` and under Envoy Gateway:
//! - on every worker, the HTTP filter ([`http`]) gathers request facts, asks
//!   `tollgate_core::decide::decide` and applies the verdict;
//! - every root context ([`root`]) hands its VM's counts over and takes part
//!   in an election through shared data ([`lease`]); the one leader per
//!   Envoy process runs the config sync loop ([`sync`]), which writes what
//!   changed into shared data for every worker to read, and the usage
//!   reporter ([`report`]).
//!
//! Every host call is in [`host`]; the lease, sync and report loops see the
//! host only through its narrow `Host` trait and are unit-tested natively
//! against an in-memory fake.
//!
//! The shipped `filter.wasm` exports only the callbacks listed in
//! `filter/exports.txt` (`cargo xtask build` drops the SDK's others, so
//! Envoy does not call into the VM for them): overriding another trait
//! callback here means adding its export there, or Envoy never calls it.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod call;
pub mod config;
#[cfg(feature = "crash-test")]
pub mod crash_test;
#[cfg(test)]
mod fake;
pub mod headers;
pub mod host;
pub mod http;
pub mod identity;
pub mod lease;
pub mod metrics;
pub mod report;
pub mod root;
pub mod sync;

use proxy_wasm::types::LogLevel;

// `main!` exports `_start`-time registration with `#[no_mangle]`, which the
// unsafe_code lint counts; it is the SDK's documented entry point.
#[allow(unsafe_code)]
mod entry {
    use super::*;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        std::panic::set_hook(Box::new(|info| {
            host::log(LogLevel::Critical, &format!("tollgate panicked: {info}"));
        }));
        proxy_wasm::set_root_context(|_| Box::new(root::TollgateRoot::default()));
    }}
}
