//! Usage: what the filters report (`POST /v1/usage`, sync token), and what
//! admins and tenants read back (`GET /v1/keys/{id}/usage`,
//! `GET /v1/tenants/{id}/usage`).
//!
//! How a batch is counted once, and how the answer carries the other
//! Envoys' quota standings, is the usage store's (`store::usage`).

use axum::extract::Path;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use axum::{Json, Router};
use serde::Serialize;
use tollgate_core::period::quota_period;
use tollgate_core::usage::MAX_KEYS;
use tollgate_core::wire::{FleetLeases, KeyUsage, UsageBatch, UsageReceipt};

use crate::allocation::{self, Allocated};
use crate::auth::{Principal, SyncCaller};
use crate::clock::rfc3339_ms;
use crate::docs::{ServerError, Throttled, Unauthorized, UnsupportedMediaType, PROBLEM_JSON};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiQuery};
use crate::fleet::{self, ProxyHeaders};
use crate::input::{is_plain_text, query_time};
use crate::shares::{asked, Demand, Entry, Report, Role, SliceDemand};
use crate::state::AppState;
use crate::store::retention::GONE_REPORTER;
use crate::store::usage::{self, anchor, truncated, ALLOWED, HOUR};
use crate::store::{keys, tenants};
use tollgate_core::decide::DenyReason;

/// A batch of [`MAX_KEYS`] keys is a few MiB of JSON.
pub const MAX_USAGE_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The filters' side, authenticated with the sync token.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/usage", post(usage_ingest))
        .route("/internal/leases", post(internal_leases))
        .layer(DefaultBodyLimit::max(MAX_USAGE_BODY_BYTES))
}

/// The readers' side, behind the admin / tenant token.
pub fn read_router() -> Router<AppState> {
    Router::new()
        .route("/keys/{id}/usage", get(key_usage))
        .route("/tenants/{id}/usage", get(tenant_usage))
}

/// The Envoys' side of this module in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(usage_ingest, internal_leases),
    tags((name = "usage", description = "Requests counted by the Envoys (reported with the sync token), read back per key and per tenant.")),
)]
pub struct Api;

/// The readers' side of this module in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(key_usage, tenant_usage))]
pub struct ReadApi;

/// Longest `batch_id`, `reporter_id` or `key_id` of a batch, in characters.
pub const MAX_BATCH_ID: usize = 128;

/// Longest refusal code: lower-case words joined by `_`.
pub const MAX_CODE_LEN: usize = 64;

/// The batch with one entry per key. An Envoy's leader splices its workers'
/// hand-overs into a batch as they are (see `tollgate_core::usage`), so a
/// key counted by several names itself once per hand-over: those entries
/// are summed here, before anything reads the batch, in the order each key
/// first appears.
fn one_entry_per_key(mut batch: UsageBatch) -> UsageBatch {
    let mut at: std::collections::HashMap<String, usize> =
        std::collections::HashMap::with_capacity(batch.keys.len());
    let mut keys: Vec<KeyUsage> = Vec::with_capacity(batch.keys.len());
    for usage in std::mem::take(&mut batch.keys) {
        match at.get(&usage.key_id).and_then(|&i| keys.get_mut(i)) {
            Some(mine) => mine.add(usage),
            None => {
                at.insert(usage.key_id.clone(), keys.len());
                keys.push(usage);
            }
        }
    }
    batch.keys = keys;
    batch
}

