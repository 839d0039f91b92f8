//! Plans: named limits, a monthly quota, key and user allowances, and free-form
//! metadata (price, features) that tenants subscribe to.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_core::config::Plan;
use tollgate_core::wire::{WireLimit, WirePlan, WireRouteCost};

use crate::auth::Principal;
use crate::db;
use crate::error::Problem;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::openapi::{
    AdminOnly, ContentTooLarge, ServerError, Throttled, Unauthorized, UnsupportedMediaType,
    PROBLEM_JSON,
};
use crate::routes::{
    audit, cursor_clause, invalid_cursor, nullable, page_limit, validate_name, Order, Page,
};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/plans", post(plans_create).get(plans_list))
        .route(
            "/plans/{id}",
            get(plans_show).patch(plans_update).delete(plans_delete),
        )
}

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

/// Absent fields stay as they are; `null` clears an optional one. At least one field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePlan {
    #[serde(default)]
    pub name: Option<String>,
    /// Replaces all the plan's limits.
    #[serde(default)]
    pub limits: Option<Vec<WireLimit>>,
    /// `null` makes it unlimited.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u64>)]
    pub monthly_quota: Option<Option<u64>>,
    /// Replaces all the plan's route costs; `[]` makes every request cost 1.
    #[serde(default)]
    pub route_costs: Option<Vec<WireRouteCost>>,
    /// `null` makes it unlimited.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u64>)]
    pub max_api_keys: Option<Option<u64>>,
    /// `null` makes it unlimited.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u64>)]
    pub max_users: Option<Option<u64>>,
    /// Replaces the whole metadata object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(default)]
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

/// A plan. `null` quotas and allowances mean unlimited.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlanView {
    #[schema(example = "plan_4f9XkQ2mB7cR1tZ8aL0e")]
    pub id: String,
    pub name: String,
    pub limits: Vec<WireLimit>,
    pub monthly_quota: Option<u64>,
    /// Per-route costs, first match wins; `[]`: every request costs 1.
    pub route_costs: Vec<WireRouteCost>,
    pub max_api_keys: Option<u64>,
    pub max_users: Option<u64>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub public: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

#[derive(sqlx::FromRow)]
pub(crate) struct PlanRow {
    pub id: String,
    pub name: String,
    pub limits: String,
    pub monthly_quota: Option<i64>,
    pub route_costs: String,
    pub max_api_keys: Option<i64>,
    pub max_users: Option<i64>,
    pub metadata: String,
    /// 0 or 1: see `db` on booleans.
    pub public: i64,
    pub created_at: String,
    pub updated_at: String,
}

fn to_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

impl PlanRow {
    pub(crate) fn wire(&self) -> Result<WirePlan, ApiError> {
        Ok(WirePlan {
            id: self.id.clone(),
            name: self.name.clone(),
            limits: serde_json::from_str(&self.limits).map_err(ApiError::internal)?,
            monthly_quota: to_u64(self.monthly_quota),
            route_costs: serde_json::from_str(&self.route_costs).map_err(ApiError::internal)?,
        })
    }

    pub(crate) fn view(self) -> Result<PlanView, ApiError> {
        Ok(PlanView {
            limits: serde_json::from_str(&self.limits).map_err(ApiError::internal)?,
            metadata: serde_json::from_str(&self.metadata).map_err(ApiError::internal)?,
            monthly_quota: to_u64(self.monthly_quota),
            route_costs: serde_json::from_str(&self.route_costs).map_err(ApiError::internal)?,
            max_api_keys: to_u64(self.max_api_keys),
            max_users: to_u64(self.max_users),
            public: self.public != 0,
            id: self.id,
            name: self.name,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

pub(crate) const PLAN_COLUMNS: &str =
    "id, name, limits, monthly_quota, route_costs, max_api_keys, \
     max_users, metadata, CAST(public AS INTEGER) AS public, created_at, updated_at";

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

fn name_taken(name: &str) -> ApiError {
    ApiError::conflict(
        "plan_name_taken",
        format!("A plan named {name:?} already exists."),
    )
}

/// Inserts a validated plan inside a change transaction.
pub(crate) async fn insert(tx: &mut db::Tx, view: &PlanView, version: i64) -> ApiResult<()> {
    let inserted = sqlx::query(
        "INSERT INTO plans (id, name, limits, monthly_quota, max_api_keys, max_users, metadata,
                            public, created_at, updated_at, version, route_costs)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&view.id)
    .bind(&view.name)
    .bind(serde_json::to_string(&view.limits).map_err(ApiError::internal)?)
    .bind(to_i64("monthly_quota", view.monthly_quota)?)
    .bind(to_i64("max_api_keys", view.max_api_keys)?)
    .bind(to_i64("max_users", view.max_users)?)
    .bind(view.metadata.to_string())
    .bind(view.public)
    .bind(&view.created_at)
    .bind(&view.updated_at)
    .bind(version)
    .bind(serde_json::to_string(&view.route_costs).map_err(ApiError::internal)?)
    .execute(&mut **tx)
    .await;
    match inserted {
        Err(e) if db::is_unique_violation(&e) => Err(name_taken(&view.name)),
        other => other.map(|_| ()).map_err(ApiError::from),
    }
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
    principal.require_admin()?;
    let now = db::now();
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
        created_at: now.clone(),
        updated_at: now,
    };
    validate(&view)?;
    let (mut tx, version) = db::begin_change(&state.db).await?;
    insert(&mut tx, &view, version).await?;
    audit::record(
        &mut tx,
        &principal.label(),
        audit::Entry {
            action: "plan.create",
            resource_id: &view.id,
            tenant_id: None,
            before: None,
            after: audit::snapshot(&view)?,
        },
    )
    .await?;
    tx.commit().await?;
    state.published(version);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/plans/{}", view.id))],
        Json(view),
    )
        .into_response())
}

