//! The fleet as the admin sees it: `GET /v1/proxies`, every Envoy the
//! registry knows (`fleet`), and `GET /v1/propagation/{version}`, how far one
//! config version has reached. Admin only: node ids and builds describe the
//! deployment, not a tenant's business.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::auth::Principal;
use crate::docs::{AdminOnly, ServerError, Throttled, Unauthorized, PROBLEM_JSON};
use crate::error::{ApiError, ApiResult, Problem};
use crate::fleet::{Propagation, ProxyView};
use crate::receipt;
use crate::state::AppState;
use crate::store::feed;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/proxies", get(proxy_list))
        .route("/propagation/{version}", get(propagation_of))
}

/// This module's operations and tag in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(proxy_list, propagation_of),
    components(schemas(ProxyList, ProxyView, Propagation)),
    tags((name = "fleet", description = "The Envoys running Tollgate's filter, and how far each change has reached them (admin).")),
)]
pub struct Api;

/// `GET /v1/proxies`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProxyList {
    /// The latest committed config version, which lags are measured against.
    pub current_version: u64,
    /// After this long without a poll or report a proxy is `stale`.
    pub stale_after_ms: u64,
    /// After this long it is `gone`; it is dropped after `retention_ms`.
    pub gone_after_ms: u64,
    pub retention_ms: u64,
    /// By node id.
    pub items: Vec<ProxyView>,
}

/// List the proxies
///
/// Every Envoy whose leader polled or reported within the retention period,
/// with what it runs, the config version it applied, how far behind it is,
/// and whether it is `live`, `stale` or `gone`. Filters older than the
/// registry do not name themselves and are not listed.
#[utoipa::path(
    get,
    path = "/v1/proxies",
    tag = "fleet",
    responses(
        (status = 200, description = "Every proxy, by node id.", body = ProxyList),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminOnly),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = [])),
)]
async fn proxy_list(
    principal: Principal,
    State(state): State<AppState>,
) -> ApiResult<Json<ProxyList>> {
    principal.require_admin()?;
    list(&state).await.map(Json)
}

/// The registry now: the API's and the dashboard's one reading of it.
pub async fn list(state: &AppState) -> ApiResult<ProxyList> {
    let current = feed::current_version(&state.db).await?;
    let items = state.fleet.list(&state.db, current, state.now()).await?;
    let config = state.fleet.config;
    Ok(ProxyList {
        current_version: current,
        stale_after_ms: config.stale_after_ms,
        gone_after_ms: config.gone_after_ms,
        retention_ms: config.retention_ms,
        items,
    })
}

/// How far a config version has reached
///
/// How many live proxies have applied `version` (or a later one), and which
/// live or stale proxies have not. Every config-changing write answers with
/// its version in `Tollgate-Config-Version`; with
/// `?wait_for_propagation=<duration>` (at most 30s) it answers only once
/// every live proxy has applied it, with this object as `propagation`.
#[utoipa::path(
    get,
    path = "/v1/propagation/{version}",
    tag = "fleet",
    params(("version" = u64, Path, description = "A config version, as a write's `Tollgate-Config-Version`.")),
    responses(
        (status = 200, description = "How far the version has reached.", body = Propagation),
        (status = 400, description = "`invalid_path`: not a number.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminOnly),
        (status = 404, description = "`not_found`: no such version committed yet.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = [])),
)]
async fn propagation_of(
    principal: Principal,
    State(state): State<AppState>,
    Path(version): Path<String>,
) -> ApiResult<Json<Propagation>> {
    principal.require_admin()?;
    let version: u64 = version.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("A config version is a whole number; got {version:?}."),
        )
    })?;
    if version == 0 || version > feed::current_version(&state.db).await? {
        return Err(ApiError::not_found("config version", &version.to_string()));
    }
    receipt::propagation(&state, version).await.map(Json)
}
