//! A tenant's webhook for quota alerts, and the log of what was delivered.
//!
//! Only the admin sets or removes the URL: the control plane sends requests
//! to it, so a tenant must not be able to point it at internal services.
//! Tenants read their own configuration (never the secret) and deliveries.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::change::{snapshot, Change, Unpublished};
use crate::docs::{
    AdminOnly, ContentTooLarge, ServerError, Throttled, Unauthorized, UnsupportedMediaType,
    PROBLEM_JSON,
};
use crate::egress::{self, Targets};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiQuery};
use crate::paging::{cursor, page_limit, Page};
use crate::state::AppState;
use crate::store::audit::Entry;
pub use crate::store::webhooks::{AttemptView, WebhookView};
use crate::store::{tenants, webhooks};

/// Longest webhook URL accepted.
pub const MAX_URL_LEN: usize = 2048;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/tenants/{tenant_id}/webhook",
            get(webhook_get).put(webhook_set).delete(webhook_delete),
        )
        .route(
            "/tenants/{tenant_id}/webhook-deliveries",
            get(deliveries_list),
        )
}

/// This module's operations and tag in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(webhook_get, webhook_set, webhook_delete, deliveries_list),
    tags((name = "webhooks", description = "Quota alerts (80 % and 100 %) sent to a tenant's URL, signed with HMAC-SHA256, and their delivery log.")),
)]
pub struct Api;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetWebhook {
    /// `http` or `https`, at most 2048 characters. Redirects are not followed.
    /// Unless the control plane allows internal targets, the host may not be
    /// an internal address or `localhost`, nor resolve to one when an alert
    /// is sent.
    #[schema(example = "https://billing.example.com/hooks/tollgate")]
    pub url: String,
    /// Issue a new signing secret (the old one stops at once).
    #[serde(default)]
    pub rotate_secret: bool,
}

/// One alert and its delivery attempts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    #[schema(example = "evt_Qm4xT9bV2nL7cZ0pR5sK")]
    pub id: String,
    pub key_id: String,
    /// `quota.threshold`.
    pub event_type: String,
    /// 80 or 100 (% of the quota).
    pub threshold: i64,
    /// `pending` (being retried), `delivered` or `failed` (out of attempts).
    pub status: String,
    pub attempts: i64,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub delivered_at: Option<String>,
    /// The exact body sent (and signed).
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub attempt_log: Vec<AttemptView>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// 1 to 200, default 50.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub after: Option<String>,
    /// Only events in this state: `pending`, `delivered` or `failed`.
    pub status: Option<String>,
}

async fn visible_tenant(principal: &Principal, state: &AppState, tenant_id: &str) -> ApiResult<()> {
    if !principal.sees(tenant_id) || !tenants::exists(&state.db, tenant_id).await? {
        return Err(ApiError::not_found("tenant", tenant_id));
    }
    Ok(())
}

fn validate_url(url: &str, targets: Targets) -> ApiResult<()> {
    let invalid = |why: &str| ApiError::invalid("invalid_webhook_url", why.to_owned());
    if url.len() > MAX_URL_LEN {
        return Err(invalid("url must be at most 2048 characters."));
    }
    // The URL parser would strip or escape these; the URL is stored as sent.
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(
            "url must not contain white space or control characters.",
        ));
    }
    let parsed =
        reqwest::Url::parse(url).map_err(|_| invalid("url must be an absolute http(s) URL."))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid("url must be an absolute http(s) URL."));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "url must not carry credentials; the signature authenticates the sender.",
        ));
    }
    egress::literal_target(&parsed, targets).map_err(|why| {
        ApiError::invalid(
            "webhook_target_forbidden",
            format!(
                "url must not point into the control plane's own network: {why}. \
                 Webhooks go to public addresses unless the control plane runs with \
                 {}=true.",
                egress::ALLOW_PRIVATE_ENV
            ),
        )
    })
}

fn new_secret() -> String {
    format!("whsec_{}", Alphanumeric.sample_string(&mut rand::rng(), 40))
}

