//! Anonymous access as stored: one row for the whole installation, with the
//! config version that last changed it.

use serde::Serialize;
use tollgate_core::wire::{WireAnonymous, WireScope};

use crate::db::Tx;
use crate::error::{ApiError, ApiResult};

/// Anonymous access as it is. No routes: every request needs a key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AnonymousAccessView {
    pub routes: Vec<WireScope>,
    pub plan_id: Option<String>,
    /// `null` until first set.
    #[schema(format = DateTime)]
    pub updated_at: Option<String>,
}

#[derive(sqlx::FromRow)]
struct AnonymousRow {
    routes: String,
    plan_id: Option<String>,
    updated_at: Option<String>,
    version: i64,
}

/// The setting, and the config version that last changed it.
pub async fn fetch<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
) -> ApiResult<(AnonymousAccessView, i64)> {
    let row = sqlx::query_as::<_, AnonymousRow>(
        "SELECT routes, plan_id, updated_at, version FROM anonymous_access WHERE id = 1",
    )
    .fetch_one(executor)
    .await?;
    let view = AnonymousAccessView {
        routes: serde_json::from_str(&row.routes).map_err(ApiError::internal)?,
        plan_id: row.plan_id,
        updated_at: row.updated_at,
    };
    Ok((view, row.version))
}

/// What the filters get, and the config version that last changed it.
pub async fn read<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
) -> ApiResult<(WireAnonymous, i64)> {
    let (view, version) = fetch(executor).await?;
    Ok((
        WireAnonymous {
            routes: view.routes,
            plan_id: view.plan_id,
        },
        version,
    ))
}

/// Replaces the setting under config `version`.
pub async fn replace(tx: &mut Tx, view: &AnonymousAccessView, version: i64) -> ApiResult<()> {
    sqlx::query(
        "UPDATE anonymous_access SET routes = $1, plan_id = $2, updated_at = $3, version = $4
         WHERE id = 1",
    )
    .bind(serde_json::to_string(&view.routes).map_err(ApiError::internal)?)
    .bind(&view.plan_id)
    .bind(&view.updated_at)
    .bind(version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether anonymous access counts against the plan.
pub async fn uses_plan(tx: &mut Tx, plan_id: &str) -> Result<bool, sqlx::Error> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM anonymous_access WHERE id = 1 AND plan_id = $1")
            .bind(plan_id)
            .fetch_one(&mut **tx)
            .await?;
    Ok(n > 0)
}
