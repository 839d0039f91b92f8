//! API keys as stored: only the SHA-256 of each key and the prefix shown to
//! recognise it, never the plaintext. A deleted key stays as a tombstone
//! under a new config version, so every filter learns of the deletion.

use serde::Serialize;
use tollgate_core::key::ApiKey;
use tollgate_core::wire::{WireLimit, WireScope};

use crate::db::{self, Db, Tx};
use crate::error::{ApiError, ApiResult};
use crate::paging::Cursor;
use crate::store::{cursor_binds, cursor_clause, Order, Params};

/// The settings a key carries besides its name; copied as they are on rotation.
#[derive(Debug, Clone, Default)]
pub struct KeySettings {
    /// RFC 3339; after it the filter answers 401 `expired_api_key`.
    pub expires_at: Option<String>,
    pub scopes: Option<Vec<WireScope>>,
    pub allowed_cidrs: Option<Vec<String>>,
    /// Replace the plan's limit of the same name, or add to them.
    pub limits: Option<Vec<WireLimit>>,
    pub monthly_quota: Option<u64>,
}

/// A key as admins see it: never the plaintext, never the hash.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    #[schema(example = "key_Jc3nV8qR2wX5tB0mZ7yH")]
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// `tg_` and the first 8 characters of the body, to recognise the key by.
    #[schema(example = "tg_Ab3dE6gH")]
    pub prefix: String,
    pub active: bool,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    pub scopes: Option<Vec<WireScope>>,
    pub allowed_cidrs: Option<Vec<String>>,
    pub limits: Option<Vec<WireLimit>>,
    pub monthly_quota: Option<u64>,
    /// The key this one was rotated from.
    pub rotated_from: Option<String>,
    /// To the minute, from what the filters report; `null` until first used.
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

#[derive(Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub prefix: String,
    /// 0 or 1: see `db` on booleans.
    pub active: i64,
    pub expires_at: Option<String>,
    pub expires_at_ms: Option<i64>,
    pub scopes: Option<String>,
    pub allowed_cidrs: Option<String>,
    pub limits: Option<String>,
    pub monthly_quota: Option<i64>,
    pub rotated_from: Option<String>,
    pub last_used_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A key's columns, selected `FROM api_keys` (unaliased); its last use is kept apart (see `store::usage`).
const KEY_COLUMNS: &str =
    "id, tenant_id, name, prefix, CAST(active AS INTEGER) AS active, expires_at, expires_at_ms, \
     scopes, allowed_cidrs, limits, monthly_quota, rotated_from, \
     (SELECT u.last_used_at FROM key_last_used u WHERE u.key_id = api_keys.id) AS last_used_at, \
     created_at, updated_at";

fn from_json<T: serde::de::DeserializeOwned>(text: &Option<String>) -> ApiResult<Option<T>> {
    text.as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(ApiError::internal)
}

fn to_json<T: Serialize>(value: &Option<T>) -> ApiResult<Option<String>> {
    value
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(ApiError::internal)
}