/// Starts a change to the tenant's webhook. Its first statement writes the
/// tenant's row, which takes PostgreSQL's row lock (SQLite's write lock), so
/// changes to one webhook run one after another and each reads, inside the
/// transaction, what the one before it left: two first PUTs at once are a
/// create and an update, not a failed insert.
async fn begin_webhook_change(
    state: &AppState,
    principal: &Principal,
    tenant_id: &str,
) -> ApiResult<Change<Unpublished>> {
    let mut change = Change::begin_unpublished(state, principal.label(), state.now()).await?;
    if !tenants::lock(change.tx(), tenant_id).await? {
        return Err(ApiError::not_found("tenant", tenant_id));
    }
    Ok(change)
}

/// A tenant's webhook
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant_id}/webhook",
    tag = "webhooks",
    params(("tenant_id" = String, Path, description = "Tenant id.")),
    responses(
        (status = 200, description = "The webhook, without its secret.", body = WebhookView),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: no such tenant, or it has no webhook.", body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = []), ("tenant_token" = [])),
)]
async fn webhook_get(
    principal: Principal,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<WebhookView>> {
    find(&state, &principal, &tenant_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("webhook of tenant", &tenant_id))
}

/// The tenant's webhook, without its secret, if `principal` sees the tenant
/// (`None`: it has none).
pub async fn find(
    state: &AppState,
    principal: &Principal,
    tenant_id: &str,
) -> ApiResult<Option<WebhookView>> {
    visible_tenant(principal, state, tenant_id).await?;
    webhooks::find(&state.db, tenant_id).await
}

/// Set a tenant's webhook
///
/// Creating it (or `rotate_secret: true`) issues the signing secret, which is
/// in this response only. Alerts: `POST <url>` with a JSON event
/// `{"id", "type": "quota.threshold", "created_at", "data": {"tenant_id",
/// "key_id", "threshold", "used", "quota", "period_start", "period_end"}}`,
/// headers `Tollgate-Event-Id` and `Tollgate-Signature: t=<unix>,v1=<hex>`,
/// where `v1` is HMAC-SHA256 with the secret of `"<t>.<body>"`. Any 2xx is
/// delivery; anything else is retried after 1 s, 2 s, 4 s, … (at most an
/// hour apart), 10 attempts in all.
#[utoipa::path(
    put,
    path = "/v1/tenants/{tenant_id}/webhook",
    tag = "webhooks",
    params(("tenant_id" = String, Path, description = "Tenant id.")),
    request_body = SetWebhook,
    responses(
        (status = 200, description = "Set; `secret` present if issued now.", body = WebhookView,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 400, description = "`malformed_json`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminOnly),
        (status = 404, description = "`not_found`: no such tenant.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = ContentTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_body`, `invalid_webhook_url`, or `webhook_target_forbidden`: the host is a loopback, private, link-local or other internal address, or `localhost` (allowed with `CONTROL_PLANE_WEBHOOK_ALLOW_PRIVATE_TARGETS=true`).", body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = [])),
)]
async fn webhook_set(
    principal: Principal,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    ApiJson(input): ApiJson<SetWebhook>,
) -> ApiResult<Response> {
    let view = set(&state, &principal, tenant_id, input).await?;
    Ok((
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        Json(view),
    )
        .into_response())
}

/// Sets the tenant's webhook as `principal` (the admin): the API's and the
/// dashboard's one way. `secret` is set exactly when one was issued now.
pub async fn set(
    state: &AppState,
    principal: &Principal,
    tenant_id: String,
    input: SetWebhook,
) -> ApiResult<WebhookView> {
    principal.require_admin()?;
    visible_tenant(principal, state, &tenant_id).await?;
    validate_url(&input.url, state.webhook_targets)?;
    let mut change = begin_webhook_change(state, principal, &tenant_id).await?;
    let before = webhooks::find(&mut **change.tx(), &tenant_id).await?;
    let now = change.now().rfc3339();
    let secret = (before.is_none() || input.rotate_secret).then(new_secret);
    // Stored sealed (see `sealing`); answered in clear, this once.
    let stored = secret
        .as_deref()
        .map(|s| state.sealer.seal(s, &tenant_id))
        .transpose()
        .map_err(ApiError::internal)?;
    match (&before, &stored) {
        (None, Some(stored)) => {
            webhooks::insert(change.tx(), &tenant_id, &input.url, stored, &now).await?;
        }
        (_, stored) => {
            webhooks::update(change.tx(), &tenant_id, &input.url, stored.as_deref(), &now).await?;
        }
    }
    let after = WebhookView {
        tenant_id: tenant_id.clone(),
        url: input.url,
        created_at: before
            .as_ref()
            .map_or_else(|| now.clone(), |b| b.created_at.clone()),
        updated_at: now,
        secret: None,
    };
    change
        .audit(Entry {
            action: if before.is_none() {
                "webhook.create"
            } else {
                "webhook.update"
            },
            resource_id: &tenant_id,
            tenant_id: Some(&tenant_id),
            before: before.as_ref().map(snapshot).transpose()?.flatten(),
            after: snapshot(&after)?,
        })
        .await?;
    change.commit().await?;
    Ok(WebhookView { secret, ..after })
}

