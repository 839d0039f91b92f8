//! Per-key rules in real Envoy: expiry (401 expired_api_key), scopes and
//! client-IP allow-lists (403 forbidden), and rotation with a grace period.

use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tollgate_e2e::harness::{eventually, Reply, Stack};

const PROPAGATION_BOUND: Duration = Duration::from_secs(5);

fn rfc3339_in(from_now: Duration) -> String {
    humantime::format_rfc3339_seconds(SystemTime::now() + from_now).to_string()
}

async fn key_with(stack: &Stack, tenant_id: &str, settings: Value) -> (String, String) {
    let mut body = json!({"name": "rules"});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), settings.as_object()) {
        body.extend(extra.clone());
    }
    let r = stack
        .admin(
            Method::POST,
            &format!("/v1/tenants/{tenant_id}/keys"),
            Some(body),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    (
        r.body["id"].as_str().unwrap().to_owned(),
        r.body["key"].as_str().unwrap().to_owned(),
    )
}

async fn request(stack: &Stack, method: Method, path: &str, key: &str) -> Reply {
    let response = stack
        .client
        .request(method, stack.envoy_url(path))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    Reply::read(response).await
}

fn assert_code(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status.as_u16(), status, "{:?}", reply.body);
    assert_eq!(reply.body["code"], code, "{:?}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_scopes_cidrs_and_rotation_are_enforced() {
    let stack = Stack::start().await;
    let plan = stack
        .admin(
            Method::POST,
            "/v1/plans",
            Some(json!({"name": "Rules", "limits": [{"name": "per-second", "max": 1000, "window_seconds": 1}]})),
        )
        .await;
    let tenant = stack
        .admin(
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": "rules", "plan_id": plan.body["id"]})),
        )
        .await;
    let tenant_id = tenant.body["id"].as_str().unwrap().to_owned();

    let (_, scoped) = key_with(
        &stack,
        &tenant_id,
        json!({"scopes": [{"methods": ["GET"], "path_prefix": "/read"}]}),
    )
    .await;
    let (_, local_only) = key_with(
        &stack,
        &tenant_id,
        json!({"allowed_cidrs": ["127.0.0.0/8", "::1"]}),
    )
    .await;
    let (_, elsewhere_only) =
        key_with(&stack, &tenant_id, json!({"allowed_cidrs": ["10.0.0.0/8"]})).await;
    let (_, expiring) = key_with(
        &stack,
        &tenant_id,
        json!({"expires_at": rfc3339_in(Duration::from_secs(5))}),
    )
    .await;
    let (rotated_id, rotated) = key_with(&stack, &tenant_id, json!({})).await;
    stack.until_status(&rotated, 200, PROPAGATION_BOUND).await;

    assert_eq!(
        request(&stack, Method::GET, "/read/doc", &scoped)
            .await
            .status,
        StatusCode::OK
    );
    assert_code(
        &request(&stack, Method::POST, "/read/doc", &scoped).await,
        403,
        "forbidden",
    );
    assert_code(
        &request(&stack, Method::GET, "/write", &scoped).await,
        403,
        "forbidden",
    );
    assert_code(
        &request(&stack, Method::GET, "/readme", &scoped).await,
        403,
        "forbidden",
    );

    assert_eq!(
        request(&stack, Method::GET, "/", &local_only).await.status,
        StatusCode::OK
    );
    assert_code(
        &request(&stack, Method::GET, "/", &elsewhere_only).await,
        403,
        "forbidden",
    );

    assert_eq!(
        request(&stack, Method::GET, "/", &expiring).await.status,
        StatusCode::OK
    );

    let r = stack
        .admin(
            Method::POST,
            &format!("/v1/keys/{rotated_id}/rotate"),
            Some(json!({"grace_seconds": 2})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let successor = r.body["key"].as_str().unwrap().to_owned();
    stack.until_status(&successor, 200, PROPAGATION_BOUND).await;
    assert_eq!(
        request(&stack, Method::GET, "/", &rotated).await.status,
        StatusCode::OK,
        "within the grace period"
    );

    // Both deadlines pass without any further push: the filter enforces them by its clock.
    let limit = Duration::from_secs(15);
    eventually(limit, "the expiring key to expire", || async {
        (request(&stack, Method::GET, "/", &expiring).await.body["code"] == "expired_api_key")
            .then_some(())
    })
    .await;
    eventually(limit, "the rotated key's grace to end", || async {
        (request(&stack, Method::GET, "/", &rotated).await.body["code"] == "expired_api_key")
            .then_some(())
    })
    .await;
    assert_eq!(
        request(&stack, Method::GET, "/", &successor).await.status,
        StatusCode::OK
    );
}
