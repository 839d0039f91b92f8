//! Quota alerts end to end: requests through real Envoy use up a key's
//! quota, the control plane sends the 80 % and 100 % events to a receiver
//! started here, signed with the tenant's secret, retries a failed delivery,
//! and logs every attempt.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::post;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use tollgate_e2e::harness::{eventually, unique_name, Stack};

const BOUND: Duration = Duration::from_secs(15);

#[derive(Clone, Default)]
struct Receiver {
    /// (signature header, event id header, body) of every request, in order.
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
}

/// A receiver on loopback that fails its first request with 500, then accepts.
async fn start_receiver() -> (Receiver, u16) {
    let receiver = Receiver::default();
    let seen = receiver.seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let mut seen = seen.lock().unwrap();
                seen.push((
                    header("tollgate-signature"),
                    header("tollgate-event-id"),
                    body,
                ));
                if seen.len() == 1 {
                    AxumStatus::INTERNAL_SERVER_ERROR
                } else {
                    AxumStatus::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (receiver, port)
}

/// Checks `t=…,v1=…` against the secret, as a receiver would.
fn signature_is_valid(secret: &str, header: &str, body: &str) -> bool {
    let Some((t, v1)) = header
        .split_once(',')
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v.strip_prefix("v1=")?)))
    else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    mac.verify_slice(&hex_decode(v1)).is_ok()
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_alerts_reach_the_receiver_signed_once_each_and_are_retried() {
    let stack = Stack::start().await;
    let (receiver, port) = start_receiver().await;
    let plan = stack
        .admin(
            Method::POST,
            "/v1/plans",
            Some(json!({"name": unique_name("metered"), "limits": [], "monthly_quota": 5})),
        )
        .await;
    assert_eq!(plan.status, StatusCode::CREATED, "{:?}", plan.body);
    let tenant = stack
        .admin(
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": unique_name("tenant"), "plan_id": plan.body["id"]})),
        )
        .await;
    let tenant_id = tenant.body["id"].as_str().unwrap().to_owned();
    let hook = stack
        .admin(
            Method::PUT,
            &format!("/v1/tenants/{tenant_id}/webhook"),
            Some(json!({"url": format!("http://127.0.0.1:{port}/hook")})),
        )
        .await;
    assert_eq!(hook.status, StatusCode::OK, "{:?}", hook.body);
    let secret = hook.body["secret"].as_str().unwrap().to_owned();
    let (key_id, key) = stack.new_key(&tenant_id).await;

    // 4 of 5: the 80 % alert. Then the 5th and refusals: the 100 % alert, once.
    stack.until_status(&key, 200, BOUND).await;
    for _ in 0..3 {
        assert_eq!(stack.get_with_key(&key).await.status, StatusCode::OK);
    }
    assert_eq!(stack.get_with_key(&key).await.status, StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(
            stack.get_with_key(&key).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    // The first request failed (500): its event comes again after a backoff.
    let seen = eventually(BOUND, "both alerts delivered", || async {
        let seen = receiver.seen.lock().unwrap().clone();
        let delivered: std::collections::BTreeSet<&str> =
            seen.iter().skip(1).map(|(_, id, _)| id.as_str()).collect();
        (delivered.len() == 2).then_some(seen)
    })
    .await
    .0;
    let mut thresholds = Vec::new();
    for (signature, event_id, body) in &seen {
        assert!(
            signature_is_valid(&secret, signature, body),
            "bad signature {signature} for {body}"
        );
        assert!(!signature_is_valid("whsec_wrong", signature, body));
        let event: Value = serde_json::from_str(body).unwrap();
        assert_eq!(event["id"], event_id.as_str());
        assert_eq!(event["type"], "quota.threshold");
        assert_eq!(event["data"]["key_id"], key_id.as_str());
        assert_eq!(event["data"]["quota"], 5);
        thresholds.push(event["data"]["threshold"].as_i64().unwrap());
    }
    // One retry of the first event, then each threshold once: no duplicates later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.seen.lock().unwrap().len(), 3, "{thresholds:?}");
    let mut unique = thresholds.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique, [80, 100]);

    let log = stack
        .admin(
            Method::GET,
            &format!("/v1/tenants/{tenant_id}/webhook-deliveries"),
            None,
        )
        .await;
    assert_eq!(log.status, StatusCode::OK, "{:?}", log.body);
    let items = log.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{:?}", log.body);
    let attempts: Vec<usize> = items
        .iter()
        .map(|e| {
            assert_eq!(e["status"], "delivered", "{e:?}");
            e["attempt_log"].as_array().unwrap().len()
        })
        .collect();
    assert_eq!(attempts.iter().sum::<usize>(), 3, "{:?}", log.body);
    let failed_first = items
        .iter()
        .flat_map(|e| e["attempt_log"].as_array().unwrap())
        .find(|a| a["status_code"] == 500);
    assert!(failed_first.is_some(), "{:?}", log.body);
}
