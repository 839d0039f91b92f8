//! The config feed: `GET /v1/sync?since=N&wait_ms=M`, long-polled by each Envoy's sync service.
//!
//! Answers at once when something changed after version `since`, otherwise
//! holds the request until a change is committed or `wait_ms` passes. The
//! rows are read in one transaction with the version they add up to, so an
//! Envoy that applies the answer holds exactly that version.
//!
//! Keys are paged: an answer carries at most [`SYNC_PAGE_KEYS`] of them, in
//! `(version, key_hash)` order, and `next` when more follow; the caller asks
//! again with the same `since` and `after=<next>` until an answer without
//! `next`, whose `version` is the one the whole walk adds up to (see
//! [`changes_since`] for why that holds although the pages are read in
//! separate transactions).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tollgate_core::wire::{SyncResponse, WireKey};

use crate::auth::SyncCaller;
use crate::error::Problem;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::openapi::{ServerError, Unauthorized, PROBLEM_JSON};
use crate::routes::anonymous;
use crate::routes::plans::{PlanRow, PLAN_COLUMNS};
use crate::state::AppState;

/// Longest a poll may be held open.
pub const MAX_WAIT_MS: u64 = 60_000;

/// Most keys (changed and deleted) one answer carries; more follow in pages.
pub const SYNC_PAGE_KEYS: usize = 20_000;

pub fn router() -> Router<AppState> {
    Router::new().route("/sync", get(sync_poll))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SyncParams {
    /// The version the caller holds; 0 (the default) asks for everything.
    #[serde(default)]
    pub since: u64,
    /// How long to hold the request when nothing changed after `since`, at most 60000; 0 (the default) answers at once.
    #[serde(default)]
    #[param(maximum = 60000)]
    pub wait_ms: u64,
    /// The `next` of the previous answer, to read the next page of the same
    /// `since`. Such a request is answered at once (`wait_ms` is ignored).
    #[serde(default)]
    pub after: Option<String>,
}

/// Where a walk through the keys stopped: the `(version, key_hash)` of the
/// last key sent, and the version the walk's first page was read at
/// (`began`), written `<version>.<key_hash>.<began>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCursor {
    pub version: u64,
    pub key_hash: String,
    pub began: u64,
}

impl SyncCursor {
    /// 400 `invalid_query` unless `text` is a `next` this server could have sent.
    pub fn parse(text: &str) -> ApiResult<Self> {
        let invalid = || {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "after must be the next of a previous /v1/sync answer.",
            )
        };
        let mut parts = text.split('.');
        let (Some(version), Some(key_hash), Some(began), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        // Versions are BIGINT columns.
        let number = |text: &str| {
            text.parse::<u64>()
                .ok()
                .filter(|n| i64::try_from(*n).is_ok())
                .ok_or_else(invalid)
        };
        let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
        if key_hash.len() != 64 || !key_hash.bytes().all(hex) {
            return Err(invalid());
        }
        Ok(Self {
            version: number(version)?,
            key_hash: key_hash.to_owned(),
            began: number(began)?,
        })
    }
}

impl std::fmt::Display for SyncCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.version, self.key_hash, self.began)
    }
}