pub(crate) async fn find<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    id: &str,
) -> Result<Option<PlanRow>, sqlx::Error> {
    sqlx::query_as::<_, PlanRow>(&format!(
        "SELECT {PLAN_COLUMNS} FROM plans WHERE id = $1 AND deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await
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
    if let Principal::Tenant(tenant_id) = &principal {
        // A tenant may read its own plan, and no other.
        let own: Option<String> = sqlx::query_scalar("SELECT plan_id FROM tenants WHERE id = $1")
            .bind(tenant_id)
            .fetch_optional(&state.db)
            .await?;
        if own.as_deref() != Some(id.as_str()) {
            return Err(ApiError::not_found("plan", &id));
        }
    }
    let row = find(&state.db, &id)
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
    let after = query.after.as_deref();
    if let Some(after) = after {
        find(&state.db, after).await?.ok_or_else(invalid_cursor)?;
    }
    let sql = format!(
        "SELECT {PLAN_COLUMNS} FROM plans WHERE deleted_at IS NULL {}
         ORDER BY created_at, id LIMIT $2",
        cursor_clause("plans", 1, Order::Ascending)
    );
    let rows = sqlx::query_as::<_, PlanRow>(&sql)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&state.db)
        .await?;
    let views = rows
        .into_iter()
        .map(PlanRow::view)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::from_rows(views, limit, |p| p.id.clone())))
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
        (status = 422, description = "`invalid_body` (including nothing to change), `invalid_name` or `invalid_plan`.",
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
    principal.require_admin()?;
    if input.is_empty() {
        return Err(ApiError::invalid(
            "invalid_body",
            "Nothing to change: send at least one of name, limits, monthly_quota, \
             route_costs, max_api_keys, max_users, metadata, public.",
        ));
    }
    let (mut tx, version) = db::begin_change(&state.db).await?;
    let current = find(&mut *tx, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("plan", &id))?
        .view()?;
    let before = audit::snapshot(&current)?;
    let view = PlanView {
        name: input.name.unwrap_or(current.name),
        limits: input.limits.unwrap_or(current.limits),
        monthly_quota: input.monthly_quota.unwrap_or(current.monthly_quota),
        route_costs: input.route_costs.unwrap_or(current.route_costs),
        max_api_keys: input.max_api_keys.unwrap_or(current.max_api_keys),
        max_users: input.max_users.unwrap_or(current.max_users),
        metadata: input.metadata.unwrap_or(current.metadata),
        public: input.public.unwrap_or(current.public),
        updated_at: db::now(),
        ..current
    };
    validate(&view)?;
    let updated = sqlx::query(
        "UPDATE plans SET name = $1, limits = $2, monthly_quota = $3, max_api_keys = $4, max_users = $5,
                          metadata = $6, public = $7, updated_at = $8, version = $9, route_costs = $10
         WHERE id = $11",
    )
    .bind(&view.name)
    .bind(serde_json::to_string(&view.limits).map_err(ApiError::internal)?)
    .bind(to_i64("monthly_quota", view.monthly_quota)?)
    .bind(to_i64("max_api_keys", view.max_api_keys)?)
    .bind(to_i64("max_users", view.max_users)?)
    .bind(view.metadata.to_string())
    .bind(view.public)
    .bind(&view.updated_at)
    .bind(version)
    .bind(serde_json::to_string(&view.route_costs).map_err(ApiError::internal)?)
    .bind(&id)
    .execute(&mut *tx)
    .await;
    match updated {
        Err(e) if db::is_unique_violation(&e) => return Err(name_taken(&view.name)),
        other => {
            other?;
        }
    }
    audit::record(
        &mut tx,
        &principal.label(),
        audit::Entry {
            action: "plan.update",
            resource_id: &id,
            tenant_id: None,
            before,
            after: audit::snapshot(&view)?,
        },
    )
    .await?;
    tx.commit().await?;
    state.published(version);
    Ok(Json(view))
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
    principal.require_admin()?;
    let (mut tx, version) = db::begin_change(&state.db).await?;
    let Some(current) = find(&mut *tx, &id).await? else {
        return Err(ApiError::not_found("plan", &id));
    };
    let tenants: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM tenants WHERE plan_id = $1 AND deleted_at IS NULL",
    )
    .bind(&id)
    .fetch_one(&mut *tx)
    .await?;
    if tenants > 0 {
        return Err(ApiError::conflict(
            "plan_in_use",
            format!(
                "{tenants} tenant{} still use this plan; move them to another plan first.",
                if tenants == 1 { "" } else { "s" }
            ),
        ));
    }
    let anonymous: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM anonymous_access WHERE id = 1 AND plan_id = $1")
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
    if anonymous > 0 {
        return Err(ApiError::conflict(
            "plan_in_use_by_anonymous_access",
            "Anonymous access uses this plan; point PUT /v1/anonymous-access at another plan \
             (or turn it off) first.",
        ));
    }
    let now = db::now();
    sqlx::query("UPDATE plans SET deleted_at = $1, updated_at = $2, version = $3 WHERE id = $4")
        .bind(&now)
        .bind(&now)
        .bind(version)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        &principal.label(),
        audit::Entry {
            action: "plan.delete",
            resource_id: &id,
            tenant_id: None,
            before: audit::snapshot(&current.view()?)?,
            after: None,
        },
    )
    .await?;
    tx.commit().await?;
    state.published(version);
    Ok(StatusCode::NO_CONTENT)
}