fn validate(batch: &UsageBatch) -> ApiResult<()> {
    let bad = |detail: &str| Err(ApiError::invalid("invalid_usage", detail.to_owned()));
    // Characters, not bytes, as the OpenAPI document counts them; no
    // control characters, which PostgreSQL cannot store (NUL).
    let fits = |id: &str, min: usize| {
        (min..=MAX_BATCH_ID).contains(&id.chars().count()) && is_plain_text(id)
    };
    if !fits(&batch.batch_id, 1) {
        return bad("batch_id must be 1 to 128 characters, none of them control characters.");
    }
    if !fits(&batch.reporter_id, 0) {
        return bad("reporter_id must be at most 128 characters, none of them control characters.");
    }
    if batch.reporter_id == GONE_REPORTER {
        return bad("reporter_id ~gone is reserved: it holds the use of Envoys long gone.");
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
            || code.len() > MAX_CODE_LEN
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
    if batch.keys.iter().any(|k| !fits(&k.key_id, 1)) {
        return bad("key_id must be 1 to 128 characters, none of them control characters.");
    }
    Ok(())
}

/// Whether a batch reports nothing at all: an idle Envoy's heartbeat.
fn is_empty(batch: &UsageBatch) -> bool {
    batch.keys.is_empty() && batch.unattributed.is_empty() && batch.dropped == 0
}

/// Report usage
///
/// What one Envoy counted since its last report. A batch is counted once
/// however often it arrives (by `batch_id`); every answer, a retry's too,
/// carries the quota standings of the other Envoys after `standings_since`
/// (for the keys this reporter counts: once at its first use of a key in a
/// period, then as the others' use changes; and for any key whose quota is
/// used up) and, to a batch that names its `reporter_id`, the Envoy's shares of
/// fleet-wide limits (`leases`; acknowledge them with `leases_applied`).
/// An empty batch (an idle Envoy's heartbeat) writes no usage; the
/// `Tollgate-Proxy-*` headers name the Envoy in the proxy registry
/// (`GET /v1/proxies`, written at most every few seconds while nothing changes).
#[utoipa::path(
    post,
    path = "/v1/usage",
    tag = "usage",
    params(ProxyHeaders),
    request_body = UsageBatch,
    responses(
        (status = 200, description = "Applied, or recognised as a duplicate and not counted again: \
            what the other Envoys used of each key's quota whose figure changed after `standings_since`, \
            for the keys this reporter counts and any whose quota is used up.",
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
    headers: HeaderMap,
    ApiJson(batch): ApiJson<UsageBatch>,
) -> ApiResult<Json<UsageReceipt>> {
    validate(&batch)?;
    // Again for the sums: entries within bounds may add up past them.
    let batch = one_entry_per_key(batch);
    validate(&batch)?;
    state.fleet.record(&state.db, &headers, state.now()).await;
    state
        .reporters
        .heard(&state.db, &batch.reporter_id, state.now())
        .await;
    let now = state.now();
    let (batch, counted_now) = if is_empty(&batch) {
        (batch, false)
    } else {
        // In a task of its own: an Envoy that stops waiting (its call times
        // out after 5 s) hangs up, which would drop this handler and roll
        // the batch back, and its retry would start the same work over, as
        // long as a batch takes longer than that. So the batch is counted
        // even then, and the retry, under the same id, is answered as
        // already counted once this one has committed.
        let db = state.db.clone();
        let (batch, counted) = tokio::spawn(async move {
            let counted = usage::apply(&db, &batch, now).await;
            (batch, counted)
        })
        .await
        .map_err(ApiError::internal)?;
        let counted = counted?;
        if counted {
            state.metrics.usage_ingested(&batch);
            if batch.dropped > 0 {
                tracing::warn!(
                    batch_id = batch.batch_id,
                    dropped = batch.dropped,
                    "an Envoy dropped usage counts: its buffer was full"
                );
            }
        } else {
            tracing::debug!(
                batch_id = batch.batch_id,
                "usage batch already counted; answered again"
            );
        }
        (batch, counted)
    };
    let mut receipt = usage::receipt(
        &state.db,
        state.standings_page,
        &batch.reporter_id,
        batch.standings_since,
        now.unix_ms(),
    )
    .await?;
    if !batch.reporter_id.is_empty() {
        let node = fleet::sighting(&headers)
            .filter(|s| !s.node_id.is_empty())
            .map(|s| format!("{}/{}", s.cluster, s.node_id))
            .unwrap_or_default();
        let report = shares_report(&state, &batch, node, counted_now).await?;
        receipt.leases = match state.leasing.role() {
            Role::Follower(url) => allocation::forward(&state, &url, &report).await,
            Role::Alone | Role::Leader => lease_here(&state, report).await?,
        };
    }
    Ok(Json(receipt))
}

/// The batch as the share allocator reads it: each key's and each tenant's
/// demand through this Envoy. A batch answered again (a retry) asks nothing
/// new, but is answered with the Envoy's leases all the same.
async fn shares_report(
    state: &AppState,
    batch: &UsageBatch,
    node: String,
    counted: bool,
) -> ApiResult<Report> {
    let mut report = Report {
        proxy: batch.reporter_id.clone(),
        node,
        acked: batch.leases_applied,
        ..Report::default()
    };
    if !counted {
        return Ok(report);
    }
    slices_report(state, batch, &mut report).await?;
    let mut tenants: std::collections::BTreeMap<String, (u64, bool)> = Default::default();
    for (key_id, n, refused) in asked(batch) {
        // Never refused, never looked up: only a refusal gives a key grants
        // of its own (see `shares`).
        let Some((hash, tenant)) = identity(state, key_id, refused > 0).await? else {
            continue;
        };
        report.demand.push(Demand {
            entry: Entry::Key(hash),
            asked: n,
            refused: refused > 0,
        });
        let t = tenants.entry(tenant).or_insert((0, false));
        *t = (t.0.saturating_add(n), t.1 || refused > 0);
    }
    report
        .demand
        .extend(tenants.into_iter().map(|(t, (asked, refused))| Demand {
            entry: Entry::Tenant(t),
            asked,
            refused,
        }));
    Ok(report)
}

/// This replica's allocator's answer to `report`, with the quota figures
/// it needs read first, one report at a time.
async fn lease_here(state: &AppState, mut report: Report) -> ApiResult<Option<FleetLeases>> {
    let _one = state.leasing.one_report().await;
    let mut facts_of: Vec<String> = state.leasing.sliced_keys_held(&report.proxy);
    facts_of.extend(report.slices.iter().map(|s| s.key_id.clone()));
    facts_of.sort();
    facts_of.dedup();
    let now = state.now().unix_ms();
    for key_id in facts_of {
        if let Some(facts) = usage::quota_facts(&state.db, &key_id, now).await? {
            report.quota_facts.push(facts);
        }
    }
    let leases = state.leasing.report(&report, now);
    if let Some(leases) = &leases {
        tracing::debug!(
            proxy = report.proxy,
            acked = report.acked,
            asked = ?report.demand,
            default = leases.default_share,
            grants = ?leases.grants.iter().map(|g| g.share).collect::<Vec<_>>(),
            "fleet leases"
        );
    }
    Ok(leases)
}

/// A replica's forwarded report (internal)
///
/// Between control-plane replicas on PostgreSQL: a replica that counted an
/// Envoy's usage batch forwards what it asks of the share allocator here,
/// to the replica that allocates, and answers the Envoy with the leases
/// this returns (`null` while the allocator learns). Not for clients.
#[utoipa::path(
    post,
    path = "/v1/internal/leases",
    tag = "usage",
    request_body = Report,
    responses(
        (status = 200, description = "The Envoy's leases (`null` while the allocator learns), and \
            the keys whose quota is sliced.", body = Allocated),
        (status = 400, description = "`malformed_json`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 409, description = "`not_allocating`: this replica does not allocate (any more).",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "`payload_too_large`: over 16 MiB.", body = Problem, content_type = PROBLEM_JSON),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_body`.", body = Problem, content_type = PROBLEM_JSON),
        (status = "5XX", response = ServerError),
    ),
    security(("sync_token" = [])),
)]
async fn internal_leases(
    _caller: SyncCaller,
    State(state): State<AppState>,
    ApiJson(report): ApiJson<Report>,
) -> ApiResult<Json<Allocated>> {
    if state.leasing.role() == Role::Leader {
        let leases = lease_here(&state, report).await?;
        let sliced = state.leasing.sliced_keys();
        return Ok(Json(Allocated { leases, sliced }));
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "not_allocating",
        "This replica does not allocate shares; the one that does has moved.",
    ))
}

