//! What the usage store keeps, and for how long (`store::retention`): hourly
//! counts rolled up into days, days deleted past the retention, batch ids
//! past their window, and the quota ledger rows of silent Envoys merged.
//! What the usage API, the dashboard and every receipt answer must not
//! change with any of it. Time is the test's clock, set to the millisecond
//! on either side of each cutoff.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tollgate_control_plane::clock::{Clock, Now, SetClock};
use tollgate_control_plane::store::retention::{prune, Pruned, RetentionPolicy, GONE_REPORTER};
use tollgate_control_plane::store::usage;
use tollgate_control_plane::{db, AppState};

use crate::common::*;
use crate::dashboard::Browser;

fn at(text: &str) -> Now {
    SetClock::at_rfc3339(text).now()
}

/// Reports `batch` as an Envoy would, with the clock at `when`.
async fn report_at(app: &Router, clock: &SetClock, when: &str, batch: Value) -> Reply {
    clock.set(at(when));
    let r = report_usage(app, &batch).await;
    assert_eq!(r.status, StatusCode::OK, "{when}: {:?}", r.body);
    r
}

async fn scalar(state: &AppState, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&state.db).await.unwrap()
}

async fn pass(state: &AppState, when: &str, policy: &RetentionPolicy) -> Pruned {
    prune(&state.db, at(when), policy).await.unwrap()
}

