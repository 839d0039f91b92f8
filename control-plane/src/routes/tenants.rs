//! Tenants: the customers whose keys share a plan. Changing a tenant's plan or
//! billing anchor, or deleting the tenant, changes what every filter enforces
//! for its keys, so each bumps the version of those keys.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::auth::Principal;
use crate::change::{snapshot, Change};
use crate::db;
use crate::docs::{
    AdminOnly, ContentTooLarge, ServerError, Throttled, Unauthorized, UnsupportedMediaType,
    PROBLEM_JSON,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiQuery};
use crate::input::{not_null, nullable, query_text, validate_name};
use crate::paging::{cursor, page_limit, Page};
use crate::state::AppState;
use crate::store::audit::Entry;
pub use crate::store::tenants::TenantView;
use crate::store::{keys, plans, sessions, tenants};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tenants", post(tenants_create).get(tenants_list))
        .route(
            "/tenants/{id}",
            get(tenants_show)
                .patch(tenants_update)
                .delete(tenants_delete),
        )
}

/// This module's operations and tag in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(tenants_create, tenants_list, tenants_show, tenants_update, tenants_delete),
    tags((name = "tenants", description = "The customers whose keys share a plan.")),
)]
pub struct Api;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1 to 200 characters, unique among tenants.
    #[schema(example = "acme")]
    pub name: String,
    /// An existing plan.
    pub plan_id: String,
    /// Quota periods start on this day of the month (1 to 31, UTC midnight;
    /// the month's last day when it is shorter); absent or `null`: calendar months.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31)]
    pub billing_anchor_day: Option<i64>,
}

/// Absent fields stay as they are; at least one of them.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct UpdateTenant {
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = String)]
    pub name: Option<String>,
    /// Admin token only. Re-plans every key of the tenant at every Envoy.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = String)]
    pub plan_id: Option<String>,
    /// Admin token only. 1 to 31; `null` returns to calendar months. Moves
    /// the quota period of every key of the tenant at every Envoy.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 31)]
    pub billing_anchor_day: Option<Option<i64>>,
}

/// A billing anchor day as sent: 1 to 31.
fn anchor_day(day: Option<i64>) -> ApiResult<Option<u8>> {
    day.map(|d| {
        u8::try_from(d)
            .ok()
            .filter(|d| tollgate_core::period::valid_anchor_day(*d))
            .ok_or_else(|| {
                ApiError::invalid(
                    "invalid_billing_anchor_day",
                    "billing_anchor_day must be a day of the month, 1 to 31, or null for calendar months.",
                )
            })
    })
    .transpose()
}

/// Create a tenant
#[utoipa::path(
    post,
    path = "/v1/tenants",
    tag = "tenants",
    request_body = CreateTenant,
    responses(
        (status = 201, description = "Created.", body = TenantView,
            headers(("Location" = String, description = "`/v1/tenants/{id}`"))),
        (status = 400, description = "`malformed_json`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminOnly),
        (status = 404, description = "`plan_not_found`: no such plan.", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "`tenant_name_taken`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = ContentTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_body`, `invalid_name` or `invalid_billing_anchor_day`.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = [])),
)]
async fn tenants_create(
    principal: Principal,
    State(state): State<AppState>,
    ApiJson(input): ApiJson<CreateTenant>,
) -> ApiResult<Response> {
    let view = create(&state, &principal, input).await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/tenants/{}", view.id))],
        Json(view),
    )
        .into_response())
}

/// Creates a tenant as `principal` (the admin): the API's and the dashboard's one way.
pub async fn create(
    state: &AppState,
    principal: &Principal,
    input: CreateTenant,
) -> ApiResult<TenantView> {
    principal.require_admin()?;
    validate_name("name", &input.name)?;
    let billing_anchor_day = anchor_day(input.billing_anchor_day)?;
    let now = state.now();
    let mut change = Change::begin(state, principal.label(), now).await?;
    plans::require(change.tx(), &input.plan_id).await?;
    let view = TenantView {
        id: db::new_id("tnt"),
        name: input.name,
        plan_id: input.plan_id,
        billing_anchor_day,
        created_at: now.rfc3339(),
        updated_at: now.rfc3339(),
    };
    tenants::insert(change.tx(), &view).await?;
    change
        .audit(Entry {
            action: "tenant.create",
            resource_id: &view.id,
            tenant_id: Some(&view.id),
            before: None,
            after: snapshot(&view)?,
        })
        .await?;
    change.commit().await?;
    Ok(view)
}

