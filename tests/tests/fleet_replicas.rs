//! The proxy registry and receipts across two control-plane replicas on one
//! PostgreSQL: Envoy syncs from the first (the stack's own), the admin reads
//! and writes through the second only. The Envoy is listed `live` there, and
//! a deactivation sent there with `?wait_for_propagation=` answers once the
//! Envoy applied it: the poll that says so reaches the other replica, whose
//! `NOTIFY` wakes the waiting write (without it, only a periodic re-check
//! would).

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tollgate_e2e::harness::{eventually, fresh_postgres_database, Stack};

const PROPAGATION_BOUND: Duration = Duration::from_secs(5);
/// Deactivations and reactivations waited for, to report more than one wait.
const ROUNDS: usize = 5;
/// Below the waiting replica's periodic re-check (`receipt::RECHECK_MS`,
/// 500 ms): only the `NOTIFY` wakes a wait sooner. Measured about 12 ms with
/// it and 515 ms without; the median keeps one slow round from failing it.
const PROMPT: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_envoy_polling_one_replica_is_listed_and_waited_for_through_another() {
    let url = fresh_postgres_database("fleet_replicas");
    let mut stack = Stack::start_with_database(&url).await;
    let other = stack.start_replica().await;

    let limit = json!({"name": "per-hour", "max": 1000, "window_seconds": 3600});
    let (key_id, key) = stack.tenant_with_key(limit).await;
    stack.until_status(&key, 200, PROPAGATION_BOUND).await;

    // Listed, live, by the replica it does not poll.
    let (list, took) = eventually(
        PROPAGATION_BOUND,
        "the Envoy live via the other replica",
        || async {
            let r = stack
                .admin_via(other, Method::GET, "/v1/proxies", None)
                .await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            let live = r.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["status"] == "live")
                .count();
            (live == 1).then_some(r.body)
        },
    )
    .await;
    eprintln!("Envoy live through the other replica after {took:?}: {list}");
    assert_eq!(list["items"][0]["node_id"], "envoy");

    let mut waits = Vec::new();
    for round in 0..ROUNDS {
        let active = round % 2 == 1;
        let started = Instant::now();
        let r = stack
            .admin_via(
                other,
                Method::PATCH,
                &format!("/v1/keys/{key_id}?wait_for_propagation=5s"),
                Some(json!({"active": active})),
            )
            .await;
        let waited = started.elapsed();
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let p: &Value = &r.body["propagation"];
        assert_eq!(
            (
                p["applied"].as_u64(),
                p["live"].as_u64(),
                p["complete"].as_bool()
            ),
            (Some(1), Some(1), Some(true)),
            "{:?}",
            r.body
        );
        let version = r
            .header("tollgate-config-version")
            .expect("the version header");
        assert_eq!(r.body["config_version"].to_string(), version);
        // Right after the answer, the Envoy enforces the change.
        let expected = if active { 200 } else { 401 };
        assert_eq!(
            stack.get_with_key(&key).await.status.as_u16(),
            expected,
            "round {round}"
        );
        eprintln!(
            "round {round}: {} through the other replica answered after {waited:?} (waited_ms {})",
            if active {
                "reactivation"
            } else {
                "deactivation"
            },
            p["waited_ms"]
        );
        waits.push(waited);
    }
    waits.sort();
    eprintln!(
        "waits for propagation through the other replica: min {:?}, median {:?}, max {:?}",
        waits[0],
        waits[ROUNDS / 2],
        waits[ROUNDS - 1]
    );
    assert!(
        waits[ROUNDS / 2] < PROMPT,
        "median wait {:?}: not woken by the other replica",
        waits[ROUNDS / 2]
    );
}
