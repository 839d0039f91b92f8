//! The failure policy the plugin configuration chooses (issue 21): routes
//! that pass through before the first config, and the staleness budget.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tollgate_core::key::ApiKey;
use tollgate_e2e::harness::{assert_problem, plugin_config_with, Stack};

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

/// `tollgate_requests_denied_total{reason="<reason>"}` on Envoy's admin.
async fn denied_stat(stack: &Stack, reason: &str) -> f64 {
    let url = format!(
        "http://127.0.0.1:{}/stats/prometheus",
        stack.envoy_admin_port
    );
    let text = stack
        .client
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("tollgate_requests_denied_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_staleness_budget_requests_are_refused_config_stale_until_a_sync() {
    // A 2 s budget: the long poll is held at most 500 ms when all is well.
    let config = plugin_config_with(
        json!({"wait_ms": 500, "stale_after_seconds": 2, "when_stale": "refuse"}),
        json!({}),
    );
    let mut stack = Stack::start_with_plugin_config(config).await;
    let (_, key) = stack
        .tenant_with_key(json!({"name": "h", "max": 1, "window_seconds": 3600, "burst": 1000}))
        .await;
    stack.until_status(&key, 200, Duration::from_secs(10)).await;
    // A working channel is never stale, however long it runs.
    for _ in 0..15 {
        assert_eq!(stack.get_with_key(&key).await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(denied_stat(&stack, "config_stale").await, 0.0);

    stack.stop_control_plane();
    let stopped = Instant::now();
    let took = stack.until_status(&key, 503, Duration::from_secs(10)).await;
    let reply = stack.get_with_key(&key).await;
    assert_problem(&reply, 503, "config_stale");
    assert_eq!(reply.header("retry-after"), Some("5"));
    // Not before the budget: the last sync ended at most ~0.5 s before the stop.
    assert!(
        stopped.elapsed() >= Duration::from_millis(1_400),
        "stale after {took:?}"
    );
    eprintln!("config_stale {took:?} after the control plane stopped (budget 2 s)");
    // Every request is refused, on both workers, and counted.
    for _ in 0..10 {
        assert_problem(&stack.get_with_key(&key).await, 503, "config_stale");
    }
    harness_eventually_counted(&stack).await;
    // The leader logs it at its next tick, apart from the workers' refusals.
    tollgate_e2e::harness::eventually(Duration::from_secs(5), "config stale logged", || async {
        stack
            .log("envoy")
            .contains("tollgate: config stale: no successful sync")
            .then_some(())
    })
    .await;

    // Back: the next successful sync ends it.
    stack.start_control_plane().await;
    stack.until_status(&key, 200, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(stack.log("envoy").contains("tollgate: config fresh again"));
}

async fn harness_eventually_counted(stack: &Stack) {
    tollgate_e2e::harness::eventually(Duration::from_secs(5), "config_stale counted", || async {
        (denied_stat(stack, "config_stale").await >= 11.0).then_some(())
    })
    .await;
}