/// A new tenant on `plan_id` whose quota periods start on `anchor`.
async fn anchored_tenant(app: &Router, plan_id: &str, anchor: u8) -> String {
    let body =
        json!({"name": db::new_id("anchored"), "plan_id": plan_id, "billing_anchor_day": anchor});
    create(app, "/v1/tenants", body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Allowed, cost and refusals by code, summed per key over a tenant's series.
fn summed(view: &Value) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    for key in view["keys"].as_array().unwrap() {
        let id = key["key_id"].as_str().unwrap_or("-").to_owned();
        for point in key["series"].as_array().unwrap() {
            let mut add = |what: String, n: &Value| {
                *sums.entry(what).or_insert(0) += n.as_u64().unwrap();
            };
            add(format!("{id} allowed"), &point["allowed"]);
            add(format!("{id} cost"), &point["cost"]);
            for (code, n) in point["denied"].as_object().unwrap() {
                add(format!("{id} {code}"), n);
            }
        }
    }
    sums
}

/// Everything the usage API and the dashboard show of these tenants and keys.
#[derive(Debug, PartialEq)]
struct Shown {
    answers: Vec<Value>,
    hourly_sums: Vec<BTreeMap<String, u64>>,
    pages: Vec<(String, String)>,
}

/// Signed in once: each sign-in is in the audit trail the overview lists.
struct Readers {
    admin: Browser,
    tenant: Browser,
}

async fn shown(app: &Router, tenants: &[&str], keys: &[&str], readers: &Readers) -> Shown {
    let mut answers = Vec::new();
    let mut hourly_sums = Vec::new();
    for key in keys {
        let r = admin(app, Method::GET, &format!("/v1/keys/{key}/usage"), None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        answers.push(r.body);
    }
    for tenant in tenants {
        let daily = format!(
            "/v1/tenants/{tenant}/usage?granularity=day&from=2026-10-20T00:00:00Z&to=2026-11-19T00:00:00Z"
        );
        let r = admin(app, Method::GET, &daily, None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        answers.push(r.body);
        // Hourly over 31 days from a midnight: the points differ once days
        // are rolled up, the sums may not.
        let hourly = format!(
            "/v1/tenants/{tenant}/usage?granularity=hour&from=2026-10-19T00:00:00Z&to=2026-11-18T12:34:56Z"
        );
        let r = admin(app, Method::GET, &hourly, None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        hourly_sums.push(summed(&r.body));
    }
    let mut pages = Vec::new();
    let mut uris = vec!["/dashboard".to_owned(), "/dashboard/tenants".to_owned()];
    uris.extend(tenants.iter().map(|t| format!("/dashboard/tenants/{t}")));
    for key in keys {
        uris.push(format!("/dashboard/keys/{key}"));
        uris.push(format!("/dashboard/keys/{key}?granularity=day"));
    }
    for uri in &uris {
        let r = readers.admin.get(uri).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text());
        pages.push((uri.clone(), r.text()));
    }
    // A tenant's own overview counts from its anchored period's start.
    let r = readers.tenant.get("/dashboard").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    pages.push(("tenant's /dashboard".to_owned(), r.text()));
    Shown {
        answers,
        hourly_sums,
        pages,
    }
}

/// `after` is `before`, or the first difference is shown.
fn assert_same(after: &Shown, before: &Shown) {
    assert_eq!(after.answers, before.answers);
    assert_eq!(after.hourly_sums, before.hourly_sums);
    for ((uri, page), (_, was)) in after.pages.iter().zip(&before.pages) {
        let changed = page.lines().zip(was.lines()).position(|(a, b)| a != b);
        if let Some(line) = changed {
            let around = |text: &str| {
                text.lines()
                    .skip(line.saturating_sub(3))
                    .take(7)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "{uri} changed:\n{}\n---- was ----\n{}",
                around(page),
                around(was)
            );
        }
        assert_eq!(page, was, "{uri}");
    }
    assert_eq!(after, before);
}

/// Every total the usage API and the dashboard show is the same before and
/// after the hours of old days are rolled up, a day cut at the cutoff's
/// millisecond included; a rolled-up day reads as one point at its midnight.
async fn the_usage_api_and_the_dashboard_show_the_same_after_a_rollup(backend: Backend) {
    let (app, state, clock) = test_app_at(backend, "2026-11-01T00:00:00Z").await;
    let plan_id = plan(&app, None).await;
    let t1 = tenant(&app, &plan_id).await;
    let (k1, _) = key(&app, &t1).await;
    let (k2, _) = key(&app, &t1).await;
    // Its periods start on the 3rd: at a rolled-up day's midnight.
    let t2 = anchored_tenant(&app, &plan_id, 3).await;
    let (k3, _) = key(&app, &t2).await;
    let t2_token = tenant_token(&app, &t2).await;
    let uses = [
        (
            "2026-11-02T05:10:00Z",
            json!([{"key_id": k1, "allowed": 3, "cost": 5, "denied": {"rate_limited": 2}},
                   {"key_id": k2, "allowed": 1, "cost": 1},
                   {"key_id": k3, "allowed": 10, "cost": 10}]),
            json!({"invalid_api_key": 4}),
        ),
        (
            "2026-11-02T23:59:59.999Z",
            json!([{"key_id": k1, "allowed": 2, "cost": 2}]),
            json!({}),
        ),
        (
            "2026-11-03T00:00:00Z",
            json!([{"key_id": k1, "allowed": 7, "cost": 7},
                   {"key_id": k2, "denied": {"quota_exceeded": 1}},
                   {"key_id": k3, "allowed": 1, "cost": 3}]),
            json!({"missing_api_key": 1}),
        ),
        (
            "2026-11-16T23:59:59.999Z",
            json!([{"key_id": k2, "allowed": 4, "cost": 8}]),
            json!({}),
        ),
        (
            "2026-11-17T00:00:00Z",
            json!([{"key_id": k1, "allowed": 1, "cost": 1}]),
            json!({}),
        ),
        (
            "2026-11-18T12:00:00Z",
            json!([{"key_id": k2, "allowed": 2, "cost": 2}, {"key_id": k3, "allowed": 1, "cost": 1}]),
            json!({}),
        ),
    ];
    for (i, (when, keys, unattributed)) in uses.into_iter().enumerate() {
        let batch = json!({"batch_id": format!("b{i}"), "reporter_id": "envoy",
                           "keys": keys, "unattributed": unattributed});
        report_at(&app, &clock, when, batch).await;
    }
    clock.set(at(NOW));
    let keys = [k1.as_str(), k2.as_str(), k3.as_str()];
    let readers = Readers {
        admin: Browser::signed_in(&app, ADMIN).await,
        tenant: Browser::signed_in(&app, &t2_token).await,
    };
    let before = shown(&app, &[&t1, &t2], &keys, &readers).await;
    // k3's period began on the 3rd: the 2nd's 10 are not in it.
    assert_eq!(before.answers[2]["used"], 4, "{:?}", before.answers[2]);
    assert_eq!(before.answers[0]["used"], 15, "{:?}", before.answers[0]);

    // Hourly for one day once a day is over: at NOW, every day before the
    // 17th goes; the 17th's first hour, exactly at the cutoff, stays.
    let policy = RetentionPolicy::new(1, None, 7).unwrap();
    let old = "SELECT COUNT(*) FROM usage_hourly WHERE hour < '2026-11-17T00:00:00Z'";
    assert_eq!(scalar(&state, old).await, 11);
    let pruned = prune(&state.db, state.now(), &policy).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            // b0 to b2, over a week old.
            batch_ids: 3,
            // k3's use on the 2nd, in its period of October 3rd.
            quota_rows: 1,
            rolled_up_rows: 11,
            ..Pruned::default()
        }
    );
    assert_eq!(scalar(&state, old).await, 0);
    let hours: Vec<String> = sqlx::query_scalar("SELECT hour FROM usage_hourly ORDER BY hour")
        .fetch_all(&state.db)
        .await
        .unwrap();
    assert_eq!(
        hours,
        [
            "2026-11-17T00:00:00Z",
            "2026-11-18T12:00:00Z",
            "2026-11-18T12:00:00Z"
        ]
    );
    // 11 hours of 3 days become 10 rows (key, day, outcome): k1's two
    // hours of the 2nd are one.
    assert_eq!(scalar(&state, "SELECT COUNT(*) FROM usage_daily").await, 10);
    let after = shown(&app, &[&t1, &t2], &keys, &readers).await;
    assert_same(&after, &before);
    assert_eq!(
        prune(&state.db, state.now(), &policy).await.unwrap(),
        Pruned::default()
    );

    // At `granularity=hour` the 2nd is one point at its midnight, whole.
    let uri = format!(
        "/v1/tenants/{t1}/usage?granularity=hour&from=2026-11-02T00:00:00Z&to=2026-11-04T00:00:00Z"
    );
    let r = admin(&app, Method::GET, &uri, None).await;
    let k1_series = r.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == k1.as_str())
        .unwrap()["series"]
        .clone();
    assert_eq!(
        k1_series,
        json!([
            {"start": "2026-11-02T00:00:00Z", "allowed": 5, "cost": 7, "denied": {"rate_limited": 2}},
            {"start": "2026-11-03T00:00:00Z", "allowed": 7, "cost": 7, "denied": {}},
        ])
    );
    // A span from within a rolled-up day counts the day whole: never less.
    let uri = format!(
        "/v1/tenants/{t1}/usage?granularity=hour&from=2026-11-02T06:00:00Z&to=2026-11-03T00:00:00Z"
    );
    let r = admin(&app, Method::GET, &uri, None).await;
    assert_eq!(summed(&r.body)[&format!("{k1} allowed")], 5, "{:?}", r.body);
}

