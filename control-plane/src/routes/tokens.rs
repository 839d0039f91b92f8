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
use crate::error::Problem;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::openapi::{
    AdminOnly, ContentTooLarge, ServerError, Throttled, Unauthorized, UnsupportedMediaType,
    PROBLEM_JSON,
};
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1 to 200 characters.
    #[schema(example = "billing portal")]
    pub name: String,
}

/// A tenant token's metadata: never the token or its hash.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TokenView {
    #[schema(example = "tok_Qm4xT9bV2nL7cZ0pR5sK")]
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// `null` while the token works.
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
}

/// The one response that carries the token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssuedToken {
    #[serde(flatten)]
    pub view: TokenView,
    /// `tgt_` and 40 alphanumerics: shown here and nowhere else, ever.
    pub token: String,
}

/// All of a tenant's tokens, revoked ones included, in creation order (not paged).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenList {
    pub items: Vec<TokenView>,
}

async fn require_tenant(state: &AppState, tenant_id: &str) -> ApiResult<()> {
    match tenants::find(&state.db, tenant_id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found("tenant", tenant_id)),
    }
}

/// Issue a tenant token
///
/// The `token` is in this response only.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant_id}/tokens",
    tag = "tokens",
    params(("tenant_id" = String, Path, description = "Tenant id.")),
    request_body = CreateToken,
    responses(
        (status = 201, description = "Issued.", body = IssuedToken,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 400, description = "`malformed_json`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminOnly),
        (status = 404, description = "`not_found`: no such tenant.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = ContentTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_body` or `invalid_name`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = [])),
)]
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

/// List a tenant's tokens
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant_id}/tokens",
    tag = "tokens",
    params(("tenant_id" = String, Path, description = "Tenant id.")),
    responses(
        (status = 200, description = "All the tenant's tokens.", body = TokenList),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminOnly),
        (status = 404, description = "`not_found`: no such tenant.", body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = [])),
)]
async fn tokens_list(
    principal: Principal,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<TokenList>> {
    principal.require_admin()?;
    require_tenant(&state, &tenant_id).await?;
    let items = sqlx::query_as::<_, TokenView>(
        "SELECT id, tenant_id, name, created_at, revoked_at FROM tenant_tokens
         WHERE tenant_id = $1 ORDER BY created_at, id",
    )
    .bind(&tenant_id)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(TokenList { items }))
}

/// Revoke a tenant token
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant_id}/tokens/{id}",
    tag = "tokens",
    params(
        ("tenant_id" = String, Path, description = "Tenant id."),
        ("id" = String, Path, description = "Token id."),
    ),
    responses(
        (status = 204, description = "Revoked: the token answers 401 from now on."),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminOnly),
        (status = 404, description = "`not_found`: no such token of this tenant, or already revoked.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = [])),
)]
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