impl KeyRow {
    pub fn view(self) -> ApiResult<KeyView> {
        Ok(KeyView {
            scopes: from_json(&self.scopes)?,
            allowed_cidrs: from_json(&self.allowed_cidrs)?,
            limits: from_json(&self.limits)?,
            monthly_quota: self.monthly_quota.and_then(|q| u64::try_from(q).ok()),
            id: self.id,
            tenant_id: self.tenant_id,
            name: self.name,
            prefix: self.prefix,
            active: self.active != 0,
            expires_at: self.expires_at,
            rotated_from: self.rotated_from,
            last_used_at: self.last_used_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }

    pub fn settings(&self) -> ApiResult<KeySettings> {
        Ok(KeySettings {
            expires_at: self.expires_at.clone(),
            scopes: from_json(&self.scopes)?,
            allowed_cidrs: from_json(&self.allowed_cidrs)?,
            limits: from_json(&self.limits)?,
            monthly_quota: self.monthly_quota.and_then(|q| u64::try_from(q).ok()),
        })
    }
}

/// A key about to be written, and its plaintext: for the one response that shows it.
pub struct Fresh {
    pub id: String,
    pub key: ApiKey,
}

/// What every key of one insert shares.
#[derive(Clone, Copy)]
pub struct Shared<'a> {
    pub tenant_id: &'a str,
    pub name: &'a str,
    pub settings: &'a KeySettings,
    /// The expiry parsed: (RFC 3339 in UTC, Unix ms).
    pub expires: &'a Option<(String, i64)>,
    pub rotated_from: Option<&'a str>,
}

/// Values every key of one insert shares, bound once per statement as `$1`…`$12`.
const SHARED_BINDS: usize = 12;
/// Values of each key: id, prefix and hash.
const ROW_BINDS: usize = 3;
/// Keys per INSERT statement: 12 + 3 × 2000 = 6012 parameters, far below
/// SQLite's limit (32766) and PostgreSQL's (65535). Every full chunk is the
/// same statement, prepared once per connection.
const INSERT_CHUNK: usize = 2000;

/// `INSERT INTO api_keys` of `rows` keys that share everything but id, prefix and hash.
fn insert_sql(rows: usize) -> String {
    use std::fmt::Write as _;
    let mut sql = String::from(
        "INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, active, expires_at,
                               expires_at_ms, scopes, allowed_cidrs, limits, monthly_quota,
                               rotated_from, created_at, updated_at, version)
         VALUES ",
    );
    for row in 0..rows {
        let n = SHARED_BINDS + row * ROW_BINDS;
        let separator = if row == 0 { "" } else { ", " };
        let _ = write!(
            sql,
            "{separator}(${}, $1, $2, ${}, ${}, TRUE, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            n + 1,
            n + 2,
            n + 3
        );
    }
    sql
}

