//! The audit log: who changed what, when, and the resource before and after.
//!
//! Handlers call [`record`] inside the transaction of the change itself, so a
//! change and its entry commit together or not at all. Entries hold public
//! views only (a key's metadata, never its plaintext or hash). `GET /v1/audit`
//! lists them newest first; a tenant token sees its own tenant's trail.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::auth::Principal;
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::routes::{cursor_clause, invalid_cursor, page_limit, Order, Page};
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

#[derive(Debug, Serialize)]
pub struct AuditEntry {
    pub id: String,
    pub created_at: String,
    pub actor: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub tenant_id: Option<String>,
    pub before: Option<Value>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListAudit {
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub resource_type: Option<String>,
    #[serde(default)]
    pub resource_id: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// RFC 3339; entries at or after it.
    #[serde(default)]
    pub since: Option<String>,
    /// RFC 3339; entries before it.
    #[serde(default)]
    pub until: Option<String>,
}

/// An RFC 3339 bound in the stored form (UTC, milliseconds), so text order is time order.
fn time_bound(field: &str, text: Option<&str>) -> ApiResult<Option<String>> {
    let Some(text) = text else { return Ok(None) };
    let invalid = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("{field} must be an RFC 3339 time like 2026-11-01T00:00:00Z."),
        )
    };
    let at = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| invalid())?;
    let at = SystemTime::from(at);
    if at < SystemTime::UNIX_EPOCH {
        return Err(invalid());
    }
    Ok(Some(humantime::format_rfc3339_millis(at).to_string()))
}

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