/// A day is rolled up once it has been over for the hourly days, and
/// deleted once it has been over for the retention, not a millisecond
/// sooner; batch ids go after their window, and a batch sent again after
/// it is counted again, as the README says.
async fn days_roll_up_and_go_on_the_millisecond(backend: Backend) {
    let (app, state, clock) = test_app_at(backend, "2026-11-01T00:00:00Z").await;
    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let (key_id, _) = key(&app, &tenant_id).await;
    let batch = |id: &str, n: u64| {
        json!({"batch_id": id, "reporter_id": "envoy",
               "keys": [{"key_id": key_id, "allowed": n, "cost": n}]})
    };
    report_at(&app, &clock, "2026-11-16T23:00:00Z", batch("16th", 1)).await;
    report_at(&app, &clock, "2026-11-17T00:00:00Z", batch("17th", 2)).await;
    let policy = RetentionPolicy::new(35, Some(40), 7).unwrap();
    let days = || async {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT day, count FROM usage_daily ORDER BY day")
                .fetch_all(&state.db)
                .await
                .unwrap();
        rows
    };
    let hourly_rows = "SELECT COUNT(*) FROM usage_hourly";
    let month = format!(
        "/v1/tenants/{tenant_id}/usage?granularity=day&from=2026-11-10T00:00:00Z&to=2026-12-10T00:00:00Z"
    );
    let series = || async { admin(&app, Method::GET, &month, None).await.body };
    let before = series().await;
    assert_eq!(summed(&before)[&format!("{key_id} allowed")], 3);

    // The 16th is over at the 17th's midnight; hourly for 35 days after.
    let p = pass(&state, "2026-12-21T23:59:59.999Z", &policy).await;
    assert_eq!((p.rolled_up_rows, p.usage_rows), (0, 0), "{p:?}");
    assert_eq!(scalar(&state, hourly_rows).await, 2);
    let p = pass(&state, "2026-12-22T00:00:00Z", &policy).await;
    assert_eq!((p.rolled_up_rows, p.usage_rows), (1, 0), "{p:?}");
    assert_eq!(days().await, [("2026-11-16T00:00:00Z".to_owned(), 1)]);
    assert_eq!(scalar(&state, hourly_rows).await, 1);
    assert_eq!(series().await, before);
    let p = pass(&state, "2026-12-22T23:59:59.999Z", &policy).await;
    assert_eq!((p.rolled_up_rows, p.usage_rows), (0, 0), "{p:?}");
    let p = pass(&state, "2026-12-23T00:00:00Z", &policy).await;
    assert_eq!((p.rolled_up_rows, p.usage_rows), (1, 0), "{p:?}");
    assert_eq!(scalar(&state, hourly_rows).await, 0);
    assert_eq!(series().await, before);

    // Kept for 40 days once over: the 16th's until December 27th.
    let p = pass(&state, "2026-12-26T23:59:59.999Z", &policy).await;
    assert_eq!(p.usage_rows, 0, "{p:?}");
    let p = pass(&state, "2026-12-27T00:00:00Z", &policy).await;
    assert_eq!(p.usage_rows, 1, "{p:?}");
    assert_eq!(days().await, [("2026-11-17T00:00:00Z".to_owned(), 2)]);
    assert_eq!(summed(&series().await)[&format!("{key_id} allowed")], 2);
    let p = pass(&state, "2026-12-28T00:00:00Z", &policy).await;
    assert_eq!(p.usage_rows, 1, "{p:?}");
    assert_eq!(days().await, []);
    // Without a retention, days stay.
    report_at(&app, &clock, "2026-12-28T00:00:00Z", batch("28th", 4)).await;
    let p = pass(&state, "2027-12-28T00:00:00Z", &RetentionPolicy::default()).await;
    assert_eq!((p.rolled_up_rows, p.usage_rows), (1, 0), "{p:?}");
    assert_eq!(days().await, [("2026-12-28T00:00:00Z".to_owned(), 4)]);

    // A one-day batch-id window: an id received at 12:00:00.000 (written
    // to the second) is kept until 12:00:01 the next day.
    let window = RetentionPolicy::new(35, None, 1).unwrap();
    report_at(&app, &clock, "2027-12-28T12:00:00Z", batch("late", 5)).await;
    let p = pass(&state, "2027-12-29T12:00:00.999Z", &window).await;
    assert_eq!(p.batch_ids, 0, "{p:?}");
    report_at(&app, &clock, "2027-12-29T12:00:00.999Z", batch("late", 5)).await;
    let counted = "SELECT CAST(SUM(count) AS BIGINT) FROM usage_hourly";
    assert_eq!(
        scalar(&state, counted).await,
        5,
        "sent again within the window"
    );
    let p = pass(&state, "2027-12-29T12:00:01Z", &window).await;
    assert_eq!(p.batch_ids, 1, "{p:?}");
    report_at(&app, &clock, "2027-12-29T12:00:01Z", batch("late", 5)).await;
    assert_eq!(scalar(&state, counted).await, 10, "sent again after it");
}

