//! Tenants as stored. A deleted tenant stays as a tombstone; its keys are
//! tombstoned with it (`store::keys`).

use serde::Serialize;

use crate::db::{self, Db, Tx};
use crate::error::{ApiError, ApiResult};
use crate::paging::Cursor;
use crate::store::{cursor_binds, cursor_clause, Order};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantView {
    #[schema(example = "tnt_8sLq2ZxV0bN4mT7cK1pW")]
    pub id: String,
    pub name: String,
    pub plan_id: String,
    /// The day of the month quota periods start on; `null`: calendar months (UTC).
    #[schema(minimum = 1, maximum = 31)]
    pub billing_anchor_day: Option<u8>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    id: String,
    name: String,
    plan_id: String,
    billing_anchor_day: Option<i64>,
    created_at: String,
    updated_at: String,
}

impl From<TenantRow> for TenantView {
    fn from(row: TenantRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            plan_id: row.plan_id,
            billing_anchor_day: row.billing_anchor_day.and_then(|d| u8::try_from(d).ok()),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

const TENANT_COLUMNS: &str = "id, name, plan_id, billing_anchor_day, created_at, updated_at";

fn name_taken(name: &str) -> ApiError {
    ApiError::conflict(
        "tenant_name_taken",
        format!("A tenant named {name:?} already exists."),
    )
}

/// The tenant, unless there is none or it was deleted.
pub async fn find<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    id: &str,
) -> Result<Option<TenantView>, sqlx::Error> {
    let row = sqlx::query_as::<_, TenantRow>(&format!(
        "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1 AND deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(TenantView::from))
}

pub async fn exists(db: &Db, id: &str) -> Result<bool, sqlx::Error> {
    Ok(find(db, id).await?.is_some())
}

/// The plan a tenant is on, tombstone or not.
pub async fn plan_of(db: &Db, id: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT plan_id FROM tenants WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Inserts a tenant; 409 `tenant_name_taken`.
pub async fn insert(tx: &mut Tx, view: &TenantView) -> ApiResult<()> {
    let inserted = sqlx::query(
        "INSERT INTO tenants (id, name, plan_id, billing_anchor_day, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&view.id)
    .bind(&view.name)
    .bind(&view.plan_id)
    .bind(view.billing_anchor_day.map(i64::from))
    .bind(&view.created_at)
    .bind(&view.updated_at)
    .execute(&mut **tx)
    .await;
    match inserted {
        Err(e) if db::is_unique_violation(&e) => Err(name_taken(&view.name)),
        other => other.map(|_| ()).map_err(ApiError::from),
    }
}

/// Writes a tenant's name, plan and anchor over its row; 409 `tenant_name_taken`.
pub async fn update(tx: &mut Tx, view: &TenantView) -> ApiResult<()> {
    let updated = sqlx::query(
        "UPDATE tenants SET name = $1, plan_id = $2, billing_anchor_day = $3, updated_at = $4
         WHERE id = $5",
    )
    .bind(&view.name)
    .bind(&view.plan_id)
    .bind(view.billing_anchor_day.map(i64::from))
    .bind(&view.updated_at)
    .bind(&view.id)
    .execute(&mut **tx)
    .await;
    match updated {
        Err(e) if db::is_unique_violation(&e) => Err(name_taken(&view.name)),
        other => other.map(|_| ()).map_err(ApiError::from),
    }
}

/// Leaves a tombstone at `now` (RFC 3339); the keys are `store::keys::delete_of_tenant`'s.
pub async fn delete(tx: &mut Tx, id: &str, now: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tenants SET deleted_at = $1, updated_at = $2 WHERE id = $3")
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Takes the tenant's row lock for the rest of `tx`, so that changes of
/// what belongs to it are serialised with its deletion; whether it exists.
pub async fn lock(tx: &mut Tx, id: &str) -> Result<bool, sqlx::Error> {
    let locked = sqlx::query(
        "UPDATE tenants SET updated_at = updated_at WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(locked.rows_affected() > 0)
}

/// Up to `limit` tenants in creation order (only those on `plan_id`, if given), after `after`.
pub async fn list(
    db: &Db,
    plan_id: Option<&str>,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<TenantView>, sqlx::Error> {
    let sql = format!(
        "SELECT {TENANT_COLUMNS} FROM tenants
         WHERE deleted_at IS NULL AND ($1 IS NULL OR plan_id = $1) {}
         ORDER BY created_at, id LIMIT $4",
        cursor_clause(2, Order::Ascending)
    );
    let (at, id) = cursor_binds(after, Cursor::created_at_seconds);
    let rows = sqlx::query_as::<_, TenantRow>(&sql)
        .bind(plan_id)
        .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(TenantView::from).collect())
}

/// How many live tenants there are.
pub async fn count(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM tenants WHERE deleted_at IS NULL")
        .fetch_one(db)
        .await
}