/// Config changes since a version
///
/// Long-polled by each Envoy's sync service: answers at once when something
/// changed after `since`, otherwise when a change is committed or `wait_ms`
/// has passed (then with nothing new). At most 20000 keys an answer: when
/// `next` is present, ask again with the same `since` and `after=<next>`,
/// and hold `version` as applied only once an answer without `next` arrived.
#[utoipa::path(
    get,
    path = "/v1/sync",
    tag = "sync",
    params(SyncParams),
    responses(
        (status = 200, description = "What changed after `since`, and the version it adds up to.", body = SyncResponse),
        (status = 400, description = "`invalid_query` (unknown parameter, not a number, `wait_ms` over 60000, an `after` that is no `next`).",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = "5XX", response = ServerError),
    ),
    security(("sync_token" = [])),
)]
async fn sync_poll(
    _caller: SyncCaller,
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<SyncParams>,
) -> ApiResult<Json<SyncResponse>> {
    if params.wait_ms > MAX_WAIT_MS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("wait_ms must be at most {MAX_WAIT_MS}."),
        ));
    }
    let after = params.after.as_deref().map(SyncCursor::parse).transpose()?;
    // A later page of a walk answers at once: its first page already found changes.
    if params.wait_ms > 0 && after.is_none() {
        let _held = state.metrics.poll_held();
        let mut versions = state.versions.subscribe();
        let mut shutting_down = state.shutting_down.subscribe();
        let since = params.since;
        let _ = tokio::time::timeout(Duration::from_millis(params.wait_ms), async {
            tokio::select! {
                _ = versions.wait_for(|v| *v > since) => {}
                _ = shutting_down.wait_for(|down| *down) => {}
            }
        })
        .await;
    }
    Ok(Json(
        changes_since(&state, params.since, after.as_ref()).await?,
    ))
}

#[derive(sqlx::FromRow)]
struct KeyChange {
    key_hash: String,
    id: String,
    tenant_id: String,
    plan_id: String,
    /// 0 or 1: see `db` on booleans.
    active: i64,
    expires_at_ms: Option<i64>,
    scopes: Option<String>,
    allowed_cidrs: Option<String>,
    limits: Option<String>,
    monthly_quota: Option<i64>,
    billing_anchor_day: Option<i64>,
    deleted: i64,
    version: i64,
}

fn json_column<T: serde::de::DeserializeOwned>(
    text: Option<String>,
) -> Result<Option<T>, ApiError> {
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(ApiError::internal)
}

