//! Plans: named limits, a monthly quota, key and user allowances, and free-form
//! metadata (price, features) that tenants subscribe to.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use tollgate_core::config::Plan;
use tollgate_core::wire::{WireLimit, WirePlan, WireRouteCost};

use crate::auth::Principal;
use crate::change::{snapshot, Change};
use crate::db;
use crate::docs::{
    AdminOnly, ContentTooLarge, ServerError, Throttled, Unauthorized, UnsupportedMediaType,
    PROBLEM_JSON,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiQuery};
use crate::input::{check_path_prefixes, not_null, nullable, validate_name};
use crate::paging::{cursor, page_limit, Page};
use crate::state::AppState;
use crate::store::audit::Entry;
pub use crate::store::plans::PlanView;
use crate::store::{anonymous, plans, tenants};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/plans", post(plans_create).get(plans_list))
        .route(
            "/plans/{id}",
            get(plans_show).patch(plans_update).delete(plans_delete),
        )
}

/// This module's operations and tag in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(plans_create, plans_list, plans_show, plans_update, plans_delete),
    tags((name = "plans", description = "Named limits, quotas and allowances that tenants subscribe to.")),
)]
pub struct Api;

/// Largest `metadata` document, serialized.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePlan {
    /// 1 to 200 characters, unique among plans.
    #[schema(example = "Pro")]
    pub name: String,
    /// Named rate limits; a request must fit within every one. A limit with
    /// `"scope": "tenant"` is one bucket shared by all keys of a tenant.
    pub limits: Vec<WireLimit>,
    /// Cost units per quota period (a calendar month, or from the tenant's
    /// `billing_anchor_day`); absent or `null` for unlimited.
    #[serde(default)]
    pub monthly_quota: Option<u64>,
    /// What matching requests cost against the limits and the quota, first
    /// match wins; a request matching none costs 1. At most 32.
    #[serde(default)]
    pub route_costs: Vec<WireRouteCost>,
    /// Most API keys a tenant on this plan may hold; absent or `null` for unlimited.
    #[serde(default)]
    pub max_api_keys: Option<u64>,
    /// Informational allowance of users; absent or `null` for unlimited.
    #[serde(default)]
    pub max_users: Option<u64>,
    /// A JSON object of at most 16 KiB (price, features…); `{}` when absent.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Listed in the public `GET /v1/catalog`.
    #[serde(default)]
    pub public: bool,
}

/// Absent fields stay as they are; `null` clears an optional one (`metadata`
/// to `{}`) and is refused for the others. At least one field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct UpdatePlan {
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = String)]
    pub name: Option<String>,
    /// Replaces all the plan's limits.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = Vec<WireLimit>)]
    pub limits: Option<Vec<WireLimit>>,
    /// `null` makes it unlimited.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u64>)]
    pub monthly_quota: Option<Option<u64>>,
    /// Replaces all the plan's route costs; `[]` makes every request cost 1.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = Vec<WireRouteCost>)]
    pub route_costs: Option<Vec<WireRouteCost>>,
    /// `null` makes it unlimited.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u64>)]
    pub max_api_keys: Option<Option<u64>>,
    /// `null` makes it unlimited.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u64>)]
    pub max_users: Option<Option<u64>>,
    /// Replaces the whole metadata object; `null` empties it (`{}`).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Option<Value>>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = bool)]
    pub public: Option<bool>,
}

impl UpdatePlan {
    fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.limits.is_none()
            && self.monthly_quota.is_none()
            && self.route_costs.is_none()
            && self.max_api_keys.is_none()
            && self.max_users.is_none()
            && self.metadata.is_none()
            && self.public.is_none()
    }
}

fn to_i64(field: &str, value: Option<u64>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            i64::try_from(v)
                .map_err(|_| ApiError::invalid("invalid_plan", format!("{field} is too large.")))
        })
        .transpose()
}

