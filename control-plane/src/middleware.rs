//! What runs around every request: the access log line, the metrics, and
//! the admin API's own rate limits. Kept apart from `metrics` and `throttle`,
//! which hold the counters and the buckets, so those stay below the state
//! that owns them.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::connect_info::{ConnectInfo, MockConnectInfo};
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::Extensions;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth;
use crate::error::ApiError;
use crate::input::is_id_shaped;
use crate::state::AppState;
use crate::throttle::ClientKey;

/// One structured line per request. Only the route template is logged, never
/// headers or bodies, so keys and tokens cannot leak into logs.
pub async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    // Every Envoy polls /v1/sync, reports to /v1/usage and health-checks
    // /healthz every second or so: their successes are routine, at debug
    // level; everything else is info.
    let routine = response.status().is_success()
        && matches!(route.as_str(), "/v1/sync" | "/v1/usage" | "/healthz");
    if routine {
        tracing::debug!(%method, route, status, elapsed_ms, "request");
    } else {
        tracing::info!(%method, route, status, elapsed_ms, "request");
    }
    response
}

/// Counts and times every request, under its route template.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.observe(
        route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The client's address: what the server accepted the connection from, or
/// what a test set with `MockConnectInfo`. `None` skips the per-address limit.
fn client_ip(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .or_else(|| {
            extensions
                .get::<MockConnectInfo<SocketAddr>>()
                .map(|MockConnectInfo(addr)| addr.ip())
        })
}

/// For the admin routes and the catalog, outside authentication, so wrong
/// and missing tokens are counted before any database work.
pub async fn limit_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let client = client_ip(request.extensions());
    let token = auth::bearer(request.headers());
    let now_ms = state.throttle.now_ms();
    if let Err(throttled) = state.throttle.check(token, client, now_ms) {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str);
        // Never the token: the address (or /64) and the route are enough to act on.
        tracing::warn!(
            limit = throttled.scope.as_str(),
            client = client.map(|ip| ClientKey::of(ip).to_string()),
            method = %request.method(),
            route,
            retry_after_s = throttled.retry_after_s(),
            "admin API caller throttled"
        );
        return Err(throttled.into());
    }
    Ok(next.run(request).await)
}

/// Around the admin routes, inside authentication: a path parameter holding
/// what no id or version holds names nothing, so it is answered 404 at once,
/// before any store reads it (PostgreSQL cannot even take a NUL).
pub async fn unknown_ids(params: RawPathParams, request: Request, next: Next) -> Response {
    if let Some((_, value)) = params.iter().find(|(_, value)| !is_id_shaped(value)) {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("Nothing has the id {value:?}."),
        )
        .into_response();
    }
    next.run(request).await
}
