//! Webhooks as stored: each tenant's URL and signing secret, and the outbox
//! of quota alerts with every attempt to deliver them.
//!
//! An outbox: [`enqueue_quota_alerts`] runs in the transaction that counts a
//! usage batch, so an alert exists exactly when the usage that crossed its
//! threshold was counted, and the unique index makes it once per period. The
//! worker (`webhooks`) claims due events with a compare-and-set on their next
//! attempt time ([`claim`]), so several replicas may run it.

use std::collections::HashMap;

use serde::Serialize;
use tollgate_core::period::quota_period;

use crate::clock::{rfc3339_ms, Now};
use crate::db::{self, Db, Tx};
use crate::error::ApiResult;
use crate::paging::Cursor;
use crate::sealing::Sealer;
use crate::store::{cursor_binds, cursor_clause, rows_per_statement, Order, Params};

pub const EVENT_TYPE: &str = "quota.threshold";
/// Percentages of the quota that raise an event.
pub const THRESHOLDS: [i64; 2] = [80, 100];

/// A tenant's webhook. `secret` appears only when it was just issued.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub tenant_id: String,
    pub url: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// `whsec_` and 40 alphanumerics, the HMAC-SHA256 key of the
    /// `Tollgate-Signature` header: shown when created or rotated, never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// One attempt to deliver an event.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AttemptView {
    #[serde(skip)]
    pub event_id: String,
    #[schema(format = DateTime)]
    pub attempted_at: String,
    pub url: String,
    /// `null` when no HTTP answer came.
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

#[derive(Debug, sqlx::FromRow)]
pub struct EventRow {
    pub id: String,
    pub key_id: String,
    pub event_type: String,
    pub threshold: i64,
    pub status: String,
    pub attempts: i64,
    pub created_at: String,
    pub delivered_at: Option<String>,
    pub payload: String,
}

/// The JSON body of an alert, signed as sent.
#[derive(Debug, Serialize)]
struct Event<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    created_at: &'a str,
    data: AlertData<'a>,
}

#[derive(Debug, Serialize)]
struct AlertData<'a> {
    tenant_id: &'a str,
    key_id: &'a str,
    threshold: i64,
    used: i64,
    quota: i64,
    period_start: String,
    period_end: String,
}

/// A key whose usage was just counted, of a tenant with a webhook and with a quota.
pub struct Counted<'a> {
    pub key_id: &'a str,
    pub tenant_id: &'a str,
    pub quota: i64,
    pub anchor: Option<u8>,
    /// The start of the quota period its usage was counted in (a batch
    /// arriving just after a period ended still completes that one).
    pub period_start_ms: i64,
}

