//! Anonymous access: routes every Envoy admits without a key, under the limits
//! of one plan counted per client address. One setting for the whole
//! installation, admin token only; off (no routes) until set.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tollgate_core::config::Anonymous;
use tollgate_core::wire::{WireAnonymous, WireScope};

use crate::auth::Principal;
use crate::db;
use crate::error::Problem;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::openapi::{
    AdminOnly, ContentTooLarge, ServerError, Throttled, Unauthorized, UnsupportedMediaType,
    PROBLEM_JSON,
};
use crate::routes::{audit, plans};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/anonymous-access",
        get(anonymous_show).put(anonymous_replace),
    )
}

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

/// Anonymous access as it is. No routes: every request needs a key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AnonymousAccessView {
    pub routes: Vec<WireScope>,
    pub plan_id: Option<String>,
    /// `null` until first set.
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
}

#[derive(sqlx::FromRow)]
struct AnonymousRow {
    routes: String,
    plan_id: Option<String>,
    updated_at: Option<String>,
    version: i64,
}

async fn fetch<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
) -> ApiResult<(AnonymousAccessView, i64)> {
    let row = sqlx::query_as::<_, AnonymousRow>(
        "SELECT routes, plan_id, updated_at, version FROM anonymous_access WHERE id = 1",
    )
    .fetch_one(executor)
    .await?;
    let view = AnonymousAccessView {
        routes: serde_json::from_str(&row.routes).map_err(ApiError::internal)?,
        plan_id: row.plan_id,
        updated_at: row.updated_at,
    };
    Ok((view, row.version))
}

/// What the filters get, and the config version that last changed it.
pub(crate) async fn read<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
) -> ApiResult<(WireAnonymous, i64)> {
    let (view, version) = fetch(executor).await?;
    Ok((
        WireAnonymous {
            routes: view.routes,
            plan_id: view.plan_id,
        },
        version,
    ))
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
    Ok(Json(fetch(&state.db).await?.0))
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
        (status = 413, response = ContentTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_body`, `invalid_anonymous_access` (routes, or routes without a plan) \
            or `plan_not_found`.", body = Problem, content_type = PROBLEM_JSON),
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
    principal.require_admin()?;
    Anonymous::try_from(&WireAnonymous {
        routes: input.routes.clone(),
        plan_id: input.plan_id.clone(),
    })
    .map_err(|e| ApiError::invalid("invalid_anonymous_access", e.0))?;
    let (mut tx, version) = db::begin_change(&state.db).await?;
    if let Some(plan_id) = &input.plan_id {
        if plans::find(&mut *tx, plan_id).await?.is_none() {
            return Err(ApiError::invalid(
                "plan_not_found",
                format!("No plan with id {plan_id:?}."),
            ));
        }
    }
    let (before, _) = fetch(&mut *tx).await?;
    let view = AnonymousAccessView {
        routes: input.routes,
        plan_id: input.plan_id,
        updated_at: Some(db::now()),
    };
    sqlx::query(
        "UPDATE anonymous_access SET routes = $1, plan_id = $2, updated_at = $3, version = $4
         WHERE id = 1",
    )
    .bind(serde_json::to_string(&view.routes).map_err(ApiError::internal)?)
    .bind(&view.plan_id)
    .bind(&view.updated_at)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &principal.label(),
        audit::Entry {
            action: "anonymous_access.update",
            resource_id: "anonymous_access",
            tenant_id: None,
            before: audit::snapshot(&before)?,
            after: audit::snapshot(&view)?,
        },
    )
    .await?;
    tx.commit().await?;
    state.published(version);
    Ok(Json(view))
}
