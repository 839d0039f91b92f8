//! The proxy registry and receipts: proxies named by their polls and
//! reports, their status as time passes, the version every write answers
//! with, and writes that wait for it to reach every live proxy.

use std::time::Duration;

use crate::common::{
    admin, assert_problem, key, plan, poll, send, tenant, tenant_token, test_app_at, version,
    Backend, Reply, NOW, SYNC,
};
use axum::http::{Method, StatusCode};
use axum::Router;
use serde_json::{json, Value};

async fn proxies(app: &Router) -> Value {
    let r = admin(app, Method::GET, "/v1/proxies", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body
}

fn config_version(r: &Reply) -> u64 {
    r.headers["tollgate-config-version"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn a_proxy_is_live_then_stale_then_gone_then_dropped(backend: Backend) {
    let (app, _, clock) = test_app_at(backend, NOW).await;
    // A filter older than the registry names itself with nothing: served, not listed.
    let r = send(&app, Method::GET, "/v1/sync?since=0", Some(SYNC), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(proxies(&app).await["items"], json!([]));

    poll(&app, "inst-a", "node-a", Some(0)).await;
    let list = proxies(&app).await;
    let a = &list["items"][0];
    assert_eq!(a["instance_id"], "inst-a");
    assert_eq!(a["node_id"], "node-a");
    assert_eq!(a["cluster"], "edge");
    assert_eq!(a["build"], "0.1.0+abc");
    assert_eq!(a["applied_version"], 0);
    assert_eq!(a["status"], "live");
    assert_eq!(a["lag_versions"], 0);
    assert_eq!(a["lag_ms"], 0);
    assert_eq!(list["stale_after_ms"], 10_000);

    // A change it has not applied: one version and 3 s behind.
    plan(&app, None).await;
    clock.advance(Duration::from_secs(3));
    let a = proxies(&app).await["items"][0].clone();
    assert_eq!(
        (a["lag_versions"].clone(), a["lag_ms"].clone()),
        (json!(1), json!(3000))
    );

    clock.advance(Duration::from_secs(8));
    assert_eq!(proxies(&app).await["items"][0]["status"], "stale");
    clock.advance(Duration::from_secs(5 * 60));
    assert_eq!(proxies(&app).await["items"][0]["status"], "gone");
    clock.advance(Duration::from_secs(24 * 3600));
    assert_eq!(proxies(&app).await["items"], json!([]));
}

async fn a_proxy_with_nothing_new_is_written_at_most_every_few_seconds(backend: Backend) {
    let (app, _, clock) = test_app_at(backend, NOW).await;
    poll(&app, "inst-a", "node-a", Some(0)).await;
    let first = proxies(&app).await["items"][0]["last_seen"].clone();
    clock.advance(Duration::from_secs(2));
    poll(&app, "inst-a", "node-a", Some(0)).await;
    // Nothing new within 5 s: not written again.
    assert_eq!(proxies(&app).await["items"][0]["last_seen"], first);
    clock.advance(Duration::from_secs(3));
    poll(&app, "inst-a", "node-a", Some(0)).await;
    assert_ne!(proxies(&app).await["items"][0]["last_seen"], first);
    // A new applied version is written at once.
    plan(&app, None).await;
    clock.advance(Duration::from_secs(1));
    poll(&app, "inst-a", "node-a", Some(1)).await;
    assert_eq!(proxies(&app).await["items"][0]["applied_version"], 1);
}

async fn every_write_answers_with_its_version_and_its_propagation_can_be_read(backend: Backend) {
    let (app, state, clock) = test_app_at(backend, NOW).await;
    poll(&app, "inst-b", "node-b", Some(0)).await;
    clock.advance(Duration::from_secs(11));
    poll(&app, "inst-a", "node-a", Some(0)).await;
    let r = admin(
        &app,
        Method::POST,
        "/v1/plans",
        Some(json!({"name": "gold", "limits": []})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let v = config_version(&r);
    assert_eq!(v, version(&state).await);
    // In the body too, without `propagation` unless asked to wait.
    assert_eq!(r.body["config_version"], v);
    assert!(r.body.get("propagation").is_none());
    let p = admin(&app, Method::GET, &format!("/v1/propagation/{v}"), None).await;
    assert_eq!(p.status, StatusCode::OK, "{:?}", p.body);
    assert_eq!(
        (p.body["applied"].clone(), p.body["live"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(p.body["complete"], false);
    let missing: Vec<(Value, Value)> = p.body["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["node_id"].clone(), m["status"].clone()))
        .collect();
    assert_eq!(
        missing,
        [
            (json!("node-a"), json!("live")),
            (json!("node-b"), json!("stale"))
        ]
    );
    poll(&app, "inst-a", "node-a", Some(v)).await;
    let p = admin(&app, Method::GET, &format!("/v1/propagation/{v}"), None).await;
    assert_eq!(
        (p.body["applied"].clone(), p.body["complete"].clone()),
        (json!(1), json!(true))
    );

    // Writes that publish nothing carry no version.
    let tenant_id = tenant(&app, r.body["id"].as_str().unwrap()).await;
    let uri = format!("/v1/tenants/{tenant_id}/tokens");
    let t = admin(&app, Method::POST, &uri, Some(json!({"name": "portal"}))).await;
    assert_eq!(t.status, StatusCode::CREATED);
    assert!(t.headers.get("tollgate-config-version").is_none());
    assert!(t.body.get("config_version").is_none(), "{:?}", t.body);

    // A 204 stays one, with the version in its header only.
    let (key_id, _) = key(&app, &tenant_id).await;
    let d = admin(&app, Method::DELETE, &format!("/v1/keys/{key_id}"), None).await;
    assert_eq!(d.status, StatusCode::NO_CONTENT);
    assert_eq!(config_version(&d), version(&state).await);
}

async fn a_wait_that_runs_out_commits_and_says_who_is_missing(backend: Backend) {
    let (app, state, _) = test_app_at(backend, NOW).await;
    let plan_id = plan(&app, None).await;
    poll(&app, "inst-a", "node-a", Some(version(&state).await)).await;
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/plans/{plan_id}?wait_for_propagation=300ms"),
        Some(json!({"monthly_quota": 1000})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["monthly_quota"], 1000);
    let p = &r.body["propagation"];
    assert_eq!(p["version"], config_version(&r));
    assert_eq!(r.body["config_version"], config_version(&r));
    assert_eq!(
        (p["applied"].clone(), p["live"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(p["complete"], false);
    assert!(p["waited_ms"].as_u64().unwrap() >= 300, "{p}");
    assert_eq!(p["missing"][0]["node_id"], "node-a");
    assert_eq!(version(&state).await, config_version(&r));
}

async fn a_wait_ends_on_the_poll_that_acknowledges_the_version(backend: Backend) {
    let (app, state, clock) = test_app_at(backend, NOW).await;
    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let (key_id, _) = key(&app, &tenant_id).await;
    let before = version(&state).await;
    poll(&app, "inst-stale", "node-s", Some(before)).await;
    clock.advance(Duration::from_secs(11));
    poll(&app, "inst-a", "node-a", Some(before)).await;
    let deleting = tokio::spawn({
        let app = app.clone();
        async move {
            admin(
                &app,
                Method::DELETE,
                &format!("/v1/keys/{key_id}?wait_for_propagation=5s"),
                None,
            )
            .await
        }
    });
    // The write commits `before + 1`; the live proxy acknowledges it.
    while version(&state).await == before {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    poll(&app, "inst-a", "node-a", Some(before + 1)).await;
    let r = deleting.await.unwrap();
    // A 204 carries the propagation as a 200 with a body.
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["config_version"], before + 1);
    let p = &r.body["propagation"];
    assert_eq!(
        (p["applied"].clone(), p["live"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(p["complete"], true);
    assert!(p["waited_ms"].as_u64().unwrap() < 5000, "{p}");
    // The stale proxy is listed, not waited for.
    assert_eq!(p["missing"][0]["node_id"], "node-s");
    assert_eq!(p["missing"][0]["status"], "stale");
}

async fn bad_waits_and_versions_are_refused_and_change_nothing(backend: Backend) {
    let (app, state, _) = test_app_at(backend, NOW).await;
    let plan_id = plan(&app, None).await;
    let before = version(&state).await;
    for wait in ["31s", "soon", "5", ""] {
        let r = admin(
            &app,
            Method::PATCH,
            &format!("/v1/plans/{plan_id}?wait_for_propagation={wait}"),
            Some(json!({"monthly_quota": 5})),
        )
        .await;
        assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_wait_for_propagation");
    }
    assert_eq!(version(&state).await, before);
    let r = admin(&app, Method::GET, "/v1/propagation/abc", None).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_path");
    let r = admin(
        &app,
        Method::GET,
        &format!("/v1/propagation/{}", before + 1),
        None,
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    // Admin only.
    let tenant_id = tenant(&app, &plan_id).await;
    let token = tenant_token(&app, &tenant_id).await;
    let r = send(&app, Method::GET, "/v1/proxies", Some(&token), None).await;
    assert_problem(&r, StatusCode::FORBIDDEN, "forbidden");
}

async fn prometheus_counts_proxies_by_status_and_the_worst_lag(backend: Backend) {
    let (app, _, clock) = test_app_at(backend, NOW).await;
    poll(&app, "inst-b", "node-b", Some(0)).await;
    clock.advance(Duration::from_secs(11));
    poll(&app, "inst-a", "node-a", Some(0)).await;
    plan(&app, None).await;
    clock.advance(Duration::from_secs(2));
    let r = send(&app, Method::GET, "/metrics", None, None).await;
    let text = r.text();
    for line in [
        "tollgate_control_plane_proxies{status=\"live\"} 1",
        "tollgate_control_plane_proxies{status=\"stale\"} 1",
        "tollgate_control_plane_proxies{status=\"gone\"} 0",
        "tollgate_control_plane_proxy_max_lag_versions 1",
        "tollgate_control_plane_proxy_max_lag_seconds 2",
    ] {
        assert!(text.contains(&format!("{line}\n")), "{line} in {text}");
    }
}

on_both_databases!(
    a_proxy_is_live_then_stale_then_gone_then_dropped,
    a_proxy_with_nothing_new_is_written_at_most_every_few_seconds,
    every_write_answers_with_its_version_and_its_propagation_can_be_read,
    a_wait_that_runs_out_commits_and_says_who_is_missing,
    a_wait_ends_on_the_poll_that_acknowledges_the_version,
    bad_waits_and_versions_are_refused_and_change_nothing,
    prometheus_counts_proxies_by_status_and_the_worst_lag,
);