/// Queues the alerts that the usage just counted makes due: for each key,
/// each threshold the period's use has reached, unless already queued for
/// that period.
pub async fn enqueue_quota_alerts(
    tx: &mut Tx,
    counted: &[Counted<'_>],
    postgres: bool,
    now: Now,
) -> Result<u64, sqlx::Error> {
    let now_ms = now.db_ms();
    let created_at = now.rfc3339();
    let mut due = Vec::new();
    for part in counted.chunks(rows_per_statement(postgres, 2)) {
        let sql = format!(
            "SELECT c.key_id, c.period_start_ms, CAST(SUM(c.used) AS BIGINT)
             FROM quota_counts c JOIN (VALUES {}) AS v
               ON c.key_id = v.column1 AND c.period_start_ms = v.column2
             GROUP BY c.key_id, c.period_start_ms",
            Params::new(postgres).rows(part.len(), 2, "")
        );
        let mut select = sqlx::query_as::<_, (String, i64, i64)>(&sql);
        for key in part {
            select = select.bind(key.key_id).bind(key.period_start_ms);
        }
        let used: HashMap<(String, i64), i64> = select
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .map(|(key_id, start, used)| ((key_id, start), used))
            .collect();
        for key in part {
            let used = used
                .get(&(key.key_id.to_owned(), key.period_start_ms))
                .copied()
                .unwrap_or(0);
            // The period holding its own start is that period.
            let period = quota_period(u64::try_from(key.period_start_ms).unwrap_or(0), key.anchor);
            for threshold in THRESHOLDS {
                if used.saturating_mul(100) < key.quota.saturating_mul(threshold) {
                    continue;
                }
                // Time-sortable, so the delivery log lists events in the order they arose.
                let id = format!("evt_{now_ms:013}{threshold:03}{}", &db::new_id("")[1..]);
                let payload = serde_json::to_string(&Event {
                    id: &id,
                    kind: EVENT_TYPE,
                    created_at: &created_at,
                    data: AlertData {
                        tenant_id: key.tenant_id,
                        key_id: key.key_id,
                        threshold,
                        used,
                        quota: key.quota,
                        period_start: rfc3339_ms(period.start_ms),
                        period_end: rfc3339_ms(period.end_ms),
                    },
                })
                .unwrap_or_default();
                due.push((id, key, threshold, payload));
            }
        }
    }
    let mut queued = 0;
    for part in due.chunks(rows_per_statement(postgres, 9)) {
        let sql = format!(
            "INSERT INTO webhook_events (id, tenant_id, key_id, event_type, threshold,
                 period_start_ms, payload, next_attempt_at_ms, created_at, status, attempts)
             VALUES {}
             ON CONFLICT (key_id, period_start_ms, event_type, threshold) DO NOTHING",
            Params::new(postgres).rows(part.len(), 9, ", 'pending', 0")
        );
        let mut insert = sqlx::query(&sql);
        for (id, key, threshold, payload) in part {
            insert = insert
                .bind(id)
                .bind(key.tenant_id)
                .bind(key.key_id)
                .bind(EVENT_TYPE)
                .bind(*threshold)
                .bind(key.period_start_ms)
                .bind(payload)
                .bind(now_ms)
                .bind(&created_at);
        }
        queued += insert.execute(&mut **tx).await?.rows_affected();
    }
    Ok(queued)
}

/// The tenant's webhook, without its secret.
pub async fn find<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    tenant_id: &str,
) -> ApiResult<Option<WebhookView>> {
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT url, created_at, updated_at FROM webhooks WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|(url, created_at, updated_at)| WebhookView {
        tenant_id: tenant_id.to_owned(),
        url,
        created_at,
        updated_at,
        secret: None,
    }))
}

/// Every stored signing secret not as `sealer` would store it now (sealed
/// under another key, or in clear) sealed again under its current key, in
/// one transaction; how many. An error, naming the tenant and the key, when
/// one does not open: the control plane then refuses to start.
pub async fn reseal(db: &Db, sealer: &Sealer) -> Result<u64, String> {
    let failed = |e: sqlx::Error| format!("resealing webhook secrets: {e}");
    let mut tx = db.begin().await.map_err(failed)?;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT tenant_id, secret FROM webhooks ORDER BY tenant_id")
            .fetch_all(&mut *tx)
            .await
            .map_err(failed)?;
    let mut resealed = 0;
    for (tenant_id, stored) in rows {
        let secret = sealer.open(&stored, &tenant_id).map_err(|e| {
            format!("the webhook signing secret of tenant {tenant_id} does not open: {e}")
        })?;
        if sealer.is_current(&stored) {
            continue;
        }
        let sealed = sealer
            .seal(&secret, &tenant_id)
            .map_err(|e| format!("sealing the webhook secret of tenant {tenant_id}: {e}"))?;
        // Unless another replica resealed it meanwhile.
        resealed +=
            sqlx::query("UPDATE webhooks SET secret = $1 WHERE tenant_id = $2 AND secret = $3")
                .bind(&sealed)
                .bind(&tenant_id)
                .bind(&stored)
                .execute(&mut *tx)
                .await
                .map_err(failed)?
                .rows_affected();
    }
    tx.commit().await.map_err(failed)?;
    Ok(resealed)
}

/// Where the tenant's alerts go: (url, secret as stored: see `sealing`).
pub async fn target(db: &Db, tenant_id: &str) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT url, secret FROM webhooks WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_optional(db)
        .await
}

