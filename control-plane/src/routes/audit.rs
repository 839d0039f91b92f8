//! The audit log: who changed what, when, and the resource before and after.
//!
//! Every change records its entry through `change::Change` inside its own
//! transaction, so a change and its entry commit together or not at all
//! (`store::audit`). Entries hold public views only (a key's metadata, never its plaintext or hash). `GET /v1/audit`
//! lists them newest first; a tenant token sees its own tenant's trail.

use std::time::SystemTime;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::Principal;
use crate::docs::{ServerError, Throttled, Unauthorized, PROBLEM_JSON};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::ApiQuery;
use crate::input::{query_text, query_time};
use crate::paging::{cursor, page_limit, Page};
use crate::state::AppState;
use crate::store::audit::{self, AuditRow};

pub fn router() -> Router<AppState> {
    Router::new().route("/audit", get(audit_list))
}

/// This module's operations and tag in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(audit_list),
    tags((name = "audit", description = "Every change: who, what, before and after.")),
)]
pub struct Api;

/// One change. `before` and `after` are the resource's public view (never a
/// key's or token's plaintext or hash); `null` for a creation or a deletion.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// `admin`, `tenant:<id>` or `seed`.
    #[schema(example = "admin")]
    pub actor: String,
    /// `<resource_type>.<verb>`.
    #[schema(example = "key.rotate")]
    pub action: String,
    #[schema(example = "key")]
    pub resource_type: String,
    pub resource_id: String,
    /// The tenant the resource belongs to, if any.
    pub tenant_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
}

impl TryFrom<AuditRow> for AuditEntry {
    type Error = ApiError;

    fn try_from(row: AuditRow) -> ApiResult<Self> {
        let (before, after) = row.snapshots()?;
        Ok(Self {
            before,
            after,
            id: row.id,
            created_at: row.created_at,
            actor: row.actor,
            action: row.action,
            resource_type: row.resource_type,
            resource_id: row.resource_id,
            tenant_id: row.tenant_id,
        })
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListAudit {
    /// Page size, 1 to 200; default 50.
    #[serde(default)]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub after: Option<String>,
    /// Exactly this action, e.g. `plan.create`.
    #[serde(default)]
    pub action: Option<String>,
    /// Exactly this actor, e.g. `admin` or `tenant:<id>`.
    #[serde(default)]
    pub actor: Option<String>,
    /// `plan`, `tenant`, `key` or `token`.
    #[serde(default)]
    pub resource_type: Option<String>,
    #[serde(default)]
    pub resource_id: Option<String>,
    /// A tenant token may only ask for its own tenant (the default for it).
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// RFC 3339; entries at or after it.
    #[serde(default)]
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// RFC 3339; entries before it.
    #[serde(default)]
    #[param(format = DateTime)]
    pub until: Option<String>,
}

/// An RFC 3339 bound in the stored form (UTC, milliseconds), so text order is time order.
fn time_bound(field: &str, text: Option<&str>) -> ApiResult<Option<String>> {
    Ok(query_time(field, text)?
        .map(|at| humantime::format_rfc3339_millis(SystemTime::from(at)).to_string()))
}

/// List audit entries
///
/// Every change, newest first, one page at a time. A tenant token sees its own tenant's trail.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    params(ListAudit),
    responses(
        (status = 200, description = "One page of entries, newest first.", body = Page<AuditEntry>),
        (status = 400, description = "`invalid_query` (unknown parameter, bad `limit`, `since` or `until`, \
            a control character in a filter) or `invalid_cursor`.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: a tenant token asked for another `tenant_id`.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = []), ("tenant_token" = [])),
)]
async fn audit_list(
    principal: Principal,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListAudit>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    list(&state, &principal, query).await.map(Json)
}

/// A page of the entries `principal` may see (a tenant: its own tenant's),
/// newest first: the API's and the dashboard's one reading of the filters.
pub async fn list(
    state: &AppState,
    principal: &Principal,
    query: ListAudit,
) -> ApiResult<Page<AuditEntry>> {
    let limit = page_limit(query.limit)?;
    let tenant_id = match (principal.own_tenant(), query.tenant_id) {
        (None, wanted) => wanted,
        (Some(own), Some(wanted)) if wanted != own => {
            return Err(ApiError::not_found("tenant", &wanted));
        }
        (Some(own), _) => Some(own.to_owned()),
    };
    let since = time_bound("since", query.since.as_deref())?;
    let until = time_bound("until", query.until.as_deref())?;
    let after = cursor(query.after.as_deref())?;
    for (field, text) in [
        ("action", &query.action),
        ("actor", &query.actor),
        ("resource_type", &query.resource_type),
        ("resource_id", &query.resource_id),
        ("tenant_id", &tenant_id),
    ] {
        query_text(field, text.as_deref())?;
    }
    let filter = audit::Filter {
        action: query.action,
        actor: query.actor,
        resource_type: query.resource_type,
        resource_id: query.resource_id,
        tenant_id,
        since,
        until,
    };
    let rows = audit::list(&state.db, filter, after.as_ref(), limit + 1).await?;
    let entries = rows
        .into_iter()
        .map(AuditEntry::try_from)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Page::from_rows(entries, limit, |e| (&e.created_at, &e.id)))
}
