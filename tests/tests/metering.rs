//! Quotas, windows and costs enforced by the filter in real Envoy (2 workers):
//! the quota admits exactly its size, a request refused by one window takes
//! nothing from the others, routes consume their cost, and a plan upgrade
//! mid-period keeps the period's use and applies the new quota at once.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tollgate_e2e::harness::{eventually, unique_name, Reply, Stack};

/// Config and usage reports are well under a second; generous for a loaded machine.
const BOUND: Duration = Duration::from_secs(10);

/// A plan from `plan` (name added), a tenant on it and a key: (plan id, tenant id, key id, key).
async fn key_on_plan(stack: &Stack, mut plan: Value) -> (String, String, String, String) {
    plan["name"] = json!(unique_name("plan"));
    let plan = stack.admin(Method::POST, "/v1/plans", Some(plan)).await;
    assert_eq!(plan.status, StatusCode::CREATED, "{:?}", plan.body);
    let plan_id = plan.body["id"].as_str().unwrap().to_owned();
    let tenant = stack
        .admin(
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": unique_name("tenant"), "plan_id": plan_id})),
        )
        .await;
    assert_eq!(tenant.status, StatusCode::CREATED, "{:?}", tenant.body);
    let tenant_id = tenant.body["id"].as_str().unwrap().to_owned();
    let (key_id, key) = stack.new_key(&tenant_id).await;
    (plan_id, tenant_id, key_id, key)
}

async fn send(stack: &Stack, method: Method, path: &str, key: &str) -> Reply {
    let response = stack
        .client
        .request(method, stack.envoy_url(path))
        .header("x-api-key", key)
        .send()
        .await
        .expect("Envoy answers");
    Reply::read(response).await
}

/// `n` concurrent GETs of `/anything`, so both Envoy workers take part.
async fn burst(stack: &Stack, n: usize, key: &str) -> Vec<Reply> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let request = stack
            .client
            .get(stack.envoy_url("/anything"))
            .header("x-api-key", key);
        set.spawn(async move { Reply::read(request.send().await.expect("Envoy answers")).await });
    }
    set.join_all().await
}