/// Every receipt any reporter but the merged ones could be sent, at every
/// cursor and page size, with each key's quota figures.
#[derive(Debug, PartialEq)]
struct Standings {
    receipts: Vec<(String, usize, u64, Value)>,
    facts: Vec<(String, u64, u64, u64)>,
    alerts: Vec<(String, i64, i64)>,
}

async fn standings(state: &AppState, keys: &[&str], now: Now) -> Standings {
    let head = u64::try_from(scalar(state, "SELECT seq FROM quota_seq").await).unwrap();
    let mut receipts = Vec::new();
    for reporter in ["live-a", "live-b", "", "new-envoy"] {
        for page in [1, 2, 10_000] {
            for since in 0..=head + 1 {
                let r = usage::receipt(&state.db, page, reporter, since, now.unix_ms())
                    .await
                    .unwrap();
                let r = serde_json::to_value(&r).unwrap();
                receipts.push((reporter.to_owned(), page, since, r));
            }
        }
    }
    let mut facts = Vec::new();
    for key in keys {
        let f = usage::quota_facts(&state.db, key, now.unix_ms())
            .await
            .unwrap()
            .unwrap();
        let by = |r: &str| f.used_by.get(r).copied().unwrap_or(0);
        facts.push(((*key).to_owned(), f.used, by("live-a"), by("live-b")));
    }
    // What a quota alert reads: the sum per key and period.
    let alerts = sqlx::query_as(
        "SELECT key_id, period_start_ms, CAST(SUM(used) AS BIGINT) FROM quota_counts
         GROUP BY key_id, period_start_ms ORDER BY key_id, period_start_ms",
    )
    .fetch_all(&state.db)
    .await
    .unwrap();
    Standings {
        receipts,
        facts,
        alerts,
    }
}

