//! Tenants: the customers whose keys share a plan.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::routes::{plans, validate_name};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tenants", post(tenants_create))
        .route("/tenants/{id}", get(tenants_show))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub name: String,
    pub plan_id: String,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    pub plan_id: String,
    pub created_at: String,
    pub updated_at: String,
}

async fn tenants_create(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<CreateTenant>,
) -> ApiResult<Response> {
    validate_name("name", &input.name)?;
    if plans::find(&state.db, &input.plan_id).await?.is_none() {
        return Err(ApiError::invalid(
            "plan_not_found",
            format!("No plan with id {:?}.", input.plan_id),
        ));
    }
    let id = db::new_id("tnt");
    let now = db::now();
    let inserted = sqlx::query(
        "INSERT INTO tenants (id, name, plan_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&id)
    .bind(&input.name)
    .bind(&input.plan_id)
    .bind(&now)
    .bind(&now)
    .execute(&state.db)
    .await;
    match inserted {
        Err(e) if db::is_unique_violation(&e) => {
            return Err(ApiError::conflict(
                "tenant_name_taken",
                format!("A tenant named {:?} already exists.", input.name),
            ))
        }
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            // The plan was deleted between the check and the insert.
            return Err(ApiError::invalid(
                "plan_not_found",
                format!("No plan with id {:?}.", input.plan_id),
            ));
        }
        other => {
            other?;
        }
    }
    let view = TenantView {
        id: id.clone(),
        name: input.name,
        plan_id: input.plan_id,
        created_at: now.clone(),
        updated_at: now,
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/tenants/{id}"))],
        Json(view),
    )
        .into_response())
}

async fn tenants_show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<TenantView>> {
    sqlx::query_as::<_, TenantView>(
        "SELECT id, name, plan_id, created_at, updated_at FROM tenants WHERE id = ?",
    )
    .bind(&id)
    .fetch_optional(&state.db)
    .await?
    .map(Json)
    .ok_or_else(|| ApiError::not_found("tenant", &id))
}