/// Inserts `fresh` keys under config `version`, all with the same tenant,
/// name and settings, created at `now` (RFC 3339).
pub async fn insert(
    tx: &mut Tx,
    version: i64,
    shared: &Shared<'_>,
    fresh: &[Fresh],
    now: &str,
) -> ApiResult<()> {
    let Shared {
        tenant_id,
        name,
        settings,
        expires,
        rotated_from,
    } = *shared;
    let count = fresh.len();
    let scopes = to_json(&settings.scopes)?;
    let allowed_cidrs = to_json(&settings.allowed_cidrs)?;
    let limits = to_json(&settings.limits)?;
    let monthly_quota = settings.monthly_quota.and_then(|q| i64::try_from(q).ok());
    let full_chunk = insert_sql(INSERT_CHUNK.min(count));
    for chunk in fresh.chunks(INSERT_CHUNK) {
        let last_chunk;
        let sql = if chunk.len() == INSERT_CHUNK.min(count) {
            &full_chunk
        } else {
            last_chunk = insert_sql(chunk.len());
            &last_chunk
        };
        let mut query = sqlx::query(sql)
            .bind(tenant_id)
            .bind(name)
            .bind(expires.as_ref().map(|e| e.0.as_str()))
            .bind(expires.as_ref().map(|e| e.1))
            .bind(scopes.as_deref())
            .bind(allowed_cidrs.as_deref())
            .bind(limits.as_deref())
            .bind(monthly_quota)
            .bind(rotated_from)
            .bind(now)
            .bind(now)
            .bind(version);
        for key in chunk {
            query = query
                .bind(key.id.as_str())
                .bind(key.key.display_prefix())
                .bind(key.key.hash().to_hex());
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// The key, unless there is none or it was deleted.
pub async fn find<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    id: &str,
) -> Result<Option<KeyRow>, sqlx::Error> {
    sqlx::query_as::<_, KeyRow>(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await
}

/// A key found by its hash, and that hash.
#[derive(Clone, sqlx::FromRow)]
pub struct HashedKey {
    pub key_hash: String,
    #[sqlx(flatten)]
    pub key: KeyRow,
}

/// `(key_hash, active)` of each key ever issued whose hash is among
/// `hashes`, deleted ones included (they are inactive).
pub async fn activity_by_hashes(
    db: &Db,
    hashes: &[String],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    if hashes.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT key_hash, CAST(active AS INTEGER) FROM api_keys WHERE key_hash IN ({})",
        // Leak reports bound their hashes (at most 1000), far below either
        // database's limit on parameters.
        Params::new(db::is_postgres(db)).list(hashes.len())
    );
    let mut query = sqlx::query_as::<_, (String, i64)>(&sql);
    for hash in hashes {
        query = query.bind(hash.as_str());
    }
    query.fetch_all(db).await
}

/// The live (not deleted) keys whose hash is among `hashes`, read in the
/// change's transaction.
pub async fn live_by_hashes(
    tx: &mut Tx,
    hashes: &[String],
    postgres: bool,
) -> Result<Vec<HashedKey>, sqlx::Error> {
    if hashes.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT key_hash, {KEY_COLUMNS} FROM api_keys
         WHERE key_hash IN ({}) AND deleted_at IS NULL ORDER BY created_at, id",
        Params::new(postgres).list(hashes.len())
    );
    let mut query = sqlx::query_as::<_, HashedKey>(&sql);
    for hash in hashes {
        query = query.bind(hash.as_str());
    }
    query.fetch_all(&mut **tx).await
}

/// The tenant's allowance of keys (`None` when its plan has none), or `None`
/// when there is no such tenant.
pub async fn allowance(tx: &mut Tx, tenant_id: &str) -> Result<Option<Option<i64>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT p.max_api_keys FROM tenants t JOIN plans p ON p.id = t.plan_id
         WHERE t.id = $1 AND t.deleted_at IS NULL",
    )
    .bind(tenant_id)
    .fetch_optional(&mut **tx)
    .await
}

/// How many keys (not deleted) the tenant holds.
pub async fn count_of_tenant(tx: &mut Tx, tenant_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE tenant_id = $1 AND deleted_at IS NULL")
        .bind(tenant_id)
        .fetch_one(&mut **tx)
        .await
}

/// The tenant's keys written under config `version`: those of one insert.
pub async fn of_version(
    tx: &mut Tx,
    version: i64,
    tenant_id: &str,
) -> Result<Vec<KeyRow>, sqlx::Error> {
    sqlx::query_as::<_, KeyRow>(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE version = $1 AND tenant_id = $2"
    ))
    .bind(version)
    .bind(tenant_id)
    .fetch_all(&mut **tx)
    .await
}

/// A key's changeable fields, as written by [`update`].
pub struct Update<'a> {
    pub active: bool,
    pub name: &'a str,
    pub settings: &'a KeySettings,
    pub expires: &'a Option<(String, i64)>,
}