/// Everything a plan must satisfy, checked before anything is written. The
/// limits go through the same validation every filter applies, so a plan
/// accepted here is enforceable everywhere.
fn validate(view: &PlanView) -> Result<(), ApiError> {
    validate_name("name", &view.name)?;
    Plan::try_from(&WirePlan {
        id: view.id.clone(),
        name: view.name.clone(),
        limits: view.limits.clone(),
        monthly_quota: view.monthly_quota,
        route_costs: view.route_costs.clone(),
    })
    .map_err(|e| ApiError::invalid("invalid_plan", e.0))?;
    check_path_prefixes(view.route_costs.iter().map(|r| r.path_prefix.as_deref()))
        .map_err(|e| ApiError::invalid("invalid_plan", format!("route cost: {e}")))?;
    if !view.metadata.is_object() {
        return Err(ApiError::invalid(
            "invalid_plan",
            "metadata must be a JSON object.",
        ));
    }
    if view.metadata.to_string().len() > MAX_METADATA_BYTES {
        return Err(ApiError::invalid(
            "invalid_plan",
            format!("metadata must be at most {MAX_METADATA_BYTES} bytes."),
        ));
    }
    for (field, value) in [
        ("monthly_quota", view.monthly_quota),
        ("max_api_keys", view.max_api_keys),
        ("max_users", view.max_users),
    ] {
        to_i64(field, value)?;
    }
    Ok(())
}

/// Create a plan
#[utoipa::path(
    post,
    path = "/v1/plans",
    tag = "plans",
    request_body = CreatePlan,
    responses(
        (status = 201, description = "Created.", body = PlanView,
            headers(("Location" = String, description = "`/v1/plans/{id}`"))),
        (status = 400, description = "`malformed_json`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminOnly),
        (status = 409, description = "`plan_name_taken`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = ContentTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_body`, `invalid_name` or `invalid_plan` (limits, quotas, route costs, metadata).",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = [])),
)]
async fn plans_create(
    principal: Principal,
    State(state): State<AppState>,
    ApiJson(input): ApiJson<CreatePlan>,
) -> ApiResult<Response> {
    let view = create(&state, &principal, input).await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/plans/{}", view.id))],
        Json(view),
    )
        .into_response())
}

/// Creates a plan as `principal` (the admin): the API's and the dashboard's one way.
pub async fn create(
    state: &AppState,
    principal: &Principal,
    input: CreatePlan,
) -> ApiResult<PlanView> {
    principal.require_admin()?;
    let now = state.now();
    let view = PlanView {
        id: db::new_id("plan"),
        name: input.name,
        limits: input.limits,
        monthly_quota: input.monthly_quota,
        route_costs: input.route_costs,
        max_api_keys: input.max_api_keys,
        max_users: input.max_users,
        metadata: input
            .metadata
            .unwrap_or_else(|| Value::Object(Default::default())),
        public: input.public,
        created_at: now.rfc3339(),
        updated_at: now.rfc3339(),
    };
    validate(&view)?;
    let mut change = Change::begin(state, principal.label(), now).await?;
    let version = change.version();
    plans::insert(change.tx(), &view, version).await?;
    change
        .audit(Entry {
            action: "plan.create",
            resource_id: &view.id,
            tenant_id: None,
            before: None,
            after: snapshot(&view)?,
        })
        .await?;
    change.commit().await?;
    Ok(view)
}

