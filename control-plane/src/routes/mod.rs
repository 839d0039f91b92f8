//! One module per resource, each with its own `router()`, DTOs, validation,
//! handlers and OpenAPI annotations. A route module reads and writes only
//! through `store` (and `change` for writes), never through another route
//! module.

pub mod anonymous;
pub mod audit;
pub mod catalog;
pub mod health;
pub mod keys;
pub mod plans;
pub mod sync;
pub mod tenants;
pub mod tokens;
pub mod usage;
pub mod webhooks;
