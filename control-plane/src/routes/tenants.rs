//! Tenants: the customers whose keys share a plan. Changing a tenant's plan or
//! billing anchor, or deleting the tenant, changes what every filter enforces
//! for its keys, so each bumps the version of those keys.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

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
    audit, cursor_clause, invalid_cursor, nullable, page_limit, plans, validate_name, Order, Page,
};
use crate::state::AppState;

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
pub struct UpdateTenant {
    #[serde(default)]
    pub name: Option<String>,
    /// Admin token only. Re-plans every key of the tenant at every Envoy.
    #[serde(default)]
    pub plan_id: Option<String>,
    /// Admin token only. 1 to 31; `null` returns to calendar months. Moves
    /// the quota period of every key of the tenant at every Envoy.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 31)]
    pub billing_anchor_day: Option<Option<i64>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantView {
    #[schema(example = "tnt_8sLq2ZxV0bN4mT7cK1pW")]
    pub id: String,
    pub name: String,
    pub plan_id: String,
    /// The day of the month quota periods start on; `null`: calendar months (UTC).
    #[schema(minimum = 1, maximum = 31)]
    pub billing_anchor_day: Option<u8>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    id: String,
    name: String,
    plan_id: String,
    billing_anchor_day: Option<i64>,
    created_at: String,
    updated_at: String,
}

impl From<TenantRow> for TenantView {
    fn from(row: TenantRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            plan_id: row.plan_id,
            billing_anchor_day: row.billing_anchor_day.and_then(|d| u8::try_from(d).ok()),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

const TENANT_COLUMNS: &str = "id, name, plan_id, billing_anchor_day, created_at, updated_at";

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

fn name_taken(name: &str) -> ApiError {
    ApiError::conflict(
        "tenant_name_taken",
        format!("A tenant named {name:?} already exists."),
    )
}

async fn require_plan(tx: &mut db::Tx, plan_id: &str) -> ApiResult<()> {
    match plans::find(&mut **tx, plan_id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::invalid(
            "plan_not_found",
            format!("No plan with id {plan_id:?}."),
        )),
    }
}

pub(crate) async fn find<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    id: &str,
) -> Result<Option<TenantView>, sqlx::Error> {
    let row = sqlx::query_as::<_, TenantRow>(&format!(
        "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1 AND deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(TenantView::from))
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
        (status = 409, description = "`tenant_name_taken`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = ContentTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_body`, `invalid_name`, `invalid_billing_anchor_day` or `plan_not_found`.",
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
    principal.require_admin()?;
    validate_name("name", &input.name)?;
    let billing_anchor_day = anchor_day(input.billing_anchor_day)?;
    let (mut tx, version) = db::begin_change(&state.db).await?;
    require_plan(&mut tx, &input.plan_id).await?;
    let now = db::now();
    let view = TenantView {
        id: db::new_id("tnt"),
        name: input.name,
        plan_id: input.plan_id,
        billing_anchor_day,
        created_at: now.clone(),
        updated_at: now,
    };
    let inserted = sqlx::query(
        "INSERT INTO tenants (id, name, plan_id, billing_anchor_day, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&view.id)
    .bind(&view.name)
    .bind(&view.plan_id)
    .bind(view.billing_anchor_day.map(i64::from))
    .bind(&view.created_at)
    .bind(&view.updated_at)
    .execute(&mut *tx)
    .await;
    match inserted {
        Err(e) if db::is_unique_violation(&e) => return Err(name_taken(&view.name)),
        other => {
            other?;
        }
    }
    audit::record(
        &mut tx,
        &principal.label(),
        audit::Entry {
            action: "tenant.create",
            resource_id: &view.id,
            tenant_id: Some(&view.id),
            before: None,
            after: audit::snapshot(&view)?,
        },
    )
    .await?;
    tx.commit().await?;
    state.published(version);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/tenants/{}", view.id))],
        Json(view),
    )
        .into_response())
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
    find(&state.db, &id)
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
        (status = 400, description = "`invalid_query` (unknown parameter, bad `limit`) or `invalid_cursor`.",
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
    let after = query.after.as_deref();
    if let Some(after) = after {
        find(&state.db, after).await?.ok_or_else(invalid_cursor)?;
    }
    let sql = format!(
        "SELECT {TENANT_COLUMNS} FROM tenants
         WHERE deleted_at IS NULL AND ($1 IS NULL OR plan_id = $1) {}
         ORDER BY created_at, id LIMIT $3",
        cursor_clause("tenants", 2, Order::Ascending)
    );
    let rows = sqlx::query_as::<_, TenantRow>(&sql)
        .bind(&query.plan_id)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&state.db)
        .await?;
    let rows = rows.into_iter().map(TenantView::from).collect();
    Ok(Json(Page::from_rows(rows, limit, |t| t.id.clone())))
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
        (status = 404, description = "`not_found`: no such tenant, or another tenant's.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "`tenant_name_taken`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = ContentTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_body` (including nothing to change), `invalid_name`, \
            `invalid_billing_anchor_day` or `plan_not_found`.",
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
    if !principal.sees(&id) {
        return Err(ApiError::not_found("tenant", &id));
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
    let (mut tx, version) = db::begin_change(&state.db).await?;
    let current = find(&mut *tx, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", &id))?;
    let plan_changes = input
        .plan_id
        .as_ref()
        .is_some_and(|p| *p != current.plan_id);
    let anchor_changes = new_anchor.is_some_and(|a| a != current.billing_anchor_day);
    if let Some(plan_id) = &input.plan_id {
        require_plan(&mut tx, plan_id).await?;
    }
    let before = audit::snapshot(&current)?;
    let view = TenantView {
        name: input.name.unwrap_or(current.name),
        plan_id: input.plan_id.unwrap_or(current.plan_id),
        billing_anchor_day: new_anchor.unwrap_or(current.billing_anchor_day),
        updated_at: db::now(),
        ..current
    };
    let updated = sqlx::query(
        "UPDATE tenants SET name = $1, plan_id = $2, billing_anchor_day = $3, updated_at = $4
         WHERE id = $5",
    )
    .bind(&view.name)
    .bind(&view.plan_id)
    .bind(view.billing_anchor_day.map(i64::from))
    .bind(&view.updated_at)
    .bind(&id)
    .execute(&mut *tx)
    .await;
    match updated {
        Err(e) if db::is_unique_violation(&e) => return Err(name_taken(&view.name)),
        other => {
            other?;
        }
    }
    if plan_changes || anchor_changes {
        // Every key now carries a different plan or quota period to the filters.
        sqlx::query("UPDATE api_keys SET version = $1 WHERE tenant_id = $2 AND deleted_at IS NULL")
            .bind(version)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
    }
    audit::record(
        &mut tx,
        &principal.label(),
        audit::Entry {
            action: "tenant.update",
            resource_id: &id,
            tenant_id: Some(&id),
            before,
            after: audit::snapshot(&view)?,
        },
    )
    .await?;
    tx.commit().await?;
    state.published(version);
    Ok(Json(view))
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
    principal.require_admin()?;
    let (mut tx, version) = db::begin_change(&state.db).await?;
    let Some(current) = find(&mut *tx, &id).await? else {
        return Err(ApiError::not_found("tenant", &id));
    };
    let now = db::now();
    // Deleting a tenant revokes all its keys, at every filter too.
    sqlx::query(
        "UPDATE api_keys SET deleted_at = $1, active = FALSE, updated_at = $2, version = $3
         WHERE tenant_id = $4 AND deleted_at IS NULL",
    )
    .bind(&now)
    .bind(&now)
    .bind(version)
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE tenants SET deleted_at = $1, updated_at = $2 WHERE id = $3")
        .bind(&now)
        .bind(&now)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        &principal.label(),
        audit::Entry {
            action: "tenant.delete",
            resource_id: &id,
            tenant_id: Some(&id),
            before: audit::snapshot(&current)?,
            after: None,
        },
    )
    .await?;
    tx.commit().await?;
    state.published(version);
    Ok(StatusCode::NO_CONTENT)
}