/// Writes a key's fields over its row under config `version`, at `now` (RFC 3339).
pub async fn update(
    tx: &mut Tx,
    id: &str,
    fields: &Update<'_>,
    version: i64,
    now: &str,
) -> ApiResult<()> {
    sqlx::query(
        "UPDATE api_keys SET active = $1, name = $2, expires_at = $3, expires_at_ms = $4,
                             scopes = $5, allowed_cidrs = $6, limits = $7, monthly_quota = $8,
                             updated_at = $9, version = $10
         WHERE id = $11",
    )
    .bind(fields.active)
    .bind(fields.name)
    .bind(fields.expires.as_ref().map(|e| e.0.clone()))
    .bind(fields.expires.as_ref().map(|e| e.1))
    .bind(to_json(&fields.settings.scopes)?)
    .bind(to_json(&fields.settings.allowed_cidrs)?)
    .bind(to_json(&fields.settings.limits)?)
    .bind(
        fields
            .settings
            .monthly_quota
            .and_then(|q| i64::try_from(q).ok()),
    )
    .bind(now)
    .bind(version)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Moves a key's expiry to `end` (RFC 3339, and Unix ms), as a rotation's grace period ends it.
pub async fn end_at(
    tx: &mut Tx,
    id: &str,
    (end, end_ms): (&str, i64),
    version: i64,
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE api_keys SET expires_at = $1, expires_at_ms = $2, updated_at = $3, version = $4
         WHERE id = $5",
    )
    .bind(end)
    .bind(end_ms)
    .bind(now)
    .bind(version)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Tombstones the key under config `version`; whether there was one to tombstone.
pub async fn delete(tx: &mut Tx, id: &str, version: i64, now: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE api_keys SET deleted_at = $1, active = FALSE, updated_at = $2, version = $3
         WHERE id = $4 AND deleted_at IS NULL",
    )
    .bind(now)
    .bind(now)
    .bind(version)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Tombstones every key of the tenant under config `version`.
pub async fn delete_of_tenant(
    tx: &mut Tx,
    tenant_id: &str,
    version: i64,
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE api_keys SET deleted_at = $1, active = FALSE, updated_at = $2, version = $3
         WHERE tenant_id = $4 AND deleted_at IS NULL",
    )
    .bind(now)
    .bind(now)
    .bind(version)
    .bind(tenant_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sends every key of the tenant to the filters again, under config
/// `version`: what they carry of their tenant (plan, anchor) changed.
pub async fn republish_of_tenant(
    tx: &mut Tx,
    tenant_id: &str,
    version: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE api_keys SET version = $1 WHERE tenant_id = $2 AND deleted_at IS NULL")
        .bind(version)
        .bind(tenant_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Up to `limit` of the tenant's keys in creation order (only active or
/// only deactivated ones, if `active` says), after the key `after`.
pub async fn list(
    db: &Db,
    tenant_id: &str,
    active: Option<bool>,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<KeyRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {KEY_COLUMNS} FROM api_keys
         WHERE tenant_id = $1 AND deleted_at IS NULL AND ($2 IS NULL OR active = $2) {}
         ORDER BY created_at, id LIMIT $5",
        cursor_clause(3, Order::Ascending)
    );
    let (at, id) = cursor_binds(after, Cursor::created_at_seconds);
    sqlx::query_as::<_, KeyRow>(&sql)
        .bind(tenant_id)
        .bind(active)
        .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(db)
        .await
}

/// Live keys that are active and unexpired at `now_ms`, of one tenant or of all.
pub async fn count_active(
    db: &Db,
    tenant_id: Option<&str>,
    now_ms: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM api_keys
         WHERE deleted_at IS NULL AND active = TRUE
           AND (expires_at_ms IS NULL OR expires_at_ms > $2)
           AND ($1 IS NULL OR tenant_id = $1)",
    )
    .bind(tenant_id)
    .bind(now_ms)
    .fetch_one(db)
    .await
}

/// How many live keys each of these tenants holds.
pub async fn count_of_tenants(db: &Db) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant_id, COUNT(*) FROM api_keys WHERE deleted_at IS NULL GROUP BY tenant_id",
    )
    .fetch_all(db)
    .await
}

/// Whether a live key was rotated from key `id`.
pub async fn has_successor(db: &Db, id: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM api_keys WHERE rotated_from = $1 AND deleted_at IS NULL",
    )
    .bind(id)
    .fetch_one(db)
    .await?;
    Ok(n > 0)
}

/// What a key's usage is metered under: its hash (the filter's name for
/// its buckets) and its tenant. Deleted keys too: their last reports still
/// arrive.
pub async fn identity(db: &Db, id: &str) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as::<_, (String, String)>("SELECT key_hash, tenant_id FROM api_keys WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}
