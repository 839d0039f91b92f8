//! Tollgate's proxy-wasm filter: thin glue between Envoy and `tollgate-core`.
//!
//! One `.wasm`, two roles chosen by plugin configuration:
//! - on every worker, the HTTP filter ([`http`]) gathers request facts, asks
//!   `tollgate_core::decide::decide` and applies the verdict;
//! - in one singleton Wasm service per Envoy process ([`sync`]), the config
//!   sync loop long-polls the control plane and writes what changed into
//!   shared data, which the workers read.
//!
//! All host access goes through `proxy_wasm::hostcalls`, whose errors we
//! handle, never through the SDK's trait defaults, which unwrap, except the
//! per-request header calls, which [`headers`] makes itself.
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
pub mod headers;
pub mod host;
pub mod http;
pub mod metrics;
pub mod root;
pub mod sync;
pub mod usage;

use proxy_wasm::types::LogLevel;

// `main!` exports `_start`-time registration with `#[no_mangle]`, which the
// unsafe_code lint counts; it is the SDK's documented entry point.
#[allow(unsafe_code)]
mod entry {
    use super::*;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        std::panic::set_hook(Box::new(|info| {
            let _ = proxy_wasm::hostcalls::log(LogLevel::Critical, &format!("tollgate panicked: {info}"));
        }));
        proxy_wasm::set_root_context(|_| Box::new(root::TollgateRoot::default()));
    }}
}
