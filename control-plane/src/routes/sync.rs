//! The config feed: `GET /v1/sync?since=N&wait_ms=M`, long-polled by each Envoy's sync service.
//!
//! Answers at once when something changed after version `since`, otherwise
//! holds the request until a change is committed or `wait_ms` passes. The
//! rows are read in one transaction with the version they add up to, so an
//! Envoy that applies the answer holds exactly that version.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tollgate_core::wire::{SyncResponse, WireKey};

use crate::auth::SyncCaller;
use crate::error::Problem;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::openapi::{ServerError, Unauthorized, PROBLEM_JSON};
use crate::routes::anonymous;
use crate::routes::plans::{PlanRow, PLAN_COLUMNS};
use crate::state::AppState;

/// Longest a poll may be held open.
pub const MAX_WAIT_MS: u64 = 60_000;

pub fn router() -> Router<AppState> {
    Router::new().route("/sync", get(sync_poll))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SyncParams {
    /// The version the caller holds; 0 (the default) asks for everything.
    #[serde(default)]
    pub since: u64,
    /// How long to hold the request when nothing changed after `since`, at most 60000; 0 (the default) answers at once.
    #[serde(default)]
    #[param(maximum = 60000)]
    pub wait_ms: u64,
}

/// Config changes since a version
///
/// Long-polled by each Envoy's sync service: answers at once when something
/// changed after `since`, otherwise when a change is committed or `wait_ms`
/// has passed (then with nothing new).
#[utoipa::path(
    get,
    path = "/v1/sync",
    tag = "sync",
    params(SyncParams),
    responses(
        (status = 200, description = "What changed after `since`, and the version it adds up to.", body = SyncResponse),
        (status = 400, description = "`invalid_query` (unknown parameter, not a number, `wait_ms` over 60000).",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = "5XX", response = ServerError),
    ),
    security(("sync_token" = [])),
)]
async fn sync_poll(
    _caller: SyncCaller,
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<SyncParams>,
) -> ApiResult<Json<SyncResponse>> {
    if params.wait_ms > MAX_WAIT_MS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("wait_ms must be at most {MAX_WAIT_MS}."),
        ));
    }
    if params.wait_ms > 0 {
        let _held = state.metrics.poll_held();
        let mut versions = state.versions.subscribe();
        let mut shutting_down = state.shutting_down.subscribe();
        let since = params.since;
        let _ = tokio::time::timeout(Duration::from_millis(params.wait_ms), async {
            tokio::select! {
                _ = versions.wait_for(|v| *v > since) => {}
                _ = shutting_down.wait_for(|down| *down) => {}
            }
        })
        .await;
    }
    Ok(Json(changes_since(&state, params.since).await?))
}

#[derive(sqlx::FromRow)]
struct KeyChange {
    key_hash: String,
    id: String,
    tenant_id: String,
    plan_id: String,
    /// 0 or 1: see `db` on booleans.
    active: i64,
    expires_at_ms: Option<i64>,
    scopes: Option<String>,
    allowed_cidrs: Option<String>,
    limits: Option<String>,
    monthly_quota: Option<i64>,
    billing_anchor_day: Option<i64>,
    deleted: i64,
}

fn json_column<T: serde::de::DeserializeOwned>(
    text: Option<String>,
) -> Result<Option<T>, ApiError> {
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(ApiError::internal)
}

pub async fn changes_since(state: &AppState, since: u64) -> Result<SyncResponse, ApiError> {
    let mut tx = state.db.begin().await?;
    let version: i64 = sqlx::query_scalar("SELECT version FROM config_version WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    let version = u64::try_from(version).unwrap_or(0);
    // A filter ahead of us means our database was replaced: send everything.
    let since = if since > version {
        tracing::warn!(
            since,
            version,
            "sync client is ahead of the database; sending a full snapshot"
        );
        0
    } else {
        since
    };
    let since_db = i64::try_from(since).unwrap_or(i64::MAX);
    let plans = sqlx::query_as::<_, PlanRow>(&format!(
        "SELECT {PLAN_COLUMNS} FROM plans
         WHERE version > $1 AND deleted_at IS NULL ORDER BY version"
    ))
    .bind(since_db)
    .fetch_all(&mut *tx)
    .await?;
    // A full snapshot has nothing to delete.
    let deleted_plans: Vec<String> = if since == 0 {
        Vec::new()
    } else {
        sqlx::query_scalar(
            "SELECT id FROM plans WHERE version > $1 AND deleted_at IS NOT NULL ORDER BY version",
        )
        .bind(since_db)
        .fetch_all(&mut *tx)
        .await?
    };
    let keys = sqlx::query_as::<_, KeyChange>(
        "SELECT k.key_hash, k.id, k.tenant_id, t.plan_id, CAST(k.active AS INTEGER) AS active,
                k.expires_at_ms,
                k.scopes, k.allowed_cidrs, k.limits, k.monthly_quota, t.billing_anchor_day,
                CASE WHEN k.deleted_at IS NULL THEN 0 ELSE 1 END AS deleted
         FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
         WHERE k.version > $1 ORDER BY k.version",
    )
    .bind(since_db)
    .fetch_all(&mut *tx)
    .await?;
    // Anonymous access when it changed, and always in a full snapshot (even
    // when it is off), so a filter never keeps access that was turned off.
    let anonymous = match anonymous::read(&mut *tx).await? {
        (wire, changed_in) if since == 0 || changed_in > since_db => Some(wire),
        _ => None,
    };
    tx.commit().await?;

    let mut response = SyncResponse {
        version,
        plans: plans.iter().map(PlanRow::wire).collect::<Result<_, _>>()?,
        deleted_plans,
        anonymous,
        ..SyncResponse::default()
    };
    for key in keys {
        if key.deleted != 0 {
            // A full snapshot has nothing to delete.
            if since > 0 {
                response.deleted_keys.push(key.key_hash);
            }
        } else {
            response.keys.push(WireKey {
                hash: key.key_hash,
                id: key.id,
                tenant_id: key.tenant_id,
                plan_id: key.plan_id,
                active: key.active != 0,
                expires_at_ms: key.expires_at_ms.and_then(|v| u64::try_from(v).ok()),
                scopes: json_column(key.scopes)?,
                allowed_cidrs: json_column(key.allowed_cidrs)?,
                limits: json_column(key.limits)?,
                monthly_quota: key.monthly_quota.and_then(|v| u64::try_from(v).ok()),
                billing_anchor_day: key.billing_anchor_day.and_then(|d| u8::try_from(d).ok()),
            });
        }
    }
    Ok(response)
}
