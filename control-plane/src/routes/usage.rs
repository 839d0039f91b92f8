//! Usage: what the filters report (`POST /v1/usage`, sync token), and what
//! admins and tenants read back (`GET /v1/keys/{id}/usage`,
//! `GET /v1/tenants/{id}/usage`).
//!
//! Each Envoy's sync service sends what its workers counted, in batches that
//! keep their id across retries. A batch is applied in one transaction that
//! first records its id, so a batch that arrives twice (a lost answer, a
//! retry after a timeout) is counted once. Counts land per key, hour and
//! outcome; the key's `last_used_at` moves forward to the minute.

use std::time::{Duration, SystemTime};

use axum::extract::Path;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, Time};

use crate::auth::{Principal, SyncCaller};
use crate::extract::ApiQuery;
use crate::routes::query_time;
use axum::{Json, Router};
use serde::Serialize;
use tollgate_core::usage::MAX_KEYS;
use tollgate_core::wire::UsageBatch;

use crate::db;
use crate::error::Problem;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::openapi::{ServerError, Throttled, Unauthorized, UnsupportedMediaType, PROBLEM_JSON};
use crate::state::AppState;

/// A batch of [`MAX_KEYS`] keys is a few MiB of JSON.
pub const MAX_USAGE_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The filters' side, authenticated with the sync token.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/usage", post(usage_ingest))
        .layer(DefaultBodyLimit::max(MAX_USAGE_BODY_BYTES))
}

/// The readers' side, behind the admin / tenant token.
pub fn read_router() -> Router<AppState> {
    Router::new()
        .route("/keys/{id}/usage", get(key_usage))
        .route("/tenants/{id}/usage", get(tenant_usage))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
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

/// Report usage
///
/// What one Envoy counted since its last report. A batch is counted once
/// however often it arrives (by `batch_id`).
#[utoipa::path(
    post,
    path = "/v1/usage",
    tag = "usage",
    request_body = UsageBatch,
    responses(
        (status = 200, description = "Applied, or recognised as a duplicate.", body = Ingested),
        (status = 400, description = "`malformed_json`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 413, description = "`payload_too_large`: over 16 MiB.", body = Problem, content_type = PROBLEM_JSON),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_body` or `invalid_usage`.", body = Problem, content_type = PROBLEM_JSON),
        (status = "5XX", response = ServerError),
    ),
    security(("sync_token" = [])),
)]
async fn usage_ingest(
    _caller: SyncCaller,
    State(state): State<AppState>,
    ApiJson(batch): ApiJson<UsageBatch>,
) -> ApiResult<Json<Ingested>> {
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

/// `GET /v1/keys/{id}/usage`: this calendar month (UTC) against the key's quota.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyUsageView {
    pub key_id: String,
    #[schema(format = DateTime)]
    pub period_start: String,
    #[schema(format = DateTime)]
    pub period_end: String,
    /// Requests let through this period, as reported so far.
    pub used: u64,
    /// The key's monthly quota (its own, else its plan's); `null` when unlimited.
    pub quota: Option<u64>,
    pub remaining: Option<u64>,
}

fn rfc3339(at: OffsetDateTime) -> ApiResult<String> {
    at.format(&Rfc3339).map_err(ApiError::internal)
}

/// The UTC calendar month holding `now`: [start, end).
fn month_of(now: OffsetDateTime) -> ApiResult<(OffsetDateTime, OffsetDateTime)> {
    let start_date =
        Date::from_calendar_date(now.year(), now.month(), 1).map_err(ApiError::internal)?;
    let (year, month) = match now.month() {
        Month::December => (now.year() + 1, Month::January),
        m => (now.year(), m.next()),
    };
    let end_date = Date::from_calendar_date(year, month, 1).map_err(ApiError::internal)?;
    Ok((
        start_date.with_time(Time::MIDNIGHT).assume_utc(),
        end_date.with_time(Time::MIDNIGHT).assume_utc(),
    ))
}

/// A key's usage this month
#[utoipa::path(
    get,
    path = "/v1/keys/{id}/usage",
    tag = "usage",
    params(("id" = String, Path, description = "Key id.")),
    responses(
        (status = 200, description = "This calendar month (UTC) against the key's quota.", body = KeyUsageView),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: no such key, or another tenant's.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = []), ("tenant_token" = [])),
)]
async fn key_usage(
    principal: Principal,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyUsageView>> {
    let row: Option<(String, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT k.tenant_id, k.monthly_quota, p.monthly_quota
         FROM api_keys k JOIN tenants t ON t.id = k.tenant_id JOIN plans p ON p.id = t.plan_id
         WHERE k.id = $1 AND k.deleted_at IS NULL",
    )
    .bind(&id)
    .fetch_optional(&state.db)
    .await?;
    let Some((tenant_id, own_quota, plan_quota)) = row else {
        return Err(ApiError::not_found("API key", &id));
    };
    if !principal.sees(&tenant_id) {
        return Err(ApiError::not_found("API key", &id));
    }
    let (start, end) = month_of(OffsetDateTime::now_utc())?;
    let (period_start, period_end) = (rfc3339(start)?, rfc3339(end)?);
    // SUM of BIGINT is NUMERIC on PostgreSQL, which the Any driver cannot read.
    let used: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(SUM(count) AS BIGINT) FROM usage_hourly
         WHERE key_id = $1 AND outcome = 'allowed' AND hour >= $2 AND hour < $3",
    )
    .bind(&id)
    .bind(&period_start)
    .bind(&period_end)
    .fetch_one(&state.db)
    .await?;
    let used = used.and_then(|u| u64::try_from(u).ok()).unwrap_or(0);
    let quota = own_quota.or(plan_quota).and_then(|q| u64::try_from(q).ok());
    Ok(Json(KeyUsageView {
        key_id: id,
        period_start,
        period_end,
        used,
        quota,
        remaining: quota.map(|q| q.saturating_sub(used)),
    }))
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Hour,
    Day,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// RFC 3339; default: 24 hours (hourly) or 30 days (daily) before `to`.
    #[serde(default)]
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339, exclusive; default: now.
    #[serde(default)]
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// `hour` (the default; at most 31 days) or `day` (at most 366 days).
    #[serde(default)]
    #[param(inline)]
    pub granularity: Option<Granularity>,
}