/// Remove a tenant's webhook
///
/// Alerts already queued fail on their next attempt; no new ones are queued.
#[utoipa::path(
    delete,
    path = "/v1/tenants/{tenant_id}/webhook",
    tag = "webhooks",
    params(("tenant_id" = String, Path, description = "Tenant id.")),
    responses(
        (status = 204, description = "Removed."),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminOnly),
        (status = 404, description = "`not_found`: no such tenant, or it has no webhook.", body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = [])),
)]
async fn webhook_delete(
    principal: Principal,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
) -> ApiResult<StatusCode> {
    delete(&state, &principal, &tenant_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes the tenant's webhook as `principal` (the admin).
pub async fn delete(state: &AppState, principal: &Principal, tenant_id: &str) -> ApiResult<()> {
    principal.require_admin()?;
    visible_tenant(principal, state, tenant_id).await?;
    let mut change = begin_webhook_change(state, principal, tenant_id).await?;
    let before = webhooks::find(&mut **change.tx(), tenant_id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook of tenant", tenant_id))?;
    webhooks::delete(change.tx(), tenant_id).await?;
    change
        .audit(Entry {
            action: "webhook.delete",
            resource_id: tenant_id,
            tenant_id: Some(tenant_id),
            before: snapshot(&before)?,
            after: None,
        })
        .await?;
    change.commit().await?;
    Ok(())
}

/// Quota alerts and their delivery attempts
///
/// Newest first.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant_id}/webhook-deliveries",
    tag = "webhooks",
    params(("tenant_id" = String, Path, description = "Tenant id."), DeliveriesQuery),
    responses(
        (status = 200, description = "A page of events.", body = Page<DeliveryView>),
        (status = 400, description = "`invalid_query` or `invalid_cursor`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: no such tenant.", body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = []), ("tenant_token" = [])),
)]
async fn deliveries_list(
    principal: Principal,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> ApiResult<Json<Page<DeliveryView>>> {
    deliveries(&state, &principal, &tenant_id, query)
        .await
        .map(Json)
}

/// A page of the tenant's alerts with every attempt, newest first, as
/// `principal` may see them.
pub async fn deliveries(
    state: &AppState,
    principal: &Principal,
    tenant_id: &str,
    query: DeliveriesQuery,
) -> ApiResult<Page<DeliveryView>> {
    visible_tenant(principal, state, tenant_id).await?;
    let limit = page_limit(query.limit)?;
    if let Some(status) = &query.status {
        if !matches!(status.as_str(), "pending" | "delivered" | "failed") {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "status must be pending, delivered or failed.",
            ));
        }
    }
    let after = cursor(query.after.as_deref())?;
    let rows = webhooks::events(
        &state.db,
        tenant_id,
        query.status.as_deref(),
        after.as_ref(),
        limit + 1,
    )
    .await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let attempt_log = webhooks::attempts(&state.db, &row.id).await?;
        items.push(DeliveryView {
            payload: serde_json::from_str(&row.payload).map_err(ApiError::internal)?,
            id: row.id,
            key_id: row.key_id,
            event_type: row.event_type,
            threshold: row.threshold,
            status: row.status,
            attempts: row.attempts,
            created_at: row.created_at,
            delivered_at: row.delivered_at,
            attempt_log,
        });
    }
    Ok(Page::from_rows(items, limit, |d| (&d.created_at, &d.id)))
}
