//! Tenant tokens: bearer tokens that let a tenant serve itself (its own keys,
//! its own tenant), issued and revoked by the admin. Shown once, stored hashed.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};

use crate::auth::{tenant_token_hash, Principal, TENANT_TOKEN_PREFIX};
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::routes::{audit, tenants, validate_name};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/tenants/{tenant_id}/tokens",
            post(tokens_create).get(tokens_list),
        )
        .route("/tenants/{tenant_id}/tokens/{id}", delete(tokens_revoke))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TokenView {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct IssuedToken {
    #[serde(flatten)]
    pub view: TokenView,
    pub token: String,
}

async fn require_tenant(state: &AppState, tenant_id: &str) -> ApiResult<()> {
    match tenants::find(&state.db, tenant_id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found("tenant", tenant_id)),
    }
}

async fn tokens_create(
    principal: Principal,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    ApiJson(input): ApiJson<CreateToken>,
) -> ApiResult<Response> {
    principal.require_admin()?;
    validate_name("name", &input.name)?;
    require_tenant(&state, &tenant_id).await?;
    let token = format!(
        "{TENANT_TOKEN_PREFIX}{}",
        Alphanumeric.sample_string(&mut rand::rng(), 40)
    );
    let view = TokenView {
        id: db::new_id("tok"),
        tenant_id,
        name: input.name,
        created_at: db::now(),
        revoked_at: None,
    };
    // Tokens are not pushed to filters, so no config version: a plain transaction.
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO tenant_tokens (id, tenant_id, name, token_hash, created_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&view.id)
    .bind(&view.tenant_id)
    .bind(&view.name)
    .bind(tenant_token_hash(&token))
    .bind(&view.created_at)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &principal.label(),
        audit::Entry {
            action: "token.create",
            resource_id: &view.id,
            tenant_id: Some(&view.tenant_id),
            before: None,
            after: audit::snapshot(&view)?,
        },
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(IssuedToken { view, token }),
    )
        .into_response())
}

async fn tokens_list(
    principal: Principal,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    principal.require_admin()?;
    require_tenant(&state, &tenant_id).await?;
    let items = sqlx::query_as::<_, TokenView>(
        "SELECT id, tenant_id, name, created_at, revoked_at FROM tenant_tokens
         WHERE tenant_id = $1 ORDER BY created_at, id",
    )
    .bind(&tenant_id)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(serde_json::json!({ "items": items })))
}

async fn tokens_revoke(
    principal: Principal,
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    principal.require_admin()?;
    let mut tx = state.db.begin().await?;
    let revoked = sqlx::query_as::<_, TokenView>(
        "UPDATE tenant_tokens SET revoked_at = $1
         WHERE id = $2 AND tenant_id = $3 AND revoked_at IS NULL
         RETURNING id, tenant_id, name, created_at, revoked_at",
    )
    .bind(db::now())
    .bind(&id)
    .bind(&tenant_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::not_found("token", &id))?;
    audit::record(
        &mut tx,
        &principal.label(),
        audit::Entry {
            action: "token.revoke",
            resource_id: &id,
            tenant_id: Some(&tenant_id),
            before: audit::snapshot(&TokenView {
                revoked_at: None,
                ..revoked.clone()
            })?,
            after: audit::snapshot(&revoked)?,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
