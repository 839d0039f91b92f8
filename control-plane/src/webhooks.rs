//! Quota alerts by webhook: events at 80 % and 100 % of a key's monthly
//! quota, once per key, period and threshold, signed and delivered with retries.
//!
//! An outbox: [`enqueue_quota_alerts`] runs in the transaction that counts a
//! usage batch, so an alert exists exactly when the usage that crossed its
//! threshold was counted, and the unique index makes it once per period. The
//! [`run`] worker sends what is due, records every attempt, and retries with
//! exponential backoff. Several replicas may run the worker: an event is
//! claimed with a compare-and-set on its next attempt time before it is sent.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tollgate_core::period::quota_period;

use crate::db::{self, Db, Tx};
use crate::state::AppState;

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "tollgate-signature";
pub const EVENT_ID_HEADER: &str = "tollgate-event-id";
pub const EVENT_TYPE: &str = "quota.threshold";
/// Percentages of the quota that raise an event.
pub const THRESHOLDS: [i64; 2] = [80, 100];
/// After this many failed attempts an event is `failed`.
pub const MAX_ATTEMPTS: i64 = 10;
/// Longest wait between two attempts.
const MAX_BACKOFF_MS: i64 = 3_600_000;
/// How long a claimed event is reserved for the replica sending it.
const LEASE_MS: i64 = 60_000;
const TIMEOUT: Duration = Duration::from_secs(5);
/// How often the worker looks for due events.
const POLL: Duration = Duration::from_millis(500);
/// Events sent per look.
const BATCH: i64 = 16;

/// The signature header's value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &str) -> String {
    // HMAC takes keys of any length: the error branch is never taken.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Milliseconds to wait after the `attempts`-th failure: 1 s, 2 s, 4 s, … at most an hour.
pub fn backoff_ms(attempts: i64) -> i64 {
    let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    1000i64.saturating_mul(1i64 << exponent).min(MAX_BACKOFF_MS)
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

/// Queues the alerts that the usage just counted makes due. `counted` names
/// each key with the start of the quota period its usage was counted in
/// (a batch arriving just after a period ended still completes that one).
/// For tenants with a webhook and keys with a quota: each threshold the
/// period's use has reached, unless already queued for that period.
pub async fn enqueue_quota_alerts(
    tx: &mut Tx,
    counted: &[(&str, i64)],
    now_ms: i64,
) -> Result<u64, sqlx::Error> {
    let mut queued = 0;
    for &(key_id, counted_in) in counted {
        let row: Option<(String, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT k.tenant_id, COALESCE(k.monthly_quota, p.monthly_quota), t.billing_anchor_day
             FROM api_keys k
             JOIN tenants t ON t.id = k.tenant_id
             JOIN plans p ON p.id = t.plan_id
             JOIN webhooks w ON w.tenant_id = t.id
             WHERE k.id = $1",
        )
        .bind(key_id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some((tenant_id, Some(quota), anchor)) = row else {
            continue;
        };
        let anchor = anchor.and_then(|d| u8::try_from(d).ok());
        // The period holding its own start is that period.
        let period = quota_period(u64::try_from(counted_in).unwrap_or(0), anchor);
        let start = i64::try_from(period.start_ms).unwrap_or(i64::MAX);
        let used: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(used), 0) AS BIGINT) FROM quota_counts
             WHERE key_id = $1 AND period_start_ms = $2",
        )
        .bind(key_id)
        .bind(start)
        .fetch_one(&mut **tx)
        .await?;
        for threshold in THRESHOLDS {
            if used.saturating_mul(100) < quota.saturating_mul(threshold) {
                continue;
            }
            // Time-sortable, so the delivery log lists events in the order they arose.
            let id = format!("evt_{now_ms:013}{threshold:03}{}", &db::new_id("")[1..]);
            let created_at = db::now();
            let payload = serde_json::to_string(&Event {
                id: &id,
                kind: EVENT_TYPE,
                created_at: &created_at,
                data: AlertData {
                    tenant_id: &tenant_id,
                    key_id,
                    threshold,
                    used,
                    quota,
                    period_start: db::rfc3339_ms(period.start_ms),
                    period_end: db::rfc3339_ms(period.end_ms),
                },
            })
            .unwrap_or_default();
            let inserted = sqlx::query(
                "INSERT INTO webhook_events (id, tenant_id, key_id, event_type, threshold,
                     period_start_ms, payload, status, attempts, next_attempt_at_ms, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $9)
                 ON CONFLICT (key_id, period_start_ms, event_type, threshold) DO NOTHING",
            )
            .bind(&id)
            .bind(&tenant_id)
            .bind(key_id)
            .bind(EVENT_TYPE)
            .bind(threshold)
            .bind(start)
            .bind(&payload)
            .bind(now_ms)
            .bind(&created_at)
            .execute(&mut **tx)
            .await?;
            queued += inserted.rows_affected();
        }
    }
    Ok(queued)
}