/// The ledger rows of reporters silent past the batch-id window are merged
/// into one row per key and period; every receipt a live reporter could be
/// sent, every quota figure and every alert's sum stay exactly the same.
async fn merging_the_ledger_of_gone_envoys_changes_no_standing(backend: Backend) {
    let (app, state, clock) = test_app_at(backend, "2026-11-02T10:00:00Z").await;
    let body = json!({"name": "metered", "monthly_quota": 1000,
                      "limits": [{"name": "per-second", "max": 5, "window_seconds": 1}]});
    let plan_id = create(&app, "/v1/plans", body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tenant_id = tenant(&app, &plan_id).await;
    let mut keys = Vec::new();
    for _ in 0..4 {
        keys.push(key(&app, &tenant_id).await.0);
    }
    let [k1, k2, k3, k4] = [0, 1, 2, 3].map(|i| keys[i].as_str());
    let mut n = 0;
    let mut report = |reporter: &str, when: &'static str, uses: &[(&str, u64)]| {
        n += 1;
        let keys: Vec<Value> = uses
            .iter()
            .map(|(k, c)| json!({"key_id": k, "allowed": c, "cost": c}))
            .collect();
        let batch =
            json!({"batch_id": format!("{reporter}-{n}"), "reporter_id": reporter, "keys": keys});
        let (app, clock) = (app.clone(), clock.clone());
        async move { report_at(&app, &clock, when, batch).await }
    };
    report("gone-2", "2026-11-02T10:00:00Z", &[(k1, 5), (k3, 6)]).await;
    report("gone-1", "2026-11-02T10:00:01Z", &[(k1, 3), (k2, 4)]).await;
    report("live-a", "2026-11-02T10:00:02Z", &[(k1, 1), (k4, 2)]).await;
    report("live-b", "2026-11-02T10:00:03Z", &[(k2, 7)]).await;
    // gone-1's last word, exactly a week before the first pass below.
    report("gone-1", "2026-11-05T10:00:00Z", &[(k4, 1)]).await;
    report("live-a", "2026-11-09T10:00:00Z", &[(k1, 2)]).await;
    // An idle Envoy's heartbeat: nothing counted, but heard from.
    report("live-b", "2026-11-09T10:00:00Z", &[]).await;
    let seq_of = |reporter: &'static str| {
        let db = state.db.clone();
        let k1 = k1.to_owned();
        async move {
            let seq: i64 = sqlx::query_scalar(
                "SELECT seq FROM quota_counts WHERE key_id = $1 AND reporter_id = $2",
            )
            .bind(&k1)
            .bind(reporter)
            .fetch_one(&db)
            .await
            .unwrap();
            seq
        }
    };
    let newest_of_k1 = seq_of("gone-1").await.max(seq_of("gone-2").await);
    let reporters = |table: &'static str| {
        let db = state.db.clone();
        async move {
            let mut ids: Vec<String> =
                sqlx::query_scalar(&format!("SELECT DISTINCT reporter_id FROM {table}"))
                    .fetch_all(&db)
                    .await
                    .unwrap();
            ids.sort();
            ids
        }
    };
    assert_eq!(
        reporters("quota_reporters").await,
        ["gone-1", "gone-2", "live-a", "live-b"]
    );
    let policy = RetentionPolicy::default();
    let first = at("2026-11-12T10:00:00Z");
    clock.set(first);
    let before = standings(
        &state,
        &keys.iter().map(String::as_str).collect::<Vec<_>>(),
        first,
    )
    .await;
    assert_eq!(before.facts[0], (k1.to_owned(), 11, 3, 0));

    // gone-2 was last heard from more than a week ago; gone-1 exactly a week.
    let pruned = prune(&state.db, first, &policy).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            // The four batches of the 2nd.
            batch_ids: 4,
            merged_quota_rows: 2,
            ..Pruned::default()
        }
    );
    let key_ids: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(standings(&state, &key_ids, first).await, before);
    assert_eq!(
        reporters("quota_counts").await,
        ["gone-1", "live-a", "live-b", GONE_REPORTER]
    );
    // A reporter whose rows are all merged is forgotten.
    assert_eq!(
        reporters("quota_reporters").await,
        ["gone-1", "live-a", "live-b"]
    );

    let later = first.plus_ms(1);
    clock.set(later);
    let pruned = prune(&state.db, later, &policy).await.unwrap();
    assert_eq!(pruned.merged_quota_rows, 3, "{pruned:?}");
    assert_eq!(standings(&state, &key_ids, later).await, before);
    assert_eq!(
        reporters("quota_counts").await,
        ["live-a", "live-b", GONE_REPORTER]
    );
    assert_eq!(reporters("quota_reporters").await, ["live-a", "live-b"]);
    // One row per key and period, with the sum and the newest seq merged.
    let merged: (i64, i64) =
        sqlx::query_as("SELECT used, seq FROM quota_counts WHERE key_id = $1 AND reporter_id = $2")
            .bind(k1)
            .bind(GONE_REPORTER)
            .fetch_one(&state.db)
            .await
            .unwrap();
    assert_eq!(merged, (8, newest_of_k1));
    assert_eq!(
        prune(&state.db, later, &policy).await.unwrap(),
        Pruned::default()
    );

    // What the merged rows hold still counts as the others' use.
    let head = u64::try_from(scalar(&state, "SELECT seq FROM quota_seq").await).unwrap();
    // (live-b hears of k2, the key it uses: gone-1's 4, merged, and live-a's 1.)
    report("live-a", "2026-11-12T10:01:00Z", &[(k2, 1)]).await;
    let r = usage::receipt(&state.db, 10, "live-b", head, later.unix_ms())
        .await
        .unwrap();
    assert_eq!(r.standings.len(), 1, "{r:?}");
    assert_eq!(r.standings[0].others_used, 4 + 1);
    // No Envoy may report as the merged rows.
    let batch = json!({"batch_id": "x-1", "reporter_id": GONE_REPORTER, "keys": []});
    let r = report_usage(&app, &batch).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_usage");
}

