//! Usage batches as a busy Envoy sends them: thousands of keys in one batch,
//! more than one statement writes, counted exactly as a batch naming one key
//! is: every count, last use, ledger row, quota alert and standing.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::{admin, create, now_ms, report_usage, tenant, test_app, Backend};
use axum::http::{Method, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tollgate_control_plane::db;

/// Keys of the tenant with a webhook: more than one statement's worth of
/// every kind the batch writes or reads (on SQLite a statement takes up to
/// 4,096 parameters, the keys' lookup one a key; on PostgreSQL 500 rows),
/// but the ledger's stamping on PostgreSQL (20,000 rows a statement).
const WATCHED_KEYS: u64 = 4_200;
/// Keys of the tenant without one, whose periods start on the 15th.
const QUIET_KEYS: u64 = 60;
const QUOTA: i64 = 100;

/// `count` new keys of the tenant, sorted.
async fn keys(app: &Router, tenant_id: &str, count: u64) -> Vec<String> {
    let uri = format!("/v1/tenants/{tenant_id}/keys/batch");
    let body = create(app, &uri, json!({"count": count})).await;
    let mut ids: Vec<String> = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// What the batch below says of key number `i`: (allowed, cost, refused).
fn traffic(i: u64) -> (u64, u64, u64) {
    let allowed = i % 7;
    // Every cost from 0 to 120: some keys cross 80 % of the quota, some 100 %.
    (allowed, i % 121, i % 3)
}

async fn a_batch_of_thousands_of_keys_is_counted_row_for_row(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let plan_id = create(
        &app,
        "/v1/plans",
        json!({"name": db::new_id("plan"), "limits": [], "monthly_quota": QUOTA}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let watched = tenant(&app, &plan_id).await;
    let hook = json!({"url": "https://billing.example.com/hooks/tollgate"});
    let r = admin(
        &app,
        Method::PUT,
        &format!("/v1/tenants/{watched}/webhook"),
        Some(hook),
    )
    .await;
    assert!(r.status.is_success(), "{:?}", r.body);
    let quiet = create(
        &app,
        "/v1/tenants",
        json!({"name": db::new_id("quiet"), "plan_id": plan_id, "billing_anchor_day": 15}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let watched_keys = keys(&app, &watched, WATCHED_KEYS).await;
    let quiet_keys = keys(&app, &quiet, QUIET_KEYS).await;
    let tenant_of: BTreeMap<&str, &str> = watched_keys
        .iter()
        .map(|k| (k.as_str(), watched.as_str()))
        .chain(quiet_keys.iter().map(|k| (k.as_str(), quiet.as_str())))
        .collect();

    // Newest key first, so the batch's order is not the store's; the first
    // key is named twice, as two entries; three keys the store never knew.
    let now = now_ms();
    let used_at = now - 90_000;
    let mut entries = Vec::new();
    for (i, key_id) in (0u64..).zip(tenant_of.keys().rev()) {
        let (allowed, cost, refused) = traffic(i);
        entries.push(json!({"key_id": key_id, "allowed": allowed, "cost": cost,
            "denied": {"rate_limited": refused, "quota_exceeded": 0}, "last_used_ms": used_at}));
    }
    let twice = *tenant_of.keys().next_back().unwrap();
    entries.push(
        json!({"key_id": twice, "allowed": 1, "cost": 1, "denied": {"scope_denied": 2},
        "last_used_ms": now + 60_000}),
    );
    let unknown = ["key_nobody1", "key_nobody2", "key_nobody3"];
    for id in unknown {
        entries.push(
            json!({"key_id": id, "allowed": 2, "cost": 2, "denied": {}, "last_used_ms": used_at}),
        );
    }
    let batch = json!({"batch_id": "busy-1", "reporter_id": "envoy-a", "keys": entries,
        "unattributed": {"invalid_api_key": 9}});
    let r = report_usage(&app, &batch).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // The counts, as a key-by-key count would have them.
    let mut expected: BTreeSet<(String, Option<String>, String, i64, i64)> = BTreeSet::new();
    let mut ledger: BTreeMap<String, i64> = BTreeMap::new();
    for (i, key_id) in (0u64..).zip(tenant_of.keys().rev()) {
        let (mut allowed, mut cost, refused) = traffic(i);
        let tenant = Some(tenant_of[key_id].to_owned());
        if *key_id == twice {
            allowed += 1;
            cost += 1;
            expected.insert((
                key_id.to_string(),
                tenant.clone(),
                "scope_denied".into(),
                2,
                0,
            ));
        }
        if allowed > 0 || cost > 0 {
            expected.insert((
                key_id.to_string(),
                tenant.clone(),
                "allowed".into(),
                allowed as i64,
                cost as i64,
            ));
        }
        if refused > 0 {
            expected.insert((
                key_id.to_string(),
                tenant,
                "rate_limited".into(),
                refused as i64,
                0,
            ));
        }
        if cost > 0 {
            ledger.insert(key_id.to_string(), cost as i64);
        }
    }
    for id in unknown {
        expected.insert((id.to_owned(), None, "allowed".into(), 2, 2));
    }
    expected.insert((String::new(), None, "invalid_api_key".into(), 9, 0));
    let counted: BTreeSet<(String, Option<String>, String, i64, i64)> =
        sqlx::query_as("SELECT key_id, tenant_id, outcome, count, cost FROM usage_hourly")
            .fetch_all(&state.db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(counted.len(), expected.len());
    assert_eq!(counted, expected);

    // Last use: the minute of the latest use, never in the future, and
    // never before the key was created.
    let last_used: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT k.id, k.created_at, u.last_used_at
             FROM api_keys k LEFT JOIN key_last_used u ON u.key_id = k.id",
    )
    .fetch_all(&state.db)
    .await
    .unwrap();
    let minute = |ms: u64| {
        tollgate_control_plane::store::usage::truncated(ms, std::time::Duration::from_secs(60))
    };
    for (id, created_at, last) in last_used {
        let latest = if id == twice { now } else { used_at };
        assert_eq!(last, Some(minute(latest).max(created_at)), "{id}");
    }

    // The ledger: a row per key that cost something (none for unknown
    // keys), each stamped with its own number of the sequence, none left
    // unstamped, the sequence moved on by exactly that many.
    let rows: Vec<(String, String, i64, i64)> =
        sqlx::query_as("SELECT key_id, reporter_id, used, seq FROM quota_counts ORDER BY seq")
            .fetch_all(&state.db)
            .await
            .unwrap();
    let stamped: BTreeMap<String, i64> = rows
        .iter()
        .map(|(key_id, reporter, used, _)| {
            assert_eq!(reporter, "envoy-a");
            (key_id.clone(), *used)
        })
        .collect();
    assert_eq!(stamped, ledger);
    let seqs: Vec<i64> = rows.iter().map(|r| r.3).collect();
    let n = i64::try_from(ledger.len()).unwrap();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    let head: i64 = sqlx::query_scalar("SELECT seq FROM quota_seq")
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert_eq!(head, n);

    // Alerts: the tenant with the webhook only, one per threshold reached.
    let alerts: BTreeSet<(String, i64, String)> =
        sqlx::query_as("SELECT key_id, threshold, payload FROM webhook_events")
            .fetch_all(&state.db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let mut due = BTreeSet::new();
    for (key_id, used) in &ledger {
        if tenant_of[key_id.as_str()] != watched {
            continue;
        }
        for threshold in [80, 100] {
            if used * 100 >= QUOTA * threshold {
                due.insert((key_id.clone(), threshold));
            }
        }
    }
    assert!(due.len() > 100, "the batch crosses thresholds of many keys");
    assert_eq!(
        alerts
            .iter()
            .map(|(k, t, _)| (k.clone(), *t))
            .collect::<BTreeSet<_>>(),
        due
    );
    for (key_id, _, payload) in &alerts {
        let payload: Value = serde_json::from_str(payload).unwrap();
        assert_eq!(payload["data"]["used"], ledger[key_id.as_str()]);
        assert_eq!(payload["data"]["tenant_id"], watched.as_str());
    }

    // Another Envoy hears every one of those keys' standings on its next
    // report, and counts its own use on top: the keys named in the other order.
    let mine: Vec<Value> = ledger
        .keys()
        .map(|key_id| json!({"key_id": key_id, "allowed": 1, "cost": 1, "denied": {}}))
        .collect();
    let batch = json!({"batch_id": "busy-2", "reporter_id": "envoy-b", "keys": mine});
    let r = report_usage(&app, &batch).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["more"], false);
    let heard: BTreeMap<String, i64> = r.body["standings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["key_hash"].as_str().unwrap().to_owned(),
                s["others_used"].as_i64().unwrap(),
            )
        })
        .collect();
    let hashes: BTreeMap<String, String> = sqlx::query_as("SELECT id, key_hash FROM api_keys")
        .fetch_all(&state.db)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let expected: BTreeMap<String, i64> = ledger
        .iter()
        .map(|(key_id, used)| (hashes[key_id].clone(), *used))
        .collect();
    assert_eq!(heard, expected);
    let used: i64 = sqlx::query_scalar(
        "SELECT CAST(SUM(used) AS BIGINT) FROM quota_counts WHERE reporter_id = 'envoy-b'",
    )
    .fetch_one(&state.db)
    .await
    .unwrap();
    assert_eq!(used, n);
    let head: i64 = sqlx::query_scalar("SELECT seq FROM quota_seq")
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert_eq!(head, 2 * n);
}

on_both_databases!(a_batch_of_thousands_of_keys_is_counted_row_for_row);
