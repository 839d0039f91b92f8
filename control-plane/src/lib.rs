//! Tollgate's control plane: the source of truth for plans, tenants and keys.
//!
//! Admins drive it through `/v1` (bearer admin token), tenants serve
//! themselves through the same API with their own tokens; every Envoy's sync
//! service long-polls `/v1/sync` (bearer sync token) for what changed.
//! `app(state)` builds the whole router so tests can drive it with `oneshot`;
//! its OpenAPI document is at `/openapi.json`, Swagger UI at `/docs`,
//! Prometheus metrics at `/metrics`.

pub mod auth;
pub mod db;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod replicas;
pub mod routes;
pub mod seed;
pub mod state;
pub mod throttle;
pub mod webhooks;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;

use crate::error::ApiError;
pub use crate::state::AppState;

/// Admin bodies are small; anything larger is refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn app(state: AppState) -> Router {
    let admin = Router::new()
        .merge(routes::plans::router())
        .merge(routes::tenants::router())
        .merge(routes::keys::router())
        .merge(routes::tokens::router())
        .merge(routes::audit::router())
        .merge(routes::anonymous::router())
        .merge(routes::webhooks::router())
        .merge(routes::usage::read_router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    Router::new()
        .nest(
            "/v1",
            admin
                .merge(routes::catalog::router())
                // Outside authentication, so wrong tokens count too. Not on the
                // Envoys' endpoints (sync token): /v1/sync and /v1/usage.
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    throttle::limit_admin,
                ))
                .merge(routes::sync::router())
                .merge(routes::usage::router()),
        )
        .merge(routes::health::router())
        // GET /openapi.json and Swagger UI at /docs: public, outside /v1.
        .merge(openapi::router())
        // GET /metrics (Prometheus): outside /v1, behind --metrics-token if set.
        .merge(metrics::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(log_request))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
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

/// One structured line per request. Only the route template is logged, never
/// headers or bodies, so keys and tokens cannot leak into logs.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    // Every Envoy polls /v1/sync and reports to /v1/usage every second or so:
    // their successes are routine, at debug level; everything else is info.
    let routine =
        response.status().is_success() && matches!(route.as_str(), "/v1/sync" | "/v1/usage");
    if routine {
        tracing::debug!(%method, route, status, elapsed_ms, "request");
    } else {
        tracing::info!(%method, route, status, elapsed_ms, "request");
    }
    response
}