/// A key's hash and tenant, as remembered; looked up (and remembered) only
/// if `look_up`.
async fn identity(
    state: &AppState,
    key_id: &str,
    look_up: bool,
) -> ApiResult<Option<(String, String)>> {
    if let Some(known) = state.leasing.identity(key_id) {
        return Ok(Some(known));
    }
    if !look_up {
        return Ok(None);
    }
    let found = keys::identity(&state.db, key_id).await?;
    if let Some((hash, tenant)) = &found {
        state.leasing.remember(key_id, hash.clone(), tenant.clone());
    }
    Ok(found)
}

/// The batch as quota slicing reads it: what each key that waits for a
/// slice, or is sliced, asked of its quota through this Envoy.
async fn slices_report(state: &AppState, batch: &UsageBatch, report: &mut Report) -> ApiResult<()> {
    let pending_code = DenyReason::QuotaPending.code();
    // Most reports name no key waiting for a slice, with none being sliced.
    let anything_sliced = state.leasing.anything_sliced();
    for usage in &batch.keys {
        let pending = usage.denied.get(pending_code).copied().unwrap_or(0);
        if pending == 0 && !anything_sliced {
            continue;
        }
        let Some((key_hash, _)) = identity(state, &usage.key_id, pending > 0).await? else {
            continue;
        };
        if pending == 0 && !state.leasing.is_sliced(&key_hash) {
            continue;
        }
        report.slices.push(SliceDemand {
            key_id: usage.key_id.clone(),
            key_hash,
            asked: usage.cost.saturating_add(pending),
            pending: pending > 0,
        });
    }
    Ok(())
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
    key_usage_of(&state, &principal, id).await.map(Json)
}

