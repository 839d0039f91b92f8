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
use crate::change::{snapshot, Change};
use crate::db;
use crate::docs::{
    AdminOnly, ContentTooLarge, ServerError, Throttled, Unauthorized, UnsupportedMediaType,
    PROBLEM_JSON,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::ApiJson;
use crate::input::validate_name;
use crate::state::AppState;
use crate::store::audit::Entry;
pub use crate::store::tokens::TokenView;
use crate::store::{sessions, tenants, tokens};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/tenants/{tenant_id}/tokens",
            post(tokens_create).get(tokens_list),
        )
        .route("/tenants/{tenant_id}/tokens/{id}", delete(tokens_revoke))
}

/// This module's operations and tag in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(tokens_create, tokens_list, tokens_revoke),
    tags((name = "tokens", description = "Tenant tokens, with which a tenant serves itself.")),
)]
pub struct Api;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1 to 200 characters.
    #[schema(example = "billing portal")]
    pub name: String,
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
    if tenants::exists(&state.db, tenant_id).await? {
        Ok(())
    } else {
        Err(ApiError::not_found("tenant", tenant_id))
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
    let issued = create(&state, &principal, tenant_id, input).await?;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(issued),
    )
        .into_response())
}

/// Issues a token for the tenant as `principal` (the admin): the API's and
/// the dashboard's one way, so both validate and audit alike.
pub async fn create(
    state: &AppState,
    principal: &Principal,
    tenant_id: String,
    input: CreateToken,
) -> ApiResult<IssuedToken> {
    principal.require_admin()?;
    validate_name("name", &input.name)?;
    require_tenant(state, &tenant_id).await?;
    let now = state.now();
    let token = format!(
        "{TENANT_TOKEN_PREFIX}{}",
        Alphanumeric.sample_string(&mut rand::rng(), 40)
    );
    let view = TokenView {
        id: db::new_id("tok"),
        tenant_id,
        name: input.name,
        created_at: now.rfc3339(),
        revoked_at: None,
    };
    // Tokens are not pushed to filters, so no config version.
    let mut change = Change::begin_unpublished(state, principal.label(), now).await?;
    tokens::insert(change.tx(), &view, &tenant_token_hash(&token)).await?;
    change
        .audit(Entry {
            action: "token.create",
            resource_id: &view.id,
            tenant_id: Some(&view.tenant_id),
            before: None,
            after: snapshot(&view)?,
        })
        .await?;
    change.commit().await?;
    Ok(IssuedToken { view, token })
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
    list(&state, &principal, &tenant_id).await.map(Json)
}

/// The tenant's tokens as `principal` (the admin) may see them.
pub async fn list(
    state: &AppState,
    principal: &Principal,
    tenant_id: &str,
) -> ApiResult<TokenList> {
    principal.require_admin()?;
    require_tenant(state, tenant_id).await?;
    let items = tokens::of_tenant(&state.db, tenant_id).await?;
    Ok(TokenList { items })
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
    revoke(&state, &principal, &tenant_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes the tenant's token `id` as `principal` (the admin); the token as revoked.
pub async fn revoke(
    state: &AppState,
    principal: &Principal,
    tenant_id: &str,
    id: &str,
) -> ApiResult<TokenView> {
    principal.require_admin()?;
    let now = state.now();
    let mut change = Change::begin_unpublished(state, principal.label(), now).await?;
    let revoked = tokens::revoke(change.tx(), tenant_id, id, &now.rfc3339())
        .await?
        .ok_or_else(|| ApiError::not_found("token", id))?;
    // Dashboard sessions signed in with it end with it.
    sessions::delete_of_token(change.tx(), id).await?;
    change
        .audit(Entry {
            action: "token.revoke",
            resource_id: id,
            tenant_id: Some(tenant_id),
            before: snapshot(&TokenView {
                revoked_at: None,
                ..revoked.clone()
            })?,
            after: snapshot(&revoked)?,
        })
        .await?;
    change.commit().await?;
    Ok(revoked)
}
