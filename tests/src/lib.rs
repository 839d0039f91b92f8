//! End-to-end harness for Tollgate: runs real Envoy, the real control plane and
//! the demo upstream on loopback; and headless Chromium for the dashboard's
//! pages (`browser`).
//!
//! The Envoy configuration users copy is rendered by `tollgate-launch`, which
//! `cargo xtask up` and the benchmark use too, so the config the tests run is
//! the config users run; it is re-exported here for the tests that render it.

pub mod browser;
pub mod fault_proxy;
pub mod harness;
pub mod istio;
pub mod registry;
pub mod tls;

pub use tollgate_launch::{render_envoy_config, ControlPlaneTls, EnvoyValues};