pub async fn insert(
    tx: &mut Tx,
    tenant_id: &str,
    url: &str,
    secret: &str,
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhooks (tenant_id, url, secret, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $4)",
    )
    .bind(tenant_id)
    .bind(url)
    .bind(secret)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A new URL, and a new secret when one is given.
pub async fn update(
    tx: &mut Tx,
    tenant_id: &str,
    url: &str,
    secret: Option<&str>,
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhooks SET url = $1, secret = COALESCE($2, secret), updated_at = $3
         WHERE tenant_id = $4",
    )
    .bind(url)
    .bind(secret)
    .bind(now)
    .bind(tenant_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn delete(tx: &mut Tx, tenant_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM webhooks WHERE tenant_id = $1")
        .bind(tenant_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Up to `limit` of the tenant's events, newest first (only those of
/// `status`, if given), past `after`.
pub async fn events(
    db: &Db,
    tenant_id: &str,
    status: Option<&str>,
    after: Option<&Cursor>,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    let (at, id) = cursor_binds(after, Cursor::created_at_seconds);
    sqlx::query_as(&format!(
        "SELECT id, key_id, event_type, threshold, status, attempts, created_at, delivered_at, payload
         FROM webhook_events
         WHERE tenant_id = $1 AND ($2 IS NULL OR status = $2) {}
         ORDER BY created_at DESC, id DESC LIMIT $5",
        cursor_clause(3, Order::Descending)
    ))
    .bind(tenant_id)
    .bind(status)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Every attempt to deliver the event, in order.
pub async fn attempts(db: &Db, event_id: &str) -> Result<Vec<AttemptView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT event_id, attempted_at, url, status_code, error, duration_ms
         FROM webhook_attempts WHERE event_id = $1 ORDER BY id",
    )
    .bind(event_id)
    .fetch_all(db)
    .await
}

/// An event whose next attempt is due: (id, tenant_id, payload, attempts, next_attempt_at_ms).
pub type Due = (String, String, String, i64, i64);

/// Up to `limit` pending events due at `now`, the longest due first.
pub async fn due(db: &Db, now: Now, limit: i64) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, tenant_id, payload, attempts, next_attempt_at_ms FROM webhook_events
         WHERE status = 'pending' AND next_attempt_at_ms <= $1
         ORDER BY next_attempt_at_ms LIMIT $2",
    )
    .bind(now.db_ms())
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Reserves the event until `until_ms` for this replica, unless another
/// replica moved its next attempt away from `due_at_ms` first; whether it did.
pub async fn claim(db: &Db, id: &str, due_at_ms: i64, until_ms: i64) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query(
        "UPDATE webhook_events SET next_attempt_at_ms = $1
         WHERE id = $2 AND status = 'pending' AND next_attempt_at_ms = $3",
    )
    .bind(until_ms)
    .bind(id)
    .bind(due_at_ms)
    .execute(db)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// How one attempt went, and what becomes of the event.
pub struct Attempt<'a> {
    pub event_id: &'a str,
    pub url: &'a str,
    pub status_code: Option<u16>,
    pub error: Option<&'a str>,
    pub duration_ms: i64,
    pub attempts: i64,
    /// `pending`, `delivered` or `failed`.
    pub status: &'a str,
    pub next_attempt_at_ms: i64,
}

/// Records the attempt, made at `now`, and the event's new state, together.
pub async fn record_attempt(db: &Db, attempt: &Attempt<'_>, now: Now) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO webhook_attempts (id, event_id, attempted_at, url, status_code, error, duration_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(format!("att_{:013}{}", now.unix_ms(), &db::new_id("")[1..]))
    .bind(attempt.event_id)
    .bind(now.rfc3339())
    .bind(attempt.url)
    .bind(attempt.status_code.map(i64::from))
    .bind(attempt.error)
    .bind(attempt.duration_ms)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE webhook_events SET status = $1, attempts = $2, next_attempt_at_ms = $3,
             delivered_at = CASE WHEN $1 = 'delivered' THEN $4 ELSE delivered_at END
         WHERE id = $5",
    )
    .bind(attempt.status)
    .bind(attempt.attempts)
    .bind(attempt.next_attempt_at_ms)
    .bind(now.rfc3339())
    .bind(attempt.event_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