/// Get a tenant
///
/// A tenant token sees its own tenant only.
#[utoipa::path(
    get,
    path = "/v1/tenants/{id}",
    tag = "tenants",
    params(("id" = String, Path, description = "Tenant id.")),
    responses(
        (status = 200, description = "The tenant.", body = TenantView),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: no such tenant, or another tenant's.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = []), ("tenant_token" = [])),
)]
async fn tenants_show(
    principal: Principal,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<TenantView>> {
    if !principal.sees(&id) {
        return Err(ApiError::not_found("tenant", &id));
    }
    tenants::find(&state.db, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("tenant", &id))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListTenants {
    /// Page size, 1 to 200; default 50.
    #[serde(default)]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub after: Option<String>,
    /// Only the tenants on this plan.
    #[serde(default)]
    pub plan_id: Option<String>,
}

/// List tenants
///
/// In creation order, one page at a time.
#[utoipa::path(
    get,
    path = "/v1/tenants",
    tag = "tenants",
    params(ListTenants),
    responses(
        (status = 200, description = "One page of tenants.", body = Page<TenantView>),
        (status = 400, description = "`invalid_query` (unknown parameter, bad `limit`, a control \
            character in `plan_id`) or `invalid_cursor`.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminOnly),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = [])),
)]
async fn tenants_list(
    principal: Principal,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListTenants>,
) -> ApiResult<Json<Page<TenantView>>> {
    principal.require_admin()?;
    let limit = page_limit(query.limit)?;
    let after = cursor(query.after.as_deref())?;
    let plan_id = query_text("plan_id", query.plan_id.as_deref())?;
    let rows = tenants::list(&state.db, plan_id, after.as_ref(), limit + 1).await?;
    Ok(Json(Page::from_rows(rows, limit, |t| {
        (&t.created_at, &t.id)
    })))
}

/// Change a tenant
///
/// A tenant token may rename its own tenant; changing `plan_id` or
/// `billing_anchor_day` needs the admin token.
#[utoipa::path(
    patch,
    path = "/v1/tenants/{id}",
    tag = "tenants",
    params(("id" = String, Path, description = "Tenant id.")),
    request_body = UpdateTenant,
    responses(
        (status = 200, description = "The tenant as changed.", body = TenantView),
        (status = 400, description = "`malformed_json`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: a tenant token tried to change `plan_id` or `billing_anchor_day`.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "`not_found`: no such tenant, or another tenant's; \
            `plan_not_found`: no such plan.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "`tenant_name_taken`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = ContentTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_body` (including nothing to change or a `null`), `invalid_name` \
            or `invalid_billing_anchor_day`.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = []), ("tenant_token" = [])),
)]
async fn tenants_update(
    principal: Principal,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<UpdateTenant>,
) -> ApiResult<Json<TenantView>> {
    update(&state, &principal, &id, input).await.map(Json)
}

/// Changes tenant `id` as `principal`: a tenant may rename itself, only the
/// admin may change its plan or billing anchor.
pub async fn update(
    state: &AppState,
    principal: &Principal,
    id: &str,
    input: UpdateTenant,
) -> ApiResult<TenantView> {
    if !principal.sees(id) {
        return Err(ApiError::not_found("tenant", id));
    }
    if (input.plan_id.is_some() || input.billing_anchor_day.is_some()) && !principal.is_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Changing the plan or the billing anchor needs the admin token.",
        ));
    }
    if input.name.is_none() && input.plan_id.is_none() && input.billing_anchor_day.is_none() {
        return Err(ApiError::invalid(
            "invalid_body",
            "Nothing to change: send any of \"name\", \"plan_id\", \"billing_anchor_day\".",
        ));
    }
    if let Some(name) = &input.name {
        validate_name("name", name)?;
    }
    let new_anchor = input.billing_anchor_day.map(anchor_day).transpose()?;
    let now = state.now();
    let mut change = Change::begin(state, principal.label(), now).await?;
    let version = change.version();
    let current = tenants::find(&mut **change.tx(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", id))?;
    let plan_changes = input
        .plan_id
        .as_ref()
        .is_some_and(|p| *p != current.plan_id);
    let anchor_changes = new_anchor.is_some_and(|a| a != current.billing_anchor_day);
    if let Some(plan_id) = &input.plan_id {
        plans::require(change.tx(), plan_id).await?;
    }
    let before = snapshot(&current)?;
    let view = TenantView {
        name: input.name.unwrap_or(current.name),
        plan_id: input.plan_id.unwrap_or(current.plan_id),
        billing_anchor_day: new_anchor.unwrap_or(current.billing_anchor_day),
        updated_at: now.rfc3339(),
        ..current
    };
    tenants::update(change.tx(), &view).await?;
    if plan_changes || anchor_changes {
        // Every key now carries a different plan or quota period to the filters.
        keys::republish_of_tenant(change.tx(), id, version).await?;
    }
    change
        .audit(Entry {
            action: "tenant.update",
            resource_id: id,
            tenant_id: Some(id),
            before,
            after: snapshot(&view)?,
        })
        .await?;
    change.commit().await?;
    Ok(view)
}

/// Delete a tenant
///
/// Revokes all its keys at every Envoy.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{id}",
    tag = "tenants",
    params(("id" = String, Path, description = "Tenant id.")),
    responses(
        (status = 204, description = "Deleted, with all its keys."),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminOnly),
        (status = 404, description = "`not_found`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = [])),
)]
async fn tenants_delete(
    principal: Principal,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    delete(&state, &principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes tenant `id` as `principal` (the admin), revoking all its keys.
pub async fn delete(state: &AppState, principal: &Principal, id: &str) -> ApiResult<()> {
    principal.require_admin()?;
    let now = state.now();
    let mut change = Change::begin(state, principal.label(), now).await?;
    let version = change.version();
    let Some(current) = tenants::find(&mut **change.tx(), id).await? else {
        return Err(ApiError::not_found("tenant", id));
    };
    // Deleting a tenant revokes all its keys, at every filter too.
    keys::delete_of_tenant(change.tx(), id, version, &now.rfc3339()).await?;
    // Its dashboard sessions end with it.
    sessions::delete_of_tenant(change.tx(), id).await?;
    tenants::delete(change.tx(), id, &now.rfc3339()).await?;
    change
        .audit(Entry {
            action: "tenant.delete",
            resource_id: id,
            tenant_id: Some(id),
            before: snapshot(&current)?,
            after: None,
        })
        .await?;
    change.commit().await?;
    Ok(())
}
