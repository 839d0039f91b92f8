//! Admin changes beyond a single key reach real Envoy within the propagation
//! bound: a tenant's plan upgrade, a plan's new limits, a tenant's deletion.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tollgate_e2e::harness::{eventually, Stack};

const PROPAGATION_BOUND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_upgrades_plan_edits_and_tenant_deletion_take_effect_in_envoy() {
    let stack = Stack::start().await;
    let small = stack
        .admin(
            Method::POST,
            "/v1/plans",
            Some(json!({"name": "Small", "limits": [{"name": "small-hourly", "max": 1, "window_seconds": 3600}]})),
        )
        .await;
    let big = stack
        .admin(
            Method::POST,
            "/v1/plans",
            Some(json!({"name": "Big", "limits": [{"name": "big-hourly", "max": 2, "window_seconds": 3600}]})),
        )
        .await;
    assert_eq!(big.status, StatusCode::CREATED);
    let tenant = stack
        .admin(
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": "acme", "plan_id": small.body["id"]})),
        )
        .await;
    let tenant_id = tenant.body["id"].as_str().unwrap().to_owned();
    let (_, key) = stack.new_key(&tenant_id).await;
    stack.until_status(&key, 200, PROPAGATION_BOUND).await;
    let limited = stack.get_with_key(&key).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.body["violated-policies"], json!(["small-hourly"]));

    // Upgrade: the key now runs under Big, with Big's policies.
    let r = stack
        .admin(
            Method::PATCH,
            &format!("/v1/tenants/{tenant_id}"),
            Some(json!({"plan_id": big.body["id"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let took = stack.until_status(&key, 200, PROPAGATION_BOUND).await;
    eprintln!("plan upgrade visible after {took:?}");
    let ok = stack.get_with_key(&key).await;
    assert_eq!(ok.body["headers"]["x-plan"], "Big");
    assert_eq!(
        ok.header("ratelimit-policy"),
        Some("\"big-hourly\";q=2;w=3600")
    );
    assert_eq!(
        stack.get_with_key(&key).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Editing the plan itself: a new, roomier limit.
    let r = stack
        .admin(
            Method::PATCH,
            &format!("/v1/plans/{}", big.body["id"].as_str().unwrap()),
            Some(json!({"limits": [{"name": "big-daily", "max": 1000, "window_seconds": 86400}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let took = stack.until_status(&key, 200, PROPAGATION_BOUND).await;
    eprintln!("plan edit visible after {took:?}");
    assert_eq!(
        stack.get_with_key(&key).await.header("ratelimit-policy"),
        Some("\"big-daily\";q=1000;w=86400")
    );

    // Deleting the tenant revokes its keys.
    let r = stack
        .admin(Method::DELETE, &format!("/v1/tenants/{tenant_id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let (_, took) = eventually(
        PROPAGATION_BOUND,
        "tenant deletion to reach Envoy",
        || async {
            (stack.get_with_key(&key).await.body["code"] == "invalid_api_key").then_some(())
        },
    )
    .await;
    eprintln!("tenant deletion visible after {took:?}");
}
