//! Faults under traffic, through real Envoy (2 workers) and the real
//! control plane: whatever happens to the control plane, every answer is
//! one a correct gateway could give, and what the control plane counts in
//! the end is exactly what the test saw admitted: nothing lost, nothing
//! counted twice.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use tollgate_e2e::harness::{eventually, Frozen, Stack};

/// Answers to `n` requests a second with `key` for `lasting`: (200s,
/// 429s, anything else with its status).
async fn traffic(stack: &Stack, key: &str, lasting: Duration) -> (u64, u64, Vec<u16>) {
    let (mut ok, mut limited, mut wrong) = (0, 0, Vec::new());
    let started = Instant::now();
    while started.elapsed() < lasting {
        match stack.get_with_key(key).await.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => wrong.push(other.as_u16()),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (ok, limited, wrong)
}

/// Every answer of every phase was 200 or 429, some of each; the control
/// plane comes to count exactly the 200s and `earlier` (admitted before the
/// phases), and counts no more a while later.
async fn counted_once(
    stack: &Stack,
    key_id: &str,
    earlier: u64,
    phases: [(u64, u64, Vec<u16>); 3],
) {
    let mut admitted = earlier;
    for (ok, limited, wrong) in &phases {
        assert!(wrong.is_empty(), "{phases:?}");
        assert!(*ok > 0 && *limited > 0, "{phases:?}");
        admitted += ok;
    }
    stack
        .until_used(key_id, admitted, Duration::from_secs(15))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.used(key_id).await, admitted, "counted again later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_control_plane_killed_and_restarted_under_traffic_loses_and_doubles_nothing() {
    let mut stack = Stack::start().await;
    let limit = json!({"name": "per-second", "max": 20, "window_seconds": 1});
    let (key_id, key) = stack.tenant_with_key(limit.clone()).await;
    let (revoked_id, revoked) = stack.tenant_with_key(limit).await;
    let r = stack
        .admin(
            Method::PATCH,
            &format!("/v1/keys/{revoked_id}?wait_for_propagation=5s"),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    stack.until_status(&key, 200, Duration::from_secs(10)).await;

    let before = traffic(&stack, &key, Duration::from_secs(2)).await;
    // SIGKILL: a transaction may be cut mid-way, an answer lost.
    stack.kill_control_plane();
    let during = traffic(&stack, &key, Duration::from_secs(3)).await;
    // Identity fails closed without the control plane too.
    assert_eq!(stack.get_with_key(&revoked).await.status, 401);
    stack.start_control_plane().await;
    let after = traffic(&stack, &key, Duration::from_secs(3)).await;
    eprintln!("(200s, 429s, others): before {before:?}, control plane killed {during:?}, restarted {after:?}");
    // Everything admitted is counted once: the batches sent before the
    // kill, any whose answer it cut off (sent again under the same id), and
    // the ones held while it was away.
    counted_once(&stack, &key_id, 1, [before, during, after]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_control_plane_frozen_for_30_s_under_traffic_loses_and_doubles_nothing() {
    let stack = Stack::start().await;
    let limit = json!({"name": "per-second", "max": 20, "window_seconds": 1});
    let (key_id, key) = stack.tenant_with_key(limit.clone()).await;
    stack.until_status(&key, 200, Duration::from_secs(10)).await;
    let before = traffic(&stack, &key, Duration::from_secs(2)).await;
    let frozen = Frozen::freeze(stack.control_plane_pid().expect("a control plane"));
    let during = traffic(&stack, &key, Duration::from_secs(30)).await;
    drop(frozen);
    let resumed = Instant::now();
    // Sync resumes: a key made now works within a few seconds.
    let (_, new_key) = stack.tenant_with_key(limit).await;
    let (_, synced) = eventually(Duration::from_secs(10), "a new key passes", || async {
        (stack.get_with_key(&new_key).await.status == StatusCode::OK).then_some(())
    })
    .await;
    let after = traffic(&stack, &key, Duration::from_secs(3)).await;
    eprintln!(
        "(200s, 429s, others): before {before:?}, frozen 30 s {during:?}, resumed {after:?}; \
         a key made after it resumed passed in {synced:?}"
    );
    // Usage held through the freeze arrives whole and once.
    counted_once(&stack, &key_id, 1, [before, during, after]).await;
    eprintln!("usage complete {:?} after it resumed", resumed.elapsed());
}
