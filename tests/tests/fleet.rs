//! The proxy registry and receipts against three real Envoys: each names
//! itself, a deactivation that waits for propagation returns only once all
//! three applied it (and every one of them then refuses the key), and an
//! Envoy frozen with SIGSTOP turns `stale` and holds no write up.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tollgate_e2e::harness::{eventually, Frozen, Reply, Stack};

const PROPAGATION_BOUND: Duration = Duration::from_secs(5);

async fn proxies(stack: &Stack) -> Value {
    let r = stack.admin(Method::GET, "/v1/proxies", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body
}

/// (node id, status) of every proxy, by node id.
fn statuses(list: &Value) -> Vec<(String, String)> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["node_id"].as_str().unwrap().to_owned(),
                p["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn propagation(r: &Reply) -> (u64, u64, bool) {
    let p = &r.body["propagation"];
    (
        p["applied"].as_u64().unwrap(),
        p["live"].as_u64().unwrap(),
        p["complete"].as_bool().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_envoys_are_listed_a_waited_revocation_holds_everywhere_and_a_frozen_one_is_not_waited_for(
) {
    let mut stack = Stack::start().await;
    let ports = [
        stack.envoy_port,
        stack.start_another_envoy().await,
        stack.start_another_envoy().await,
    ];
    let limit = json!({"name": "per-hour", "max": 1000, "window_seconds": 3600});
    let (key_id, key) = stack.tenant_with_key(limit).await;
    for port in ports {
        eventually(PROPAGATION_BOUND, "the key passes", || async {
            (stack.status_through(port, &key).await == StatusCode::OK).then_some(())
        })
        .await;
    }

    let (list, took) = eventually(PROPAGATION_BOUND, "three live proxies", || async {
        let list = proxies(&stack).await;
        let live = statuses(&list).iter().filter(|(_, s)| s == "live").count();
        (live == 3).then_some(list)
    })
    .await;
    eprintln!("three proxies live after {took:?}: {list}");
    assert_eq!(
        statuses(&list),
        [
            ("envoy".to_owned(), "live".to_owned()),
            ("envoy-2".to_owned(), "live".to_owned()),
            ("envoy-3".to_owned(), "live".to_owned()),
        ]
    );
    for p in list["items"].as_array().unwrap() {
        assert_eq!(p["cluster"], "tollgate-e2e");
        assert!(p["build"].as_str().unwrap().starts_with("0.1.0+"), "{p}");
    }

    // The deactivation answers once all three applied it...
    let started = Instant::now();
    let r = stack
        .admin(
            Method::PATCH,
            &format!("/v1/keys/{key_id}?wait_for_propagation=5s"),
            Some(json!({"active": false})),
        )
        .await;
    let waited = started.elapsed();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(propagation(&r), (3, 3, true), "{:?}", r.body);
    assert!(r.header("tollgate-config-version").is_some());
    eprintln!(
        "deactivation applied on 3/3 after {waited:?}: {}",
        r.body["propagation"]
    );
    // ...and right after it every Envoy refuses the key.
    for port in ports {
        assert_eq!(
            stack.status_through(port, &key).await,
            StatusCode::UNAUTHORIZED,
            "port {port}"
        );
    }

    // One Envoy frozen: it turns stale, and writes stop waiting for it.
    let pid = stack.envoy_pids()[2];
    let frozen = Frozen::freeze(pid);
    let (_, took) = eventually(
        Duration::from_secs(30),
        "the frozen Envoy stale",
        || async {
            let list = proxies(&stack).await;
            statuses(&list)
                .contains(&("envoy-3".to_owned(), "stale".to_owned()))
                .then_some(())
        },
    )
    .await;
    eprintln!("frozen Envoy stale after {took:?}");
    let started = Instant::now();
    let r = stack
        .admin(
            Method::PATCH,
            &format!("/v1/keys/{key_id}?wait_for_propagation=5s"),
            Some(json!({"active": true})),
        )
        .await;
    let waited = started.elapsed();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(propagation(&r), (2, 2, true), "{:?}", r.body);
    assert!(waited < Duration::from_secs(4), "held up for {waited:?}");
    let missing = &r.body["propagation"]["missing"];
    assert_eq!(missing[0]["node_id"], "envoy-3", "{missing}");
    assert_eq!(missing[0]["status"], "stale");
    eprintln!("write with one Envoy frozen answered after {waited:?}");
    drop(frozen);
}
