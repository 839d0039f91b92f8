//! Anonymous access: routes every Envoy admits without a key, under the limits
//! of one plan counted per client address. One setting for the whole
//! installation, admin token only; off (no routes) until set.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tollgate_core::config::Anonymous;
use tollgate_core::wire::{WireAnonymous, WireScope};

use crate::auth::Principal;
use crate::change::{snapshot, Change};
use crate::docs::{
    AdminOnly, ContentTooLarge, ServerError, Throttled, Unauthorized, UnsupportedMediaType,
    PROBLEM_JSON,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::ApiJson;
use crate::input::check_path_prefixes;
use crate::state::AppState;
use crate::store::anonymous;
pub use crate::store::anonymous::AnonymousAccessView;
use crate::store::audit::Entry;
use crate::store::plans;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/anonymous-access",
        get(anonymous_show).put(anonymous_replace),
    )
}

/// This module's operations and tag in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(anonymous_show, anonymous_replace),
    tags((name = "anonymous", description = "Routes the Envoys admit without a key, under one plan's limits per client address.")),
)]
pub struct Api;

/// The whole setting; `PUT` replaces it. `{"routes": [], "plan_id": null}` turns it off.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutAnonymousAccess {
    /// Requests without a key on one of these (any of `methods` on paths
    /// under `path_prefix`) are admitted; at most 32. `[]`: none are.
    pub routes: Vec<WireScope>,
    /// An existing plan whose limits apply per client address; required
    /// when `routes` is not empty.
    #[serde(default)]
    #[schema(example = "plan_4f9XkQ2mB7cR1tZ8aL0e")]
    pub plan_id: Option<String>,
}

/// Get anonymous access
#[utoipa::path(
    get,
    path = "/v1/anonymous-access",
    tag = "anonymous",
    responses(
        (status = 200, description = "Anonymous access as it is.", body = AnonymousAccessView),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminOnly),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = [])),
)]
async fn anonymous_show(
    principal: Principal,
    State(state): State<AppState>,
) -> ApiResult<Json<AnonymousAccessView>> {
    principal.require_admin()?;
    Ok(Json(anonymous::fetch(&state.db).await?.0))
}

/// Set anonymous access
///
/// Replaces the whole setting; every Envoy applies it within about a second.
#[utoipa::path(
    put,
    path = "/v1/anonymous-access",
    tag = "anonymous",
    request_body = PutAnonymousAccess,
    responses(
        (status = 200, description = "Anonymous access as set.", body = AnonymousAccessView),
        (status = 400, description = "`malformed_json`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminOnly),
        (status = 404, description = "`plan_not_found`: no such plan.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = ContentTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_body` or `invalid_anonymous_access` (routes, or routes without a plan).",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = [])),
)]
async fn anonymous_replace(
    principal: Principal,
    State(state): State<AppState>,
    ApiJson(input): ApiJson<PutAnonymousAccess>,
) -> ApiResult<Json<AnonymousAccessView>> {
    replace(&state, &principal, input).await.map(Json)
}

/// Replaces anonymous access as `principal` (the admin): the API's and the
/// dashboard's one way.
pub async fn replace(
    state: &AppState,
    principal: &Principal,
    input: PutAnonymousAccess,
) -> ApiResult<AnonymousAccessView> {
    principal.require_admin()?;
    Anonymous::try_from(&WireAnonymous {
        routes: input.routes.clone(),
        plan_id: input.plan_id.clone(),
    })
    .map_err(|e| ApiError::invalid("invalid_anonymous_access", e.0))?;
    check_path_prefixes(input.routes.iter().map(|r| r.path_prefix.as_deref()))
        .map_err(|e| ApiError::invalid("invalid_anonymous_access", format!("route: {e}")))?;
    let now = state.now();
    let mut change = Change::begin(state, principal.label(), now).await?;
    let version = change.version();
    if let Some(plan_id) = &input.plan_id {
        plans::require(change.tx(), plan_id).await?;
    }
    let (before, _) = anonymous::fetch(&mut **change.tx()).await?;
    let view = AnonymousAccessView {
        routes: input.routes,
        plan_id: input.plan_id,
        updated_at: Some(now.rfc3339()),
    };
    anonymous::replace(change.tx(), &view, version).await?;
    change
        .audit(Entry {
            action: "anonymous_access.update",
            resource_id: "anonymous_access",
            tenant_id: None,
            before: snapshot(&before)?,
            after: snapshot(&view)?,
        })
        .await?;
    change.commit().await?;
    Ok(view)
}