/// Key `id`'s use this quota period as `principal` may see it: the API's and
/// the dashboard's quota bar.
pub async fn key_usage_of(
    state: &AppState,
    principal: &Principal,
    id: String,
) -> ApiResult<KeyUsageView> {
    let row = usage::key_quota(&state.db, &id).await?;
    let Some(usage::KeyQuota {
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
    let period = quota_period(state.now().unix_ms(), anchor(anchor_day));
    let (period_start, period_end) = (rfc3339_ms(period.start_ms), rfc3339_ms(period.end_ms));
    let used = usage::cost_between(&state.db, &id, &period_start, &period_end).await?;
    let quota = own_quota.or(plan_quota).and_then(|q| u64::try_from(q).ok());
    Ok(KeyUsageView {
        key_id: id,
        period_start,
        period_end,
        used,
        quota,
        remaining: quota.map(|q| q.saturating_sub(used)),
    })
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
    /// At most 31 days (hourly) or 366 days (daily) before `to`: an earlier
    /// one is read as that, as the answer's `from` says. Not before `to`:
    /// no series.
    #[serde(default)]
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339, exclusive; default: now.
    #[serde(default)]
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// `hour` (the default; at most 31 days) or `day` (at most 366 days).
    /// Days whose hours were rolled up (once a day has been over for
    /// `CONTROL_PLANE_USAGE_HOURLY_DAYS`, 35 by default) come as one point
    /// at the day's midnight UTC holding the whole day, at `hour` too.
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
/// Every point that overlaps `from`..`to` is counted whole. Hours are kept
/// for `CONTROL_PLANE_USAGE_HOURLY_DAYS` (35 by default) after their day is
/// over, then rolled up into days: at `granularity=hour`, a rolled-up day is
/// one point at its midnight UTC with the whole day's counts, so totals are
/// the same before and after a rollup. With `CONTROL_PLANE_USAGE_RETENTION_DAYS`
/// set, days older than that are deleted and count no more.
#[utoipa::path(
    get,
    path = "/v1/tenants/{id}/usage",
    tag = "usage",
    params(("id" = String, Path, description = "Tenant id."), UsageQuery),
    responses(
        (status = 200, description = "One series per key.", body = TenantUsageView),
        (status = 400, description = "`invalid_query` (unknown parameter, bad time or granularity).",
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
    tenant_series(&state, &principal, tenant_id, query)
        .await
        .map(Json)
}

/// Tenant `tenant_id`'s series per key as `principal` may see them: the
/// API's answer and the dashboard's charts.
pub async fn tenant_series(
    state: &AppState,
    principal: &Principal,
    tenant_id: String,
    query: UsageQuery,
) -> ApiResult<TenantUsageView> {
    if !principal.sees(&tenant_id) {
        return Err(ApiError::not_found("tenant", &tenant_id));
    }
    let granularity = query.granularity.unwrap_or(Granularity::Hour);
    let now = state.now();
    let to = query_time("to", query.to.as_deref())?.unwrap_or_else(|| now.offset_date_time());
    let (default_span, max_span) = match granularity {
        Granularity::Hour => (time::Duration::hours(24), time::Duration::days(31)),
        Granularity::Day => (time::Duration::days(30), time::Duration::days(366)),
    };
    let from = query_time("from", query.from.as_deref())?.unwrap_or(to - default_span);
    // The answer says which span it covers: at most `max_span` before `to`,
    // and none at all (no series) when `from` is not before `to`.
    let from = from.max(to - max_span).min(to);
    if !tenants::exists(&state.db, &tenant_id).await? {
        return Err(ApiError::not_found("tenant", &tenant_id));
    }
    // Counts are kept per hour (or rolled up, per day): widen `from` to its
    // hour so that hour is included (the store widens it to its day for days).
    let from_hour = truncated(
        u64::try_from(from.unix_timestamp()).unwrap_or(0) * 1000,
        HOUR,
    );
    let rows = if from < to {
        usage::tenant_hours(&state.db, &tenant_id, &from_hour, &rfc3339(to)?).await?
    } else {
        Vec::new()
    };
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
    Ok(TenantUsageView {
        tenant_id,
        from: rfc3339(from)?,
        to: rfc3339(to)?,
        granularity,
        keys,
    })
}
