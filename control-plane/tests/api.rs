//! The admin API and the sync feed, driven through `app(state).oneshot(..)`.
//!
//! Every test runs twice, on a private in-memory SQLite database and on a
//! fresh database of the PostgreSQL server named by `TOLLGATE_TEST_POSTGRES_URL`
//! (`cargo xtask test` starts one; `cargo xtask postgres` starts one by hand).

pub mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use common::{
    admin, assert_problem, create, key, respond, send, sync, tenant, test_app, version, Backend,
    Reply, ADMIN, SYNC,
};
use serde_json::{json, Value};
use tollgate_control_plane::{db, AppState};
use tollgate_core::key::{ApiKey, KeyHash};
use tollgate_core::wire::SyncResponse;

/// A new private plan: five a second with a burst of ten.
async fn plan(app: &Router, max_api_keys: Option<u64>) -> String {
    let body = json!({"name": format!("plan-{}", db::new_id("x")), "limits": [{"name": "per-second", "max": 5, "window_seconds": 1, "burst": 10}], "max_api_keys": max_api_keys});
    create(app, "/v1/plans", body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn admin_api_requires_the_admin_token(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let r = send(&app, Method::GET, "/v1/plans", None, None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = send(&app, Method::GET, "/v1/plans", Some("wrong"), None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = send(&app, Method::GET, "/v1/plans", Some(SYNC), None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = send(&app, Method::GET, "/v1/sync", Some(ADMIN), None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
}

async fn plan_create_and_show(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let r = admin(
        &app,
        Method::POST,
        "/v1/plans",
        Some(json!({"name": "Pro", "limits": [{"name": "per-minute", "max": 600, "window_seconds": 60}], "monthly_quota": 10000, "max_api_keys": 5})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.body["id"].as_str().unwrap();
    let shown = admin(&app, Method::GET, &format!("/v1/plans/{id}"), None).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.body["name"], "Pro");
    assert_eq!(shown.body["limits"][0]["max"], 600);
    assert_eq!(shown.body["monthly_quota"], 10000);
    let dup = admin(
        &app,
        Method::POST,
        "/v1/plans",
        Some(json!({"name": "Pro", "limits": []})),
    )
    .await;
    assert_problem(&dup, StatusCode::CONFLICT, "plan_name_taken");
    let list = admin(&app, Method::GET, "/v1/plans", None).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
}

async fn bad_input_is_a_clear_4xx_never_a_500(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let cases: Vec<(&str, StatusCode, &str)> = vec![
        ("{", StatusCode::BAD_REQUEST, "malformed_json"),
        ("[]", StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (
            r#"{"name": 5, "limits": []}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            r#"{"limits": []}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            r#"{"name": "x", "limits": [], "extra": 1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            r#"{"name": "", "limits": []}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_name",
        ),
        (
            r#"{"name": "x", "limits": [{"name": "a", "max": 0, "window_seconds": 1}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plan",
        ),
        (
            r#"{"name": "x", "limits": [{"name": "a", "max": -1, "window_seconds": 1}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            r#"{"name": "x", "limits": [{"name": "a b", "max": 1, "window_seconds": 1}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plan",
        ),
        (
            r#"{"name": "x", "limits": [], "max_api_keys": 99999999999999999999}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            r#"{"name": "x", "limits": [], "max_api_keys": 18446744073709551615}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plan",
        ),
    ];
    for (body, status, code) in cases {
        let r = send(&app, Method::POST, "/v1/plans", Some(ADMIN), Some(body)).await;
        assert_problem(&r, status, code);
    }
    let huge = format!(r#"{{"name": "{}", "limits": []}}"#, "x".repeat(100_000));
    let r = send(&app, Method::POST, "/v1/plans", Some(ADMIN), Some(&huge)).await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let req = Request::post("/v1/plans")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    let r = respond(&app, req).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let r = admin(&app, Method::GET, "/v1/plans/plan_nope", None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = admin(&app, Method::GET, "/v1/nothing-here", None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = admin(&app, Method::PUT, "/v1/plans", None).await;
    assert_problem(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let r = admin(
        &app,
        Method::POST,
        "/v1/tenants",
        Some(json!({"name": "a", "plan_id": "plan_nope"})),
    )
    .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "plan_not_found");
    let r = admin(
        &app,
        Method::POST,
        "/v1/tenants/tnt_nope/keys",
        Some(json!({"name": "a"})),
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    // Nothing was written by any of the above.
    assert_eq!(version(&state).await, 0);
}

async fn failed_writes_leave_nothing_behind(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let before = version(&state).await;
    let p = plan(&app, Some(1)).await;
    let t = tenant(&app, &p).await;
    key(&app, &t).await;
    let after_writes = version(&state).await;
    assert_eq!(
        after_writes,
        before + 3,
        "plan, tenant and key each bump the version once"
    );
    let r = admin(
        &app,
        Method::POST,
        &format!("/v1/tenants/{t}/keys"),
        Some(json!({"name": "second"})),
    )
    .await;
    assert_problem(&r, StatusCode::CONFLICT, "key_limit_reached");
    let r = admin(
        &app,
        Method::POST,
        "/v1/plans",
        Some(json!({"name": "bad", "limits": [{"name": "a", "max": 0, "window_seconds": 1}]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(version(&state).await, after_writes);
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

async fn keys_are_shown_once_and_stored_hashed(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let (id, plaintext) = key(&app, &t).await;
    let parsed = ApiKey::parse(&plaintext).expect("issued keys are well-formed");
    let shown = admin(&app, Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.body["prefix"], parsed.display_prefix());
    assert_eq!(shown.body["active"], true);
    let text = shown.body.to_string();
    assert!(!text.contains(&plaintext));
    assert!(!text.contains(&parsed.hash().to_hex()));
    assert!(shown.body.get("key").is_none());
    let stored: String = sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE id = $1")
        .bind(&id)
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert_eq!(stored, KeyHash::of(plaintext.as_bytes()).to_hex());
    let everything: Vec<(String, String, String)> =
        sqlx::query_as("SELECT id, name, prefix FROM api_keys")
            .fetch_all(&state.db)
            .await
            .unwrap();
    assert!(everything.iter().all(|(a, b, c)| !a.contains(&plaintext)
        && !b.contains(&plaintext)
        && !c.contains(&plaintext)));
}

async fn key_lifecycle_reaches_the_sync_feed(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let (id, plaintext) = key(&app, &t).await;
    let hash = KeyHash::of(plaintext.as_bytes()).to_hex();

    let full = sync(&app, 0).await;
    assert_eq!(full.plans.len(), 1);
    assert_eq!(full.keys.len(), 1);
    assert_eq!(full.keys[0].hash, hash);
    assert_eq!(full.keys[0].plan_id, p);
    assert!(full.keys[0].active);
    let v1 = full.version;

    let nothing = sync(&app, v1).await;
    assert_eq!(
        (nothing.version, nothing.keys.len(), nothing.plans.len()),
        (v1, 0, 0)
    );

    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        Some(json!({"active": false})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["active"], false);
    let delta = sync(&app, v1).await;
    assert!(delta.version > v1);
    assert_eq!(delta.keys.len(), 1);
    assert!(!delta.keys[0].active);
    assert!(delta.plans.is_empty());

    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        Some(json!({})),
    )
    .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        Some(json!({"active": "no"})),
    )
    .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");

    let r = admin(&app, Method::DELETE, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let gone = sync(&app, delta.version).await;
    assert_eq!(gone.deleted_keys, vec![hash]);
    assert!(gone.keys.is_empty());
    assert!(sync(&app, 0).await.keys.is_empty());
    let r = admin(&app, Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = admin(&app, Method::DELETE, &format!("/v1/keys/{id}"), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        Some(json!({"active": true})),
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
}

async fn a_long_poll_returns_as_soon_as_something_changes(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let v = sync(&app, 0).await.version;
    let poller = {
        let app = app.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = send(
                &app,
                Method::GET,
                &format!("/v1/sync?since={v}&wait_ms=30000"),
                Some(SYNC),
                None,
            )
            .await;
            (
                r.status,
                serde_json::from_value::<SyncResponse>(r.body).unwrap(),
                started.elapsed(),
            )
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    key(&app, &t).await;
    let (status, delta, elapsed) = poller.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(delta.keys.len(), 1);
    assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");
}

async fn sync_rejects_bad_queries(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let r = send(&app, Method::GET, "/v1/sync?since=abc", Some(SYNC), None).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_query");
    let r = send(
        &app,
        Method::GET,
        "/v1/sync?wait_ms=999999",
        Some(SYNC),
        None,
    )
    .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_query");
    let r = send(&app, Method::GET, "/v1/sync?bogus=1", Some(SYNC), None).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_query");
}

async fn healthz_answers(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let r = send(&app, Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "ok");
}

async fn plans_update_delete_and_in_use(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let p = plan(&app, None).await;
    let v0 = sync(&app, 0).await.version;

    let r = admin(&app, Method::PATCH, &format!("/v1/plans/{p}"), Some(json!({"limits": [{"name": "per-minute", "max": 100, "window_seconds": 60}], "monthly_quota": 5000, "metadata": {"price": 29}}))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["limits"][0]["name"], "per-minute");
    assert_eq!(r.body["monthly_quota"], 5000);
    assert_eq!(r.body["metadata"]["price"], 29);
    let delta = sync(&app, v0).await;
    assert_eq!(delta.plans.len(), 1);
    assert_eq!(delta.plans[0].limits[0].max, 100);
    assert_eq!(delta.plans[0].monthly_quota, Some(5000));

    // null clears an optional field; absent leaves it.
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/plans/{p}"),
        Some(json!({"monthly_quota": null})),
    )
    .await;
    assert_eq!(r.body["monthly_quota"], Value::Null);
    assert_eq!(r.body["metadata"]["price"], 29);

    // A bad PATCH changes nothing.
    let before = admin(&app, Method::GET, &format!("/v1/plans/{p}"), None)
        .await
        .body;
    for (body, code) in [
        (
            json!({"limits": [{"name": "x", "max": 0, "window_seconds": 1}]}),
            "invalid_plan",
        ),
        (json!({"metadata": [1, 2]}), "invalid_plan"),
        (json!({"name": " "}), "invalid_name"),
        (json!({"public": "yes"}), "invalid_body"),
        (json!({"nope": 1}), "invalid_body"),
    ] {
        let r = admin(&app, Method::PATCH, &format!("/v1/plans/{p}"), Some(body)).await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    assert_eq!(
        admin(&app, Method::GET, &format!("/v1/plans/{p}"), None)
            .await
            .body,
        before
    );

    let t = tenant(&app, &p).await;
    let r = admin(&app, Method::DELETE, &format!("/v1/plans/{p}"), None).await;
    assert_problem(&r, StatusCode::CONFLICT, "plan_in_use");
    assert!(r.body["detail"].as_str().unwrap().starts_with("1 tenant "));
    let r = admin(&app, Method::DELETE, &format!("/v1/tenants/{t}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let v1 = sync(&app, 0).await.version;
    let r = admin(&app, Method::DELETE, &format!("/v1/plans/{p}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(sync(&app, v1).await.deleted_plans, vec![p.clone()]);
    assert!(sync(&app, 0).await.plans.is_empty());
    let r = admin(&app, Method::GET, &format!("/v1/plans/{p}"), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = admin(&app, Method::DELETE, &format!("/v1/plans/{p}"), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
}

async fn a_deleted_name_can_be_reused_but_a_living_one_cannot(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let body = json!({"name": "Solo", "limits": []});
    let first = admin(&app, Method::POST, "/v1/plans", Some(body.clone())).await;
    let id = first.body["id"].as_str().unwrap();
    assert_problem(
        &admin(&app, Method::POST, "/v1/plans", Some(body.clone())).await,
        StatusCode::CONFLICT,
        "plan_name_taken",
    );
    let other = plan(&app, None).await;
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/plans/{other}"),
        Some(json!({"name": "Solo"})),
    )
    .await;
    assert_problem(&r, StatusCode::CONFLICT, "plan_name_taken");
    admin(&app, Method::DELETE, &format!("/v1/plans/{id}"), None).await;
    assert_eq!(
        admin(&app, Method::POST, "/v1/plans", Some(body))
            .await
            .status,
        StatusCode::CREATED
    );
}

async fn lists_paginate_in_creation_order(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(plan(&app, None).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/v1/plans?limit=2&after={c}"),
            None => "/v1/plans?limit=2".to_owned(),
        };
        let r = admin(&app, Method::GET, &uri, None).await;
        assert_eq!(r.status, StatusCode::OK);
        let items = r.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|p| p["id"].as_str().unwrap().to_owned()));
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.sort();
    let mut got = seen.clone();
    got.sort();
    assert_eq!(got, expected, "every plan exactly once");
    for (uri, code) in [
        ("/v1/plans?limit=0", "invalid_query"),
        ("/v1/plans?limit=201", "invalid_query"),
        ("/v1/plans?limit=x", "invalid_query"),
        ("/v1/plans?after=plan_unknown", "invalid_cursor"),
        ("/v1/tenants?after=tnt_unknown", "invalid_cursor"),
    ] {
        assert_problem(
            &admin(&app, Method::GET, uri, None).await,
            StatusCode::BAD_REQUEST,
            code,
        );
    }
}

async fn keys_list_filters_by_active_and_never_shows_secrets(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let mut plaintexts = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (id, key) = key(&app, &t).await;
        ids.push(id);
        plaintexts.push(key);
    }
    admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{}", ids[0]),
        Some(json!({"active": false})),
    )
    .await;
    admin(&app, Method::DELETE, &format!("/v1/keys/{}", ids[2]), None).await;
    let all = admin(&app, Method::GET, &format!("/v1/tenants/{t}/keys"), None).await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 2);
    let active = admin(
        &app,
        Method::GET,
        &format!("/v1/tenants/{t}/keys?active=true"),
        None,
    )
    .await;
    assert_eq!(active.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(active.body["items"][0]["id"], ids[1].as_str());
    let inactive = admin(
        &app,
        Method::GET,
        &format!("/v1/tenants/{t}/keys?active=false"),
        None,
    )
    .await;
    assert_eq!(inactive.body["items"][0]["id"], ids[0].as_str());
    let text = all.body.to_string();
    for plaintext in &plaintexts {
        assert!(!text.contains(plaintext.as_str()));
        assert!(!text.contains(&KeyHash::of(plaintext.as_bytes()).to_hex()));
    }
    let r = admin(&app, Method::GET, "/v1/tenants/tnt_nope/keys", None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = admin(
        &app,
        Method::GET,
        &format!("/v1/tenants/{t}/keys?active=maybe"),
        None,
    )
    .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_query");
}

async fn tenant_plan_change_and_deletion_reach_the_sync_feed(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let free = plan(&app, None).await;
    let pro = plan(&app, None).await;
    let t = tenant(&app, &free).await;
    let (key_id, plaintext) = key(&app, &t).await;
    let v0 = sync(&app, 0).await.version;

    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/tenants/{t}"),
        Some(json!({"plan_id": pro})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["plan_id"], pro.as_str());
    let delta = sync(&app, v0).await;
    assert_eq!(delta.keys.len(), 1);
    assert_eq!(delta.keys[0].plan_id, pro);

    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/tenants/{t}"),
        Some(json!({"plan_id": "plan_nope"})),
    )
    .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "plan_not_found");
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/tenants/{t}"),
        Some(json!({})),
    )
    .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");

    let list = admin(
        &app,
        Method::GET,
        &format!("/v1/tenants?plan_id={pro}"),
        None,
    )
    .await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);

    let r = admin(&app, Method::DELETE, &format!("/v1/tenants/{t}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let gone = sync(&app, delta.version).await;
    assert_eq!(
        gone.deleted_keys,
        vec![KeyHash::of(plaintext.as_bytes()).to_hex()]
    );
    assert_problem(
        &admin(&app, Method::GET, &format!("/v1/keys/{key_id}"), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_problem(
        &admin(&app, Method::GET, &format!("/v1/tenants/{t}"), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let r = admin(
        &app,
        Method::POST,
        &format!("/v1/tenants/{t}/keys"),
        Some(json!({"name": "late"})),
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    assert_problem(
        &admin(&app, Method::DELETE, &format!("/v1/tenants/{t}"), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

async fn catalog_is_public_and_lists_only_public_plans(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let seeded = tollgate_control_plane::seed::seed(&state, true)
        .await
        .unwrap();
    assert_eq!(
        seeded.created,
        vec!["Free", "Pro", "Business", "Enterprise"]
    );
    assert!(tollgate_control_plane::seed::seed(&state, true)
        .await
        .unwrap()
        .created
        .is_empty());
    plan(&app, None).await; // private
    let r = send(&app, Method::GET, "/v1/catalog", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let plans = r.body["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 4);
    assert_eq!(plans[1]["name"], "Pro");
    assert_eq!(plans[1]["monthly_quota"], 250_000);
    assert_eq!(plans[1]["metadata"]["price_usd_per_month"], 29);
    assert!(plans[1].get("id").is_none());
    // Seeding is never forced: existing names are kept as they are.
    let again = tollgate_control_plane::seed::seed(&state, false)
        .await
        .unwrap();
    assert!(again.created.is_empty());
    assert_eq!(again.skipped.len(), 4);
}

async fn key_settings_are_validated_stored_and_pushed(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let uri = format!("/v1/tenants/{t}/keys");
    let r = admin(
        &app,
        Method::POST,
        &uri,
        Some(json!({
            "name": "scoped",
            "expires_at": "2999-01-31T10:00:00+02:00",
            "scopes": [{"methods": ["get"], "path_prefix": "/read"}],
            "allowed_cidrs": ["10.0.0.0/8", "::1"],
            "limits": [{"name": "per-second", "max": 1, "window_seconds": 1}],
            "monthly_quota": 77
        })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["expires_at"], "2999-01-31T08:00:00Z");
    assert_eq!(r.body["scopes"][0]["path_prefix"], "/read");
    assert_eq!(r.body["allowed_cidrs"][1], "::1");
    assert_eq!(r.body["monthly_quota"], 77);
    let id = r.body["id"].as_str().unwrap();
    let shown = admin(&app, Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(shown.body["limits"][0]["name"], "per-second");

    let pushed = sync(&app, 0).await;
    let k = &pushed.keys[0];
    assert_eq!(k.expires_at_ms, Some(32_474_764_800_000));
    assert_eq!(k.allowed_cidrs.as_ref().unwrap().len(), 2);
    assert_eq!(k.monthly_quota, Some(77));
    assert_eq!(k.limits.as_ref().unwrap()[0].max, 1);

    let before = db_keys(&app, &t).await;
    for (body, code) in [
        (
            json!({"name": "x", "expires_at": "tomorrow"}),
            "invalid_expiry",
        ),
        (
            json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
            "invalid_expiry",
        ),
        (
            json!({"name": "x", "scopes": [{"methods": ["G E T"]}]}),
            "invalid_key",
        ),
        (
            json!({"name": "x", "scopes": [{"path_prefix": "no-slash"}]}),
            "invalid_key",
        ),
        (
            json!({"name": "x", "allowed_cidrs": ["10.0.0.0/40"]}),
            "invalid_key",
        ),
        (
            json!({"name": "x", "allowed_cidrs": ["example.com"]}),
            "invalid_key",
        ),
        (
            json!({"name": "x", "limits": [{"name": "a", "max": 0, "window_seconds": 1}]}),
            "invalid_plan",
        ),
        (json!({"name": "x", "monthly_quota": 0}), "invalid_key"),
        (
            json!({"name": "x", "scopes": [{"verbs": ["GET"]}]}),
            "invalid_body",
        ),
        (json!({"name": "x", "bogus": true}), "invalid_body"),
    ] {
        let r = admin(&app, Method::POST, &uri, Some(body.clone())).await;
        let expected = if code == "invalid_plan" {
            "invalid_key"
        } else {
            code
        };
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, expected);
    }
    assert_eq!(
        db_keys(&app, &t).await,
        before,
        "no rejected key was written"
    );
}

async fn db_keys(app: &Router, tenant: &str) -> usize {
    admin(
        app,
        Method::GET,
        &format!("/v1/tenants/{tenant}/keys"),
        None,
    )
    .await
    .body["items"]
        .as_array()
        .unwrap()
        .len()
}

async fn rotation_issues_a_twin_and_ends_the_old_key_after_the_grace(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let p = plan(&app, Some(1)).await;
    let t = tenant(&app, &p).await;
    let r = admin(
        &app,
        Method::POST,
        &format!("/v1/tenants/{t}/keys"),
        Some(json!({
            "name": "svc", "scopes": [{"methods": ["GET"]}]
        })),
    )
    .await;
    let old_id = r.body["id"].as_str().unwrap().to_owned();
    let old_key = r.body["key"].as_str().unwrap().to_owned();
    let v0 = sync(&app, 0).await.version;

    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // The plan allows one key: rotation is not blocked by that.
    let r = admin(
        &app,
        Method::POST,
        &format!("/v1/keys/{old_id}/rotate"),
        Some(json!({"grace_seconds": 60})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let new_key = r.body["key"].as_str().unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(r.body["rotated_from"], old_id.as_str());
    assert_eq!(r.body["name"], "svc");
    assert_eq!(r.body["scopes"][0]["methods"][0], "GET");
    assert_eq!(r.body["expires_at"], Value::Null);

    let delta = sync(&app, v0).await;
    assert_eq!(delta.keys.len(), 2);
    let old = delta
        .keys
        .iter()
        .find(|k| k.hash == KeyHash::of(old_key.as_bytes()).to_hex())
        .unwrap();
    let end = old.expires_at_ms.unwrap();
    assert!(
        end >= started_ms + 59_000 && end <= started_ms + 61_000 + 5_000,
        "{end} vs {started_ms}"
    );
    let new = delta
        .keys
        .iter()
        .find(|k| k.hash == KeyHash::of(new_key.as_bytes()).to_hex())
        .unwrap();
    assert_eq!(new.expires_at_ms, None);

    for (body, status, code) in [
        (
            json!({"grace_seconds": -1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"grace_seconds": 999999999}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ] {
        let r = admin(
            &app,
            Method::POST,
            &format!("/v1/keys/{old_id}/rotate"),
            Some(body),
        )
        .await;
        assert_problem(&r, status, code);
    }
    let r = admin(
        &app,
        Method::POST,
        "/v1/keys/key_nope/rotate",
        Some(json!({})),
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
}

async fn tenant_tokens_serve_their_own_tenant_only(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let p = plan(&app, Some(2)).await;
    let other_plan = plan(&app, None).await;
    let a = tenant(&app, &p).await;
    let b = tenant(&app, &p).await;
    let r = admin(
        &app,
        Method::POST,
        &format!("/v1/tenants/{a}/tokens"),
        Some(json!({"name": "ci"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let token = r.body["token"].as_str().unwrap().to_owned();
    let token_id = r.body["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("tgt_"));
    let stored: String = sqlx::query_scalar("SELECT token_hash FROM tenant_tokens")
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert_ne!(stored, token);
    let listed = admin(&app, Method::GET, &format!("/v1/tenants/{a}/tokens"), None).await;
    assert!(!listed.body.to_string().contains(&token));
    let (b_key, _) = key(&app, &b).await;

    let as_a = |method: Method, uri: String, body: Option<Value>| {
        let app = app.clone();
        let token = token.clone();
        async move {
            send(
                &app,
                method,
                &uri,
                Some(&token),
                body.map(|b| b.to_string()).as_deref(),
            )
            .await
        }
    };

    assert_eq!(
        as_a(Method::GET, format!("/v1/tenants/{a}"), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_problem(
        &as_a(Method::GET, format!("/v1/tenants/{b}"), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let created = as_a(
        Method::POST,
        format!("/v1/tenants/{a}/keys"),
        Some(json!({"name": "mine"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let mine = created.body["id"].as_str().unwrap().to_owned();
    assert_problem(
        &as_a(
            Method::POST,
            format!("/v1/tenants/{b}/keys"),
            Some(json!({"name": "x"})),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(
        as_a(Method::GET, format!("/v1/tenants/{a}/keys"), None)
            .await
            .body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_problem(
        &as_a(Method::GET, format!("/v1/tenants/{b}/keys"), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    for (method, uri, body) in [
        (Method::GET, format!("/v1/keys/{b_key}"), None),
        (
            Method::PATCH,
            format!("/v1/keys/{b_key}"),
            Some(json!({"active": false})),
        ),
        (Method::DELETE, format!("/v1/keys/{b_key}"), None),
        (
            Method::POST,
            format!("/v1/keys/{b_key}/rotate"),
            Some(json!({})),
        ),
    ] {
        assert_problem(
            &as_a(method, uri, body).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    assert_eq!(
        admin(&app, Method::GET, &format!("/v1/keys/{b_key}"), None)
            .await
            .body["active"],
        true
    );

    assert_eq!(
        as_a(
            Method::PATCH,
            format!("/v1/keys/{mine}"),
            Some(json!({"active": false}))
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        as_a(
            Method::POST,
            format!("/v1/keys/{mine}/rotate"),
            Some(json!({"grace_seconds": 5}))
        )
        .await
        .status,
        StatusCode::CREATED
    );
    assert_problem(
        &as_a(
            Method::POST,
            format!("/v1/tenants/{a}/keys"),
            Some(json!({"name": "third"})),
        )
        .await,
        StatusCode::CONFLICT,
        "key_limit_reached",
    );

    assert_problem(
        &as_a(
            Method::PATCH,
            format!("/v1/tenants/{a}"),
            Some(json!({"plan_id": other_plan})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(
        as_a(
            Method::PATCH,
            format!("/v1/tenants/{a}"),
            Some(json!({"name": "renamed"}))
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        as_a(Method::GET, format!("/v1/plans/{p}"), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_problem(
        &as_a(Method::GET, format!("/v1/plans/{other_plan}"), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    for (method, uri, body) in [
        (Method::GET, "/v1/plans".to_owned(), None),
        (
            Method::POST,
            "/v1/plans".to_owned(),
            Some(json!({"name": "mine", "limits": []})),
        ),
        (
            Method::PATCH,
            format!("/v1/plans/{p}"),
            Some(json!({"name": "x"})),
        ),
        (Method::GET, "/v1/tenants".to_owned(), None),
        (
            Method::POST,
            "/v1/tenants".to_owned(),
            Some(json!({"name": "x", "plan_id": p})),
        ),
        (Method::DELETE, format!("/v1/tenants/{a}"), None),
        (
            Method::POST,
            format!("/v1/tenants/{a}/tokens"),
            Some(json!({"name": "x"})),
        ),
    ] {
        assert_problem(
            &as_a(method, uri, body).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    // Tenant tokens are no sync tokens either.
    assert_problem(
        &as_a(Method::GET, "/v1/sync".to_owned(), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    let r = admin(
        &app,
        Method::DELETE,
        &format!("/v1/tenants/{a}/tokens/{token_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_problem(
        &as_a(Method::GET, format!("/v1/tenants/{a}"), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let r = admin(
        &app,
        Method::DELETE,
        &format!("/v1/tenants/{a}/tokens/{token_id}"),
        None,
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = admin(
        &app,
        Method::POST,
        "/v1/tenants/tnt_nope/tokens",
        Some(json!({"name": "x"})),
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = send(
        &app,
        Method::GET,
        "/v1/plans",
        Some("tgt_forged0000000000000000000000000000000000"),
        None,
    )
    .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
}

async fn tenant_token(app: &Router, tenant_id: &str) -> String {
    let r = admin(
        app,
        Method::POST,
        &format!("/v1/tenants/{tenant_id}/tokens"),
        Some(json!({"name": "self-service"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body["token"].as_str().unwrap().to_owned()
}

async fn audit(app: &Router, token: &str, query: &str) -> Reply {
    send(
        app,
        Method::GET,
        &format!("/v1/audit{query}"),
        Some(token),
        None,
    )
    .await
}

fn actions(reply: &Reply) -> Vec<String> {
    reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

async fn audit_log_records_every_change_with_who_and_before_after(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let token = tenant_token(&app, &tenant_id).await;
    let (key_id, plaintext) = key(&app, &tenant_id).await;
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{key_id}"),
        Some(json!({"active": false})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // The tenant itself rotates: the actor says so.
    let rotated = send(
        &app,
        Method::POST,
        &format!("/v1/keys/{key_id}/rotate"),
        Some(&token),
        Some(r#"{"grace_seconds": 60}"#),
    )
    .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{:?}", rotated.body);
    let successor = rotated.body["key"].as_str().unwrap().to_owned();
    let r = admin(&app, Method::DELETE, &format!("/v1/keys/{key_id}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/plans/{plan_id}"),
        Some(json!({"monthly_quota": 1000})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    let all = audit(&app, ADMIN, "").await;
    assert_eq!(all.status, StatusCode::OK, "{:?}", all.body);
    // Newest first.
    assert_eq!(
        actions(&all),
        [
            "plan.update",
            "key.delete",
            "key.create",
            "key.rotate",
            "key.update",
            "key.create",
            "token.create",
            "tenant.create",
            "plan.create"
        ]
    );
    let text = all.body.to_string();
    assert!(!text.contains(&plaintext) && !text.contains(&successor));
    assert!(!text.contains(&KeyHash::of(plaintext.as_bytes()).to_hex()));
    assert!(!text.contains(&token));

    let update = &all.body["items"][4];
    assert_eq!(update["actor"], "admin");
    assert_eq!(update["resource_type"], "key");
    assert_eq!(update["resource_id"], key_id.as_str());
    assert_eq!(update["tenant_id"], tenant_id.as_str());
    assert_eq!(update["before"]["active"], true);
    assert_eq!(update["after"]["active"], false);
    let rotate = &all.body["items"][3];
    assert_eq!(rotate["actor"], format!("tenant:{tenant_id}"));
    assert!(rotate["before"]["expires_at"].is_null());
    assert!(rotate["after"]["expires_at"].is_string());
    assert!(all.body["items"][1]["after"].is_null());
    let plan_update = &all.body["items"][0];
    assert!(plan_update["before"]["monthly_quota"].is_null());
    assert_eq!(plan_update["after"]["monthly_quota"], 1000);

    // Filters.
    let by_key = audit(&app, ADMIN, &format!("?resource_id={key_id}")).await;
    assert_eq!(
        actions(&by_key),
        ["key.delete", "key.rotate", "key.update", "key.create"]
    );
    let creates = audit(&app, ADMIN, "?action=key.create").await;
    assert_eq!(actions(&creates).len(), 2);
    let plans = audit(&app, ADMIN, "?resource_type=plan").await;
    assert_eq!(actions(&plans), ["plan.update", "plan.create"]);
    let by_tenant = audit(&app, ADMIN, &format!("?actor=tenant:{tenant_id}")).await;
    assert_eq!(actions(&by_tenant), ["key.create", "key.rotate"]);
    let future = audit(&app, ADMIN, "?since=2999-01-01T00:00:00Z").await;
    assert_eq!(actions(&future).len(), 0);
    let past = audit(&app, ADMIN, "?until=2000-01-01T00:00:00%2B02:00").await;
    assert_eq!(actions(&past).len(), 0);
    let window = audit(
        &app,
        ADMIN,
        "?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(actions(&window).len(), 9);

    // Pagination walks the same order, two at a time.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = audit(&app, ADMIN, &query).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        seen.extend(actions(&page));
        match page.body["next_cursor"].as_str() {
            Some(next) => query = format!("?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, actions(&all));

    // A tenant reads its own trail only.
    let own = audit(&app, &token, "").await;
    assert_eq!(own.status, StatusCode::OK, "{:?}", own.body);
    assert!(!actions(&own).iter().any(|a| a.starts_with("plan.")));
    assert_eq!(actions(&own).len(), 7);
    let other_tenant = tenant(&app, &plan_id).await;
    assert_problem(
        &audit(&app, &token, &format!("?tenant_id={other_tenant}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    for bad in [
        "?since=yesterday",
        "?until=2026-13-01T00:00:00Z",
        "?limit=0",
        "?color=red",
    ] {
        assert_problem(
            &audit(&app, ADMIN, bad).await,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        );
    }
    assert_problem(
        &audit(&app, ADMIN, "?after=aud_nope").await,
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
    );
    assert_eq!(
        send(&app, Method::GET, "/v1/audit", None, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

async fn a_refused_change_leaves_no_audit_entry(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let plan_id = plan(&app, Some(1)).await;
    let tenant_id = tenant(&app, &plan_id).await;
    key(&app, &tenant_id).await;
    let before = actions(&audit(&app, ADMIN, "").await);
    let limited = admin(
        &app,
        Method::POST,
        &format!("/v1/tenants/{tenant_id}/keys"),
        Some(json!({"name": "one too many"})),
    )
    .await;
    assert_problem(&limited, StatusCode::CONFLICT, "key_limit_reached");
    let name = admin(&app, Method::GET, &format!("/v1/plans/{plan_id}"), None).await;
    let dup = admin(
        &app,
        Method::POST,
        "/v1/plans",
        Some(json!({"name": name.body["name"], "limits": []})),
    )
    .await;
    assert_problem(&dup, StatusCode::CONFLICT, "plan_name_taken");
    let in_use = admin(&app, Method::DELETE, &format!("/v1/plans/{plan_id}"), None).await;
    assert_problem(&in_use, StatusCode::CONFLICT, "plan_in_use");
    assert_eq!(actions(&audit(&app, ADMIN, "").await), before);
}

async fn key_settings_can_be_changed_and_cleared_with_patch(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let (key_id, plaintext) = key(&app, &tenant_id).await;
    let hash = KeyHash::of(plaintext.as_bytes()).to_hex();
    let before = sync(&app, 0).await.version;

    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{key_id}"),
        Some(json!({
            "expires_at": "2999-01-01T01:00:00+01:00",
            "scopes": [{"methods": ["GET"], "path_prefix": "/read"}],
            "allowed_cidrs": ["10.0.0.0/8", "2001:db8::/32"],
            "limits": [{"name": "per-second", "max": 50, "window_seconds": 1}],
            "monthly_quota": 123
        })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["expires_at"], "2999-01-01T00:00:00Z");
    assert_eq!(r.body["monthly_quota"], 123);
    assert_eq!(r.body["name"], "ci");
    assert_eq!(r.body["active"], true);
    let delta = sync(&app, before).await;
    let pushed = delta.keys.iter().find(|k| k.hash == hash).unwrap();
    assert_eq!(pushed.monthly_quota, Some(123));
    assert_eq!(pushed.expires_at_ms, Some(32_472_144_000_000));
    assert_eq!(pushed.allowed_cidrs.as_ref().unwrap().len(), 2);
    assert_eq!(pushed.scopes.as_ref().unwrap().len(), 1);
    assert_eq!(pushed.limits.as_ref().unwrap()[0].max, 50);

    // null clears; absent fields stay.
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{key_id}"),
        Some(json!({"scopes": null, "expires_at": null, "monthly_quota": null})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body["scopes"].is_null() && r.body["expires_at"].is_null());
    assert!(r.body["monthly_quota"].is_null());
    assert_eq!(
        r.body["allowed_cidrs"],
        json!(["10.0.0.0/8", "2001:db8::/32"])
    );
    let pushed = sync(&app, before).await;
    let pushed = pushed.keys.iter().find(|k| k.hash == hash).unwrap();
    assert!(pushed.scopes.is_none() && pushed.expires_at_ms.is_none());

    // Bad settings are refused whole: nothing changes.
    let settled = admin(&app, Method::GET, &format!("/v1/keys/{key_id}"), None).await;
    for (body, code) in [
        (json!({"allowed_cidrs": ["10.0.0.0/33"]}), "invalid_key"),
        (
            json!({"name": "ok", "scopes": [{"methods": ["GET"], "path_prefix": "no-slash"}]}),
            "invalid_key",
        ),
        (
            json!({"expires_at": "2000-01-01T00:00:00Z"}),
            "invalid_expiry",
        ),
        (json!({"expires_at": "soon"}), "invalid_expiry"),
        (
            json!({"limits": [{"name": "x", "max": 0, "window_seconds": 1}]}),
            "invalid_key",
        ),
        (
            json!({"monthly_quota": 9_223_372_036_854_775_808u64}),
            "invalid_key",
        ),
        (json!({}), "invalid_body"),
    ] {
        let r = admin(
            &app,
            Method::PATCH,
            &format!("/v1/keys/{key_id}"),
            Some(body.clone()),
        )
        .await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    for (body, code) in [
        (r#"{"scopes": "all"}"#, "invalid_body"),
        (r#"{"sneaky": true}"#, "invalid_body"),
        (r#"{"active": "#, "malformed_json"),
    ] {
        let r = send(
            &app,
            Method::PATCH,
            &format!("/v1/keys/{key_id}"),
            Some(ADMIN),
            Some(body),
        )
        .await;
        assert!(r.status.is_client_error(), "{body}: {:?}", r.body);
        assert_eq!(r.body["code"], code, "{body}: {:?}", r.body);
    }
    let after = admin(&app, Method::GET, &format!("/v1/keys/{key_id}"), None).await;
    assert_eq!(after.body, settled.body);

    // A tenant may narrow its own keys but not raise their limits.
    let token = tenant_token(&app, &tenant_id).await;
    let narrow = send(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{key_id}"),
        Some(&token),
        Some(r#"{"scopes": [{"path_prefix": "/read"}]}"#),
    )
    .await;
    assert_eq!(narrow.status, StatusCode::OK, "{:?}", narrow.body);
    for body in [
        r#"{"limits": [{"name": "per-second", "max": 100000, "window_seconds": 1}]}"#,
        r#"{"monthly_quota": 100000000}"#,
    ] {
        let widen = send(
            &app,
            Method::PATCH,
            &format!("/v1/keys/{key_id}"),
            Some(&token),
            Some(body),
        )
        .await;
        assert_problem(&widen, StatusCode::FORBIDDEN, "forbidden");
        let create = send(
            &app,
            Method::POST,
            &format!("/v1/tenants/{tenant_id}/keys"),
            Some(&token),
            Some(&body.replacen('{', r#"{"name": "wide", "#, 1)),
        )
        .await;
        assert_problem(&create, StatusCode::FORBIDDEN, "forbidden");
    }
}

/// Rows in every table, to prove a refused request wrote nothing.
async fn row_counts(state: &AppState) -> Vec<i64> {
    let tables = ["plans", "tenants", "api_keys", "tenant_tokens", "audit_log"];
    let mut counts = common::row_counts(state, &tables).await;
    counts.push(i64::try_from(version(state).await).unwrap());
    counts
}

async fn every_write_endpoint_answers_each_class_of_bad_input(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let (key_id, _) = key(&app, &tenant_id).await;
    let taken_plan = admin(&app, Method::GET, &format!("/v1/plans/{plan_id}"), None)
        .await
        .body["name"]
        .clone();
    let taken_tenant = admin(&app, Method::GET, &format!("/v1/tenants/{tenant_id}"), None)
        .await
        .body["name"]
        .clone();
    let written = row_counts(&state).await;

    struct Endpoint {
        method: Method,
        uri: String,
        /// For the unknown-id class; None when the URI has no id.
        unknown: Option<String>,
        /// A body that passes validation, sent to the unknown id.
        valid: &'static str,
        wrong_type: &'static str,
        /// A body missing a required field; None when nothing is required.
        missing: Option<&'static str>,
        unknown_field: &'static str,
        /// A body naming something that already exists.
        duplicate: Option<Value>,
    }
    let endpoints = [
        Endpoint {
            method: Method::POST,
            uri: "/v1/plans".into(),
            unknown: None,
            valid: "{}",
            wrong_type: r#"{"name": "n", "limits": {}}"#,
            missing: Some(r#"{"name": "n"}"#),
            unknown_field: r#"{"name": "n", "limits": [], "tier": 1}"#,
            duplicate: Some(json!({"name": taken_plan, "limits": []})),
        },
        Endpoint {
            method: Method::PATCH,
            uri: format!("/v1/plans/{plan_id}"),
            unknown: Some("/v1/plans/plan_unknown".into()),
            valid: r#"{"name": "n"}"#,
            wrong_type: r#"{"public": "yes"}"#,
            missing: None,
            unknown_field: r#"{"price": 5}"#,
            duplicate: None,
        },
        Endpoint {
            method: Method::POST,
            uri: "/v1/tenants".into(),
            unknown: None,
            valid: "{}",
            wrong_type: r#"{"name": ["a"], "plan_id": "p"}"#,
            missing: Some(r#"{"name": "n"}"#),
            unknown_field: r#"{"name": "n", "plan_id": "p", "owner": "x"}"#,
            duplicate: Some(json!({"name": taken_tenant, "plan_id": plan_id})),
        },
        Endpoint {
            method: Method::PATCH,
            uri: format!("/v1/tenants/{tenant_id}"),
            unknown: Some("/v1/tenants/tnt_unknown".into()),
            valid: r#"{"name": "n"}"#,
            wrong_type: r#"{"name": 7}"#,
            missing: None,
            unknown_field: r#"{"billing": true}"#,
            duplicate: None,
        },
        Endpoint {
            method: Method::POST,
            uri: format!("/v1/tenants/{tenant_id}/keys"),
            unknown: Some("/v1/tenants/tnt_unknown/keys".into()),
            valid: r#"{"name": "n"}"#,
            wrong_type: r#"{"name": "k", "scopes": "all"}"#,
            missing: Some(r#"{"scopes": null}"#),
            unknown_field: r#"{"name": "k", "plan": "gold"}"#,
            duplicate: None,
        },
        Endpoint {
            method: Method::POST,
            uri: format!("/v1/tenants/{tenant_id}/keys/batch"),
            unknown: Some("/v1/tenants/tnt_unknown/keys/batch".into()),
            valid: r#"{"count": 1, "name": "n"}"#,
            wrong_type: r#"{"count": 1, "name": "k", "scopes": "all"}"#,
            missing: Some(r#"{"name": "n"}"#),
            unknown_field: r#"{"count": 1, "name": "k", "plan": "gold"}"#,
            duplicate: None,
        },
        Endpoint {
            method: Method::PATCH,
            uri: format!("/v1/keys/{key_id}"),
            unknown: Some("/v1/keys/key_unknown".into()),
            valid: r#"{"name": "n"}"#,
            wrong_type: r#"{"active": "no"}"#,
            missing: None,
            unknown_field: r#"{"key": "tg_x"}"#,
            duplicate: None,
        },
        Endpoint {
            method: Method::POST,
            uri: format!("/v1/keys/{key_id}/rotate"),
            unknown: Some("/v1/keys/key_unknown/rotate".into()),
            valid: r#"{"grace_seconds": 1}"#,
            wrong_type: r#"{"grace_seconds": "1h"}"#,
            missing: None,
            unknown_field: r#"{"grace": 60}"#,
            duplicate: None,
        },
        Endpoint {
            method: Method::PUT,
            uri: "/v1/anonymous-access".into(),
            unknown: None,
            valid: r#"{"routes": []}"#,
            wrong_type: r#"{"routes": "all"}"#,
            missing: Some(r#"{"plan_id": null}"#),
            unknown_field: r#"{"routes": [], "open": true}"#,
            duplicate: None,
        },
        Endpoint {
            method: Method::POST,
            uri: format!("/v1/tenants/{tenant_id}/tokens"),
            unknown: Some("/v1/tenants/tnt_unknown/tokens".into()),
            valid: r#"{"name": "n"}"#,
            wrong_type: r#"{"name": false}"#,
            missing: Some("{}"),
            unknown_field: r#"{"name": "t", "scope": "all"}"#,
            duplicate: None,
        },
    ];
    let huge = format!(r#"{{"name": "{}"}}"#, "x".repeat(100_000));
    for e in &endpoints {
        let at = format!("{} {}", e.method, e.uri);
        let r = send(
            &app,
            e.method.clone(),
            &e.uri,
            Some(ADMIN),
            Some(r#"{"name": "#),
        )
        .await;
        assert_eq!(r.body["code"], "malformed_json", "{at}: {:?}", r.body);
        assert_problem(&r, StatusCode::BAD_REQUEST, "malformed_json");
        for body in [e.wrong_type, e.unknown_field, "[]", "null"] {
            let r = send(&app, e.method.clone(), &e.uri, Some(ADMIN), Some(body)).await;
            assert_eq!(r.body["code"], "invalid_body", "{at} {body}: {:?}", r.body);
            assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
        }
        if let Some(body) = e.missing {
            let r = send(&app, e.method.clone(), &e.uri, Some(ADMIN), Some(body)).await;
            assert_eq!(r.body["code"], "invalid_body", "{at} {body}: {:?}", r.body);
            assert!(
                r.body["detail"].as_str().unwrap().contains("missing field"),
                "{at}: {:?}",
                r.body
            );
        }
        let r = send(&app, e.method.clone(), &e.uri, Some(ADMIN), Some(&huge)).await;
        assert_eq!(
            r.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{at}: {:?}",
            r.body
        );
        assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        if let Some(unknown) = &e.unknown {
            let r = send(&app, e.method.clone(), unknown, Some(ADMIN), Some(e.valid)).await;
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "{at} → {unknown}: {:?}",
                r.body
            );
            assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
        }
        if let Some(body) = &e.duplicate {
            let r = admin(&app, e.method.clone(), &e.uri, Some(body.clone())).await;
            assert_eq!(r.status, StatusCode::CONFLICT, "{at}: {:?}", r.body);
            assert!(
                r.body["code"].as_str().unwrap().ends_with("_name_taken"),
                "{at}: {:?}",
                r.body
            );
        }
    }
    // Renaming onto a taken name is a duplicate too.
    assert_eq!(row_counts(&state).await, written);
    let other = tenant(&app, &plan_id).await;
    let written = row_counts(&state).await;
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/tenants/{other}"),
        Some(json!({"name": taken_tenant})),
    )
    .await;
    assert_problem(&r, StatusCode::CONFLICT, "tenant_name_taken");

    // Unknown ids on reads and deletes.
    for (method, uri) in [
        (Method::GET, "/v1/plans/plan_unknown"),
        (Method::DELETE, "/v1/plans/plan_unknown"),
        (Method::GET, "/v1/tenants/tnt_unknown"),
        (Method::DELETE, "/v1/tenants/tnt_unknown"),
        (Method::GET, "/v1/tenants/tnt_unknown/keys"),
        (Method::GET, "/v1/tenants/tnt_unknown/tokens"),
        (Method::GET, "/v1/keys/key_unknown"),
        (Method::DELETE, "/v1/keys/key_unknown"),
        (Method::DELETE, "/v1/tenants/tnt_unknown/tokens/tok_unknown"),
    ] {
        let r = admin(&app, method.clone(), uri, None).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {uri}: {:?}",
            r.body
        );
        assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    }
    let r = admin(
        &app,
        Method::DELETE,
        &format!("/v1/tenants/{tenant_id}/tokens/tok_unknown"),
        None,
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    // Nothing above was written.
    assert_eq!(row_counts(&state).await, written);
}

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

    for bad in [
        "?granularity=minute",
        "?from=yesterday",
        "?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        "?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "?color=red",
    ] {
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

on_both_databases!(
    admin_api_requires_the_admin_token,
    plan_create_and_show,
    bad_input_is_a_clear_4xx_never_a_500,
    failed_writes_leave_nothing_behind,
    keys_are_shown_once_and_stored_hashed,
    key_lifecycle_reaches_the_sync_feed,
    a_long_poll_returns_as_soon_as_something_changes,
    sync_rejects_bad_queries,
    healthz_answers,
    plans_update_delete_and_in_use,
    a_deleted_name_can_be_reused_but_a_living_one_cannot,
    lists_paginate_in_creation_order,
    keys_list_filters_by_active_and_never_shows_secrets,
    tenant_plan_change_and_deletion_reach_the_sync_feed,
    catalog_is_public_and_lists_only_public_plans,
    key_settings_are_validated_stored_and_pushed,
    rotation_issues_a_twin_and_ends_the_old_key_after_the_grace,
    tenant_tokens_serve_their_own_tenant_only,
    audit_log_records_every_change_with_who_and_before_after,
    a_refused_change_leaves_no_audit_entry,
    key_settings_can_be_changed_and_cleared_with_patch,
    every_write_endpoint_answers_each_class_of_bad_input,
    usage_reports_are_counted_once_and_move_last_used_at,
    usage_reads_back_per_key_and_per_tenant,
);
