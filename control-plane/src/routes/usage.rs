//! Usage: what the filters report (`POST /v1/usage`, sync token), and what
//! admins and tenants read back (`GET /v1/keys/{id}/usage`,
//! `GET /v1/tenants/{id}/usage`).
//!
//! Each Envoy's leader sends what its workers counted, in batches that
//! keep their id across retries. A batch is applied in one transaction that
//! first records its id, so a batch that arrives twice (a lost answer, a
//! retry after a timeout) is counted once. Counts land per key, hour and
//! outcome, with the summed cost of what was let through; the key's
//! `last_used_at` moves forward to the minute, never to before the key's
//! `created_at`.
//!
//! **Quota ledger.** The same transaction adds each key's cost to
//! `quota_counts`, per key, quota period (from the last use and the tenant's
//! billing anchor) and reporting Envoy. Every row it writes takes the next
//! value of one sequence, claimed while holding the sequence's row until
//! commit, so values become visible in order. The answer to every batch, a
//! [`UsageReceipt`], tells the reporter what the *other* Envoys used of each
//! key's quota in its current period, for keys whose rows changed after the
//! reporter's `standings_since`, one page at a time. Envoys report every
//! second even when idle, to hear the standings: an empty batch writes
//! nothing and costs one or two indexed reads.

use std::time::{Duration, SystemTime};

use axum::extract::Path;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::auth::{Principal, SyncCaller};
use crate::extract::ApiQuery;
use crate::routes::query_time;
use axum::{Json, Router};
use serde::Serialize;
use tollgate_core::period::quota_period;
use tollgate_core::usage::MAX_KEYS;
use tollgate_core::wire::{QuotaStanding, UsageBatch, UsageReceipt};

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

/// Most keys one [`UsageReceipt`] carries standings for; `more` says another page waits.
pub const MAX_STANDINGS: usize = 10_000;

const ALLOWED: &str = "allowed";

