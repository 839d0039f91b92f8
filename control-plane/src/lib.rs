//! Tollgate's control plane: the source of truth for plans, tenants and keys.
//!
//! Admins drive it through `/v1` (bearer admin token), tenants serve
//! themselves through the same API with their own tokens; every Envoy's sync
//! service long-polls `/v1/sync` (bearer sync token) for what changed.
//! `app(state)` builds the whole router so tests can drive it with `oneshot`;
//! its OpenAPI document is at `/openapi.json`, Swagger UI at `/docs`,
//! Prometheus metrics at `/metrics`.

//!
//! The modules, from the bottom up: `clock`, `db`, `error` and `egress`
//! (where webhooks may be sent); `store`, the SQL of every resource; `state`,
//! with `metrics`, `throttle`, `fleet` (the proxy registry) and `reporters`
//! (when each Envoy last reported); `change`, the envelope every write goes
//! through; `auth`, `extract`, `input`, `paging`, `docs`, `middleware` and
//! `receipt` (the config version a write answers with), what handlers share;
//! `routes`, one module per resource; and `openapi`, the document that lists
//! them, with `constraints`, the rules of what they accept, stated in it.
//! The background work (`webhooks`, `replicas`, `retention`) and `seed` sit
//! beside `routes`; `dashboard`, the pages over the same operations, sits
//! above them. No module uses one above it.

pub mod allocation;
pub mod auth;
pub mod change;
pub mod clock;
pub mod constraints;
pub mod dashboard;
pub mod db;
pub mod docs;
pub mod egress;
pub mod error;
pub mod extract;
pub mod fleet;
pub mod input;
pub mod leak_signatures;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod outage;
pub mod paging;
pub mod receipt;
pub mod replicas;
pub mod reporters;
pub mod retention;
pub mod routes;
pub mod sealing;
pub mod seed;
pub mod shares;
pub mod state;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod webhooks;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::Router;

use crate::error::ApiError;
use crate::routes::Mount;
pub use crate::state::AppState;

/// Admin bodies are small; anything larger is refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn app(state: AppState) -> Router {
    // Receipts inside authentication: a wait is parsed only for a caller
    // who may write, and a change's version only exists once it committed.
    let admin = routes::mounted(Mount::Admin)
        .route_layer(axum::middleware::from_fn(middleware::unknown_ids))
        .route_layer(from_fn_with_state(state.clone(), receipt::receipts))
        .route_layer(from_fn_with_state(state.clone(), auth::authenticate));
    Router::new()
        .nest(
            "/v1",
            admin
                .merge(routes::mounted(Mount::Public))
                .merge(routes::mounted(Mount::Reporters))
                // Outside authentication, so wrong tokens count too. Not on the
                // Envoys' endpoints (sync token): /v1/sync and /v1/usage.
                .route_layer(from_fn_with_state(state.clone(), middleware::limit_admin))
                .merge(routes::mounted(Mount::Envoys)),
        )
        .merge(routes::mounted(Mount::TopLevel))
        // Everything above needs the database; the documents, metrics and
        // dashboard below do not, or show the error their own way.
        .route_layer(from_fn_with_state(state.clone(), outage::refuse_while_down))
        // GET /openapi.json and Swagger UI at /docs: public, outside /v1.
        .merge(openapi::router())
        // GET /metrics (Prometheus): outside /v1, behind --metrics-token if set.
        .merge(metrics::endpoint::router())
        // The dashboard and /pricing: HTML, sessions, their own headers.
        .merge(dashboard::router(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(middleware::log_request))
        .layer(from_fn_with_state(state.clone(), middleware::track))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "No such endpoint.")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "This endpoint does not support that method.",
    )
}
