//! Two control-plane replicas on one PostgreSQL: Envoy syncs from replica B,
//! the admin writes through replica A, and Envoy enforces the change within
//! the propagation bound. Envoy's long-poll is held for 20 s, so only A's
//! `NOTIFY` waking B can make the change arrive sooner.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tollgate_e2e::harness::{fresh_postgres_database, Stack};

/// The goal is 1 s; the bound is generous so a loaded machine does not fail it.
const PROPAGATION_BOUND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_through_one_replica_reaches_envoy_syncing_from_another() {
    let url = fresh_postgres_database("replicas");
    let mut stack = Stack::start_with_database(&url).await;
    let a = stack.start_replica().await;

    let plan = stack
        .admin_via(
            a,
            Method::POST,
            "/v1/plans",
            Some(json!({"name": "Replicated", "limits": [{"name": "hourly", "max": 100, "window_seconds": 3600}]})),
        )
        .await;
    assert_eq!(plan.status, StatusCode::CREATED, "{:?}", plan.body);
    let tenant = stack
        .admin_via(
            a,
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": "acme", "plan_id": plan.body["id"]})),
        )
        .await;
    assert_eq!(tenant.status, StatusCode::CREATED, "{:?}", tenant.body);
    let tenant_id = tenant.body["id"].as_str().unwrap();

    // Replica B, which Envoy syncs from, serves what A wrote.
    let seen_by_b = stack
        .admin(Method::GET, &format!("/v1/tenants/{tenant_id}"), None)
        .await;
    assert_eq!(seen_by_b.status, StatusCode::OK, "{:?}", seen_by_b.body);

    let key = stack
        .admin_via(
            a,
            Method::POST,
            &format!("/v1/tenants/{tenant_id}/keys"),
            Some(json!({"name": "via-a"})),
        )
        .await;
    assert_eq!(key.status, StatusCode::CREATED, "{:?}", key.body);
    let (key_id, plaintext) = (
        key.body["id"].as_str().unwrap(),
        key.body["key"].as_str().unwrap(),
    );
    let took = stack.until_status(plaintext, 200, PROPAGATION_BOUND).await;
    eprintln!("key created through replica A usable at Envoy (synced from B) after {took:?}");

    let r = stack
        .admin_via(
            a,
            Method::PATCH,
            &format!("/v1/keys/{key_id}"),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let took = stack.until_status(plaintext, 401, PROPAGATION_BOUND).await;
    eprintln!("deactivation through replica A enforced after {took:?}");

    // And the other way round: a change through B is served by A.
    let renamed = stack
        .admin(
            Method::PATCH,
            &format!("/v1/tenants/{tenant_id}"),
            Some(json!({"name": "acme-renamed"})),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{:?}", renamed.body);
    let via_a = stack
        .admin_via(a, Method::GET, &format!("/v1/tenants/{tenant_id}"), None)
        .await;
    assert_eq!(via_a.body["name"], "acme-renamed");
}
