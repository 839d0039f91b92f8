//! The audit log: who changed what, when, and the resource before and after.
//!
//! Handlers call [`record`] inside the transaction of the change itself, so a
//! change and its entry commit together or not at all. Entries hold public
//! views only (a key's metadata, never its plaintext or hash). `GET /v1/audit`
//! lists them newest first; a tenant token sees its own tenant's trail.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::Principal;
use crate::db;
use crate::error::Problem;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::openapi::{ServerError, Throttled, Unauthorized, PROBLEM_JSON};
use crate::routes::{cursor_clause, invalid_cursor, page_limit, query_time, Order, Page};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/audit", get(audit_list))
}

/// One change, as a handler describes it.
pub(crate) struct Entry<'a> {
    /// `<resource type>.<verb>`, e.g. `key.rotate`.
    pub action: &'static str,
    pub resource_id: &'a str,
    /// The tenant the resource belongs to, if any.
    pub tenant_id: Option<&'a str>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// A resource's public view, for `before` / `after`.
pub(crate) fn snapshot(view: &impl Serialize) -> ApiResult<Option<Value>> {
    serde_json::to_value(view)
        .map(Some)
        .map_err(ApiError::internal)
}

/// An id that sorts after every earlier one from this process, even within
/// one millisecond (a rotation writes two entries at once), so (created_at,
/// id) is the order things happened in.
fn entry_id(now: SystemTime) -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed) % 1_000_000_000;
    format!(
        "aud_{ms:013}{seq:09}{}",
        db::new_id("")
            .trim_start_matches('_')
            .get(..6)
            .unwrap_or("")
    )
}

/// Writes `entry` in the change's transaction, and logs it.
pub(crate) async fn record(tx: &mut db::Tx, actor: &str, entry: Entry<'_>) -> ApiResult<()> {
    let resource_type = entry
        .action
        .split_once('.')
        .map_or(entry.action, |(kind, _)| kind);
    let json = |v: &Option<Value>| v.as_ref().map(Value::to_string);
    let now = SystemTime::now();
    sqlx::query(
        "INSERT INTO audit_log (id, created_at, actor, action, resource_type, resource_id,
                                tenant_id, before, after)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(entry_id(now))
    .bind(humantime::format_rfc3339_millis(now).to_string())
    .bind(actor)
    .bind(entry.action)
    .bind(resource_type)
    .bind(entry.resource_id)
    .bind(entry.tenant_id)
    .bind(json(&entry.before))
    .bind(json(&entry.after))
    .execute(&mut **tx)
    .await?;
    tracing::info!(
        actor,
        action = entry.action,
        resource_id = entry.resource_id,
        tenant_id = entry.tenant_id,
        "admin action"
    );
    Ok(())
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct AuditRow {
    id: String,
    created_at: String,
    actor: String,
    action: String,
    resource_type: String,
    resource_id: String,
    tenant_id: Option<String>,
    before: Option<String>,
    after: Option<String>,
}

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

impl AuditRow {
    fn entry(self) -> ApiResult<AuditEntry> {
        let parse = |text: Option<String>| {
            text.map(|t| serde_json::from_str(&t))
                .transpose()
                .map_err(ApiError::internal)
        };
        Ok(AuditEntry {
            before: parse(self.before)?,
            after: parse(self.after)?,
            id: self.id,
            created_at: self.created_at,
            actor: self.actor,
            action: self.action,
            resource_type: self.resource_type,
            resource_id: self.resource_id,
            tenant_id: self.tenant_id,
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
        (status = 400, description = "`invalid_query` (unknown parameter, bad `limit`, `since` or `until`) or `invalid_cursor`.",
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
    let limit = page_limit(query.limit)?;
    let tenant_id = match (&principal, query.tenant_id) {
        (Principal::Admin, wanted) => wanted,
        (Principal::Tenant(own), Some(wanted)) if wanted != *own => {
            return Err(ApiError::not_found("tenant", &wanted));
        }
        (Principal::Tenant(own), _) => Some(own.clone()),
    };
    let since = time_bound("since", query.since.as_deref())?;
    let until = time_bound("until", query.until.as_deref())?;
    let after = query.after.as_deref();
    if let Some(after) = after {
        let known: Option<String> = sqlx::query_scalar("SELECT id FROM audit_log WHERE id = $1")
            .bind(after)
            .fetch_optional(&state.db)
            .await?;
        known.ok_or_else(invalid_cursor)?;
    }
    let sql = format!(
        "SELECT id, created_at, actor, action, resource_type, resource_id, tenant_id, before, after
         FROM audit_log
         WHERE ($1 IS NULL OR action = $1) AND ($2 IS NULL OR actor = $2)
           AND ($3 IS NULL OR resource_type = $3) AND ($4 IS NULL OR resource_id = $4)
           AND ($5 IS NULL OR tenant_id = $5)
           AND ($6 IS NULL OR created_at >= $6) AND ($7 IS NULL OR created_at < $7) {}
         ORDER BY created_at DESC, id DESC LIMIT $9",
        cursor_clause("audit_log", 8, Order::Descending)
    );
    let rows = sqlx::query_as::<_, AuditRow>(&sql)
        .bind(query.action)
        .bind(query.actor)
        .bind(query.resource_type)
        .bind(query.resource_id)
        .bind(tenant_id)
        .bind(since)
        .bind(until)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&state.db)
        .await?;
    let entries = rows
        .into_iter()
        .map(AuditRow::entry)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(Page::from_rows(entries, limit, |e| e.id.clone())))
}
