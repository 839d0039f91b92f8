//! The whole path in real Envoy (2 workers) with the real control plane:
//! admin creates plan → tenant → key; Envoy lets it through with rate-limit
//! headers, throttles it past its burst, and shuts it out once deactivated.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tollgate_core::key::ApiKey;
use tollgate_e2e::harness::{assert_problem, eventually, Stack};

/// Generous bound for "within 1 s" in tests; the benchmark measures the real figure.
const PROPAGATION_BOUND: Duration = Duration::from_secs(5);

/// A per-hour limit so nothing refills while a test runs.
fn burst_limit(burst: u64) -> serde_json::Value {
    json!({"name": "per-hour", "max": 1, "window_seconds": 3600, "burst": burst})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_requests_pass_then_throttle_then_stop_when_deactivated() {
    let stack = Stack::start().await;
    let (key_id, key) = stack.tenant_with_key(burst_limit(3)).await;
    let took = stack.until_status(&key, 200, PROPAGATION_BOUND).await;
    eprintln!("new key usable after {took:?}");

    // The first 200 already consumed one token.
    let ok = stack
        .get(
            "/v1/things?x=1",
            &[
                ("x-api-key", &key),
                ("x-tenant-id", "evil"),
                ("x-plan", "Enterprise"),
                ("x-api-key-id", "forged"),
            ],
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    // A bucket is described as q = its burst and w = the seconds it takes
    // to refill from empty, burst × window ÷ max rounded up: 3 × 3600 ÷ 1.
    // Two tokens taken, one left, full again in 2 × 3600 s: r ≤ q always.
    assert_eq!(
        ok.header("ratelimit-policy"),
        Some("\"per-hour\";q=3;w=10800")
    );
    assert_eq!(ok.header("ratelimit"), Some("\"per-hour\";r=1;t=7200"));
    assert_eq!(ok.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(ok.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(ok.header("x-ratelimit-reset"), Some("7200"));
    let seen = &ok.body["headers"];
    assert_eq!(ok.body["path"], "/v1/things?x=1");
    assert!(
        seen["x-tenant-id"]
            .as_str()
            .is_some_and(|t| t.starts_with("tnt_")),
        "{seen}"
    );
    assert_eq!(seen["x-api-key-id"], key_id.as_str());
    assert!(
        seen["x-plan"]
            .as_str()
            .is_some_and(|p| p.starts_with("plan-")),
        "{seen}"
    );
    assert!(
        seen.get("x-api-key").is_none(),
        "the upstream saw the key: {seen}"
    );
    assert!(
        !ok.body.to_string().contains(&key),
        "the upstream saw the key"
    );

    // Bearer works too, and the key is removed from Authorization.
    let bearer = stack
        .get("/", &[("authorization", &format!("Bearer {key}"))])
        .await;
    assert_eq!(bearer.status, StatusCode::OK);
    assert!(bearer.body["headers"].get("authorization").is_none());
    assert_eq!(bearer.header("x-ratelimit-remaining"), Some("0"));

    let limited = stack.get_with_key(&key).await;
    assert_problem(&limited, 429, "rate_limited");
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "retry-after {retry}");
    assert_eq!(limited.body["violated-policies"], json!(["per-hour"]));
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    // Retry-After, the refusing policy's t, X-RateLimit-Reset and the
    // body's retry_after are one number: when the request would pass.
    assert_eq!(
        limited.header("ratelimit"),
        Some(format!("\"per-hour\";r=0;t={retry}").as_str())
    );
    assert_eq!(
        limited.header("x-ratelimit-reset"),
        Some(retry.to_string().as_str())
    );
    assert_eq!(limited.body["retry_after"], retry);
    assert_eq!(
        limited.header("ratelimit-policy"),
        Some("\"per-hour\";q=3;w=10800")
    );

    stack.deactivate(&key_id).await;
    let took = stack.until_status(&key, 401, PROPAGATION_BOUND).await;
    eprintln!("deactivation visible after {took:?}");
    assert_problem(&stack.get_with_key(&key).await, 401, "disabled_api_key");

    let deleted = stack
        .admin(Method::DELETE, &format!("/v1/keys/{key_id}"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    eventually(PROPAGATION_BOUND, "deletion to reach Envoy", || async {
        (stack.get_with_key(&key).await.body["code"] == "invalid_api_key").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_and_malformed_keys_are_refused_before_lookup() {
    let stack = Stack::start().await;
    let (_, key) = stack.tenant_with_key(burst_limit(100)).await;
    stack.until_status(&key, 200, PROPAGATION_BOUND).await;

    assert_problem(&stack.get("/", &[]).await, 401, "missing_api_key");
    assert_problem(
        &stack
            .get("/", &[("authorization", "Basic dXNlcjpwYXNz")])
            .await,
        401,
        "missing_api_key",
    );
    assert_problem(
        &stack.get("/", &[("authorization", "Bearer ")]).await,
        401,
        "missing_api_key",
    );

    let body = &key[3..35];
    let sum = &key[36..];
    let mut flipped = key.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let unknown = ApiKey::from_body(&"Z".repeat(32)).unwrap();
    let malformed = [
        format!("xx_{body}_{sum}"),           // wrong prefix
        format!("tg_{body}x_{sum}"),          // wrong length
        key[..key.len() - 1].to_owned(),      // truncated
        String::from_utf8(flipped).unwrap(),  // checksum mismatch
        format!("tg_{}-_{sum}", &body[..31]), // bad character
        format!("tg_{body}{sum}_"),           // separator moved
        "tg_".to_owned(),
        "not-a-key-at-all".to_owned(),
        "x".repeat(300),
    ];
    for bad in &malformed {
        let reply = stack.get_with_key(bad).await;
        assert_problem(&reply, 401, "invalid_api_key");
        assert!(reply.header("www-authenticate").is_some());
        let bearer = stack
            .get("/", &[("authorization", &format!("Bearer {bad}"))])
            .await;
        assert_problem(&bearer, 401, "invalid_api_key");
    }
    // Well-formed but never issued.
    assert_problem(
        &stack.get_with_key(unknown.expose()).await,
        401,
        "invalid_api_key",
    );
    // Sent but not UTF-8: a key that cannot be read, not a missing one.
    let mut raw = key.clone().into_bytes();
    raw[10] = 0xff;
    for headers in [
        [("x-api-key", &raw[..])],
        [("x-api-key", &b"\xff"[..])],
        [("authorization", &[b"Bearer ".as_slice(), &raw].concat()[..])],
    ] {
        let reply = stack.get_raw("/", &headers).await;
        assert_problem(&reply, 401, "invalid_api_key");
    }
    // Not UTF-8 under another scheme is still no key.
    let basic = stack
        .get_raw("/", &[("authorization", b"Basic \xff")])
        .await;
    assert_problem(&basic, 401, "missing_api_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_burst_requests_pass_under_concurrent_load() {
    const BURST: usize = 50;
    const REQUESTS: usize = 300;
    const CONNECTIONS: usize = 12;
    // Several rounds, each on a fresh key: a lost CAS race shows up as an
    // extra admission in some round, and one is enough to fail.
    const ROUNDS: usize = 6;
    let stack = Stack::start().await;
    for round in 0..ROUNDS {
        let (_, key) = stack.tenant_with_key(burst_limit(BURST as u64)).await;
        // Config versions apply in order, so once a key created later works,
        // this one is in place too, with its bucket untouched.
        let (_, probe) = stack.tenant_with_key(burst_limit(1000)).await;
        stack.until_status(&probe, 200, PROPAGATION_BOUND).await;

        let mut tasks = Vec::new();
        for _ in 0..CONNECTIONS {
            // A client per group, so requests arrive on many connections and
            // Envoy spreads them over both workers.
            let client = reqwest::Client::new();
            let url = stack.envoy_url("/");
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let requests = (0..REQUESTS / CONNECTIONS).map(|_| {
                    let request = client.get(&url).header("x-api-key", &key).send();
                    tokio::spawn(async move { request.await.map(|r| r.status().as_u16()) })
                });
                let mut statuses = Vec::new();
                for request in requests.collect::<Vec<_>>() {
                    statuses.push(request.await.unwrap().unwrap());
                }
                statuses
            }));
        }
        let (mut ok, mut limited) = (0, 0);
        for task in tasks {
            for status in task.await.unwrap() {
                match status {
                    200 => ok += 1,
                    429 => limited += 1,
                    other => panic!("unexpected status {other}"),
                }
            }
        }
        assert_eq!(ok, BURST, "round {round}: allowed {ok}, limited {limited}");
        assert_eq!(limited, REQUESTS - BURST);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fails_closed_without_config_and_keeps_enforcing_when_the_control_plane_is_gone() {
    let mut stack = Stack::start_without_control_plane().await;
    let never_issued = ApiKey::from_body(&"Q".repeat(32)).unwrap();
    // Give the leader time to try (and fail) a few times.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reply = stack.get_with_key(never_issued.expose()).await;
    assert_problem(&reply, 503, "config_unavailable");
    // Malformed keys are refused before the config is even looked at.
    assert_problem(&stack.get_with_key("tg_nope").await, 401, "invalid_api_key");

    stack.start_control_plane().await;
    let (_, good) = stack.tenant_with_key(burst_limit(1000)).await;
    let (bad_id, bad) = stack.tenant_with_key(burst_limit(1000)).await;
    stack
        .until_status(&good, 200, Duration::from_secs(10))
        .await;
    stack.until_status(&bad, 200, PROPAGATION_BOUND).await;
    stack
        .admin(
            Method::PATCH,
            &format!("/v1/keys/{bad_id}"),
            Some(json!({"active": false})),
        )
        .await;
    stack.until_status(&bad, 401, PROPAGATION_BOUND).await;

    stack.stop_control_plane();
    for _ in 0..20 {
        assert_eq!(stack.get_with_key(&good).await.status, StatusCode::OK);
        assert_problem(&stack.get_with_key(&bad).await, 401, "disabled_api_key");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back: changes made now reach Envoy again.
    stack.start_control_plane().await;
    stack
        .admin(
            Method::PATCH,
            &format!("/v1/keys/{bad_id}"),
            Some(json!({"active": true})),
        )
        .await;
    stack.until_status(&bad, 200, PROPAGATION_BOUND).await;
    assert_eq!(stack.get_with_key(&good).await.status, StatusCode::OK);
}
