//! One module per resource, each with its own `router()`, DTOs, validation,
//! handlers and OpenAPI annotations. A route module reads and writes only
//! through `store` (and `change` for writes), never through another route
//! module.
//!
//! [`RESOURCES`] is the one list of them: `app` mounts each resource's
//! routes from it and `openapi` documents each resource's operations from it,
//! so a new resource is added in one place and cannot be routed without
//! being documented.

pub mod anonymous;
pub mod audit;
pub mod catalog;
pub mod health;
pub mod keys;
pub mod leaked_keys;
pub mod plans;
pub mod proxies;
pub mod sync;
pub mod tenants;
pub mod tokens;
pub mod usage;
pub mod webhooks;

use axum::Router;

use crate::state::AppState;

/// Where a resource's routes are mounted, which decides who may call them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mount {
    /// Under `/v1`, behind the admin API's limits and the admin or a tenant token.
    Admin,
    /// Under `/v1`, behind the admin API's limits, without a token.
    Public,
    /// Under `/v1`, behind the admin API's limits, with a token the route
    /// checks itself: the admin's, or one that may do nothing else (a secret
    /// scanner's leak-report token).
    Reporters,
    /// Under `/v1`, the Envoys' own (sync token), outside the admin API's limits.
    Envoys,
    /// At the top level, outside `/v1`.
    TopLevel,
}

/// One resource as the app and the OpenAPI document both take it.
pub struct Resource {
    pub mount: Mount,
    pub router: fn() -> Router<AppState>,
    /// Its operations and tag.
    pub api: fn() -> utoipa::openapi::OpenApi,
    /// Whether each of its writes commits a config version, and so answers
    /// with a receipt (`receipt::document_writes` documents it).
    pub publishes: bool,
}

/// Every resource, in the order the document lists their tags.
pub const RESOURCES: [Resource; 14] = [
    Resource {
        mount: Mount::Admin,
        router: plans::router,
        api: <plans::Api as utoipa::OpenApi>::openapi,
        publishes: true,
    },
    Resource {
        mount: Mount::Admin,
        router: tenants::router,
        api: <tenants::Api as utoipa::OpenApi>::openapi,
        publishes: true,
    },
    Resource {
        mount: Mount::Admin,
        router: keys::router,
        api: <keys::Api as utoipa::OpenApi>::openapi,
        publishes: true,
    },
    Resource {
        mount: Mount::Reporters,
        router: leaked_keys::router,
        api: <leaked_keys::Api as utoipa::OpenApi>::openapi,
        // Its answer is a list, which carries no receipt; the Envoys learn
        // of the deactivations as of any other change.
        publishes: false,
    },
    Resource {
        mount: Mount::Admin,
        router: tokens::router,
        api: <tokens::Api as utoipa::OpenApi>::openapi,
        publishes: false,
    },
    Resource {
        mount: Mount::Admin,
        router: audit::router,
        api: <audit::Api as utoipa::OpenApi>::openapi,
        publishes: false,
    },
    Resource {
        mount: Mount::Admin,
        router: anonymous::router,
        api: <anonymous::Api as utoipa::OpenApi>::openapi,
        publishes: true,
    },
    Resource {
        mount: Mount::Admin,
        router: webhooks::router,
        api: <webhooks::Api as utoipa::OpenApi>::openapi,
        publishes: false,
    },
    Resource {
        mount: Mount::Admin,
        router: proxies::router,
        api: <proxies::Api as utoipa::OpenApi>::openapi,
        publishes: false,
    },
    Resource {
        mount: Mount::Public,
        router: catalog::router,
        api: <catalog::Api as utoipa::OpenApi>::openapi,
        publishes: false,
    },
    Resource {
        mount: Mount::Envoys,
        router: sync::router,
        api: <sync::Api as utoipa::OpenApi>::openapi,
        publishes: false,
    },
    Resource {
        mount: Mount::Envoys,
        router: usage::router,
        api: <usage::Api as utoipa::OpenApi>::openapi,
        publishes: false,
    },
    Resource {
        mount: Mount::Admin,
        router: usage::read_router,
        api: <usage::ReadApi as utoipa::OpenApi>::openapi,
        publishes: false,
    },
    Resource {
        mount: Mount::TopLevel,
        router: health::router,
        api: <health::Api as utoipa::OpenApi>::openapi,
        publishes: false,
    },
];

/// The routers of every resource mounted at `mount`, merged.
pub fn mounted(mount: Mount) -> Router<AppState> {
    RESOURCES
        .iter()
        .filter(|r| r.mount == mount)
        .fold(Router::new(), |router, r| router.merge((r.router)()))
}