async fn used(stack: &Stack, key_id: &str) -> u64 {
    let r = stack
        .admin(Method::GET, &format!("/v1/keys/{key_id}/usage"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body["used"].as_u64().unwrap()
}

async fn until_used(stack: &Stack, key_id: &str, expected: u64) {
    eventually(BOUND, &format!("{expected} used by {key_id}"), || async {
        (used(stack, key_id).await == expected).then_some(())
    })
    .await;
}

/// `"name";r=…` of a `RateLimit` header.
fn remaining(reply: &Reply, policy: &str) -> u64 {
    let header = reply.header("ratelimit").expect("a RateLimit header");
    let item = header
        .split(", ")
        .find(|item| item.starts_with(&format!("\"{policy}\";")))
        .unwrap_or_else(|| panic!("{policy} in {header}"));
    item.split(';')
        .find_map(|p| p.strip_prefix("r="))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_quota_admits_exactly_its_size_across_workers() {
    let stack = Stack::start().await;
    let (_, _, key_id, key) = key_on_plan(&stack, json!({"limits": [], "monthly_quota": 12})).await;
    // Waiting for the key spends one unit; unknown keys cost nothing.
    stack.until_status(&key, 200, BOUND).await;
    let replies = burst(&stack, 40, &key).await;
    let admitted = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!(
        admitted, 11,
        "exactly the quota, counting the first request"
    );
    let refused = replies
        .iter()
        .find(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .unwrap();
    assert_eq!(refused.body["code"], "quota_exceeded", "{:?}", refused.body);
    assert_eq!(refused.body["violated-policies"], json!(["monthly"]));
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=31 * 86_400).contains(&retry_after),
        "Retry-After runs to the period's end: {retry_after}"
    );
    let policy = refused.header("ratelimit-policy").unwrap();
    assert!(policy.contains("\"monthly\";q=12;w="), "{policy}");
    assert_eq!(remaining(refused, "monthly"), 0);
    until_used(&stack, &key_id, 12).await;
    // The key's usage page agrees with the filter.
    let page = stack
        .admin(Method::GET, &format!("/v1/keys/{key_id}/usage"), None)
        .await;
    assert_eq!(
        (page.body["quota"].as_u64(), page.body["remaining"].as_u64()),
        (Some(12), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_refused_by_one_window_takes_nothing_from_the_others() {
    let stack = Stack::start().await;
    let (_, _, key_id, key) = key_on_plan(
        &stack,
        json!({
            "limits": [
                {"name": "per-second", "max": 1, "window_seconds": 1},
                {"name": "per-hour", "max": 100, "window_seconds": 3600}
            ],
            "monthly_quota": 1000
        }),
    )
    .await;
    stack.until_status(&key, 200, BOUND).await;
    let mut admitted = 1u64;
    let replies = burst(&stack, 20, &key).await;
    for r in &replies {
        match r.status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(
                    r.body["violated-policies"],
                    json!(["per-second"]),
                    "{:?}",
                    r.body
                )
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(admitted <= 3, "one per second at most: {admitted}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let next = send(&stack, Method::GET, "/anything", &key).await;
    assert_eq!(next.status, StatusCode::OK);
    admitted += 1;
    assert_eq!(remaining(&next, "per-hour"), 100 - admitted);
    assert_eq!(remaining(&next, "monthly"), 1000 - admitted);
    until_used(&stack, &key_id, admitted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_consume_their_cost_and_free_routes_stay_open() {
    let stack = Stack::start().await;
    let (_, _, key_id, key) = key_on_plan(
        &stack,
        json!({
            "limits": [{"name": "per-minute", "max": 100, "window_seconds": 60}],
            "monthly_quota": 3,
            "route_costs": [
                {"methods": ["POST"], "path_prefix": "/v1/parse", "cost": 1},
                {"methods": ["GET"], "cost": 0}
            ]
        }),
    )
    .await;
    stack.until_status(&key, 200, BOUND).await;
    for _ in 0..5 {
        let r = send(&stack, Method::GET, "/v1/documents", &key).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(remaining(&r, "monthly"), 3, "GET is free");
    }
    for left in [2, 1, 0] {
        let r = send(&stack, Method::POST, "/v1/parse", &key).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(remaining(&r, "monthly"), left);
    }
    let r = send(&stack, Method::POST, "/v1/parse", &key).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.body["code"], "quota_exceeded");
    // Unmatched routes cost 1: refused too.
    let r = send(&stack, Method::DELETE, "/v1/documents/1", &key).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let r = send(&stack, Method::GET, "/v1/documents", &key).await;
    assert_eq!(r.status, StatusCode::OK);
    until_used(&stack, &key_id, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_upgrade_mid_period_keeps_the_use_and_raises_the_quota_at_once() {
    let stack = Stack::start().await;
    let (_, tenant_id, key_id, key) =
        key_on_plan(&stack, json!({"limits": [], "monthly_quota": 2})).await;
    stack.until_status(&key, 200, BOUND).await;
    assert_eq!(
        send(&stack, Method::GET, "/anything", &key).await.status,
        StatusCode::OK
    );
    let r = send(&stack, Method::GET, "/anything", &key).await;
    assert_eq!(r.body["code"], "quota_exceeded");
    let pro = stack
        .admin(
            Method::POST,
            "/v1/plans",
            Some(json!({"name": unique_name("pro"), "limits": [], "monthly_quota": 5})),
        )
        .await;
    assert_eq!(pro.status, StatusCode::CREATED, "{:?}", pro.body);
    let moved = stack
        .admin(
            Method::PATCH,
            &format!("/v1/tenants/{tenant_id}"),
            Some(json!({"plan_id": pro.body["id"]})),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{:?}", moved.body);
    let took = stack.until_status(&key, 200, BOUND).await;
    eprintln!("upgrade enforced after {took:?}");
    // 2 used before, 1 by the wait: 2 more fit in 5.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            send(&stack, Method::GET, "/anything", &key)
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 429]);
    until_used(&stack, &key_id, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anonymous_routes_admit_without_a_key_per_client_address() {
    let stack = Stack::start().await;
    let demo = stack
        .admin(
            Method::POST,
            "/v1/plans",
            Some(json!({
                "name": unique_name("demo"),
                "limits": [{"name": "per-hour", "max": 2, "window_seconds": 3600}]
            })),
        )
        .await;
    assert_eq!(demo.status, StatusCode::CREATED, "{:?}", demo.body);
    let set = stack
        .admin(
            Method::PUT,
            "/v1/anonymous-access",
            Some(json!({
                "routes": [{"methods": ["GET"], "path_prefix": "/demo"}],
                "plan_id": demo.body["id"]
            })),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{:?}", set.body);
    eventually(BOUND, "the demo route open", || async {
        (stack.get("/demo/hello", &[]).await.status == StatusCode::OK).then_some(())
    })
    .await;
    let second = stack.get("/demo/hello", &[]).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(
        second.body["headers"]["x-plan"], demo.body["name"],
        "{:?}",
        second.body
    );
    assert!(second.body["headers"].get("x-tenant-id").is_none());
    let third = stack.get("/demo/hello", &[]).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.body["code"], "rate_limited");
    let private = stack.get("/private", &[]).await;
    assert_eq!(private.status, StatusCode::UNAUTHORIZED);
    assert_eq!(private.body["code"], "missing_api_key");
}

/// Each Envoy hears what the others used of the keys it uses only (see
/// `store::usage` in the control plane), but a quota used up is told to
/// every Envoy: one that starts after a key's quota was used up elsewhere
/// refuses the key at its first request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_envoy_that_never_saw_a_used_up_key_refuses_it_at_once() {
    let mut stack = Stack::start().await;
    let (_, tenant_id, key_id, key) =
        key_on_plan(&stack, json!({"limits": [], "monthly_quota": 3})).await;
    stack.until_status(&key, 200, BOUND).await;
    for _ in 0..2 {
        let r = send(&stack, Method::GET, "/anything", &key).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    until_used(&stack, &key_id, 3).await;
    let (_, other_key) = stack.new_key(&tenant_id).await;
    let second_port = stack.start_another_envoy().await;
    let via = |port: u16, key: &str| {
        let request = stack
            .client
            .get(format!("http://127.0.0.1:{port}/anything"))
            .header("x-api-key", key);
        async move { Reply::read(request.send().await.expect("Envoy answers")).await }
    };
    // The new Envoy has its config (another key of the tenant is let
    // through) and, after longer than a report plus a receipt, its
    // standings.
    eventually(BOUND, "the second Envoy's config", || async {
        (via(second_port, &other_key).await.status == StatusCode::OK).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let r = via(second_port, &key).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    assert_eq!(r.body["code"], "quota_exceeded", "{:?}", r.body);
    until_used(&stack, &key_id, 3).await;
}

/// Two Envoys, one key with a quota: each Envoy learns what the other used
/// from its usage receipts, so alternating between them with pauses longer
/// than the reporting interval admits exactly the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_envoys_share_one_quota_through_the_control_plane() {
    let mut stack = Stack::start().await;
    let second_port = stack.start_another_envoy().await;
    let (_, _, key_id, key) = key_on_plan(&stack, json!({"limits": [], "monthly_quota": 6})).await;
    let via = |port: u16| {
        let request = stack
            .client
            .get(format!("http://127.0.0.1:{port}/anything"))
            .header("x-api-key", key.as_str());
        async move { Reply::read(request.send().await.expect("Envoy answers")).await }
    };
    // Both Envoys know the key (the first request at each spends a unit).
    stack.until_status(&key, 200, BOUND).await;
    eventually(BOUND, "the key at the second Envoy", || async {
        (via(second_port).await.status == StatusCode::OK).then_some(())
    })
    .await;
    let ports = [stack.envoy_port, second_port];
    let mut admitted = 2;
    let mut refused_at = None;
    for turn in 0..8 {
        // Longer than a report plus a receipt: the other Envoy's use is known.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let r = via(ports[turn % 2]).await;
        match r.status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(r.body["code"], "quota_exceeded", "{:?}", r.body);
                refused_at.get_or_insert(turn);
            }
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    assert_eq!(admitted, 6, "exactly the quota across both Envoys");
    assert_eq!(refused_at, Some(4));
    until_used(&stack, &key_id, 6).await;
}
