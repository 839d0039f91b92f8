//! The admin API and the sync feed, driven through `app(state).oneshot(..)`:
//! one test binary, one module per resource.
//!
//! Every test runs twice, on a private in-memory SQLite database and on a
//! fresh database of the PostgreSQL server named by `TOLLGATE_TEST_POSTGRES_URL`
//! (`cargo xtask test` starts one; `cargo xtask postgres` starts one by hand).
//!
//! The modules share one binary rather than being a test file each: every
//! test binary links the whole control plane, and on CI's two cores each
//! more binary costs link time.

#[macro_use]
#[path = "../common/mod.rs"]
pub mod common;

mod audit;
mod dashboard;
mod errors;
mod fleet;
mod health;
mod ingest;
mod isolation;
mod keys;
mod leaked_keys;
mod plans;
mod retention;
mod sync;
mod tenants;
mod tokens;
mod usage;
