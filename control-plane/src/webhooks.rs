//! Quota alerts by webhook: events at 80 % and 100 % of a key's monthly
//! quota, once per key, period and threshold, signed and delivered with retries.
//!
//! The events are queued in an outbox by the transaction that counts the
//! usage (`store::webhooks`). The [`run`] worker sends what is due, records
//! every attempt, and retries with exponential backoff. Several replicas may
//! run the worker: an event is claimed with a compare-and-set on its next
//! attempt time before it is sent.
//!
//! Where an alert may go is `egress`'s to say: unless internal targets are
//! allowed, a URL whose host is an internal address, or whose name resolves
//! to one when the delivery connects, is refused, and the refusal is a
//! failed attempt like any other, with its reason in the log.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::egress::{self, ForbiddenTarget, GuardedResolver, Targets};
use crate::state::AppState;
use crate::store::webhooks::{self as outbox, Attempt};
pub use crate::store::webhooks::{EVENT_TYPE, THRESHOLDS};

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "tollgate-signature";
pub const EVENT_ID_HEADER: &str = "tollgate-event-id";
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

/// The HTTP client alerts are sent with, and where it may send them.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    targets: Targets,
}

/// The client for `targets`: no redirects (the signature is for the
/// configured URL only, and a redirect could lead anywhere), a bounded wait,
/// straight to the target and never through a proxy named by `HTTP(S)_PROXY`
/// (the addresses checked must be the ones connected to), and, unless any
/// target is allowed, names resolved by [`GuardedResolver`]. An error rather
/// than a client without the guard.
pub fn client(targets: Targets) -> Result<Client, reqwest::Error> {
    let builder = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")));
    let builder = match targets {
        Targets::PublicOnly => builder.dns_resolver(Arc::new(GuardedResolver)),
        Targets::Any => builder,
    };
    Ok(Client {
        http: builder.build()?,
        targets,
    })
}

/// Sends every due event once; returns how many were attempted.
pub async fn deliver_due(state: &AppState, client: &Client) -> Result<usize, sqlx::Error> {
    let (db, clock) = (&state.db, &*state.clock);
    let now = clock.now();
    let mut attempted = 0;
    for (id, tenant_id, payload, attempts, due_at) in outbox::due(db, now, BATCH).await? {
        if !outbox::claim(db, &id, due_at, now.db_ms().saturating_add(LEASE_MS)).await? {
            continue; // Another replica is sending it.
        }
        attempted += 1;
        let target = outbox::target(db, &tenant_id).await?;
        let started = std::time::Instant::now();
        let (url, outcome) = match &target {
            None => (
                String::new(),
                Err("the tenant's webhook was removed".to_owned()),
            ),
            Some((url, stored)) => match state.sealer.open(stored, &tenant_id) {
                Ok(secret) => {
                    let signed_at = clock.now().db_ms() / 1000;
                    (
                        url.clone(),
                        send(client, (url, &secret), signed_at, &id, &payload).await,
                    )
                }
                // Sealed by a replica with another key: nothing to sign with.
                Err(e) => (
                    url.clone(),
                    Err(format!("the signing secret does not open: {e}")),
                ),
            },
        };
        let elapsed = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let (status_code, error) = match &outcome {
            Ok(code) if (200..300).contains(code) => (Some(*code), None),
            Ok(code) => (Some(*code), Some(format!("answered {code}"))),
            Err(e) => (None, Some(e.clone())),
        };
        let attempts = attempts + 1;
        let answered = clock.now();
        let (status, next) = if error.is_none() {
            ("delivered", now.db_ms())
        } else if attempts >= MAX_ATTEMPTS || target.is_none() {
            ("failed", now.db_ms())
        } else {
            (
                "pending",
                answered.db_ms().saturating_add(backoff_ms(attempts)),
            )
        };
        let attempt = Attempt {
            event_id: &id,
            url: &url,
            status_code,
            error: error.as_deref(),
            duration_ms: elapsed,
            attempts,
            status,
            next_attempt_at_ms: next,
        };
        outbox::record_attempt(db, &attempt, answered).await?;
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
    client: &Client,
    (url, secret): (&str, &str),
    signed_at: i64,
    event_id: &str,
    payload: &str,
) -> Result<u16, String> {
    // An address as host is never resolved, so the resolver cannot see it:
    // checked here, for URLs set while internal targets were allowed.
    if let Ok(parsed) = reqwest::Url::parse(url) {
        egress::address_target(&parsed, client.targets).map_err(|why| refused(&why))?;
    }
    let signature = sign(secret, signed_at, payload);
    client
        .http
        .post(url)
        .header("content-type", "application/json")
        .header(EVENT_ID_HEADER, event_id)
        .header(SIGNATURE_HEADER, signature)
        .body(payload.to_owned())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| {
            if let Some(forbidden) = forbidden_target(&e) {
                refused(&forbidden.to_string())
            } else if e.is_timeout() {
                "timed out".to_owned()
            } else if e.is_connect() {
                "could not connect".to_owned()
            } else {
                "request failed".to_owned()
            }
        })
}

/// The attempt log's reason for a target refused by `egress`.
fn refused(why: &str) -> String {
    format!(
        "refused: {why}; webhooks go to public addresses unless {} is true",
        egress::ALLOW_PRIVATE_ENV
    )
}

/// The resolver's refusal, if that is why `error` happened: it arrives
/// wrapped in the client's and the connector's own errors.
fn forbidden_target(error: &reqwest::Error) -> Option<&ForbiddenTarget> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(forbidden) = e.downcast_ref::<ForbiddenTarget>() {
            return Some(forbidden);
        }
        cause = e.source();
    }
    None
}

/// The delivery worker, until the server shuts down.
pub async fn run(state: AppState) {
    let client = match client(state.webhook_targets) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; no alerts are sent");
            return;
        }
    };
    let mut shutting_down = state.shutting_down.subscribe();
    loop {
        if let Err(e) = deliver_due(&state, &client).await {
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