/// The HTTP client alerts are sent with: no redirects (the signature is for
/// the configured URL only), a bounded wait.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Sends every due event once; returns how many were attempted.
pub async fn deliver_due(db: &Db, client: &reqwest::Client) -> Result<usize, sqlx::Error> {
    let now = db::now_ms();
    let due: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
        "SELECT id, tenant_id, payload, attempts, next_attempt_at_ms FROM webhook_events
         WHERE status = 'pending' AND next_attempt_at_ms <= $1
         ORDER BY next_attempt_at_ms LIMIT $2",
    )
    .bind(now)
    .bind(BATCH)
    .fetch_all(db)
    .await?;
    let mut attempted = 0;
    for (id, tenant_id, payload, attempts, due_at) in due {
        let claimed = sqlx::query(
            "UPDATE webhook_events SET next_attempt_at_ms = $1
             WHERE id = $2 AND status = 'pending' AND next_attempt_at_ms = $3",
        )
        .bind(now.saturating_add(LEASE_MS))
        .bind(&id)
        .bind(due_at)
        .execute(db)
        .await?;
        if claimed.rows_affected() != 1 {
            continue; // Another replica is sending it.
        }
        attempted += 1;
        let target: Option<(String, String)> =
            sqlx::query_as("SELECT url, secret FROM webhooks WHERE tenant_id = $1")
                .bind(&tenant_id)
                .fetch_optional(db)
                .await?;
        let started = std::time::Instant::now();
        let (url, outcome) = match &target {
            None => (
                String::new(),
                Err("the tenant's webhook was removed".to_owned()),
            ),
            Some((url, secret)) => (url.clone(), send(client, url, secret, &id, &payload).await),
        };
        let elapsed = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let (status_code, error) = match &outcome {
            Ok(code) if (200..300).contains(code) => (Some(*code), None),
            Ok(code) => (Some(*code), Some(format!("answered {code}"))),
            Err(e) => (None, Some(e.clone())),
        };
        let attempts = attempts + 1;
        let mut tx = db.begin().await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (id, event_id, attempted_at, url, status_code, error, duration_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(format!("att_{:013}{}", db::now_ms(), &db::new_id("")[1..]))
        .bind(&id)
        .bind(db::now())
        .bind(&url)
        .bind(status_code.map(i64::from))
        .bind(&error)
        .bind(elapsed)
        .execute(&mut *tx)
        .await?;
        let (status, next) = if error.is_none() {
            ("delivered", now)
        } else if attempts >= MAX_ATTEMPTS || target.is_none() {
            ("failed", now)
        } else {
            ("pending", db::now_ms().saturating_add(backoff_ms(attempts)))
        };
        sqlx::query(
            "UPDATE webhook_events SET status = $1, attempts = $2, next_attempt_at_ms = $3,
                 delivered_at = CASE WHEN $1 = 'delivered' THEN $4 ELSE delivered_at END
             WHERE id = $5",
        )
        .bind(status)
        .bind(attempts)
        .bind(next)
        .bind(db::now())
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        match &error {
            None => tracing::info!(event = %id, %url, "webhook delivered"),
            Some(e) => {
                tracing::warn!(event = %id, %url, attempts, status, error = %e, "webhook attempt failed")
            }
        }
    }
    Ok(attempted)
}

/// One POST; the status code, or why there was none.
async fn send(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    event_id: &str,
    payload: &str,
) -> Result<u16, String> {
    let signature = sign(secret, db::now_ms() / 1000, payload);
    client
        .post(url)
        .header("content-type", "application/json")
        .header(EVENT_ID_HEADER, event_id)
        .header(SIGNATURE_HEADER, signature)
        .body(payload.to_owned())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| {
            if e.is_timeout() {
                "timed out".to_owned()
            } else if e.is_connect() {
                "could not connect".to_owned()
            } else {
                "request failed".to_owned()
            }
        })
}

/// The delivery worker, until the server shuts down.
pub async fn run(state: AppState) {
    let client = client();
    let mut shutting_down = state.shutting_down.subscribe();
    loop {
        if let Err(e) = deliver_due(&state.db, &client).await {
            tracing::warn!(error = %e, "webhook delivery pass failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutting_down.wait_for(|down| *down) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 style check: recompute independently with the hmac crate.
        let header = sign("whsec_test", 1_700_000_000, "{\"a\":1}");
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"whsec_test").unwrap();
        mac.update(b"1700000000.{\"a\":1}");
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(header, format!("t=1700000000,v1={expected}"));
        assert_ne!(sign("other", 1_700_000_000, "{\"a\":1}"), header);
    }

    #[test]
    fn backoff_doubles_from_a_second_to_at_most_an_hour() {
        assert_eq!(backoff_ms(1), 1000);
        assert_eq!(backoff_ms(2), 2000);
        assert_eq!(backoff_ms(5), 16_000);
        assert_eq!(backoff_ms(13), 3_600_000);
        assert_eq!(backoff_ms(i64::MAX), 3_600_000);
    }
}
