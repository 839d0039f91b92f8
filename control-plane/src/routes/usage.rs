//! Usage reports from the filters: `POST /v1/usage` (sync token).
//!
//! Each Envoy's sync service sends what its workers counted, in batches that
//! keep their id across retries. A batch is applied in one transaction that
//! first records its id, so a batch that arrives twice (a lost answer, a
//! retry after a timeout) is counted once. Counts land per key, hour and
//! outcome; the key's `last_used_at` moves forward to the minute.

use std::time::{Duration, SystemTime};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use tollgate_core::usage::MAX_KEYS;
use tollgate_core::wire::UsageBatch;

use crate::auth;
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::state::AppState;

/// A batch of [`MAX_KEYS`] keys is a few MiB of JSON.
pub const MAX_USAGE_BODY_BYTES: usize = 16 * 1024 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/usage", post(usage_ingest))
        .layer(DefaultBodyLimit::max(MAX_USAGE_BODY_BYTES))
}

#[derive(Debug, Serialize)]
pub struct Ingested {
    pub batch_id: String,
    /// True when this batch had already been applied; nothing was counted again.
    pub duplicate: bool,
}

const ALLOWED: &str = "allowed";

fn validate(batch: &UsageBatch) -> ApiResult<()> {
    let bad = |detail: &str| Err(ApiError::invalid("invalid_usage", detail.to_owned()));
    if batch.batch_id.is_empty() || batch.batch_id.len() > 128 {
        return bad("batch_id must be 1 to 128 characters.");
    }
    if batch.keys.len() > MAX_KEYS {
        return bad("A batch holds at most 100000 keys.");
    }
    let codes = batch
        .keys
        .iter()
        .flat_map(|k| k.denied.keys())
        .chain(batch.unattributed.keys());
    for code in codes {
        if code.is_empty()
            || code.len() > 64
            || code == ALLOWED
            || !code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            return bad("Refusal codes are lower-case words like rate_limited.");
        }
    }
    let counts = batch
        .keys
        .iter()
        .flat_map(|k| std::iter::once(&k.allowed).chain(k.denied.values()))
        .chain(batch.unattributed.values());
    for n in counts {
        if i64::try_from(*n).is_err() {
            return bad("A count is too large.");
        }
    }
    if batch
        .keys
        .iter()
        .any(|k| k.key_id.is_empty() || k.key_id.len() > 128)
    {
        return bad("key_id must be 1 to 128 characters.");
    }
    Ok(())
}

/// RFC 3339 of `ms` truncated to `step` (an hour for counts, a minute for last use).
fn truncated(ms: u64, step: Duration) -> String {
    let step_ms = u64::try_from(step.as_millis()).unwrap_or(1).max(1);
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(ms - ms % step_ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

async fn add_count(
    tx: &mut db::Tx,
    key_id: &str,
    hour: &str,
    outcome: &str,
    count: u64,
) -> ApiResult<()> {
    if count == 0 {
        return Ok(());
    }
    // The tenant is looked up here (tombstones keep it) rather than trusted from the report.
    sqlx::query(
        "INSERT INTO usage_hourly (key_id, tenant_id, hour, outcome, count)
         VALUES ($1, (SELECT tenant_id FROM api_keys WHERE id = $1), $2, $3, $4)
         ON CONFLICT (key_id, hour, outcome) DO UPDATE SET count = usage_hourly.count + excluded.count",
    )
    .bind(key_id)
    .bind(hour)
    .bind(outcome)
    .bind(i64::try_from(count).unwrap_or(i64::MAX))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn usage_ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(batch): ApiJson<UsageBatch>,
) -> ApiResult<Json<Ingested>> {
    auth::check(&headers, &state.sync_token)?;
    validate(&batch)?;
    let received = now_ms();
    let hour = truncated(received, HOUR);
    let mut tx = state.db.begin().await?;
    let first_time = sqlx::query("INSERT INTO usage_batches (id, received_at) VALUES ($1, $2)")
        .bind(&batch.batch_id)
        .bind(db::now())
        .execute(&mut *tx)
        .await;
    match first_time {
        Err(e) if db::is_unique_violation(&e) => {
            return Ok(Json(Ingested {
                batch_id: batch.batch_id,
                duplicate: true,
            }));
        }
        other => {
            other?;
        }
    }
    for usage in &batch.keys {
        add_count(&mut tx, &usage.key_id, &hour, ALLOWED, usage.allowed).await?;
        for (code, n) in &usage.denied {
            add_count(&mut tx, &usage.key_id, &hour, code, *n).await?;
        }
        if let Some(last) = usage.last_used_ms {
            // A filter's clock may run ahead; never record a use in the future.
            let minute = truncated(last.min(received), MINUTE);
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $1
                 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
            )
            .bind(&minute)
            .bind(&usage.key_id)
            .execute(&mut *tx)
            .await?;
        }
    }
    for (code, n) in &batch.unattributed {
        add_count(&mut tx, "", &hour, code, *n).await?;
    }
    tx.commit().await?;
    if batch.dropped > 0 {
        tracing::warn!(
            batch_id = batch.batch_id,
            dropped = batch.dropped,
            "an Envoy dropped usage counts: its buffer was full"
        );
    }
    Ok(Json(Ingested {
        batch_id: batch.batch_id,
        duplicate: false,
    }))
}
