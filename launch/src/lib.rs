//! Starting Tollgate's processes, in one place for the three things that do
//! it: `cargo xtask up`, the benchmark (`bench/runner`) and the end-to-end
//! harness (`tests`).
//!
//! Two things they must not each get their own way: the Envoy configuration
//! rendered from `envoy/tollgate.yaml` ([`render_envoy_config`]), and a child
//! waited on until it is ready ([`Process`]), which is reported the moment it
//! exits instead, with its last output, rather than after the timeout.
//!
//! std and libc only: xtask builds this crate before it can run anything.

mod envoy;
pub mod host_calls;
pub mod postgres;
mod process;

pub use envoy::{render_envoy_config, ControlPlaneTls, EnvoyValues};
pub use process::{free_port, http_ok, stop, stop_with, Output, Process};