/// Get a plan
///
/// A tenant token may read its own tenant's plan; any other answers 404.
#[utoipa::path(
    get,
    path = "/v1/plans/{id}",
    tag = "plans",
    params(("id" = String, Path, description = "Plan id.")),
    responses(
        (status = 200, description = "The plan.", body = PlanView),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: no such plan, or not the tenant's own.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = []), ("tenant_token" = [])),
)]
async fn plans_show(
    principal: Principal,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<PlanView>> {
    if let Some(tenant_id) = principal.own_tenant() {
        // A tenant may read its own plan, and no other.
        let own = tenants::plan_of(&state.db, tenant_id).await?;
        if own.as_deref() != Some(id.as_str()) {
            return Err(ApiError::not_found("plan", &id));
        }
    }
    let row = plans::find(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("plan", &id))?;
    Ok(Json(row.view()?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListPlans {
    /// Page size, 1 to 200; default 50.
    #[serde(default)]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub after: Option<String>,
}

/// List plans
///
/// In creation order, one page at a time.
#[utoipa::path(
    get,
    path = "/v1/plans",
    tag = "plans",
    params(ListPlans),
    responses(
        (status = 200, description = "One page of plans.", body = Page<PlanView>),
        (status = 400, description = "`invalid_query` (unknown parameter, bad `limit`) or `invalid_cursor`.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminOnly),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = [])),
)]
async fn plans_list(
    principal: Principal,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListPlans>,
) -> ApiResult<Json<Page<PlanView>>> {
    principal.require_admin()?;
    let limit = page_limit(query.limit)?;
    let after = cursor(query.after.as_deref())?;
    let rows = plans::list(&state.db, after.as_ref(), limit + 1).await?;
    let views = rows
        .into_iter()
        .map(plans::PlanRow::view)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::from_rows(views, limit, |p| {
        (&p.created_at, &p.id)
    })))
}

/// Change a plan
///
/// Every Envoy enforces the change within about a second.
#[utoipa::path(
    patch,
    path = "/v1/plans/{id}",
    tag = "plans",
    params(("id" = String, Path, description = "Plan id.")),
    request_body = UpdatePlan,
    responses(
        (status = 200, description = "The plan as changed.", body = PlanView),
        (status = 400, description = "`malformed_json`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminOnly),
        (status = 404, description = "`not_found`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "`plan_name_taken`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = ContentTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_body` (including nothing to change or a `null` where none is allowed), \
            `invalid_name` or `invalid_plan`.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = [])),
)]
async fn plans_update(
    principal: Principal,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<UpdatePlan>,
) -> ApiResult<Json<PlanView>> {
    update(&state, &principal, &id, input).await.map(Json)
}

/// Changes plan `id` as `principal` (the admin).
pub async fn update(
    state: &AppState,
    principal: &Principal,
    id: &str,
    input: UpdatePlan,
) -> ApiResult<PlanView> {
    principal.require_admin()?;
    if input.is_empty() {
        return Err(ApiError::invalid(
            "invalid_body",
            "Nothing to change: send at least one of name, limits, monthly_quota, \
             route_costs, max_api_keys, max_users, metadata, public.",
        ));
    }
    let now = state.now();
    let mut change = Change::begin(state, principal.label(), now).await?;
    let version = change.version();
    let current = plans::find(&mut **change.tx(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("plan", id))?
        .view()?;
    let before = snapshot(&current)?;
    let view = PlanView {
        name: input.name.unwrap_or(current.name),
        limits: input.limits.unwrap_or(current.limits),
        monthly_quota: input.monthly_quota.unwrap_or(current.monthly_quota),
        route_costs: input.route_costs.unwrap_or(current.route_costs),
        max_api_keys: input.max_api_keys.unwrap_or(current.max_api_keys),
        max_users: input.max_users.unwrap_or(current.max_users),
        metadata: match input.metadata {
            Some(metadata) => metadata.unwrap_or_else(|| Value::Object(Default::default())),
            None => current.metadata,
        },
        public: input.public.unwrap_or(current.public),
        updated_at: now.rfc3339(),
        ..current
    };
    validate(&view)?;
    plans::update(change.tx(), &view, version).await?;
    change
        .audit(Entry {
            action: "plan.update",
            resource_id: id,
            tenant_id: None,
            before,
            after: snapshot(&view)?,
        })
        .await?;
    change.commit().await?;
    Ok(view)
}

/// Delete a plan
#[utoipa::path(
    delete,
    path = "/v1/plans/{id}",
    tag = "plans",
    params(("id" = String, Path, description = "Plan id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminOnly),
        (status = 404, description = "`not_found`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "`plan_in_use`: tenants are still on this plan; \
            `plan_in_use_by_anonymous_access`: anonymous access uses it.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = [])),
)]
async fn plans_delete(
    principal: Principal,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    delete(&state, &principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes plan `id` as `principal` (the admin); 409 while anyone uses it.
pub async fn delete(state: &AppState, principal: &Principal, id: &str) -> ApiResult<()> {
    principal.require_admin()?;
    let now = state.now();
    let mut change = Change::begin(state, principal.label(), now).await?;
    let version = change.version();
    let Some(current) = plans::find(&mut **change.tx(), id).await? else {
        return Err(ApiError::not_found("plan", id));
    };
    let tenants = plans::tenants_on(change.tx(), id).await?;
    if tenants > 0 {
        return Err(ApiError::conflict(
            "plan_in_use",
            format!(
                "{tenants} tenant{} still use this plan; move them to another plan first.",
                if tenants == 1 { "" } else { "s" }
            ),
        ));
    }
    let anonymous = anonymous::uses_plan(change.tx(), id).await?;
    if anonymous {
        return Err(ApiError::conflict(
            "plan_in_use_by_anonymous_access",
            "Anonymous access uses this plan; point PUT /v1/anonymous-access at another plan \
             (or turn it off) first.",
        ));
    }
    plans::delete(change.tx(), id, version, &now.rfc3339()).await?;
    change
        .audit(Entry {
            action: "plan.delete",
            resource_id: id,
            tenant_id: None,
            before: snapshot(&current.view()?)?,
            after: None,
        })
        .await?;
    change.commit().await?;
    Ok(())
}
