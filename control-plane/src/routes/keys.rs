//! API keys: issued once in plaintext, stored only as SHA-256, pushed to every filter.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use tollgate_core::key::{ApiKey, BODY_LEN};

use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::routes::{after_cursor, invalid_cursor, page_limit, tenants, validate_name, Page};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/tenants/{tenant_id}/keys",
            post(keys_create).get(keys_list),
        )
        .route(
            "/keys/{id}",
            get(keys_show).patch(keys_update).delete(keys_delete),
        )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    #[serde(default)]
    pub active: Option<bool>,
    #[serde(default)]
    pub name: Option<String>,
}

/// A key as admins see it: never the plaintext, never the hash.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct KeyView {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub prefix: String,
    pub active: bool,
    pub created_at: String,
    pub updated_at: String,
}

/// The one response that carries the plaintext.
#[derive(Debug, Serialize)]
pub struct IssuedKey {
    #[serde(flatten)]
    pub view: KeyView,
    pub key: String,
}

const KEY_COLUMNS: &str = "id, tenant_id, name, prefix, active, created_at, updated_at";

async fn keys_create(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    ApiJson(input): ApiJson<CreateKey>,
) -> ApiResult<Response> {
    validate_name("name", &input.name)?;
    let key = ApiKey::from_body(&Alphanumeric.sample_string(&mut rand::rng(), BODY_LEN))
        .map_err(ApiError::internal)?;
    let id = db::new_id("key");
    let now = db::now();

    let (mut tx, version) = db::begin_change(&state.db).await?;
    let max_api_keys: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT p.max_api_keys FROM tenants t JOIN plans p ON p.id = t.plan_id
         WHERE t.id = ? AND t.deleted_at IS NULL",
    )
    .bind(&tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(max_api_keys) = max_api_keys else {
        return Err(ApiError::not_found("tenant", &tenant_id));
    };
    if let Some(max) = max_api_keys {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_keys WHERE tenant_id = ? AND deleted_at IS NULL",
        )
        .bind(&tenant_id)
        .fetch_one(&mut *tx)
        .await?;
        if count >= max {
            return Err(ApiError::conflict(
                "key_limit_reached",
                format!("The tenant's plan allows {max} API keys and it has {count}."),
            ));
        }
    }
    sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, active, created_at, updated_at, version)
         VALUES (?, ?, ?, ?, ?, TRUE, ?, ?, ?)",
    )
    .bind(&id)
    .bind(&tenant_id)
    .bind(&input.name)
    .bind(key.display_prefix())
    .bind(key.hash().to_hex())
    .bind(&now)
    .bind(&now)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    state.published(version);

    let issued = IssuedKey {
        view: KeyView {
            id: id.clone(),
            tenant_id,
            name: input.name,
            prefix: key.display_prefix().to_owned(),
            active: true,
            created_at: now.clone(),
            updated_at: now,
        },
        key: key.expose().to_owned(),
    };
    Ok((
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/v1/keys/{id}")),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        Json(issued),
    )
        .into_response())
}

async fn find<'e>(
    executor: impl sqlx::SqliteExecutor<'e>,
    id: &str,
) -> Result<Option<KeyView>, sqlx::Error> {
    sqlx::query_as::<_, KeyView>(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ? AND deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await
}

async fn keys_show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyView>> {
    find(&state.db, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("API key", &id))
}

async fn keys_update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<UpdateKey>,
) -> ApiResult<Json<KeyView>> {
    if input.active.is_none() && input.name.is_none() {
        return Err(ApiError::invalid(
            "invalid_body",
            "Nothing to change: send \"active\" and/or \"name\".",
        ));
    }
    if let Some(name) = &input.name {
        validate_name("name", name)?;
    }
    let (mut tx, version) = db::begin_change(&state.db).await?;
    let Some(current) = find(&mut *tx, &id).await? else {
        return Err(ApiError::not_found("API key", &id));
    };
    let active = input.active.unwrap_or(current.active);
    let name = input.name.unwrap_or(current.name);
    sqlx::query(
        "UPDATE api_keys SET active = ?, name = ?, updated_at = ?, version = ? WHERE id = ?",
    )
    .bind(active)
    .bind(&name)
    .bind(db::now())
    .bind(version)
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    let updated = find(&mut *tx, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key", &id))?;
    tx.commit().await?;
    state.published(version);
    Ok(Json(updated))
}

async fn keys_delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let (mut tx, version) = db::begin_change(&state.db).await?;
    let now = db::now();
    // A tombstone, not a DELETE: filters learn of deletions from the version feed.
    let done = sqlx::query(
        "UPDATE api_keys SET deleted_at = ?, active = FALSE, updated_at = ?, version = ?
         WHERE id = ? AND deleted_at IS NULL",
    )
    .bind(&now)
    .bind(&now)
    .bind(version)
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("API key", &id));
    }
    tx.commit().await?;
    state.published(version);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListKeys {
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub active: Option<bool>,
}

async fn keys_list(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    ApiQuery(query): ApiQuery<ListKeys>,
) -> ApiResult<Json<Page<KeyView>>> {
    let limit = page_limit(query.limit)?;
    if tenants::find(&state.db, &tenant_id).await?.is_none() {
        return Err(ApiError::not_found("tenant", &tenant_id));
    }
    let after = match &query.after {
        Some(after) => {
            find(&state.db, after).await?.ok_or_else(invalid_cursor)?;
            format!("AND {}", after_cursor("api_keys"))
        }
        None => String::new(),
    };
    let sql = format!(
        "SELECT {KEY_COLUMNS} FROM api_keys
         WHERE tenant_id = ? AND deleted_at IS NULL AND (? IS NULL OR active = ?) {after}
         ORDER BY created_at, id LIMIT ?"
    );
    let mut q = sqlx::query_as::<_, KeyView>(&sql)
        .bind(&tenant_id)
        .bind(query.active)
        .bind(query.active);
    if let Some(after) = &query.after {
        q = q.bind(after).bind(after).bind(after);
    }
    let rows = q.bind(limit + 1).fetch_all(&state.db).await?;
    Ok(Json(Page::from_rows(rows, limit, |k| k.id.clone())))
}
