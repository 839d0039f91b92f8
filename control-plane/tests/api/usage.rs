//! Usage reports from the Envoys (counted once per batch, moving a key's
//! `last_used_at`) and usage read back per key and per tenant.

use std::time::Duration;

use crate::common::{
    admin, assert_problem, create, empty_database, key, plan, send, state_over, tenant,
    tenant_token, test_app, test_app_at, Backend, Reply, ADMIN, NOW, SYNC,
};
use axum::http::{Method, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use std::sync::Arc;
use tollgate_control_plane::clock::{Clock, SetClock};
use tollgate_control_plane::{app, db};

async fn report(app: &Router, batch: Value) -> Reply {
    let body = batch.to_string();
    send(app, Method::POST, "/v1/usage", Some(SYNC), Some(&body)).await
}

async fn usage_reports_are_counted_once_and_move_last_used_at(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let (key_id, _) = key(&app, &tenant_id).await;
    let shown = admin(&app, Method::GET, &format!("/v1/keys/{key_id}"), None).await;
    assert!(shown.body["last_used_at"].is_null());
    // The uses reported below are from before this test ran.
    sqlx::query("UPDATE api_keys SET created_at = '2026-11-18T09:00:00Z' WHERE id = $1")
        .bind(&key_id)
        .execute(&state.db)
        .await
        .unwrap();

    let used_ms: u64 = 1_795_000_000_000; // 2026-11-18T11:06:40Z
    let batch = json!({
        "batch_id": "envoy-1-7",
        "keys": [{"key_id": key_id, "allowed": 5, "cost": 5, "denied": {"rate_limited": 2}, "last_used_ms": used_ms}],
        "unattributed": {"invalid_api_key": 3}
    });
    let r = report(&app, batch.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body, json!({"standings": [], "cursor": 1, "more": false}));
    // The same batch again, as after a lost answer: counted once, answered again.
    let again = report(&app, batch).await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(again.body, r.body);

    let rows: Vec<(String, Option<String>, String, i64)> = sqlx::query_as(
        "SELECT key_id, tenant_id, outcome, count FROM usage_hourly ORDER BY key_id, outcome",
    )
    .fetch_all(&state.db)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("".to_owned(), None, "invalid_api_key".to_owned(), 3),
            (
                key_id.clone(),
                Some(tenant_id.clone()),
                "allowed".to_owned(),
                5
            ),
            (
                key_id.clone(),
                Some(tenant_id.clone()),
                "rate_limited".to_owned(),
                2
            ),
        ]
    );
    let shown = admin(&app, Method::GET, &format!("/v1/keys/{key_id}"), None).await;
    assert_eq!(shown.body["last_used_at"], "2026-11-18T11:06:00Z");

    // Another batch adds up; an older last use never moves last_used_at back,
    // and one from a clock far ahead is clipped to now.
    let r = report(
        &app,
        json!({"batch_id": "envoy-1-8", "keys": [{"key_id": key_id, "allowed": 1, "cost": 1, "last_used_ms": used_ms - 3_600_000}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let allowed: i64 = sqlx::query_scalar(
        "SELECT CAST(SUM(count) AS BIGINT) FROM usage_hourly WHERE key_id = $1 AND outcome = 'allowed'",
    )
    .bind(&key_id)
    .fetch_one(&state.db)
    .await
    .unwrap();
    assert_eq!(allowed, 6);
    let shown = admin(&app, Method::GET, &format!("/v1/keys/{key_id}"), None).await;
    assert_eq!(shown.body["last_used_at"], "2026-11-18T11:06:00Z");
    let r = report(
        &app,
        json!({"batch_id": "envoy-1-9", "keys": [{"key_id": key_id, "allowed": 1, "last_used_ms": 4_000_000_000_000u64}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let shown = admin(&app, Method::GET, &format!("/v1/keys/{key_id}"), None).await;
    let last = shown.body["last_used_at"].as_str().unwrap().to_owned();
    assert!(
        last.as_str() < "2100" && last.as_str() > "2026-11-18T11:06:00Z",
        "{last}"
    );

    // A use in the minute the key was created is not shown as before it.
    let (fresh_id, _) = key(&app, &tenant_id).await;
    sqlx::query("UPDATE api_keys SET created_at = '2026-11-18T11:06:30Z' WHERE id = $1")
        .bind(&fresh_id)
        .execute(&state.db)
        .await
        .unwrap();
    let r = report(
        &app,
        json!({"batch_id": "envoy-1-10", "keys": [{"key_id": fresh_id, "allowed": 1, "last_used_ms": used_ms}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let shown = admin(&app, Method::GET, &format!("/v1/keys/{fresh_id}"), None).await;
    assert_eq!(shown.body["last_used_at"], "2026-11-18T11:06:30Z");
    assert_eq!(shown.body["created_at"], "2026-11-18T11:06:30Z");
    // The next minute's use moves it on as before.
    let r = report(
        &app,
        json!({"batch_id": "envoy-1-11", "keys": [{"key_id": fresh_id, "allowed": 1, "last_used_ms": used_ms + 60_000}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let shown = admin(&app, Method::GET, &format!("/v1/keys/{fresh_id}"), None).await;
    assert_eq!(shown.body["last_used_at"], "2026-11-18T11:07:00Z");

    // Without the sync token, nothing about the request is even read.
    let r = send(&app, Method::POST, "/v1/usage", None, Some("{")).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = send(&app, Method::GET, "/v1/sync?since=abc", None, None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    // Reporting is the filters' business: the sync token, not the admin's.
    let body = json!({"batch_id": "x"}).to_string();
    let r = send(&app, Method::POST, "/v1/usage", Some(ADMIN), Some(&body)).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    for bad in [
        json!({"batch_id": ""}),
        json!({"batch_id": "b", "unattributed": {"Bad Code": 1}}),
        json!({"batch_id": "b", "unattributed": {"allowed": 1}}),
        json!({"batch_id": "b", "keys": [{"key_id": "k", "allowed": 9_223_372_036_854_775_808u64}]}),
        json!({"batch_id": "b", "keys": [{"key_id": "k", "cost": 9_223_372_036_854_775_808u64}]}),
        json!({"batch_id": "b", "reporter_id": "r".repeat(129)}),
        json!({"batch_id": "b", "keys": [{"key_id": "", "allowed": 1}]}),
    ] {
        assert_problem(
            &report(&app, bad).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_usage",
        );
    }
    assert_problem(
        &report(&app, json!({"batch_id": "b", "extra": 1})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    let batches: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_batches")
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert_eq!(batches, 5, "the five accepted above, none of the refused");
}

async fn usage_reads_back_per_key_and_per_tenant(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let (key_id, _) = key(&app, &tenant_id).await;
    let (quiet_key, _) = key(&app, &tenant_id).await;
    let r = report(
        &app,
        json!({"batch_id": "u-1", "keys": [{"key_id": key_id, "allowed": 5, "cost": 5, "denied": {"rate_limited": 2}}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    let usage = admin(&app, Method::GET, &format!("/v1/keys/{key_id}/usage"), None).await;
    assert_eq!(usage.status, StatusCode::OK, "{:?}", usage.body);
    assert_eq!(usage.body["used"], 5);
    assert!(usage.body["quota"].is_null() && usage.body["remaining"].is_null());
    let start = usage.body["period_start"].as_str().unwrap();
    assert!(start.ends_with("-01T00:00:00Z"), "{start}");
    assert!(usage.body["period_end"].as_str().unwrap() > start);
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{key_id}"),
        Some(json!({"monthly_quota": 100})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let usage = admin(&app, Method::GET, &format!("/v1/keys/{key_id}/usage"), None).await;
    assert_eq!(
        (
            usage.body["quota"].as_u64(),
            usage.body["remaining"].as_u64()
        ),
        (Some(100), Some(95))
    );
    let quiet = admin(
        &app,
        Method::GET,
        &format!("/v1/keys/{quiet_key}/usage"),
        None,
    )
    .await;
    assert_eq!(quiet.body["used"], 0);

    for granularity in ["hour", "day"] {
        let series = admin(
            &app,
            Method::GET,
            &format!("/v1/tenants/{tenant_id}/usage?granularity={granularity}"),
            None,
        )
        .await;
        assert_eq!(series.status, StatusCode::OK, "{:?}", series.body);
        assert_eq!(series.body["granularity"], granularity);
        let keys = series.body["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1, "{:?}", series.body);
        assert_eq!(keys[0]["key_id"], key_id.as_str());
        let points = keys[0]["series"].as_array().unwrap();
        assert_eq!(points.len(), 1);
        assert_eq!(points[0]["allowed"], 5);
        assert_eq!(points[0]["cost"], 5);
        assert_eq!(points[0]["denied"]["rate_limited"], 2);
    }
    let past = admin(
        &app,
        Method::GET,
        &format!("/v1/tenants/{tenant_id}/usage?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z"),
        None,
    )
    .await;
    assert_eq!(past.body["keys"], json!([]));
    // A span past its granularity's longest is cut to it, and an empty one
    // is empty; the answer says which span it covers.
    let spans = [
        (
            "?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            "2025-12-01T00:00:00Z",
            "2026-01-01T00:00:00Z",
        ),
        (
            "?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00Z",
        ),
    ];
    for (query, from, to) in spans {
        let r = admin(
            &app,
            Method::GET,
            &format!("/v1/tenants/{tenant_id}/usage{query}"),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(
            (r.body["from"].as_str(), r.body["to"].as_str()),
            (Some(from), Some(to))
        );
        assert_eq!(r.body["keys"], json!([]));
    }

    for bad in ["?granularity=minute", "?from=yesterday", "?color=red"] {
        let r = admin(
            &app,
            Method::GET,
            &format!("/v1/tenants/{tenant_id}/usage{bad}"),
            None,
        )
        .await;
        assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_query");
    }
    // Tenants read their own usage, and no one else's.
    let token = tenant_token(&app, &tenant_id).await;
    let own = send(
        &app,
        Method::GET,
        &format!("/v1/keys/{key_id}/usage"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(own.status, StatusCode::OK);
    let own = send(
        &app,
        Method::GET,
        &format!("/v1/tenants/{tenant_id}/usage"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(own.status, StatusCode::OK);
    let other = tenant(&app, &plan_id).await;
    let (other_key, _) = key(&app, &other).await;
    for uri in [
        format!("/v1/keys/{other_key}/usage"),
        format!("/v1/tenants/{other}/usage"),
    ] {
        let r = send(&app, Method::GET, &uri, Some(&token), None).await;
        assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    }
    for uri in ["/v1/keys/key_nope/usage", "/v1/tenants/tnt_nope/usage"] {
        assert_problem(
            &admin(&app, Method::GET, uri, None).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
}

/// A key's quota period follows the state's clock: the last millisecond of
/// the tenant's period still shows it, with its use; the next shows the new
/// period, empty.
async fn the_quota_period_turns_over_at_the_anchor_to_the_millisecond(backend: Backend) {
    let (app, _state, clock) = test_app_at(backend, "2026-12-14T23:59:59.999Z").await;
    let plan_id = plan(&app, None).await;
    let body = json!({"name": "anchored", "plan_id": plan_id, "billing_anchor_day": 15});
    let tenant_id = create(&app, "/v1/tenants", body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (key_id, _) = key(&app, &tenant_id).await;
    let last_ms = clock.now().unix_ms();
    let batch = json!({"batch_id": "edge-1", "keys": [{"key_id": key_id, "allowed": 3, "cost": 3, "last_used_ms": last_ms}]});
    assert_eq!(report(&app, batch).await.status, StatusCode::OK);

    let uri = format!("/v1/keys/{key_id}/usage");
    let before = admin(&app, Method::GET, &uri, None).await.body;
    assert_eq!(before["period_start"], "2026-11-15T00:00:00Z", "{before}");
    assert_eq!(before["period_end"], "2026-12-15T00:00:00Z", "{before}");
    assert_eq!(before["used"], 3, "{before}");

    clock.advance(Duration::from_millis(1));
    let after = admin(&app, Method::GET, &uri, None).await.body;
    assert_eq!(after["period_start"], "2026-12-15T00:00:00Z", "{after}");
    assert_eq!(after["period_end"], "2027-01-15T00:00:00Z", "{after}");
    assert_eq!(after["used"], 0, "{after}");
}

/// A tenant on `plan_id` and a key of it: (tenant id, key id, key hash).
async fn key_on(
    app: &Router,
    state: &tollgate_control_plane::AppState,
    plan_id: &str,
) -> (String, String, String) {
    let tenant_id = tenant(app, plan_id).await;
    let (key_id, _) = key(app, &tenant_id).await;
    let hash: String = sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE id = $1")
        .bind(&key_id)
        .fetch_one(&state.db)
        .await
        .unwrap();
    (tenant_id, key_id, hash)
}

/// The shares a receipt leases, by key hash or tenant id, and the default.
fn leased(receipt: &Value) -> (u64, u64, Vec<(String, u64)>) {
    let leases = &receipt["leases"];
    let grants = leases["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let whose = g["key_hash"].as_str().or(g["tenant_id"].as_str()).unwrap();
            (whose.to_owned(), g["share"].as_u64().unwrap())
        })
        .collect();
    (
        leases["seq"].as_u64().unwrap(),
        leases["default_share"].as_u64().unwrap(),
        grants,
    )
}

async fn receipts_lease_shares_of_fleet_wide_limits_by_demand(backend: Backend) {
    let (app, state) = test_app(backend).await;
    // A limit may say it is per Envoy; that round-trips through the API.
    let body = json!({"name": "fleet", "limits": [
        {"name": "per-second", "max": 10, "window_seconds": 1},
        {"name": "local", "max": 100, "window_seconds": 60, "per_envoy": true},
    ]});
    let plan_id = create(&app, "/v1/plans", body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let shown = admin(&app, Method::GET, &format!("/v1/plans/{plan_id}"), None).await;
    assert!(
        shown.body["limits"][0].get("per_envoy").is_none(),
        "{:?}",
        shown.body
    );
    assert_eq!(shown.body["limits"][1]["per_envoy"], true);
    let (tenant_id, key_id, hash) = key_on(&app, &state, &plan_id).await;
    const FULL: u64 = 65_536;

    // A key asked well within its limit is served by the defaults alone.
    let within =
        json!({"batch_id": "a-0", "reporter_id": "a", "keys": [{"key_id": key_id, "allowed": 3}]});
    let r = report(&app, within).await;
    assert_eq!(r.body["leases"]["grants"], json!([]), "{:?}", r.body);
    // Refused for a rate limit, it gets grants of its own. Envoy A alone:
    // the whole of everything, the key's and its tenant's.
    let asks = |envoy: &str, n: u64, batch: u64, acked: u64| {
        json!({"batch_id": format!("{envoy}-{batch}"), "reporter_id": envoy, "leases_applied": acked,
               "keys": [{"key_id": key_id, "allowed": n, "denied": {"rate_limited": 1}}]})
    };
    let r = report(&app, asks("a", 3, 1, 0)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let (a_seq, default, grants) = leased(&r.body);
    assert_eq!(default, FULL);
    assert!(grants.contains(&(hash.clone(), FULL)), "{grants:?}");
    assert!(grants.contains(&(tenant_id.clone(), FULL)), "{grants:?}");
    // Answered again (a retry): the same leases, no demand counted twice.
    let again = report(&app, asks("a", 3, 1, 0)).await;
    assert_eq!(again.body["leases"], r.body["leases"]);

    // Envoy B joins: nothing until A gives some up and says so.
    let idle = |envoy: &str, batch: u64, acked: u64| json!({"batch_id": format!("{envoy}-{batch}"), "reporter_id": envoy, "leases_applied": acked});
    let r = report(&app, asks("b", 3, 1, 0)).await;
    let (mut b_seq, default, grants) = leased(&r.body);
    assert_eq!(default, 0);
    assert!(grants.contains(&(hash.clone(), 0)), "{grants:?}");
    let mut a = a_seq;
    let mut shares = (FULL, 0);
    for batch in 2..8 {
        let r = report(&app, asks("a", 3, batch, a)).await;
        let (seq, _, grants) = leased(&r.body);
        a = seq;
        if let Some((_, s)) = grants.iter().find(|(h, _)| *h == hash) {
            shares.0 = *s;
        }
        let r = report(&app, asks("b", 3, batch, b_seq)).await;
        let (seq, _, grants) = leased(&r.body);
        b_seq = seq;
        if let Some((_, s)) = grants.iter().find(|(h, _)| *h == hash) {
            shares.1 = *s;
        }
        assert!(shares.0 + shares.1 <= FULL, "{shares:?}");
    }
    // Asking alike, they hold about half each.
    assert!(shares.0.abs_diff(FULL / 2) <= FULL / 64, "{shares:?}");
    assert!(shares.1.abs_diff(FULL / 2) <= FULL / 64, "{shares:?}");
    // A report that names no Envoy (an older filter) is leased nothing.
    let r = report(&app, json!({"batch_id": "old-1"})).await;
    assert!(r.body.get("leases").is_none(), "{:?}", r.body);
    let r = report(&app, idle("a", 99, a)).await;
    assert_eq!(r.status, StatusCode::OK);
    // Prometheus: two Envoys, the key and its tenant.
    let metrics = send(&app, Method::GET, "/metrics", None, None).await;
    let text = metrics.text();
    assert!(
        text.contains("\ntollgate_control_plane_share_proxies 2\n"),
        "{text}"
    );
    assert!(
        text.contains("\ntollgate_control_plane_share_entries 2\n"),
        "{text}"
    );
}

async fn concurrent_batches_naming_keys_in_any_order_are_all_counted(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(key(&app, &tenant_id).await.0);
    }
    // Two Envoys at once, one naming the keys forwards and one backwards:
    // their rows' locks would cross if taken in the order given.
    let batch = |envoy: &str, n: usize, ids: &[String]| {
        let keys: Vec<Value> = ids
            .iter()
            .map(|id| json!({"key_id": id, "allowed": 1, "cost": 1, "denied": {"rate_limited": 1}}))
            .collect();
        json!({"batch_id": format!("{envoy}-{n}"), "reporter_id": envoy, "keys": keys})
    };
    let backwards: Vec<String> = ids.iter().rev().cloned().collect();
    for n in 0..10 {
        let (a, b) = tokio::join!(
            report(&app, batch("fwd", n, &ids)),
            report(&app, batch("back", n, &backwards)),
        );
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        assert_eq!(b.status, StatusCode::OK, "{:?}", b.body);
    }
    let allowed: i64 = sqlx::query_scalar(
        "SELECT CAST(SUM(count) AS BIGINT) FROM usage_hourly WHERE outcome = 'allowed'",
    )
    .fetch_one(&state.db)
    .await
    .unwrap();
    assert_eq!(allowed, 2 * 10 * 8);
}

async fn a_key_named_once_per_hand_over_is_counted_as_their_sum(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let (a, _) = key(&app, &tenant_id).await;
    let (b, _) = key(&app, &tenant_id).await;
    sqlx::query("UPDATE api_keys SET created_at = '2026-11-18T09:00:00Z'")
        .execute(&state.db)
        .await
        .unwrap();
    let used_ms: u64 = 1_795_000_000_000; // 2026-11-18T11:06:40Z
                                          // As an Envoy's leader splices its workers' hand-overs: key `a` in
                                          // three of them, `b` in one.
    let r = report(
        &app,
        json!({"batch_id": "spliced-1", "reporter_id": "envoy-s", "keys": [
            {"key_id": a, "allowed": 2, "cost": 3, "denied": {"rate_limited": 1}, "last_used_ms": used_ms - 60_000},
            {"key_id": b, "allowed": 1, "cost": 1, "last_used_ms": used_ms},
            {"key_id": a, "allowed": 4, "cost": 4, "denied": {"rate_limited": 2, "forbidden": 1}, "last_used_ms": used_ms},
            {"key_id": a, "denied": {"forbidden": 1}}
        ]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT key_id, outcome, count, cost FROM usage_hourly ORDER BY key_id, outcome",
    )
    .fetch_all(&state.db)
    .await
    .unwrap();
    let mut expected = vec![
        (a.clone(), "allowed".to_owned(), 6, 7),
        (a.clone(), "forbidden".to_owned(), 2, 0),
        (a.clone(), "rate_limited".to_owned(), 3, 0),
        (b.clone(), "allowed".to_owned(), 1, 1),
    ];
    expected.sort();
    assert_eq!(rows, expected);
    let used: i64 =
        sqlx::query_scalar("SELECT CAST(SUM(used) AS BIGINT) FROM quota_counts WHERE key_id = $1")
            .bind(&a)
            .fetch_one(&state.db)
            .await
            .unwrap();
    assert_eq!(used, 7);
    let shown = admin(&app, Method::GET, &format!("/v1/keys/{a}"), None).await;
    assert_eq!(shown.body["last_used_at"], "2026-11-18T11:06:00Z");

    // Entries each within bounds whose sum is not: refused whole.
    let big = i64::MAX as u64;
    let r = report(
        &app,
        json!({"batch_id": "spliced-2", "keys": [
            {"key_id": a, "allowed": big, "cost": 1},
            {"key_id": a, "allowed": big, "cost": 1}
        ]}),
    )
    .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_usage");
    let after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_hourly")
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert_eq!(after, 4);
}

/// The slices a receipt carries: (key hash, period start, cap).
fn sliced(receipt: &Value) -> Vec<(String, u64, u64)> {
    receipt["leases"]["slices"]
        .as_array()
        .map(|slices| {
            slices
                .iter()
                .map(|s| {
                    (
                        s["key_hash"].as_str().unwrap().to_owned(),
                        s["period_start_ms"].as_u64().unwrap(),
                        s["cap"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn a_quota_near_its_end_is_sliced_out_of_what_no_envoy_holds(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let body = json!({"name": "sliced", "monthly_quota": 20,
                      "limits": [{"name": "per-second", "max": 10, "window_seconds": 1}]});
    let plan_id = create(&app, "/v1/plans", body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, key_id, hash) = key_on(&app, &state, &plan_id).await;
    let batch = |envoy: &str, n: u64, allowed: u64, pending: u64, acked: u64| {
        json!({"batch_id": format!("{envoy}-{n}"), "reporter_id": envoy, "leases_applied": acked,
               "keys": [{"key_id": key_id, "allowed": allowed, "cost": allowed,
                         "denied": {"quota_pending": pending}}]})
    };
    let seq = |r: &Reply| r.body["leases"]["seq"].as_u64().unwrap();
    // Two Envoys, counted.
    let a0 = report(&app, json!({"batch_id": "a-0", "reporter_id": "a"})).await;
    let b0 = report(&app, json!({"batch_id": "b-0", "reporter_id": "b"})).await;
    let (mut a, mut b) = (seq(&a0), seq(&b0));
    // A admitted 5 and then waited for a slice: the key is sliced, and A
    // gets nothing yet, B not having stopped admitting.
    let r = report(&app, batch("a", 1, 5, 2, a)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let slices = sliced(&r.body);
    assert_eq!(slices.len(), 1, "{:?}", r.body);
    let (ref sliced_hash, period_start, cap) = slices[0];
    assert_eq!((sliced_hash, cap), (&hash, 0));
    a = seq(&r);
    // B is sent a slice of 0, and applies it.
    let r = report(
        &app,
        json!({"batch_id": "b-1", "reporter_id": "b", "leases_applied": b}),
    )
    .await;
    assert_eq!(sliced(&r.body), vec![(hash.clone(), period_start, 0)]);
    b = seq(&r);
    let r = report(
        &app,
        json!({"batch_id": "b-2", "reporter_id": "b", "leases_applied": b}),
    )
    .await;
    b = seq(&r);
    // Now A gets a slice: 15 are left, of which at most an equal split
    // (8) at a time, on top of the 5 it counted.
    let r = report(&app, batch("a", 2, 0, 1, a)).await;
    assert_eq!(sliced(&r.body), vec![(hash.clone(), period_start, 13)]);
    a = seq(&r);
    // B asks too: it gets some of the 7 nobody holds, and no more.
    let r = report(&app, batch("b", 3, 0, 1, b)).await;
    let b_cap = sliced(&r.body)[0].2;
    assert!((1..=7).contains(&b_cap), "{b_cap}");
    // A, still asking of late, gets more of what is left, never so much
    // that the slices reach past the quota.
    let r = report(&app, batch("a", 3, 0, 0, a)).await;
    let a_cap = sliced(&r.body).first().map_or(13, |s| s.2);
    assert!(a_cap >= 13 && a_cap + b_cap <= 20, "{a_cap} + {b_cap}");
    let metrics = send(&app, Method::GET, "/metrics", None, None).await;
    assert!(
        metrics
            .text()
            .contains("\ntollgate_control_plane_sliced_quotas 1\n"),
        "{}",
        metrics.text()
    );
}

/// Batch ids past their window and ledger rows of periods that are over
/// are pruned; what the usage API answers stays the same, and a batch sent
/// again within the window is still counted once.
async fn rows_nothing_needs_any_more_are_pruned_and_totals_stay(backend: Backend) {
    use tollgate_control_plane::store::retention::{prune, Pruned, RetentionPolicy};
    let policy = RetentionPolicy::default();
    let (app, state, clock) = test_app_at(backend, "2026-11-20T12:00:00Z").await;
    let plan_id = plan(&app, None).await;
    let (tenant_id, key_id, _) = key_on(&app, &state, &plan_id).await;
    let batch = |id: &str, cost: u64| {
        json!({"batch_id": id, "reporter_id": "a",
               "keys": [{"key_id": key_id, "allowed": cost, "cost": cost}]})
    };
    let totals = |app: Router| {
        let (key_id, tenant_id) = (key_id.clone(), tenant_id.clone());
        async move {
            let key = admin(&app, Method::GET, &format!("/v1/keys/{key_id}/usage"), None).await;
            let from = "?from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z";
            let tenant = admin(
                &app,
                Method::GET,
                &format!("/v1/tenants/{tenant_id}/usage{from}"),
                None,
            )
            .await;
            assert_eq!(tenant.status, StatusCode::OK, "{:?}", tenant.body);
            (key.body["used"].clone(), tenant.body)
        }
    };
    let rows = |table: &'static str| {
        let db = state.db.clone();
        async move {
            let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&db)
                .await
                .unwrap();
            n
        }
    };
    assert_eq!(report(&app, batch("old", 3)).await.status, StatusCode::OK);
    clock.advance(Duration::from_millis(policy.batch_id_window_ms()));
    assert_eq!(report(&app, batch("new", 2)).await.status, StatusCode::OK);
    let before = totals(app.clone()).await;
    assert_eq!(before.0, 5);
    // A week to the second: kept. A second more: pruned, the newer kept.
    assert_eq!(
        prune(&state.db, state.now(), &policy).await.unwrap(),
        Pruned::default()
    );
    clock.advance(Duration::from_secs(1));
    let pruned = prune(&state.db, state.now(), &policy).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            batch_ids: 1,
            ..Pruned::default()
        }
    );
    assert_eq!(rows("usage_batches").await, 1);
    assert_eq!(totals(app.clone()).await, before);
    // Within its window, a batch sent again is still counted once.
    assert_eq!(report(&app, batch("new", 2)).await.status, StatusCode::OK);
    assert_eq!(totals(app.clone()).await, before);
    // December: November's ledger rows go; the usage read back stays.
    clock.advance(Duration::from_secs(5 * 24 * 3600));
    let december = totals(app.clone()).await;
    assert_eq!(december.0, 0);
    let pruned = prune(&state.db, state.now(), &policy).await.unwrap();
    assert_eq!(pruned.quota_rows, 1);
    assert_eq!(rows("quota_counts").await, 0);
    assert_eq!(totals(app.clone()).await, december);
    assert_eq!(december.1, before.1);
}

/// A replica's forwarded report is answered by the replica that allocates,
/// and refused by one that does not; only with the sync token.
async fn forwarded_reports_are_answered_only_where_shares_are_allocated(backend: Backend) {
    use tollgate_control_plane::shares::Role;
    let (app, state) = test_app(backend).await;
    let report = json!({"proxy": "envoy-b", "acked": 0, "demand": [], "slices": []}).to_string();
    let forward = |token| {
        send(
            &app,
            Method::POST,
            "/v1/internal/leases",
            token,
            Some(&report),
        )
    };
    assert_eq!(forward(Some(ADMIN)).await.status, StatusCode::UNAUTHORIZED);
    state
        .leasing
        .set_role(Role::Follower("http://127.0.0.1:1".into()));
    assert_problem(
        &forward(Some(SYNC)).await,
        StatusCode::CONFLICT,
        "not_allocating",
    );
    state.leasing.set_role(Role::Leader);
    let r = forward(Some(SYNC)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // Alone in the fleet: the whole default; no key sliced.
    assert_eq!(r.body["leases"]["default_share"], 65_536, "{:?}", r.body);
    assert_eq!(r.body["sliced"], json!([]), "{:?}", r.body);
}

/// A store from before a key's last use had a table of its own
/// (`0013_key_last_used.sql`) keeps every key's last use through the upgrade.
async fn an_upgrade_keeps_every_key_s_last_use(backend: Backend) {
    let db = empty_database(backend).await;
    // The migrations before it, as an older control plane ran them.
    let before = std::env::temp_dir().join(format!("tollgate-migrations-{}", db::new_id("m")));
    std::fs::create_dir(&before).unwrap();
    let mut copied = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0013" {
            std::fs::copy(&path, before.join(&name)).unwrap();
            copied += 1;
        }
    }
    assert_eq!(copied, 12);
    let older = sqlx::migrate::Migrator::new(before.as_path())
        .await
        .unwrap();
    older.run(&db).await.unwrap();
    std::fs::remove_dir_all(&before).unwrap();
    for sql in [
        "INSERT INTO plans (id, name, limits, metadata, public, created_at, updated_at, version)
         VALUES ('plan_old', 'Old', '[]', '{}', FALSE, '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z', 1)",
        "INSERT INTO tenants (id, name, plan_id, created_at, updated_at)
         VALUES ('tenant_old', 'Old', 'plan_old', '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z')",
        "INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, active, created_at, updated_at,
                               version, last_used_at)
         VALUES ('key_used', 'tenant_old', 'used', 'tg_a', 'hash-a', TRUE,
                 '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z', 1, '2026-11-17T08:15:00Z'),
                ('key_unused', 'tenant_old', 'unused', 'tg_b', 'hash-b', TRUE,
                 '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z', 1, NULL)",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }

    db::migrate(&db).await.unwrap();
    let app = app(state_over(db, Arc::new(SetClock::at_rfc3339(NOW))));
    let used = admin(&app, Method::GET, "/v1/keys/key_used", None).await;
    assert_eq!(
        used.body["last_used_at"], "2026-11-17T08:15:00Z",
        "{:?}",
        used.body
    );
    let unused = admin(&app, Method::GET, "/v1/keys/key_unused", None).await;
    assert!(unused.body["last_used_at"].is_null(), "{:?}", unused.body);
    // And it goes on moving from there.
    let r = report(
        &app,
        json!({"batch_id": "after-upgrade", "keys": [
            {"key_id": "key_used", "allowed": 1, "cost": 1, "last_used_ms": 1_795_000_000_000_u64}
        ]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let used = admin(&app, Method::GET, "/v1/keys/key_used", None).await;
    assert_eq!(
        used.body["last_used_at"], "2026-11-18T11:06:00Z",
        "{:?}",
        used.body
    );
}

on_both_databases!(
    an_upgrade_keeps_every_key_s_last_use,
    a_quota_near_its_end_is_sliced_out_of_what_no_envoy_holds,
    forwarded_reports_are_answered_only_where_shares_are_allocated,
    rows_nothing_needs_any_more_are_pruned_and_totals_stay,
    concurrent_batches_naming_keys_in_any_order_are_all_counted,
    receipts_lease_shares_of_fleet_wide_limits_by_demand,
    usage_reports_are_counted_once_and_move_last_used_at,
    usage_reads_back_per_key_and_per_tenant,
    the_quota_period_turns_over_at_the_anchor_to_the_millisecond,
    a_key_named_once_per_hand_over_is_counted_as_their_sum,
);