/// What changed after `since`, from `after` on (the first page when `None`):
/// at most `state.sync_page` keys, with `next` when more follow.
///
/// Each page is read in its own transaction, so a walk of several pages is no
/// snapshot; it does not need to be. Versions are claimed in commit order
/// (`db::begin_change` takes the version row's lock first), so when a page
/// is read every committed change has a version at most that of the newest
/// commit, and every later commit gets a higher one. A key changed (or
/// deleted) after the walk passed it therefore moves to a `(version,
/// key_hash)` position ahead of the cursor, and the walk reaches it again
/// before it ends. The last page reads `version` (W) first, in the same
/// transaction as its rows, as a single answer does: every change up to W is
/// committed and visible to it. So a walk from `since` = V that ends with W
/// has seen every key row whose version is in (V, W], each in its state as
/// of W or later; rows newer than W that it happened to see are harmless, as
/// the next walk from W sends them again.
///
/// A full snapshot (`since` = 0) leaves out tombstones, but not those of keys
/// deleted after its first page was read (version `began`, carried in the
/// cursor): such a key may have been sent on an earlier page. Deleted plans
/// likewise. Plans, deleted plans and anonymous access are few and ride on
/// every page, so a filter has the plans before the keys that refer to them.
pub async fn changes_since(
    state: &AppState,
    since: u64,
    after: Option<&SyncCursor>,
) -> Result<SyncResponse, ApiError> {
    let mut tx = state.db.begin().await?;
    let version: i64 = sqlx::query_scalar("SELECT version FROM config_version WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    let version = u64::try_from(version).unwrap_or(0);
    // A filter ahead of us means our database was replaced: send everything.
    let since = if since > version {
        tracing::warn!(
            since,
            version,
            "sync client is ahead of the database; sending a full snapshot"
        );
        0
    } else {
        since
    };
    // A cursor is past `since` (it names a key changed after it) unless it
    // belongs to another walk, which then starts over.
    let after = after.filter(|cursor| cursor.version > since);
    let began = after.map_or(version, |cursor| cursor.began);
    let since_db = i64::try_from(since).unwrap_or(i64::MAX);
    // Tombstones newer than this are sent: all of a delta's; a snapshot's
    // only when they came after its walk began.
    let deleted_after = i64::try_from(if since == 0 { began } else { since }).unwrap_or(i64::MAX);
    let plans = sqlx::query_as::<_, PlanRow>(&format!(
        "SELECT {PLAN_COLUMNS} FROM plans
         WHERE version > $1 AND deleted_at IS NULL ORDER BY version"
    ))
    .bind(since_db)
    .fetch_all(&mut *tx)
    .await?;
    let deleted_plans: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM plans WHERE version > $1 AND deleted_at IS NOT NULL ORDER BY version",
    )
    .bind(deleted_after)
    .fetch_all(&mut *tx)
    .await?;
    // The walk in (version, key_hash) order, a range scan of the index of
    // that name: past the cursor, or past `since` on the first page.
    let sql = format!(
        "SELECT k.key_hash, k.id, k.tenant_id, t.plan_id, CAST(k.active AS INTEGER) AS active,
                k.expires_at_ms,
                k.scopes, k.allowed_cidrs, k.limits, k.monthly_quota, t.billing_anchor_day,
                CASE WHEN k.deleted_at IS NULL THEN 0 ELSE 1 END AS deleted, k.version
         FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
         WHERE {} AND (k.deleted_at IS NULL OR k.version > $2)
         ORDER BY k.version, k.key_hash
         LIMIT $3",
        // Row values alone, not `version > $1 AND (version, key_hash) > (…)`:
        // given both, SQLite seeks on `version > $1` and filters the rest.
        if after.is_some() {
            "(k.version, k.key_hash) > ($4, $5)"
        } else {
            "k.version > $1"
        }
    );
    let page = state.sync_page.max(1);
    let mut query = sqlx::query_as::<_, KeyChange>(&sql)
        .bind(since_db)
        .bind(deleted_after)
        .bind(i64::try_from(page).unwrap_or(i64::MAX).saturating_add(1));
    if let Some(cursor) = after {
        query = query
            .bind(i64::try_from(cursor.version).unwrap_or(i64::MAX))
            .bind(cursor.key_hash.as_str());
    }
    let mut keys = query.fetch_all(&mut *tx).await?;
    // Anonymous access when it changed, and always in a full snapshot (even
    // when it is off), so a filter never keeps access that was turned off.
    let anonymous = match anonymous::read(&mut *tx).await? {
        (wire, changed_in) if since == 0 || changed_in > since_db => Some(wire),
        _ => None,
    };
    tx.commit().await?;

    let next = if keys.len() > page {
        keys.truncate(page);
        keys.last().map(|last| {
            SyncCursor {
                version: u64::try_from(last.version).unwrap_or(0),
                key_hash: last.key_hash.clone(),
                began,
            }
            .to_string()
        })
    } else {
        None
    };
    let mut response = SyncResponse {
        version,
        plans: plans.iter().map(PlanRow::wire).collect::<Result<_, _>>()?,
        deleted_plans,
        anonymous,
        next,
        ..SyncResponse::default()
    };
    for key in keys {
        if key.deleted != 0 {
            response.deleted_keys.push(key.key_hash);
        } else {
            response.keys.push(WireKey {
                hash: key.key_hash,
                id: key.id,
                tenant_id: key.tenant_id,
                plan_id: key.plan_id,
                active: key.active != 0,
                expires_at_ms: key.expires_at_ms.and_then(|v| u64::try_from(v).ok()),
                scopes: json_column(key.scopes)?,
                allowed_cidrs: json_column(key.allowed_cidrs)?,
                limits: json_column(key.limits)?,
                monthly_quota: key.monthly_quota.and_then(|v| u64::try_from(v).ok()),
                billing_anchor_day: key.billing_anchor_day.and_then(|d| u8::try_from(d).ok()),
            });
        }
    }
    Ok(response)
}