fn validate(batch: &UsageBatch) -> ApiResult<()> {
    let bad = |detail: &str| Err(ApiError::invalid("invalid_usage", detail.to_owned()));
    if batch.batch_id.is_empty() || batch.batch_id.len() > 128 {
        return bad("batch_id must be 1 to 128 characters.");
    }
    if batch.reporter_id.len() > 128 {
        return bad("reporter_id must be at most 128 characters.");
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
        .flat_map(|k| [&k.allowed, &k.cost].into_iter().chain(k.denied.values()))
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
    u64::try_from(db::now_ms()).unwrap_or(0)
}

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

fn db_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Adds `count` requests of `outcome` (and, for `allowed`, their `cost`).
async fn add_count(
    tx: &mut db::Tx,
    key_id: &str,
    hour: &str,
    outcome: &str,
    count: u64,
    cost: u64,
) -> ApiResult<()> {
    if count == 0 && cost == 0 {
        return Ok(());
    }
    // The tenant is looked up here (tombstones keep it) rather than trusted from the report.
    sqlx::query(
        "INSERT INTO usage_hourly (key_id, tenant_id, hour, outcome, count, cost)
         VALUES ($1, (SELECT tenant_id FROM api_keys WHERE id = $1), $2, $3, $4, $5)
         ON CONFLICT (key_id, hour, outcome) DO UPDATE
         SET count = usage_hourly.count + excluded.count, cost = usage_hourly.cost + excluded.cost",
    )
    .bind(key_id)
    .bind(hour)
    .bind(outcome)
    .bind(db_int(count))
    .bind(db_int(cost))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A key's cost in one quota period, for the ledger.
struct LedgerEntry {
    key_id: String,
    key_hash: String,
    period_start_ms: i64,
    cost: i64,
}

fn anchor(day: Option<i64>) -> Option<u8> {
    day.and_then(|d| u8::try_from(d).ok())
}

/// Whether a batch reports nothing at all: an idle Envoy's heartbeat.
fn is_empty(batch: &UsageBatch) -> bool {
    batch.keys.is_empty() && batch.unattributed.is_empty() && batch.dropped == 0
}

/// Counts `batch` unless it was counted before; whether it was new.
async fn apply(state: &AppState, batch: &UsageBatch, now: u64) -> ApiResult<bool> {
    let hour = truncated(now, HOUR);
    let mut tx = state.db.begin().await?;
    let first_time = sqlx::query("INSERT INTO usage_batches (id, received_at) VALUES ($1, $2)")
        .bind(&batch.batch_id)
        .bind(db::now())
        .execute(&mut *tx)
        .await;
    match first_time {
        // Dropping `tx` rolls back; on PostgreSQL the failed insert ended it anyway.
        Err(e) if db::is_unique_violation(&e) => return Ok(false),
        other => {
            other?;
        }
    }
    let mut ledger = Vec::new();
    for usage in &batch.keys {
        add_count(
            &mut tx,
            &usage.key_id,
            &hour,
            ALLOWED,
            usage.allowed,
            usage.cost,
        )
        .await?;
        for (code, n) in &usage.denied {
            add_count(&mut tx, &usage.key_id, &hour, code, *n, 0).await?;
        }
        // A filter's clock may run ahead; never record a use in the future.
        let last_used = usage.last_used_ms.map(|last| last.min(now));
        if let Some(last) = last_used {
            let minute = truncated(last, MINUTE);
            // Truncated, a use in the minute the key was created would show
            // as before its creation; it shows as the creation instead.
            sqlx::query(
                "UPDATE api_keys
                 SET last_used_at = CASE WHEN created_at > $1 THEN created_at ELSE $1 END
                 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
            )
            .bind(&minute)
            .bind(&usage.key_id)
            .execute(&mut *tx)
            .await?;
        }
        if usage.cost > 0 {
            // The period is the tenant's as it is now; unknown keys have no quota.
            let key: Option<(String, Option<i64>)> = sqlx::query_as(
                "SELECT k.key_hash, t.billing_anchor_day
                 FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = $1",
            )
            .bind(&usage.key_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((key_hash, anchor_day)) = key {
                let period = quota_period(last_used.unwrap_or(now), anchor(anchor_day));
                ledger.push(LedgerEntry {
                    key_id: usage.key_id.clone(),
                    key_hash,
                    period_start_ms: db_int(period.start_ms),
                    cost: db_int(usage.cost),
                });
            }
        }
    }
    for (code, n) in &batch.unattributed {
        add_count(&mut tx, "", &hour, code, *n, 0).await?;
    }
    if !ledger.is_empty() {
        // Last, so the sequence's row is held only for the ledger's writes.
        let rows = i64::try_from(ledger.len()).unwrap_or(i64::MAX);
        let last: i64 =
            sqlx::query_scalar("UPDATE quota_seq SET seq = seq + $1 WHERE id = 1 RETURNING seq")
                .bind(rows)
                .fetch_one(&mut *tx)
                .await?;
        for (seq, entry) in (last - rows + 1..).zip(&ledger) {
            sqlx::query(
                "INSERT INTO quota_counts (key_id, key_hash, period_start_ms, reporter_id, used, seq)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (key_id, period_start_ms, reporter_id) DO UPDATE
                 SET used = quota_counts.used + excluded.used, seq = excluded.seq",
            )
            .bind(&entry.key_id)
            .bind(&entry.key_hash)
            .bind(entry.period_start_ms)
            .bind(&batch.reporter_id)
            .bind(entry.cost)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        }
    }
    // Quota alerts join the same transaction: they exist exactly when the usage does.
    let touched: Vec<(&str, i64)> = ledger
        .iter()
        .map(|e| (e.key_id.as_str(), e.period_start_ms))
        .collect();
    crate::webhooks::enqueue_quota_alerts(&mut tx, &touched, db_int(now)).await?;
    tx.commit().await?;
    state.metrics.usage_ingested(batch);
    Ok(true)
}

/// The earliest start of a current quota period, over every anchor day: no
/// ledger row from before it can count towards any key's standing.
fn earliest_current_start(now: u64) -> u64 {
    (1..=31u8)
        .map(|day| quota_period(now, Some(day)).start_ms)
        .min()
        .unwrap_or(0)
}

#[derive(sqlx::FromRow)]
struct StandingRow {
    key_id: String,
    key_hash: String,
    last_seq: i64,
    period_start_ms: Option<i64>,
    used: Option<i64>,
    billing_anchor_day: Option<i64>,
}

/// What reporters other than `reporter_id` used of each key's quota in its
/// current period, for keys whose ledger rows changed after `since`.
pub(crate) async fn receipt(
    state: &AppState,
    reporter_id: &str,
    since: u64,
    now: u64,
) -> ApiResult<UsageReceipt> {
    // The head first: every row at or below it is committed (see the module
    // docs), so reading rows after it can miss none of them.
    let head: i64 = sqlx::query_scalar("SELECT seq FROM quota_seq WHERE id = 1")
        .fetch_one(&state.db)
        .await?;
    let since_db = i64::try_from(since).unwrap_or(i64::MAX);
    let cursor = u64::try_from(head).unwrap_or(0);
    if head <= since_db {
        return Ok(UsageReceipt {
            standings: Vec::new(),
            cursor,
            more: false,
        });
    }
    let page = state.standings_page.max(1);
    let rows = sqlx::query_as::<_, StandingRow>(
        "SELECT p.key_id, p.key_hash, p.last_seq, c.period_start_ms, c.used, t.billing_anchor_day
         FROM (SELECT key_id, MAX(key_hash) AS key_hash, MAX(seq) AS last_seq
               FROM quota_counts
               WHERE seq > $1 AND seq <= $2 AND reporter_id <> $3
               GROUP BY key_id ORDER BY MAX(seq) LIMIT $4) p
         LEFT JOIN quota_counts c
                ON c.key_id = p.key_id AND c.reporter_id <> $3 AND c.period_start_ms >= $5
         LEFT JOIN api_keys k ON k.id = p.key_id
         LEFT JOIN tenants t ON t.id = k.tenant_id
         ORDER BY p.last_seq",
    )
    .bind(since_db)
    .bind(head)
    .bind(reporter_id)
    .bind(i64::try_from(page + 1).unwrap_or(i64::MAX))
    .bind(db_int(earliest_current_start(now)))
    .fetch_all(&state.db)
    .await?;
    // Rows come grouped by key, keys in the order of their newest change;
    // each key's figure is for its current period, whatever period changed.
    struct Standing {
        key_id: String,
        last_seq: i64,
        standing: QuotaStanding,
    }
    let mut standings: Vec<Standing> = Vec::new();
    for row in rows {
        if standings.last().is_none_or(|s| s.key_id != row.key_id) {
            let period = quota_period(now, anchor(row.billing_anchor_day));
            standings.push(Standing {
                key_id: row.key_id.clone(),
                last_seq: row.last_seq,
                standing: QuotaStanding {
                    key_hash: row.key_hash.clone(),
                    period_start_ms: period.start_ms,
                    others_used: 0,
                },
            });
        }
        let Some(s) = standings.last_mut() else {
            continue;
        };
        if row.period_start_ms == Some(db_int(s.standing.period_start_ms)) {
            let used = row.used.and_then(|u| u64::try_from(u).ok()).unwrap_or(0);
            s.standing.others_used = s.standing.others_used.saturating_add(used);
        }
    }
    let more = standings.len() > page;
    standings.truncate(page);
    // A full page covers up to its newest key's change; the rest, up to the head.
    let cursor = match standings.last() {
        Some(last) if more => u64::try_from(last.last_seq).unwrap_or(0),
        _ => cursor,
    };
    Ok(UsageReceipt {
        standings: standings.into_iter().map(|s| s.standing).collect(),
        cursor,
        more,
    })
}

/// Report usage
///
/// What one Envoy counted since its last report. A batch is counted once
/// however often it arrives (by `batch_id`); every answer, a retry's too,
/// carries the quota standings of the other Envoys after `standings_since`.
/// An empty batch (an idle Envoy's heartbeat) writes nothing.
#[utoipa::path(
    post,
    path = "/v1/usage",
    tag = "usage",
    request_body = UsageBatch,
    responses(
        (status = 200, description = "Applied, or recognised as a duplicate and not counted again: \
            what the other Envoys used of each key's quota whose figure changed after `standings_since`.",
            body = UsageReceipt),
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
) -> ApiResult<Json<UsageReceipt>> {
    validate(&batch)?;
    let now = now_ms();
    if !is_empty(&batch) {
        let counted = apply(&state, &batch, now).await?;
        if !counted {
            tracing::debug!(
                batch_id = batch.batch_id,
                "usage batch already counted; answered again"
            );
        }
        if batch.dropped > 0 && counted {
            tracing::warn!(
                batch_id = batch.batch_id,
                dropped = batch.dropped,
                "an Envoy dropped usage counts: its buffer was full"
            );
        }
    }
    let receipt = receipt(&state, &batch.reporter_id, batch.standings_since, now).await?;
    Ok(Json(receipt))
}

/// `GET /v1/keys/{id}/usage`: this quota period against the key's quota.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyUsageView {
    pub key_id: String,
    /// The current quota period: a calendar month (UTC), or a month from the
    /// tenant's `billing_anchor_day`.
    #[schema(format = DateTime)]
    pub period_start: String,
    /// Exclusive.
    #[schema(format = DateTime)]
    pub period_end: String,
    /// Cost of the requests let through this period, as reported so far (a
    /// request costs 1 unless its plan's `route_costs` say otherwise).
    pub used: u64,
    /// The key's monthly quota (its own, else its plan's); `null` when unlimited.
    pub quota: Option<u64>,
    pub remaining: Option<u64>,
}

fn rfc3339(at: OffsetDateTime) -> ApiResult<String> {
    at.format(&Rfc3339).map_err(ApiError::internal)
}

/// A key's usage this quota period
#[utoipa::path(
    get,
    path = "/v1/keys/{id}/usage",
    tag = "usage",
    params(("id" = String, Path, description = "Key id.")),
    responses(
        (status = 200, description = "This quota period against the key's quota.", body = KeyUsageView),
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
    #[derive(sqlx::FromRow)]
    struct KeyQuota {
        tenant_id: String,
        own_quota: Option<i64>,
        plan_quota: Option<i64>,
        billing_anchor_day: Option<i64>,
    }
    let row: Option<KeyQuota> = sqlx::query_as(
        "SELECT k.tenant_id, k.monthly_quota AS own_quota, p.monthly_quota AS plan_quota,
                t.billing_anchor_day
         FROM api_keys k JOIN tenants t ON t.id = k.tenant_id JOIN plans p ON p.id = t.plan_id
         WHERE k.id = $1 AND k.deleted_at IS NULL",
    )
    .bind(&id)
    .fetch_optional(&state.db)
    .await?;
    let Some(KeyQuota {
        tenant_id,
        own_quota,
        plan_quota,
        billing_anchor_day: anchor_day,
    }) = row
    else {
        return Err(ApiError::not_found("API key", &id));
    };
    if !principal.sees(&tenant_id) {
        return Err(ApiError::not_found("API key", &id));
    }
    // Periods start at midnight UTC, so whole hours fall on either side.
    let period = quota_period(now_ms(), anchor(anchor_day));
    let (period_start, period_end) = (
        db::rfc3339_ms(period.start_ms),
        db::rfc3339_ms(period.end_ms),
    );
    // SUM of BIGINT is NUMERIC on PostgreSQL, which the Any driver cannot read.
    let used: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(SUM(cost) AS BIGINT) FROM usage_hourly
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
    /// The summed cost of the requests let through: what quotas count.
    pub cost: u64,
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
/// Per key, per hour or per day: requests let through, their cost, and refusals by `code`.
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
    let rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
        "SELECT key_id, hour, outcome, count, cost FROM usage_hourly
         WHERE tenant_id = $1 AND hour >= $2 AND hour < $3
         ORDER BY key_id, hour, outcome",
    )
    .bind(&tenant_id)
    .bind(&from_hour)
    .bind(rfc3339(to)?)
    .fetch_all(&state.db)
    .await?;
    let mut keys: Vec<KeySeries> = Vec::new();
    for (key_id, hour, outcome, count, cost) in rows {
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
                cost: 0,
                denied: Default::default(),
            });
        }
        let Some(point) = series.last_mut() else {
            continue;
        };
        if outcome == ALLOWED {
            point.allowed = point.allowed.saturating_add(count);
            point.cost = point.cost.saturating_add(u64::try_from(cost).unwrap_or(0));
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
