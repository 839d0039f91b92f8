//! The failure policy the plugin configuration chooses (issue 21): routes
//! that pass through before the first config, and the staleness budget.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tollgate_core::key::ApiKey;
use tollgate_e2e::harness::{plugin_config_with, Reply, Stack};

fn assert_problem(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status.as_u16(), status, "{:?}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(reply.body["code"], code, "{:?}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chosen_routes_pass_through_before_the_first_config_and_no_others() {
    let config = plugin_config_with(
        json!({}),
        json!({"pass_through_before_config": [
            {"methods": ["GET", "HEAD"], "path_prefix": "/healthz"}
        ]}),
    );
    let mut stack = Stack::start_with_plugin_config_without_control_plane(config).await;
    let never_issued = ApiKey::from_body(&"Q".repeat(32)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Keyless or not, the health check reaches the upstream untouched.
    assert_eq!(stack.get("/healthz", &[]).await.status, StatusCode::OK);
    let keyed = [("x-api-key", never_issued.expose())];
    assert_eq!(
        stack.get("/healthz/live", &keyed).await.status,
        StatusCode::OK
    );
    // Other routes, and other methods on it, are refused as before.
    assert_problem(
        &stack.get("/anything", &keyed).await,
        503,
        "config_unavailable",
    );
    assert_problem(
        &stack.get("/healthzz", &keyed).await,
        503,
        "config_unavailable",
    );
    let post = stack
        .client
        .post(stack.envoy_url("/healthz"))
        .header("x-api-key", never_issued.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(post.status().as_u16(), 503);

    // Once a config is applied the route is enforced like any other.
    stack.start_control_plane().await;
    let (_, key) = stack
        .tenant_with_key(json!({"name": "h", "max": 1, "window_seconds": 3600, "burst": 100}))
        .await;
    stack.until_status(&key, 200, Duration::from_secs(10)).await;
    assert_problem(&stack.get("/healthz", &[]).await, 401, "missing_api_key");
    assert_problem(&stack.get("/healthz", &keyed).await, 401, "invalid_api_key");
}