/// `rows` rows of `per_row` values each, inserted by `sql_head` a hundred at a time.
async fn insert_rows(db: &db::Db, sql_head: &str, rows: &[Vec<Value>]) {
    for part in rows.chunks(100) {
        let mut n = 0;
        let values: Vec<String> = part
            .iter()
            .map(|row| {
                let params: Vec<String> = row
                    .iter()
                    .map(|_| {
                        n += 1;
                        format!("${n}")
                    })
                    .collect();
                format!("({})", params.join(", "))
            })
            .collect();
        let sql = format!("{sql_head} VALUES {}", values.join(", "));
        let mut query = sqlx::query(&sql);
        for value in part.iter().flatten() {
            query = match value {
                Value::String(s) => query.bind(s.clone()),
                Value::Number(n) => query.bind(n.as_i64().unwrap()),
                _ => query.bind(None::<String>),
            };
        }
        query.execute(db).await.unwrap();
    }
}

/// Two passes at once (on PostgreSQL, as two replicas would, each with a
/// pool of its own) move every row exactly once: the rows they report
/// moving add up to the rows there were, and every sum is what one pass
/// gives. Hours and ledger rows each in rounds of their own, so that both
/// passes reach the same rows at the same time.
async fn two_passes_at_once_count_every_row_once(backend: Backend) {
    let state = test_state_at(backend, Arc::new(SetClock::at_rfc3339(NOW))).await;
    let other = if db::is_postgres(&state.db) {
        let url = state.db.connect_options().database_url.to_string();
        db::connect(&url).await.unwrap()
    } else {
        state.db.clone()
    };
    let policy = RetentionPolicy::new(1, None, 7).unwrap();
    let both = || async {
        let (a, b) = tokio::join!(
            prune(&state.db, at(NOW), &policy),
            prune(&other, at(NOW), &policy)
        );
        (a.unwrap(), b.unwrap())
    };
    let by_day = |table: &'static str| {
        let db = state.db.clone();
        async move {
            let sql = match table {
                "usage_hourly" => {
                    "SELECT key_id, SUBSTR(hour, 1, 10), outcome,
                       CAST(SUM(count) AS BIGINT), CAST(SUM(cost) AS BIGINT)
                     FROM usage_hourly GROUP BY key_id, SUBSTR(hour, 1, 10), outcome"
                }
                _ => {
                    "SELECT key_id, SUBSTR(day, 1, 10), outcome,
                       CAST(SUM(count) AS BIGINT), CAST(SUM(cost) AS BIGINT)
                     FROM usage_daily GROUP BY key_id, SUBSTR(day, 1, 10), outcome"
                }
            };
            let mut rows: Vec<(String, String, String, i64, i64)> =
                sqlx::query_as(sql).fetch_all(&db).await.unwrap();
            rows.sort();
            rows
        }
    };
    let mut expected = Vec::new();
    for round in 0..3 {
        // 4,800 hours: 5 keys, 20 days of a month, 24 hours, 2 outcomes.
        let mut hours = Vec::new();
        for key in 0..5 {
            for day in 1..=20 {
                for hour in 0..24 {
                    let at = format!("2026-{:02}-{day:02}T{hour:02}:00:00Z", 8 + round);
                    let count = key + day + hour + 1;
                    for (outcome, count, cost) in
                        [("allowed", count, 2 * count), ("rate_limited", 1, 0)]
                    {
                        hours.push(vec![
                            json!(format!("key-{key}")),
                            json!("tenant"),
                            json!(at),
                            json!(outcome),
                            json!(count),
                            json!(cost),
                        ]);
                    }
                }
            }
        }
        insert_rows(
            &state.db,
            "INSERT INTO usage_hourly (key_id, tenant_id, hour, outcome, count, cost)",
            &hours,
        )
        .await;
        expected.extend(by_day("usage_hourly").await);
        expected.sort();
        let (a, b) = both().await;
        assert_eq!(a.rolled_up_rows + b.rolled_up_rows, 4800, "{a:?} {b:?}");
        assert_eq!(scalar(&state, "SELECT COUNT(*) FROM usage_hourly").await, 0);
        assert_eq!(by_day("usage_daily").await, expected, "round {round}");
    }

    let november = i64::try_from(at("2026-11-01T00:00:00Z").unix_ms()).unwrap();
    let per_key = || {
        let db = state.db.clone();
        async move {
            let mut rows: Vec<(String, i64, i64)> = sqlx::query_as(
                "SELECT key_id, CAST(SUM(used) AS BIGINT), MAX(seq) FROM quota_counts
                 WHERE reporter_id <> 'live' GROUP BY key_id",
            )
            .fetch_all(&db)
            .await
            .unwrap();
            rows.sort();
            rows
        }
    };
    let mut seq = 0;
    for round in 0..3 {
        // 3,000 rows of three silent Envoys, 1,000 of a live one.
        let mut ledger = Vec::new();
        let mut reporters = Vec::new();
        for reporter in ["gone-0", "gone-1", "gone-2", "live"] {
            let reporter = if reporter == "live" {
                reporter.to_owned()
            } else {
                format!("{reporter}-{round}")
            };
            for key in 0..1000 {
                seq += 1;
                ledger.push(vec![
                    json!(format!("key-{key}")),
                    json!(format!("hash-{key}")),
                    json!(november),
                    json!(reporter),
                    json!(key + round + 1),
                    json!(seq),
                ]);
            }
            let last_seen = if reporter == "live" {
                at(NOW).db_ms()
            } else {
                november
            };
            reporters.push(vec![json!(reporter), json!(last_seen)]);
        }
        sqlx::query("DELETE FROM quota_counts WHERE reporter_id = 'live'")
            .execute(&state.db)
            .await
            .unwrap();
        sqlx::query("DELETE FROM quota_reporters")
            .execute(&state.db)
            .await
            .unwrap();
        insert_rows(
            &state.db,
            "INSERT INTO quota_counts (key_id, key_hash, period_start_ms, reporter_id, used, seq)",
            &ledger,
        )
        .await;
        insert_rows(
            &state.db,
            "INSERT INTO quota_reporters (reporter_id, last_seen_ms)",
            &reporters,
        )
        .await;
        sqlx::query("UPDATE quota_seq SET seq = $1")
            .bind(seq)
            .execute(&state.db)
            .await
            .unwrap();
        let before = per_key().await;
        let (a, b) = both().await;
        assert_eq!(
            a.merged_quota_rows + b.merged_quota_rows,
            3000,
            "{a:?} {b:?}"
        );
        assert_eq!(per_key().await, before, "round {round}");
        let merged =
            format!("SELECT COUNT(*) FROM quota_counts WHERE reporter_id = '{GONE_REPORTER}'");
        assert_eq!(scalar(&state, &merged).await, 1000);
        let live = "SELECT COUNT(*) FROM quota_counts WHERE reporter_id = 'live'";
        assert_eq!(scalar(&state, live).await, 1000);
    }
    assert_eq!(
        prune(&state.db, at(NOW), &policy).await.unwrap(),
        Pruned::default()
    );
}

