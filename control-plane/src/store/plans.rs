//! Plans as stored: their rows, and every statement that reads or writes
//! them. A deleted plan stays as a tombstone, so the Envoys learn of the
//! deletion from the version feed.

use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;
use tollgate_core::wire::{WireLimit, WirePlan, WireRouteCost};

use crate::db::{self, Db, Tx};
use crate::error::{ApiError, ApiResult};
use crate::paging::Cursor;
use crate::store::{cursor_binds, cursor_clause, db_int, to_u64, Order};

/// A plan. `null` quotas and allowances mean unlimited.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlanView {
    #[schema(example = "plan_4f9XkQ2mB7cR1tZ8aL0e")]
    pub id: String,
    pub name: String,
    pub limits: Vec<WireLimit>,
    pub monthly_quota: Option<u64>,
    /// Per-route costs, first match wins; `[]`: every request costs 1.
    pub route_costs: Vec<WireRouteCost>,
    pub max_api_keys: Option<u64>,
    pub max_users: Option<u64>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub public: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

#[derive(sqlx::FromRow)]
pub struct PlanRow {
    pub id: String,
    pub name: String,
    pub limits: String,
    pub monthly_quota: Option<i64>,
    pub route_costs: String,
    pub max_api_keys: Option<i64>,
    pub max_users: Option<i64>,
    pub metadata: String,
    /// 0 or 1: see `db` on booleans.
    pub public: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl PlanRow {
    /// What the filters get.
    pub fn wire(&self) -> Result<WirePlan, ApiError> {
        Ok(WirePlan {
            id: self.id.clone(),
            name: self.name.clone(),
            limits: serde_json::from_str(&self.limits).map_err(ApiError::internal)?,
            monthly_quota: to_u64(self.monthly_quota),
            route_costs: serde_json::from_str(&self.route_costs).map_err(ApiError::internal)?,
        })
    }

    pub fn view(self) -> Result<PlanView, ApiError> {
        Ok(PlanView {
            limits: serde_json::from_str(&self.limits).map_err(ApiError::internal)?,
            metadata: serde_json::from_str(&self.metadata).map_err(ApiError::internal)?,
            monthly_quota: to_u64(self.monthly_quota),
            route_costs: serde_json::from_str(&self.route_costs).map_err(ApiError::internal)?,
            max_api_keys: to_u64(self.max_api_keys),
            max_users: to_u64(self.max_users),
            public: self.public != 0,
            id: self.id,
            name: self.name,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

const PLAN_COLUMNS: &str = "id, name, limits, monthly_quota, route_costs, max_api_keys, \
     max_users, metadata, CAST(public AS INTEGER) AS public, created_at, updated_at";

fn name_taken(name: &str) -> ApiError {
    ApiError::conflict(
        "plan_name_taken",
        format!("A plan named {name:?} already exists."),
    )
}

/// The columns a plan's view is written to, as bound; quotas and allowances
/// were checked to fit a `BIGINT` before.
struct Columns {
    limits: String,
    route_costs: String,
    metadata: String,
    monthly_quota: Option<i64>,
    max_api_keys: Option<i64>,
    max_users: Option<i64>,
}

impl Columns {
    fn of(view: &PlanView) -> ApiResult<Self> {
        Ok(Self {
            limits: serde_json::to_string(&view.limits).map_err(ApiError::internal)?,
            route_costs: serde_json::to_string(&view.route_costs).map_err(ApiError::internal)?,
            metadata: view.metadata.to_string(),
            monthly_quota: view.monthly_quota.map(db_int),
            max_api_keys: view.max_api_keys.map(db_int),
            max_users: view.max_users.map(db_int),
        })
    }
}

/// Inserts a validated plan under config `version`; 409 `plan_name_taken`.
pub async fn insert(tx: &mut Tx, view: &PlanView, version: i64) -> ApiResult<()> {
    let columns = Columns::of(view)?;
    let inserted = sqlx::query(
        "INSERT INTO plans (id, name, limits, monthly_quota, max_api_keys, max_users, metadata,
                            public, created_at, updated_at, version, route_costs)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&view.id)
    .bind(&view.name)
    .bind(&columns.limits)
    .bind(columns.monthly_quota)
    .bind(columns.max_api_keys)
    .bind(columns.max_users)
    .bind(&columns.metadata)
    .bind(view.public)
    .bind(&view.created_at)
    .bind(&view.updated_at)
    .bind(version)
    .bind(&columns.route_costs)
    .execute(&mut **tx)
    .await;
    match inserted {
        Err(e) if db::is_unique_violation(&e) => Err(name_taken(&view.name)),
        other => other.map(|_| ()).map_err(ApiError::from),
    }
}

/// Writes a validated plan's fields over its row under config `version`; 409 `plan_name_taken`.
pub async fn update(tx: &mut Tx, view: &PlanView, version: i64) -> ApiResult<()> {
    let columns = Columns::of(view)?;
    let updated = sqlx::query(
        "UPDATE plans SET name = $1, limits = $2, monthly_quota = $3, max_api_keys = $4, max_users = $5,
                          metadata = $6, public = $7, updated_at = $8, version = $9, route_costs = $10
         WHERE id = $11",
    )
    .bind(&view.name)
    .bind(&columns.limits)
    .bind(columns.monthly_quota)
    .bind(columns.max_api_keys)
    .bind(columns.max_users)
    .bind(&columns.metadata)
    .bind(view.public)
    .bind(&view.updated_at)
    .bind(version)
    .bind(&columns.route_costs)
    .bind(&view.id)
    .execute(&mut **tx)
    .await;
    match updated {
        Err(e) if db::is_unique_violation(&e) => Err(name_taken(&view.name)),
        other => other.map(|_| ()).map_err(ApiError::from),
    }
}

/// Leaves a tombstone, under config `version`, at `now` (RFC 3339).
pub async fn delete(tx: &mut Tx, id: &str, version: i64, now: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE plans SET deleted_at = $1, updated_at = $2, version = $3 WHERE id = $4")
        .bind(now)
        .bind(now)
        .bind(version)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The plan, unless there is none or it was deleted.
pub async fn find<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    id: &str,
) -> Result<Option<PlanRow>, sqlx::Error> {
    sqlx::query_as::<_, PlanRow>(&format!(
        "SELECT {PLAN_COLUMNS} FROM plans WHERE id = $1 AND deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await
}

/// 404 `plan_not_found` unless a plan of that id exists (not deleted): for
/// what is about to refer to it.
pub async fn require(tx: &mut Tx, id: &str) -> ApiResult<()> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "plan_not_found",
            format!("No plan with id {id:?}."),
        )
    };
    // Text no id has is not looked for (PostgreSQL cannot even read a NUL).
    if !crate::input::is_id_shaped(id) {
        return Err(not_found());
    }
    match find(&mut **tx, id).await? {
        Some(_) => Ok(()),
        None => Err(not_found()),
    }
}

/// Up to `limit` plans in creation order, past `after`.
pub async fn list(
    db: &Db,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<PlanRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {PLAN_COLUMNS} FROM plans WHERE deleted_at IS NULL {}
         ORDER BY created_at, id LIMIT $3",
        cursor_clause(1, Order::Ascending)
    );
    let (at, id) = cursor_binds(after, Cursor::created_at_seconds);
    sqlx::query_as::<_, PlanRow>(&sql)
        .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(db)
        .await
}

/// The plans marked public, smallest monthly quota first (unlimited last).
pub async fn public(db: &Db) -> Result<Vec<PlanRow>, sqlx::Error> {
    sqlx::query_as::<_, PlanRow>(&format!(
        "SELECT {PLAN_COLUMNS} FROM plans WHERE public AND deleted_at IS NULL
         ORDER BY monthly_quota IS NULL, monthly_quota, created_at, id"
    ))
    .fetch_all(db)
    .await
}

/// The names of the plans that exist (not deleted).
pub async fn names(tx: &mut Tx) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM plans WHERE deleted_at IS NULL")
        .fetch_all(&mut **tx)
        .await
}

/// How many tenants (not deleted) are on the plan.
pub async fn tenants_on(tx: &mut Tx, id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM tenants WHERE plan_id = $1 AND deleted_at IS NULL")
        .bind(id)
        .fetch_one(&mut **tx)
        .await
}

/// Plans (not deleted) changed after config version `since`, oldest change first.
pub async fn changed_since(tx: &mut Tx, since: i64) -> Result<Vec<PlanRow>, sqlx::Error> {
    sqlx::query_as::<_, PlanRow>(&format!(
        "SELECT {PLAN_COLUMNS} FROM plans
         WHERE version > $1 AND deleted_at IS NULL ORDER BY version"
    ))
    .bind(since)
    .fetch_all(&mut **tx)
    .await
}

/// The ids of the plans deleted after config version `since`.
pub async fn deleted_since(tx: &mut Tx, since: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM plans WHERE version > $1 AND deleted_at IS NOT NULL ORDER BY version",
    )
    .bind(since)
    .fetch_all(&mut **tx)
    .await
}

/// How many live plans there are.
pub async fn count(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM plans WHERE deleted_at IS NULL")
        .fetch_one(db)
        .await
}

/// Per live plan: how many tenants are on it and how many live keys they hold.
pub async fn subscribers(db: &Db) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.id,
                (SELECT COUNT(*) FROM tenants t WHERE t.plan_id = p.id AND t.deleted_at IS NULL),
                (SELECT COUNT(*) FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
                 WHERE t.plan_id = p.id AND t.deleted_at IS NULL AND k.deleted_at IS NULL)
         FROM plans p WHERE p.deleted_at IS NULL",
    )
    .fetch_all(db)
    .await
}
