//! The audit log's rows: written inside the transaction of the change itself
//! (by `change::Change`, never directly by a handler), so a change and its
//! entry commit together or not at all, and read back newest first.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::clock::Now;
use crate::db::{self, Db, Tx};
use crate::error::{ApiError, ApiResult};
use crate::paging::Cursor;
use crate::store::{cursor_binds, cursor_clause, Order};

/// One change, as a handler describes it.
pub struct Entry<'a> {
    /// `<resource type>.<verb>`, e.g. `key.rotate`.
    pub action: &'static str,
    pub resource_id: &'a str,
    /// The tenant the resource belongs to, if any.
    pub tenant_id: Option<&'a str>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// An id that sorts after every earlier one from this process, even within
/// one millisecond (a rotation writes two entries at once), so (created_at,
/// id) is the order things happened in.
fn entry_id(now: Now) -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let ms = now.unix_ms();
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed) % 1_000_000_000;
    format!(
        "aud_{ms:013}{seq:09}{}",
        db::new_id("")
            .trim_start_matches('_')
            .get(..6)
            .unwrap_or("")
    )
}

/// Writes `entry` in the change's transaction.
pub async fn insert(tx: &mut Tx, actor: &str, entry: &Entry<'_>, now: Now) -> ApiResult<()> {
    let resource_type = entry
        .action
        .split_once('.')
        .map_or(entry.action, |(kind, _)| kind);
    let json = |v: &Option<Value>| v.as_ref().map(Value::to_string);
    sqlx::query(
        "INSERT INTO audit_log (id, created_at, actor, action, resource_type, resource_id,
                                tenant_id, before, after)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(entry_id(now))
    .bind(now.rfc3339_millis())
    .bind(actor)
    .bind(entry.action)
    .bind(resource_type)
    .bind(entry.resource_id)
    .bind(entry.tenant_id)
    .bind(json(&entry.before))
    .bind(json(&entry.after))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An entry as stored; `before` and `after` are JSON text.
#[derive(Debug, sqlx::FromRow)]
pub struct AuditRow {
    pub id: String,
    pub created_at: String,
    pub actor: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub tenant_id: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
}

impl AuditRow {
    /// `before` and `after` parsed.
    pub fn snapshots(&self) -> ApiResult<(Option<Value>, Option<Value>)> {
        let parse = |text: &Option<String>| {
            text.as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(ApiError::internal)
        };
        Ok((parse(&self.before)?, parse(&self.after)?))
    }
}

/// What a list of entries is narrowed to; every `None` matches everything.
/// `since` and `until` are in the stored form (UTC, milliseconds).
#[derive(Debug, Default)]
pub struct Filter {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub tenant_id: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

/// Up to `limit` entries matching `filter`, newest first, past `after`.
pub async fn list(
    db: &Db,
    filter: Filter,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    let sql = format!(
        "SELECT id, created_at, actor, action, resource_type, resource_id, tenant_id, before, after
         FROM audit_log
         WHERE ($1 IS NULL OR action = $1) AND ($2 IS NULL OR actor = $2)
           AND ($3 IS NULL OR resource_type = $3) AND ($4 IS NULL OR resource_id = $4)
           AND ($5 IS NULL OR tenant_id = $5)
           AND ($6 IS NULL OR created_at >= $6) AND ($7 IS NULL OR created_at < $7) {}
         ORDER BY created_at DESC, id DESC LIMIT $10",
        cursor_clause(8, Order::Descending)
    );
    let (at, id) = cursor_binds(after, Cursor::created_at_millis);
    sqlx::query_as::<_, AuditRow>(&sql)
        .bind(filter.action)
        .bind(filter.actor)
        .bind(filter.resource_type)
        .bind(filter.resource_id)
        .bind(filter.tenant_id)
        .bind(filter.since)
        .bind(filter.until)
        .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(db)
        .await
}