on_both_databases!(
    the_usage_api_and_the_dashboard_show_the_same_after_a_rollup,
    days_roll_up_and_go_on_the_millisecond,
    merging_the_ledger_of_gone_envoys_changes_no_standing,
    two_passes_at_once_count_every_row_once,
);

/// A setting that is no number, not positive, or would delete counts still
/// needed stops the server before it opens the database, saying which.
#[test]
fn the_server_refuses_to_start_with_a_retention_that_would_lose_counts() {
    let data_dir = std::env::temp_dir().join(db::new_id("tollgate-retention"));
    for (vars, says, code) in [
        (
            vec![("CONTROL_PLANE_USAGE_HOURLY_DAYS", "0")],
            "--usage-hourly-days",
            2,
        ),
        (
            vec![("CONTROL_PLANE_USAGE_HOURLY_DAYS", "a week")],
            "--usage-hourly-days",
            2,
        ),
        (
            vec![("CONTROL_PLANE_USAGE_BATCH_ID_WINDOW_DAYS", "0")],
            "--usage-batch-id-window-days",
            2,
        ),
        (
            vec![("CONTROL_PLANE_USAGE_RETENTION_DAYS", "-3")],
            "--usage-retention-days",
            2,
        ),
        (
            vec![("CONTROL_PLANE_USAGE_RETENTION_DAYS", "34")],
            "CONTROL_PLANE_USAGE_RETENTION_DAYS (34) must be at least CONTROL_PLANE_USAGE_HOURLY_DAYS (35)",
            1,
        ),
        (
            vec![
                ("CONTROL_PLANE_USAGE_HOURLY_DAYS", "7"),
                ("CONTROL_PLANE_USAGE_RETENTION_DAYS", "30"),
            ],
            "CONTROL_PLANE_USAGE_RETENTION_DAYS (30) must be at least 31",
            1,
        ),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_control-plane"))
            .arg("serve")
            .env_clear()
            .env("CONTROL_PLANE_DATA_DIR", &data_dir)
            .env("CONTROL_PLANE_ADDR", "127.0.0.1:0")
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{vars:?}: the server started");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(code), "{vars:?}: {stderr}");
        assert!(stderr.contains(says), "{vars:?}: {stderr}");
        assert!(!data_dir.exists(), "{vars:?}: the database was opened");
    }
}

