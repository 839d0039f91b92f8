//! Metering through the admin API and the Envoys' feeds: route costs and
//! tenant-scoped limits on plans, billing anchors on tenants, anonymous
//! access, costs in usage reports, and the quota ledger behind the standings
//! each usage receipt carries.
//!
//! Like the API tests (`tests/api/`), every test runs on SQLite and on the
//! PostgreSQL server named by `TOLLGATE_TEST_POSTGRES_URL` (`cargo xtask
//! test` starts one; `cargo xtask postgres` starts one by hand).

pub mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use axum::http::{Method, StatusCode};
use axum::Router;
use common::{
    admin, assert_problem, create, last_audit, now_ms, report_usage, send, sync, tenant_token,
    test_app, test_state, version, Backend, SYNC,
};
use serde_json::{json, Value};
use tollgate_control_plane::{app, db, AppState};
use tollgate_core::key::KeyHash;
use tollgate_core::period::quota_period;
use tollgate_core::wire::{LimitScope, UsageReceipt, WireAnonymous};

/// A new plan: five a second, and whatever `extra` adds.
async fn plan(app: &Router, extra: Value) -> String {
    let mut body = json!({
        "name": db::new_id("plan"),
        "limits": [{"name": "per-second", "max": 5, "window_seconds": 1}],
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    create(app, "/v1/plans", body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn tenant(app: &Router, plan_id: &str, anchor: Option<u8>) -> String {
    let body =
        json!({"name": db::new_id("acme"), "plan_id": plan_id, "billing_anchor_day": anchor});
    create(app, "/v1/tenants", body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A new key of the tenant: (id, hex hash).
async fn key(app: &Router, tenant_id: &str) -> (String, String) {
    let (id, plaintext) = common::key(app, tenant_id).await;
    (id, KeyHash::of(plaintext.as_bytes()).to_hex())
}

/// Rows in every table a refused request must not touch, and the version.
async fn row_counts(state: &AppState) -> Vec<i64> {
    let tables = [
        "plans",
        "tenants",
        "api_keys",
        "audit_log",
        "usage_batches",
        "usage_hourly",
        "quota_counts",
    ];
    let mut counts = common::row_counts(state, &tables).await;
    let seq: i64 = sqlx::query_scalar("SELECT seq FROM quota_seq")
        .fetch_one(&state.db)
        .await
        .unwrap();
    counts.push(seq);
    counts.push(i64::try_from(version(state).await).unwrap());
    counts
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
        .to_string()
}

/// Reports `batch`; the answer must be a receipt.
async fn report(app: &Router, batch: Value) -> UsageReceipt {
    let r = report_usage(app, &batch).await;
    assert_eq!(r.status, StatusCode::OK, "{batch}: {:?}", r.body);
    serde_json::from_value(r.body).unwrap()
}

/// An idle Envoy's heartbeat: nothing counted, standings asked for.
async fn heartbeat(app: &Router, reporter: &str, since: u64) -> UsageReceipt {
    report(
        app,
        json!({"batch_id": db::new_id(reporter), "reporter_id": reporter, "standings_since": since}),
    )
    .await
}

/// `(key hash, others_used)` of each standing, all in the period starting at `period_start_ms`.
fn standings(receipt: &UsageReceipt, period_start_ms: u64) -> Vec<(String, u64)> {
    receipt
        .standings
        .iter()
        .map(|s| {
            assert_eq!(s.period_start_ms, period_start_ms, "{receipt:?}");
            (s.key_hash.clone(), s.others_used)
        })
        .collect()
}

async fn plans_carry_route_costs_and_tenant_scoped_limits(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let route_costs = json!([
        {"methods": ["POST"], "path_prefix": "/search", "cost": 5},
        {"path_prefix": "/health", "cost": 0}
    ]);
    let created = create(
        &app,
        "/v1/plans",
        json!({
            "name": "Metered",
            "limits": [
                {"name": "shared", "max": 100, "window_seconds": 60, "scope": "tenant"},
                {"name": "own", "max": 5, "window_seconds": 1}
            ],
            "route_costs": route_costs,
            "monthly_quota": 1000,
            "public": true
        }),
    )
    .await;
    let plan_id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["route_costs"], route_costs);
    assert_eq!(created["limits"][0]["scope"], "tenant");
    assert!(created["limits"][1].get("scope").is_none(), "{created}");
    // The answer is the plan as shown, plus the version the write committed.
    let mut created = created;
    assert!(created
        .as_object_mut()
        .unwrap()
        .remove("config_version")
        .is_some());
    let shown = admin(&app, Method::GET, &format!("/v1/plans/{plan_id}"), None).await;
    assert_eq!(shown.body, created);
    let catalog = send(&app, Method::GET, "/v1/catalog", Some(""), None).await;
    assert_eq!(catalog.body["plans"][0]["route_costs"], route_costs);

    // Both reach the filters.
    let full = sync(&app, 0).await;
    let wire = full.plans.iter().find(|p| p.id == plan_id).unwrap();
    assert_eq!(wire.limits[0].scope, LimitScope::Tenant);
    assert_eq!(wire.limits[1].scope, LimitScope::Key);
    assert_eq!(
        serde_json::to_value(&wire.route_costs).unwrap(),
        route_costs
    );

    // PATCH replaces them, audited, and the delta carries the plan.
    let before = version(&state).await;
    let cheaper = json!([{"cost": 2}]);
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/plans/{plan_id}"),
        Some(json!({"route_costs": cheaper})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["route_costs"], cheaper);
    assert_eq!(r.body["limits"], created["limits"]);
    let entry = last_audit(&app, "plan.update").await;
    assert_eq!(entry["before"]["route_costs"], route_costs);
    assert_eq!(entry["after"]["route_costs"], cheaper);
    let delta = sync(&app, before).await;
    assert_eq!(delta.plans.len(), 1);
    assert_eq!(delta.plans[0].route_costs.len(), 1);
    assert_eq!(delta.plans[0].route_costs[0].cost, 2);
    // Other fields leave them alone; `[]` clears them.
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/plans/{plan_id}"),
        Some(json!({"max_users": 3})),
    )
    .await;
    assert_eq!(r.body["route_costs"], cheaper);
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/plans/{plan_id}"),
        Some(json!({"route_costs": []})),
    )
    .await;
    assert_eq!(r.body["route_costs"], json!([]));
    let wire = sync(&app, 0).await;
    assert!(wire.plans[0].route_costs.is_empty());
    // A plan created without them has none.
    let plain = plan(&app, json!({})).await;
    let shown = admin(&app, Method::GET, &format!("/v1/plans/{plain}"), None).await;
    assert_eq!(shown.body["route_costs"], json!([]));
}

async fn bad_route_costs_and_limit_scopes_are_refused(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let plan_id = plan(&app, json!({})).await;
    let written = row_counts(&state).await;
    let too_many: Vec<Value> = (0..33)
        .map(|i| json!({"path_prefix": format!("/r{i}"), "cost": 1}))
        .collect();
    for (route_costs, code) in [
        (json!([{"cost": 1_000_000_000_001u64}]), "invalid_plan"),
        (json!([{"methods": ["GET!"], "cost": 1}]), "invalid_plan"),
        (json!([{"methods": [""], "cost": 1}]), "invalid_plan"),
        (
            json!([{"path_prefix": "search", "cost": 1}]),
            "invalid_plan",
        ),
        (json!([{"path_prefix": "/a?b", "cost": 1}]), "invalid_plan"),
        (json!(too_many), "invalid_plan"),
        (json!([{"path_prefix": "/a"}]), "invalid_body"),
        (json!([{"cost": -1}]), "invalid_body"),
        (json!([{"cost": 1, "weight": 2}]), "invalid_body"),
        (json!({"cost": 1}), "invalid_body"),
    ] {
        let r = admin(
            &app,
            Method::POST,
            "/v1/plans",
            Some(json!({"name": "bad", "limits": [], "route_costs": route_costs})),
        )
        .await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, code);
        let r = admin(
            &app,
            Method::PATCH,
            &format!("/v1/plans/{plan_id}"),
            Some(json!({"route_costs": route_costs})),
        )
        .await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    for limit in [
        json!({"name": "x", "max": 1, "window_seconds": 1, "scope": "global"}),
        json!({"name": "x", "max": 1, "window_seconds": 1, "scope": null}),
    ] {
        let r = admin(
            &app,
            Method::POST,
            "/v1/plans",
            Some(json!({"name": "bad", "limits": [limit]})),
        )
        .await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    }
    assert_eq!(row_counts(&state).await, written);
}

async fn billing_anchor_day_is_validated_stored_and_moves_every_key(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let plan_id = plan(&app, json!({})).await;
    let tenant_id = tenant(&app, &plan_id, Some(15)).await;
    let shown = admin(&app, Method::GET, &format!("/v1/tenants/{tenant_id}"), None).await;
    assert_eq!(shown.body["billing_anchor_day"], 15);
    let calendar = tenant(&app, &plan_id, None).await;
    let shown = admin(&app, Method::GET, &format!("/v1/tenants/{calendar}"), None).await;
    assert!(
        shown.body["billing_anchor_day"].is_null(),
        "{:?}",
        shown.body
    );
    let listed = admin(&app, Method::GET, "/v1/tenants", None).await;
    let days: BTreeSet<(String, String)> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].to_string(), t["billing_anchor_day"].to_string()))
        .collect();
    assert_eq!(
        days,
        BTreeSet::from([
            (format!("{tenant_id:?}"), "15".to_owned()),
            (format!("{calendar:?}"), "null".to_owned())
        ])
    );

    let (live, live_hash) = key(&app, &tenant_id).await;
    let (gone, _) = key(&app, &tenant_id).await;
    let r = admin(&app, Method::DELETE, &format!("/v1/keys/{gone}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let (other, other_hash) = key(&app, &calendar).await;
    let full = sync(&app, 0).await;
    let anchors: Vec<(String, Option<u8>)> = full
        .keys
        .iter()
        .map(|k| (k.id.clone(), k.billing_anchor_day))
        .collect();
    assert_eq!(
        anchors,
        [(live.clone(), Some(15)), (other.clone(), None)],
        "{full:?}"
    );

    // Bad values: a clear 422, nothing written.
    let written = row_counts(&state).await;
    for (day, code) in [
        (json!(0), "invalid_billing_anchor_day"),
        (json!(32), "invalid_billing_anchor_day"),
        (json!(-1), "invalid_billing_anchor_day"),
        (json!(256), "invalid_billing_anchor_day"),
        (json!(1.5), "invalid_body"),
        (json!("15"), "invalid_body"),
    ] {
        let r = admin(
            &app,
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": "bad", "plan_id": plan_id, "billing_anchor_day": day})),
        )
        .await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, code);
        let r = admin(
            &app,
            Method::PATCH,
            &format!("/v1/tenants/{tenant_id}"),
            Some(json!({"billing_anchor_day": day})),
        )
        .await;
        // A plan that does not exist is not found; the rest is malformed.
        let status = if code == "plan_not_found" {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        assert_problem(&r, status, code);
    }
    assert_eq!(row_counts(&state).await, written);
    // The anchor is the admin's: a tenant could otherwise restart its period.
    let token = tenant_token(&app, &tenant_id).await;
    let written = row_counts(&state).await;
    let r = send(
        &app,
        Method::PATCH,
        &format!("/v1/tenants/{tenant_id}"),
        Some(&token),
        Some(r#"{"billing_anchor_day": 1}"#),
    )
    .await;
    assert_problem(&r, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(row_counts(&state).await, written);

    // A change moves every live key of the tenant, and only those.
    let before = version(&state).await;
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/tenants/{tenant_id}"),
        Some(json!({"billing_anchor_day": 28})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["billing_anchor_day"], 28);
    let delta = sync(&app, before).await;
    assert_eq!(delta.keys.len(), 1, "{delta:?}");
    assert_eq!(
        (
            delta.keys[0].hash.as_str(),
            delta.keys[0].billing_anchor_day
        ),
        (live_hash.as_str(), Some(28))
    );
    assert!(delta.deleted_keys.is_empty(), "{delta:?}");
    assert!(!delta.keys.iter().any(|k| k.hash == other_hash));
    let entry = last_audit(&app, "tenant.update").await;
    assert_eq!(entry["before"]["billing_anchor_day"], 15);
    assert_eq!(entry["after"]["billing_anchor_day"], 28);
    assert_eq!(entry["actor"], "admin");

    // The same day again, or a rename, moves no key.
    let before = version(&state).await;
    for change in [
        json!({"billing_anchor_day": 28}),
        json!({"name": "renamed"}),
    ] {
        let r = admin(
            &app,
            Method::PATCH,
            &format!("/v1/tenants/{tenant_id}"),
            Some(change),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body["billing_anchor_day"], 28);
    }
    assert!(sync(&app, before).await.keys.is_empty());
    // `null` returns to calendar months.
    let before = version(&state).await;
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/tenants/{tenant_id}"),
        Some(json!({"billing_anchor_day": null})),
    )
    .await;
    assert!(r.body["billing_anchor_day"].is_null(), "{:?}", r.body);
    let delta = sync(&app, before).await;
    assert_eq!(delta.keys.len(), 1);
    assert_eq!(delta.keys[0].billing_anchor_day, None);
    // Keys issued later carry the anchor too.
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/tenants/{tenant_id}"),
        Some(json!({"billing_anchor_day": 31})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let (newer, _) = key(&app, &tenant_id).await;
    let full = sync(&app, 0).await;
    let newer = full.keys.iter().find(|k| k.id == newer).unwrap();
    assert_eq!(newer.billing_anchor_day, Some(31));
}

async fn anonymous_access_is_admin_only_validated_audited_and_synced(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let plan_id = plan(&app, json!({})).await;
    let off = json!({"routes": [], "plan_id": null, "updated_at": null});
    let r = admin(&app, Method::GET, "/v1/anonymous-access", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body, off);
    // A full sync always says what anonymous access is, even when it is off.
    let full = sync(&app, 0).await;
    assert_eq!(full.anonymous, Some(WireAnonymous::default()));
    let v0 = version(&state).await;
    assert_eq!(sync(&app, v0).await.anonymous, None);

    // Tenants may neither read nor change it.
    let tenant_id = tenant(&app, &plan_id, None).await;
    let token = tenant_token(&app, &tenant_id).await;
    let open =
        json!({"routes": [{"methods": ["GET"], "path_prefix": "/public"}], "plan_id": plan_id});
    let written = row_counts(&state).await;
    let r = send(
        &app,
        Method::GET,
        "/v1/anonymous-access",
        Some(&token),
        None,
    )
    .await;
    assert_problem(&r, StatusCode::FORBIDDEN, "forbidden");
    let r = send(
        &app,
        Method::PUT,
        "/v1/anonymous-access",
        Some(&token),
        Some(&open.to_string()),
    )
    .await;
    assert_problem(&r, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(row_counts(&state).await, written);

    // Bad settings: a clear 422, nothing written.
    let deleted = plan(&app, json!({})).await;
    let r = admin(&app, Method::DELETE, &format!("/v1/plans/{deleted}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let written = row_counts(&state).await;
    let many: Vec<Value> = (0..33)
        .map(|i| json!({"path_prefix": format!("/p{i}")}))
        .collect();
    for (body, code) in [
        (
            json!({"routes": [{"path_prefix": "/public"}]}),
            "invalid_anonymous_access",
        ),
        (
            json!({"routes": [{"path_prefix": "/public"}], "plan_id": ""}),
            "invalid_anonymous_access",
        ),
        (
            json!({"routes": [{"path_prefix": "public"}], "plan_id": plan_id}),
            "invalid_anonymous_access",
        ),
        (
            json!({"routes": [{"methods": ["GE T"]}], "plan_id": plan_id}),
            "invalid_anonymous_access",
        ),
        (
            json!({"routes": many, "plan_id": plan_id}),
            "invalid_anonymous_access",
        ),
        (
            json!({"routes": [{"path_prefix": "/public"}], "plan_id": "plan_nope"}),
            "plan_not_found",
        ),
        (
            json!({"routes": [{"path_prefix": "/public"}], "plan_id": deleted}),
            "plan_not_found",
        ),
        (json!({"plan_id": plan_id}), "invalid_body"),
        (
            json!({"routes": [{"path": "/x"}], "plan_id": plan_id}),
            "invalid_body",
        ),
    ] {
        let r = admin(
            &app,
            Method::PUT,
            "/v1/anonymous-access",
            Some(body.clone()),
        )
        .await;
        // A plan that does not exist is not found; the rest is malformed.
        let status = if code == "plan_not_found" {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        assert_problem(&r, status, code);
    }
    assert_eq!(row_counts(&state).await, written);

    // Turned on: audited, and the next delta carries it.
    let before = version(&state).await;
    let r = admin(
        &app,
        Method::PUT,
        "/v1/anonymous-access",
        Some(open.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["routes"], open["routes"]);
    assert_eq!(r.body["plan_id"], plan_id.as_str());
    assert!(r.body["updated_at"].is_string());
    let mut set = r.body.clone();
    let committed = set.as_object_mut().unwrap().remove("config_version");
    assert_eq!(committed, Some(json!(version(&state).await)));
    let shown = admin(&app, Method::GET, "/v1/anonymous-access", None).await;
    assert_eq!(shown.body, set);
    let entry = last_audit(&app, "anonymous_access.update").await;
    assert_eq!(entry["resource_type"], "anonymous_access");
    assert_eq!(entry["before"], off);
    assert_eq!(entry["after"], set);
    let expected: WireAnonymous = serde_json::from_value(open.clone()).unwrap();
    assert_eq!(sync(&app, before).await.anonymous, Some(expected.clone()));
    assert_eq!(sync(&app, 0).await.anonymous, Some(expected.clone()));
    // Unrelated changes leave it out of the delta.
    let after = version(&state).await;
    plan(&app, json!({})).await;
    let delta = sync(&app, after).await;
    assert_eq!(delta.anonymous, None);
    assert_eq!(delta.plans.len(), 1);

    // Turned off: the delta says so.
    let before = version(&state).await;
    let r = admin(
        &app,
        Method::PUT,
        "/v1/anonymous-access",
        Some(json!({"routes": []})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        sync(&app, before).await.anonymous,
        Some(WireAnonymous::default())
    );
    assert_eq!(
        sync(&app, 0).await.anonymous,
        Some(WireAnonymous::default())
    );
}

async fn a_plan_anonymous_access_uses_cannot_be_deleted(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let plan_id = plan(&app, json!({})).await;
    let r = admin(
        &app,
        Method::PUT,
        "/v1/anonymous-access",
        Some(json!({"routes": [{"path_prefix": "/docs"}], "plan_id": plan_id})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let written = row_counts(&state).await;
    let r = admin(&app, Method::DELETE, &format!("/v1/plans/{plan_id}"), None).await;
    assert_problem(&r, StatusCode::CONFLICT, "plan_in_use_by_anonymous_access");
    assert_eq!(row_counts(&state).await, written);
    // Still named (with no routes), still in use.
    let r = admin(
        &app,
        Method::PUT,
        "/v1/anonymous-access",
        Some(json!({"routes": [], "plan_id": plan_id})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = admin(&app, Method::DELETE, &format!("/v1/plans/{plan_id}"), None).await;
    assert_problem(&r, StatusCode::CONFLICT, "plan_in_use_by_anonymous_access");
    // Pointed elsewhere, the plan can go.
    let r = admin(
        &app,
        Method::PUT,
        "/v1/anonymous-access",
        Some(json!({"routes": []})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = admin(&app, Method::DELETE, &format!("/v1/plans/{plan_id}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
}

async fn usage_cost_is_stored_and_read_back(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let plan_id = plan(&app, json!({"monthly_quota": 100})).await;
    let tenant_id = tenant(&app, &plan_id, None).await;
    let (key_id, _) = key(&app, &tenant_id).await;
    report(
        &app,
        json!({"batch_id": "c-1", "reporter_id": "a", "keys": [
            {"key_id": key_id, "allowed": 4, "cost": 13, "denied": {"rate_limited": 1}, "last_used_ms": now_ms()}
        ]}),
    )
    .await;
    // Free routes: let through, counted, costing nothing.
    report(
        &app,
        json!({"batch_id": "c-2", "reporter_id": "a", "keys": [{"key_id": key_id, "allowed": 2, "cost": 0}]}),
    )
    .await;
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        // Summed: two reports either side of the top of an hour make two rows.
        "SELECT outcome, CAST(SUM(count) AS BIGINT), CAST(SUM(cost) AS BIGINT) FROM usage_hourly
         WHERE key_id = $1 GROUP BY outcome ORDER BY outcome",
    )
    .bind(&key_id)
    .fetch_all(&state.db)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("allowed".to_owned(), 6, 13),
            ("rate_limited".to_owned(), 1, 0)
        ]
    );
    let usage = admin(&app, Method::GET, &format!("/v1/keys/{key_id}/usage"), None).await;
    assert_eq!(usage.status, StatusCode::OK, "{:?}", usage.body);
    assert_eq!(
        (
            &usage.body["used"],
            &usage.body["quota"],
            &usage.body["remaining"]
        ),
        (&json!(13), &json!(100), &json!(87))
    );
    let series = admin(
        &app,
        Method::GET,
        &format!("/v1/tenants/{tenant_id}/usage?granularity=day"),
        None,
    )
    .await;
    // Summed: the reports may fall either side of midnight.
    let points = series.body["keys"][0]["series"].as_array().unwrap();
    let sum = |field: &str| {
        points
            .iter()
            .map(|p| p[field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!((sum("allowed"), sum("cost")), (6, 13), "{:?}", series.body);
    // Only what cost something reaches the ledger.
    let ledger: Vec<(String, i64)> =
        sqlx::query_as("SELECT reporter_id, used FROM quota_counts WHERE key_id = $1")
            .bind(&key_id)
            .fetch_all(&state.db)
            .await
            .unwrap();
    assert_eq!(ledger, [("a".to_owned(), 13)]);
}

async fn receipts_carry_what_other_envoys_used_and_retries_count_once(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let plan_id = plan(&app, json!({})).await;
    let tenant_id = tenant(&app, &plan_id, None).await;
    let (k1, h1) = key(&app, &tenant_id).await;
    let (k2, _) = key(&app, &tenant_id).await;
    let now = now_ms();
    let period = quota_period(now, None).start_ms;

    let a1 = json!({"batch_id": "a-1", "reporter_id": "envoy-a", "standings_since": 0,
                    "keys": [{"key_id": k1, "allowed": 3, "cost": 3, "last_used_ms": now}]});
    let receipt = report(&app, a1.clone()).await;
    assert!(receipt.standings.is_empty(), "{receipt:?}");
    assert!(!receipt.more);
    let a_cursor = receipt.cursor;
    assert!(a_cursor > 0);

    // B hears only of A's use; its own it keeps itself.
    let receipt = report(
        &app,
        json!({"batch_id": "b-1", "reporter_id": "envoy-b", "standings_since": 0, "keys": [
            {"key_id": k1, "allowed": 7, "cost": 7, "last_used_ms": now},
            {"key_id": k2, "allowed": 1, "cost": 2, "last_used_ms": now}
        ]}),
    )
    .await;
    assert_eq!(standings(&receipt, period), [(h1.clone(), 3)]);
    let b_cursor = receipt.cursor;
    assert!(b_cursor > a_cursor);

    // A hears of B's, from its cursor on, for the key it uses too: not of
    // k2, which it never counted.
    let receipt = heartbeat(&app, "envoy-a", a_cursor).await;
    assert_eq!(standings(&receipt, period), [(h1.clone(), 7)]);
    assert_eq!(receipt.cursor, b_cursor);
    assert!(!receipt.more);
    // Nothing new since: nothing to say, same cursor.
    let receipt = heartbeat(&app, "envoy-a", b_cursor).await;
    assert!(receipt.standings.is_empty());
    assert_eq!(receipt.cursor, b_cursor);

    // A's first batch again, as after a lost answer: answered, not counted.
    let mut retry = a1.clone();
    retry["standings_since"] = json!(b_cursor);
    let receipt = report(&app, retry).await;
    assert!(receipt.standings.is_empty());
    assert_eq!(receipt.cursor, b_cursor);
    let used: i64 = sqlx::query_scalar(
        "SELECT used FROM quota_counts WHERE key_id = $1 AND reporter_id = 'envoy-a'",
    )
    .bind(&k1)
    .fetch_one(&state.db)
    .await
    .unwrap();
    assert_eq!(used, 3);
    let hourly: i64 = sqlx::query_scalar(
        "SELECT CAST(SUM(cost) AS BIGINT) FROM usage_hourly WHERE key_id = $1 AND outcome = 'allowed'",
    )
    .bind(&k1)
    .fetch_one(&state.db)
    .await
    .unwrap();
    assert_eq!(hourly, 10);

    // A's use adds up; B hears the sum of A's reports.
    let receipt = report(
        &app,
        json!({"batch_id": "a-2", "reporter_id": "envoy-a", "standings_since": b_cursor,
               "keys": [{"key_id": k1, "allowed": 5, "cost": 5, "last_used_ms": now}]}),
    )
    .await;
    assert!(receipt.standings.is_empty(), "{receipt:?}");
    let receipt = heartbeat(&app, "envoy-b", b_cursor).await;
    assert_eq!(standings(&receipt, period), [(h1.clone(), 8)]);
    // A third Envoy hears of no key it has not counted itself, however
    // far behind it is...
    let receipt = heartbeat(&app, "envoy-c", 0).await;
    assert!(receipt.standings.is_empty(), "{receipt:?}");
    let c_cursor = receipt.cursor;
    // ...and, with the receipt of its first use of a key, of everything
    // the others used of it, however long ago: again if that answer was
    // lost and the batch is sent again, and then not until it changes.
    let c1 = json!({"batch_id": "c-1", "reporter_id": "envoy-c", "standings_since": c_cursor,
                    "keys": [{"key_id": k1, "allowed": 1, "cost": 1, "last_used_ms": now}]});
    let receipt = report(&app, c1.clone()).await;
    assert_eq!(standings(&receipt, period), [(h1.clone(), 15)]);
    let receipt = report(&app, c1).await;
    assert_eq!(standings(&receipt, period), [(h1.clone(), 15)]);
    let receipt = heartbeat(&app, "envoy-c", receipt.cursor).await;
    assert!(receipt.standings.is_empty(), "{receipt:?}");
    let usage = admin(&app, Method::GET, &format!("/v1/keys/{k1}/usage"), None).await;
    assert_eq!(usage.body["used"], 16);
    // Keys that are unknown or cost nothing stay out of the ledger.
    let receipt = report(
        &app,
        json!({"batch_id": "a-3", "reporter_id": "envoy-a", "standings_since": 0,
               "keys": [{"key_id": "key_unknown", "allowed": 1, "cost": 1}, {"key_id": k2, "allowed": 1}]}),
    )
    .await;
    assert_eq!(receipt.cursor, heartbeat(&app, "envoy-c", 0).await.cursor);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM quota_counts")
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert_eq!(rows, 4);
}

async fn receipts_page_through_many_keys(backend: Backend) {
    let state = test_state(backend).await.with_standings_page(2);
    let app = app(state.clone());
    let plan_id = plan(&app, json!({})).await;
    let tenant_id = tenant(&app, &plan_id, None).await;
    let mut keys = Vec::new();
    for _ in 0..5 {
        keys.push(key(&app, &tenant_id).await);
    }
    let now = now_ms();
    let period = quota_period(now, None).start_ms;
    let usages: Vec<Value> = keys
        .iter()
        .map(|(id, _)| json!({"key_id": id, "allowed": 1, "cost": 1, "last_used_ms": now}))
        .collect();
    report(
        &app,
        json!({"batch_id": "b-1", "reporter_id": "envoy-b", "keys": usages}),
    )
    .await;

    // A first counts the same keys: what B used of them comes in pages of
    // 2, 2 and 1 keys, each cursor picking up where the page ended.
    let mut since = 0;
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut receipt = report(
        &app,
        json!({"batch_id": "a-1", "reporter_id": "envoy-a", "keys": usages}),
    )
    .await;
    loop {
        assert!(receipt.cursor > since, "{receipt:?}");
        pages.push(receipt.standings.len());
        seen.extend(standings(&receipt, period));
        since = receipt.cursor;
        if !receipt.more {
            break;
        }
        receipt = heartbeat(&app, "envoy-a", since).await;
    }
    assert_eq!(pages, [2, 2, 1]);
    let hashes: BTreeSet<String> = seen.iter().map(|(h, _)| h.clone()).collect();
    let all: BTreeSet<String> = keys.iter().map(|(_, h)| h.clone()).collect();
    assert_eq!(hashes, all);
    assert!(seen.iter().all(|(_, used)| *used == 1));
    assert!(heartbeat(&app, "envoy-a", since).await.standings.is_empty());

    // Later changes come after the cursor; a page exactly full has no more.
    report(
        &app,
        json!({"batch_id": "b-2", "reporter_id": "envoy-b",
               "keys": [usages[3].clone(), usages[0].clone()]}),
    )
    .await;
    let receipt = heartbeat(&app, "envoy-a", since).await;
    let mut got = standings(&receipt, period);
    got.sort();
    let mut want = vec![(keys[0].1.clone(), 2), (keys[3].1.clone(), 2)];
    want.sort();
    assert_eq!(got, want);
    assert!(!receipt.more);
    // An Envoy that counted none of them has nothing to hear, however far
    // behind it is.
    let receipt = heartbeat(&app, "envoy-c", 0).await;
    assert!(receipt.standings.is_empty());
    assert!(!receipt.more);
    assert_eq!(
        receipt.cursor,
        heartbeat(&app, "envoy-a", since).await.cursor
    );
}

async fn empty_batches_write_nothing(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let plan_id = plan(&app, json!({})).await;
    let tenant_id = tenant(&app, &plan_id, None).await;
    let (key_id, _) = key(&app, &tenant_id).await;
    report(
        &app,
        json!({"batch_id": "b-1", "reporter_id": "envoy-b",
               "keys": [{"key_id": key_id, "allowed": 2, "cost": 2, "last_used_ms": now_ms()}]}),
    )
    .await;
    let written = row_counts(&state).await;
    for i in 0..3 {
        let receipt = heartbeat(&app, &format!("envoy-a-{i}"), 0).await;
        assert!(receipt.cursor > 0, "{receipt:?}");
    }
    let receipt = report(&app, json!({"batch_id": "x"})).await;
    assert!(receipt.cursor > 0, "{receipt:?}");
    assert_eq!(row_counts(&state).await, written);
    // B, which counted the key, hears nothing of its own use.
    assert!(heartbeat(&app, "envoy-b", 0).await.standings.is_empty());
    // A batch that only reports drops is not empty.
    report(
        &app,
        json!({"batch_id": "d-1", "reporter_id": "envoy-a", "dropped": 4}),
    )
    .await;
    let batches: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_batches")
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert_eq!(batches, 2);
    // Bad batches are refused, even empty ones, before anything is read.
    for bad in [
        json!({"batch_id": ""}),
        json!({"batch_id": "b", "reporter_id": "r".repeat(129)}),
        json!({"batch_id": "b", "standings_since": -1}),
    ] {
        let r = send(
            &app,
            Method::POST,
            "/v1/usage",
            Some(SYNC),
            Some(&bad.to_string()),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {:?}",
            r.body
        );
    }
}

async fn a_used_up_quota_is_told_to_every_envoy(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let plan_id = plan(&app, json!({"monthly_quota": 10})).await;
    let tenant_id = tenant(&app, &plan_id, None).await;
    let (spent, spent_hash) = key(&app, &tenant_id).await;
    let (nearly, nearly_hash) = key(&app, &tenant_id).await;
    let now = now_ms();
    let period = quota_period(now, None).start_ms;
    let use_ = |batch: &str, key_id: &str, cost: u64| {
        json!({"batch_id": batch, "reporter_id": "envoy-b",
               "keys": [{"key_id": key_id, "allowed": cost, "cost": cost, "last_used_ms": now}]})
    };
    report(&app, use_("b-1", &spent, 10)).await;
    report(&app, use_("b-2", &nearly, 9)).await;
    // An Envoy that never counted either hears of the one used up, so it
    // refuses that key from its first request; of the other, nothing.
    let receipt = heartbeat(&app, "envoy-c", 0).await;
    assert_eq!(standings(&receipt, period), [(spent_hash, 10)]);
    let cursor = receipt.cursor;
    report(&app, use_("b-3", &nearly, 1)).await;
    let receipt = heartbeat(&app, "envoy-c", cursor).await;
    assert_eq!(standings(&receipt, period), [(nearly_hash, 10)]);
}

async fn quota_periods_follow_the_billing_anchor(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let plan_id = plan(&app, json!({"monthly_quota": 1000})).await;
    let anchored = tenant(&app, &plan_id, Some(15)).await;
    let calendar = tenant(&app, &plan_id, None).await;
    let (reported, hash) = key(&app, &anchored).await;
    let (read, _) = key(&app, &anchored).await;
    let (monthly, _) = key(&app, &calendar).await;
    let now = now_ms();
    let current = quota_period(now, Some(15));
    let previous = quota_period(current.start_ms - 1, Some(15));
    assert_eq!(previous.end_ms, current.start_ms);

    // The ledger files each use under the period of its last use.
    for (batch, last_used, cost) in [
        ("p-1", current.start_ms - 1, 4),
        ("p-2", current.start_ms, 6),
    ] {
        report(
            &app,
            json!({"batch_id": batch, "reporter_id": "envoy-b",
                   "keys": [{"key_id": reported, "allowed": 1, "cost": cost, "last_used_ms": last_used}]}),
        )
        .await;
    }
    let ledger: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT period_start_ms, used FROM quota_counts WHERE key_id = $1 ORDER BY period_start_ms",
    )
    .bind(&reported)
    .fetch_all(&state.db)
    .await
    .unwrap();
    let ms = |v: u64| i64::try_from(v).unwrap();
    assert_eq!(
        ledger,
        [(ms(previous.start_ms), 4), (ms(current.start_ms), 6)]
    );
    // Standings are for the current period only: an Envoy using the key
    // hears of this period's 6, not of the 4 before it.
    let receipt = report(
        &app,
        json!({"batch_id": "a-1", "reporter_id": "envoy-a",
               "keys": [{"key_id": reported, "allowed": 1, "cost": 1, "last_used_ms": now}]}),
    )
    .await;
    assert_eq!(standings(&receipt, current.start_ms), [(hash.clone(), 6)]);

    // Usage read back counts the anchored period's hours, not the month's.
    let hour_before = rfc3339(current.start_ms - 3_600_000);
    let first_hour = rfc3339(current.start_ms);
    for (key_id, tenant_id) in [(&read, &anchored), (&monthly, &calendar)] {
        for (hour, cost) in [(&hour_before, 100), (&first_hour, 10)] {
            sqlx::query(
                "INSERT INTO usage_hourly (key_id, tenant_id, hour, outcome, count, cost)
                 VALUES ($1, $2, $3, 'allowed', 1, $4)",
            )
            .bind(key_id)
            .bind(tenant_id)
            .bind(hour)
            .bind(cost)
            .execute(&state.db)
            .await
            .unwrap();
        }
    }
    let usage = admin(&app, Method::GET, &format!("/v1/keys/{read}/usage"), None).await;
    assert_eq!(usage.status, StatusCode::OK, "{:?}", usage.body);
    assert_eq!(usage.body["period_start"], rfc3339(current.start_ms));
    assert_eq!(usage.body["period_end"], rfc3339(current.end_ms));
    assert_eq!(
        (&usage.body["used"], &usage.body["remaining"]),
        (&json!(10), &json!(990))
    );
    // Calendar months, for the tenant without an anchor.
    let month = quota_period(now, None);
    let usage = admin(
        &app,
        Method::GET,
        &format!("/v1/keys/{monthly}/usage"),
        None,
    )
    .await;
    assert_eq!(usage.body["period_start"], rfc3339(month.start_ms));
    assert!(usage.body["period_start"]
        .as_str()
        .unwrap()
        .ends_with("-01T00:00:00Z"));
    let in_month = [(current.start_ms - 3_600_000, 100), (current.start_ms, 10)]
        .iter()
        .filter(|(at, _)| (month.start_ms..month.end_ms).contains(at))
        .map(|(_, cost)| cost)
        .sum::<u64>();
    assert_eq!(usage.body["used"], in_month);

    // Moving the anchor moves the period the API reads.
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/tenants/{anchored}"),
        Some(json!({"billing_anchor_day": null})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let usage = admin(&app, Method::GET, &format!("/v1/keys/{read}/usage"), None).await;
    assert_eq!(usage.body["period_start"], rfc3339(month.start_ms));
}

/// A first use that no other Envoy shares has nothing to tell: it takes
/// no place in a page of standings, so the ones that do come at once.
async fn first_uses_nobody_shares_take_no_place_in_a_page(backend: Backend) {
    let app = app(test_state(backend).await.with_standings_page(2));
    let plan_id = plan(&app, json!({})).await;
    let tenant_id = tenant(&app, &plan_id, None).await;
    let mut keys = Vec::new();
    for _ in 0..6 {
        keys.push(key(&app, &tenant_id).await);
    }
    let now = now_ms();
    let period = quota_period(now, None).start_ms;
    let usage = |(id, _): &(String, String)| json!({"key_id": id, "allowed": 1, "cost": 1, "last_used_ms": now});
    // B uses the last key only.
    report(
        &app,
        json!({"batch_id": "b-1", "reporter_id": "envoy-b", "keys": [usage(&keys[5])]}),
    )
    .await;
    // A first uses all six: one page of two says it all, wherever the
    // shared one falls among them.
    let usages: Vec<Value> = keys.iter().map(usage).collect();
    let receipt = report(
        &app,
        json!({"batch_id": "a-1", "reporter_id": "envoy-a", "keys": usages}),
    )
    .await;
    assert_eq!(standings(&receipt, period), [(keys[5].1.clone(), 1)]);
    assert!(!receipt.more, "{receipt:?}");
    let receipt = heartbeat(&app, "envoy-a", receipt.cursor).await;
    assert!(receipt.standings.is_empty(), "{receipt:?}");
    assert!(!receipt.more);
}

on_both_databases!(
    plans_carry_route_costs_and_tenant_scoped_limits,
    bad_route_costs_and_limit_scopes_are_refused,
    billing_anchor_day_is_validated_stored_and_moves_every_key,
    anonymous_access_is_admin_only_validated_audited_and_synced,
    a_plan_anonymous_access_uses_cannot_be_deleted,
    usage_cost_is_stored_and_read_back,
    receipts_carry_what_other_envoys_used_and_retries_count_once,
    receipts_page_through_many_keys,
    empty_batches_write_nothing,
    quota_periods_follow_the_billing_anchor,
    a_used_up_quota_is_told_to_every_envoy,
    first_uses_nobody_shares_take_no_place_in_a_page,
);
