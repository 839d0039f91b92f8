//! Usage counted in real Envoy (2 workers) reaches the control plane: every
//! request is counted once, refusals by reason, `last_used_at` is set, and
//! counts made while the control plane is down arrive when it is back.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tollgate_e2e::harness::{eventually, Stack};

/// Reports go out at least every second; generous for a loaded machine.
const REPORT_BOUND: Duration = Duration::from_secs(10);

async fn used(stack: &Stack, key_id: &str) -> u64 {
    let r = stack
        .admin(Method::GET, &format!("/v1/keys/{key_id}/usage"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body["used"].as_u64().unwrap()
}

/// One key's counts summed over its hourly points: a test that runs across
/// the top of an hour sees its counts split between two hours.
fn totals(tenant_usage: &Value) -> (u64, u64) {
    let points = tenant_usage["keys"][0]["series"].as_array();
    let points = points.map_or(&[][..], Vec::as_slice);
    points.iter().fold((0, 0), |(allowed, limited), p| {
        (
            allowed + p["allowed"].as_u64().unwrap_or(0),
            limited + p["denied"]["rate_limited"].as_u64().unwrap_or(0),
        )
    })
}

async fn until_used(stack: &Stack, key_id: &str, expected: u64) -> Duration {
    eventually(
        REPORT_BOUND,
        &format!("{expected} uses of {key_id}"),
        || async { (used(stack, key_id).await == expected).then_some(()) },
    )
    .await
    .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_is_counted_once_even_across_a_control_plane_restart() {
    let mut stack = Stack::start().await;
    let (key_id, key) = stack
        .tenant_with_key(json!({"name": "hourly", "max": 3, "window_seconds": 3600}))
        .await;
    stack.until_status(&key, 200, REPORT_BOUND).await;
    // until_status spent one request; two more pass, then two are refused.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(stack.get_with_key(&key).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    let took = until_used(&stack, &key_id, 3).await;
    eprintln!("usage reported after {took:?}");

    let shown = stack
        .admin(Method::GET, &format!("/v1/keys/{key_id}"), None)
        .await;
    assert!(shown.body["last_used_at"].is_string(), "{:?}", shown.body);
    let tenant_id = shown.body["tenant_id"].as_str().unwrap().to_owned();
    let series = stack
        .admin(Method::GET, &format!("/v1/tenants/{tenant_id}/usage"), None)
        .await;
    assert_eq!(totals(&series.body), (3, 2), "{:?}", series.body);

    // Control plane down: Envoy keeps enforcing and keeps the counts.
    stack.stop_control_plane();
    for _ in 0..2 {
        assert_eq!(
            stack.get_with_key(&key).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    // Long enough for several failed reports.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.start_control_plane().await;
    let allowed = eventually(
        REPORT_BOUND,
        "the refusals made during the outage",
        || async {
            let r = stack
                .admin(Method::GET, &format!("/v1/tenants/{tenant_id}/usage"), None)
                .await;
            let (allowed, limited) = totals(&r.body);
            (limited == 4).then_some(allowed)
        },
    )
    .await
    .0;
    assert_eq!(allowed, 3);
    // And nothing is counted twice afterwards.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(used(&stack, &key_id).await, 3);
}