/// The median, 99th percentile and largest of `ms`.
fn spread(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    format!(
        "{} reports, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

/// How long rolling up 100,800 hourly rows takes, and how long usage
/// reports sent back to back meanwhile take, against the same reports
/// without it: on SQLite in a file (as `control-plane serve` runs it) and
/// on PostgreSQL. A measurement, not a check: `cargo test -p
/// tollgate-control-plane --test api -- --ignored --nocapture rollup_timing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn rollup_timing() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let dir = std::env::temp_dir().join(db::new_id("tollgate-rollup-timing"));
        let pool = match backend {
            Backend::Sqlite => {
                std::fs::create_dir_all(&dir).unwrap();
                db::connect(&format!("sqlite://{}/t.db", dir.display()))
                    .await
                    .unwrap()
            }
            Backend::Postgres => fresh_postgres().await,
        };
        db::migrate(&pool).await.unwrap();
        let clock = Arc::new(SetClock::at_rfc3339(NOW));
        let state = AppState::new(pool, ADMIN, SYNC, 0).with_clock(clock);
        let app = tollgate_control_plane::app(state.clone());
        let plan_id = plan(&app, None).await;
        let tenant_id = tenant(&app, &plan_id).await;
        let (key_id, _) = key(&app, &tenant_id).await;
        let mut hours = Vec::new();
        for key in 0..100 {
            for day in 0..42 {
                let date = at("2026-10-01T00:00:00Z").plus_ms(day * 86_400_000);
                for hour in 0..24 {
                    let at = tollgate_control_plane::clock::rfc3339_ms(
                        date.unix_ms() + hour * 3_600_000,
                    );
                    hours.push(vec![
                        json!(format!("key-{key}")),
                        json!(tenant_id),
                        json!(at),
                        json!("allowed"),
                        json!(1),
                        json!(1),
                    ]);
                }
            }
        }
        insert_rows(
            &state.db,
            "INSERT INTO usage_hourly (key_id, tenant_id, hour, outcome, count, cost)",
            &hours,
        )
        .await;
        let mut n = 0u64;
        let report = |n: u64| {
            let app = app.clone();
            let batch = json!({"batch_id": format!("t-{n}"), "reporter_id": "bench",
                               "keys": [{"key_id": key_id, "allowed": 1, "cost": 1}]});
            async move {
                let started = Instant::now();
                let r = send(
                    &app,
                    Method::POST,
                    "/v1/usage",
                    Some(SYNC),
                    Some(&batch.to_string()),
                )
                .await;
                assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
                started.elapsed().as_secs_f64() * 1000.0
            }
        };
        let mut quiet = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            n += 1;
            quiet.push(report(n).await);
        }
        let policy = RetentionPolicy::new(1, None, 7).unwrap();
        let pass = tokio::spawn({
            let db = state.db.clone();
            async move {
                let started = Instant::now();
                let pruned = prune(&db, at(NOW), &policy).await.unwrap();
                (pruned, started.elapsed())
            }
        });
        let mut during = Vec::new();
        while !pass.is_finished() {
            n += 1;
            during.push(report(n).await);
        }
        let (pruned, took) = pass.await.unwrap();
        assert_eq!(pruned.rolled_up_rows, 100_800);
        let daily = "SELECT CAST(SUM(count) AS BIGINT) FROM usage_daily";
        assert_eq!(scalar(&state, daily).await, 100_800);
        println!(
            "{backend:?}: rolled up {} hourly rows in {:.2} s ({} chunks); reports without: {}; during: {}",
            pruned.rolled_up_rows,
            took.as_secs_f64(),
            pruned.rolled_up_rows.div_ceil(1000),
            spread(quiet),
            spread(during)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
