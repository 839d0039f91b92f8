//! Plans: named limits (and, later, quotas) that tenants subscribe to.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tollgate_core::config::Plan;
use tollgate_core::wire::{WireLimit, WirePlan};

use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::routes::validate_name;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/plans", post(plans_create).get(plans_list))
        .route("/plans/{id}", get(plans_show))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePlan {
    pub name: String,
    pub limits: Vec<WireLimit>,
    #[serde(default)]
    pub monthly_quota: Option<u64>,
    #[serde(default)]
    pub max_api_keys: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct PlanView {
    pub id: String,
    pub name: String,
    pub limits: Vec<WireLimit>,
    pub monthly_quota: Option<u64>,
    pub max_api_keys: Option<u64>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(sqlx::FromRow)]
pub(crate) struct PlanRow {
    pub id: String,
    pub name: String,
    pub limits: String,
    pub monthly_quota: Option<i64>,
    pub max_api_keys: Option<i64>,
    pub created_at: String,
    pub updated_at: String,
}

impl PlanRow {
    pub(crate) fn limits(&self) -> Result<Vec<WireLimit>, ApiError> {
        serde_json::from_str(&self.limits).map_err(ApiError::internal)
    }

    pub(crate) fn wire(&self) -> Result<WirePlan, ApiError> {
        Ok(WirePlan {
            id: self.id.clone(),
            name: self.name.clone(),
            limits: self.limits()?,
            monthly_quota: self.monthly_quota.and_then(|q| u64::try_from(q).ok()),
        })
    }

    fn view(self) -> Result<PlanView, ApiError> {
        Ok(PlanView {
            limits: self.limits()?,
            monthly_quota: self.monthly_quota.and_then(|q| u64::try_from(q).ok()),
            max_api_keys: self.max_api_keys.and_then(|q| u64::try_from(q).ok()),
            id: self.id,
            name: self.name,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

const PLAN_COLUMNS: &str = "id, name, limits, monthly_quota, max_api_keys, created_at, updated_at";

fn to_i64(field: &str, value: Option<u64>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            i64::try_from(v)
                .map_err(|_| ApiError::invalid("invalid_plan", format!("{field} is too large.")))
        })
        .transpose()
}

async fn plans_create(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<CreatePlan>,
) -> ApiResult<Response> {
    validate_name("name", &input.name)?;
    let id = db::new_id("plan");
    let wire = WirePlan {
        id: id.clone(),
        name: input.name.clone(),
        limits: input.limits,
        monthly_quota: input.monthly_quota,
    };
    // The same validation every filter applies: a plan accepted here is enforceable everywhere.
    Plan::try_from(&wire).map_err(|e| ApiError::invalid("invalid_plan", e.0))?;
    let monthly_quota = to_i64("monthly_quota", input.monthly_quota)?;
    let max_api_keys = to_i64("max_api_keys", input.max_api_keys)?;
    let limits = serde_json::to_string(&wire.limits).map_err(ApiError::internal)?;
    let now = db::now();

    let (mut tx, version) = db::begin_change(&state.db).await?;
    let inserted = sqlx::query(
        "INSERT INTO plans (id, name, limits, monthly_quota, max_api_keys, created_at, updated_at, version)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&id)
    .bind(&input.name)
    .bind(&limits)
    .bind(monthly_quota)
    .bind(max_api_keys)
    .bind(&now)
    .bind(&now)
    .bind(version)
    .execute(&mut *tx)
    .await;
    match inserted {
        Err(e) if db::is_unique_violation(&e) => {
            return Err(ApiError::conflict(
                "plan_name_taken",
                format!("A plan named {:?} already exists.", input.name),
            ))
        }
        other => {
            other?;
        }
    }
    tx.commit().await?;
    state.published(version);

    let view = PlanView {
        id: id.clone(),
        name: input.name,
        limits: wire.limits,
        monthly_quota: input.monthly_quota,
        max_api_keys: input.max_api_keys,
        created_at: now.clone(),
        updated_at: now,
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/plans/{id}"))],
        Json(view),
    )
        .into_response())
}

pub(crate) async fn find(db: &db::Db, id: &str) -> Result<Option<PlanRow>, sqlx::Error> {
    sqlx::query_as::<_, PlanRow>(&format!("SELECT {PLAN_COLUMNS} FROM plans WHERE id = ?"))
        .bind(id)
        .fetch_optional(db)
        .await
}

async fn plans_show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<PlanView>> {
    let row = find(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("plan", &id))?;
    Ok(Json(row.view()?))
}

async fn plans_list(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let rows = sqlx::query_as::<_, PlanRow>(&format!(
        "SELECT {PLAN_COLUMNS} FROM plans ORDER BY created_at, id"
    ))
    .fetch_all(&state.db)
    .await?;
    let items = rows
        .into_iter()
        .map(PlanRow::view)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(serde_json::json!({ "items": items })))
}