/// One interval of one key's series.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsagePoint {
    #[schema(format = DateTime)]
    pub start: String,
    pub allowed: u64,
    /// Refusals by `code`.
    pub denied: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeySeries {
    /// `null` for refusals that named no known key.
    pub key_id: Option<String>,
    pub series: Vec<UsagePoint>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantUsageView {
    pub tenant_id: String,
    #[schema(format = DateTime)]
    pub from: String,
    #[schema(format = DateTime)]
    pub to: String,
    pub granularity: Granularity,
    pub keys: Vec<KeySeries>,
}

/// A tenant's usage over time
///
/// Per key, per hour or per day: requests let through and refusals by `code`.
#[utoipa::path(
    get,
    path = "/v1/tenants/{id}/usage",
    tag = "usage",
    params(("id" = String, Path, description = "Tenant id."), UsageQuery),
    responses(
        (status = 200, description = "One series per key.", body = TenantUsageView),
        (status = 400, description = "`invalid_query` (unknown parameter, bad time or granularity, `from` not before `to`, too long a span).",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: no such tenant, or another tenant's.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = []), ("tenant_token" = [])),
)]
async fn tenant_usage(
    principal: Principal,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> ApiResult<Json<TenantUsageView>> {
    if !principal.sees(&tenant_id) {
        return Err(ApiError::not_found("tenant", &tenant_id));
    }
    let granularity = query.granularity.unwrap_or(Granularity::Hour);
    let to = query_time("to", query.to.as_deref())?.unwrap_or_else(OffsetDateTime::now_utc);
    let (default_span, max_span) = match granularity {
        Granularity::Hour => (time::Duration::hours(24), time::Duration::days(31)),
        Granularity::Day => (time::Duration::days(30), time::Duration::days(366)),
    };
    let from = query_time("from", query.from.as_deref())?.unwrap_or(to - default_span);
    if from >= to || to - from > max_span {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!(
                "from must be before to, at most {} days apart for this granularity.",
                max_span.whole_days()
            ),
        ));
    }
    let exists: Option<String> =
        sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1 AND deleted_at IS NULL")
            .bind(&tenant_id)
            .fetch_optional(&state.db)
            .await?;
    if exists.is_none() {
        return Err(ApiError::not_found("tenant", &tenant_id));
    }
    // Counts are kept per hour: widen `from` to its hour so that hour is included.
    let from_hour = truncated(
        u64::try_from(from.unix_timestamp()).unwrap_or(0) * 1000,
        HOUR,
    );
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT key_id, hour, outcome, count FROM usage_hourly
         WHERE tenant_id = $1 AND hour >= $2 AND hour < $3
         ORDER BY key_id, hour, outcome",
    )
    .bind(&tenant_id)
    .bind(&from_hour)
    .bind(rfc3339(to)?)
    .fetch_all(&state.db)
    .await?;
    let mut keys: Vec<KeySeries> = Vec::new();
    for (key_id, hour, outcome, count) in rows {
        let start = match granularity {
            Granularity::Hour => hour,
            Granularity::Day => format!("{}T00:00:00Z", hour.get(..10).unwrap_or(&hour)),
        };
        let count = u64::try_from(count).unwrap_or(0);
        let key_id = (!key_id.is_empty()).then_some(key_id);
        if keys.last().is_none_or(|k| k.key_id != key_id) {
            keys.push(KeySeries {
                key_id: key_id.clone(),
                series: Vec::new(),
            });
        }
        let Some(series) = keys.last_mut().map(|k| &mut k.series) else {
            continue;
        };
        if series.last().is_none_or(|p| p.start != start) {
            series.push(UsagePoint {
                start: start.clone(),
                allowed: 0,
                denied: Default::default(),
            });
        }
        let Some(point) = series.last_mut() else {
            continue;
        };
        if outcome == ALLOWED {
            point.allowed = point.allowed.saturating_add(count);
        } else {
            let n = point.denied.entry(outcome).or_insert(0);
            *n = n.saturating_add(count);
        }
    }
    Ok(Json(TenantUsageView {
        tenant_id,
        from: rfc3339(from)?,
        to: rfc3339(to)?,
        granularity,
        keys,
    }))
}
