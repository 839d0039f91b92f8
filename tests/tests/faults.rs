//! Faults under traffic, through real Envoy (2 workers) and the real
//! control plane: whatever happens to the control plane or its database,
//! every answer is one a correct gateway could give, and what the control
//! plane counts in the end is exactly what the test saw admitted: nothing
//! lost, nothing counted twice.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tollgate_e2e::fault_proxy::{Fault, FaultProxy};
use tollgate_e2e::harness::{
    env_path, eventually, free_port, fresh_postgres_database, Frozen, Stack,
};

/// Answers to requests with `key` through the stack's Envoy, one every
/// 10 ms or so, for `lasting`: (200s, 429s, anything else with its status).
async fn traffic(stack: &Stack, key: &str, lasting: Duration) -> (u64, u64, Vec<u16>) {
    traffic_through(stack, stack.envoy_port, key, lasting).await
}

/// [`traffic`] through the Envoy on `port`.
async fn traffic_through(
    stack: &Stack,
    port: u16,
    key: &str,
    lasting: Duration,
) -> (u64, u64, Vec<u16>) {
    let (mut ok, mut limited, mut wrong) = (0, 0, Vec::new());
    let started = Instant::now();
    while started.elapsed() < lasting {
        match stack.status_through(port, key).await {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => wrong.push(other.as_u16()),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (ok, limited, wrong)
}

/// Every answer of every phase was 200 or 429, some of each; the control
/// plane (or replica) on `port` comes to count exactly the 200s and
/// `earlier` (admitted before the phases), and counts no more a while
/// later. How long counting took.
async fn counted_once(
    stack: &Stack,
    port: u16,
    key_id: &str,
    earlier: u64,
    phases: &[(u64, u64, Vec<u16>)],
) -> Duration {
    let mut admitted = earlier;
    for (ok, limited, wrong) in phases {
        assert!(wrong.is_empty(), "{phases:?}");
        assert!(*ok > 0 && *limited > 0, "{phases:?}");
        admitted += ok;
    }
    let started = Instant::now();
    stack
        .until_used_via(port, key_id, admitted, Duration::from_secs(15))
        .await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stack.used_via(port, key_id).await,
        admitted,
        "counted again later"
    );
    took
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
    counted_once(
        &stack,
        stack.control_plane_port,
        &key_id,
        1,
        &[before, during, after],
    )
    .await;
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
    counted_once(
        &stack,
        stack.control_plane_port,
        &key_id,
        1,
        &[before, during, after],
    )
    .await;
    eprintln!("usage complete {:?} after it resumed", resumed.elapsed());
}

/// Keys asked for on `tenant_id` one after another for `lasting`: (the ids
/// of those made, every other answer as (status, code), the longest wait
/// for an answer).
async fn keys_asked_for(
    stack: &Stack,
    tenant_id: &str,
    lasting: Duration,
) -> (Vec<String>, Vec<(u16, String)>, Duration) {
    let (mut made, mut refused, mut longest) = (Vec::new(), Vec::new(), Duration::ZERO);
    let started = Instant::now();
    while started.elapsed() < lasting {
        let asked = Instant::now();
        let r = stack
            .admin(
                Method::POST,
                &format!("/v1/tenants/{tenant_id}/keys"),
                Some(json!({"name": "under load"})),
            )
            .await;
        longest = longest.max(asked.elapsed());
        match r.status {
            StatusCode::CREATED => made.push(r.body["id"].as_str().unwrap_or_default().to_owned()),
            other => refused.push((
                other.as_u16(),
                r.body["code"].as_str().unwrap_or_default().to_owned(),
            )),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (made, refused, longest)
}

/// The ids `GET path` lists (one page of up to 200), by `field` of each item.
async fn listed(stack: &Stack, path: &str, field: &str) -> BTreeSet<String> {
    let r = stack.admin(Method::GET, path, None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let items = r.body["items"].as_array().cloned().unwrap_or_default();
    assert!(items.len() < 200, "more than a page: {path}");
    items
        .iter()
        .filter_map(|item: &Value| item[field].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_under_load_answers_503_writes_nothing_half_and_recovers_by_itself() {
    // A cluster of this test's own, to stop: the shared one serves the others.
    let bin = env_path("TOLLGATE_POSTGRES_BIN");
    let cluster = tollgate_launch::postgres::start(&bin).unwrap_or_else(|e| panic!("{e}"));
    let stack = Stack::start_with_database(&cluster.url).await;
    let limit = json!({"name": "per-second", "max": 20, "window_seconds": 1});
    let (key_id, key) = stack.tenant_with_key(limit.clone()).await;
    let tenant_id = stack.tenant_on_plan(limit).await;
    stack.until_status(&key, 200, Duration::from_secs(10)).await;

    let (before, (made_before, refused_before, _)) = tokio::join!(
        traffic(&stack, &key, Duration::from_secs(2)),
        keys_asked_for(&stack, &tenant_id, Duration::from_secs(2)),
    );
    assert!(refused_before.is_empty(), "{refused_before:?}");
    cluster.stop_server();
    let stopped = Instant::now();
    let (during, (made_during, refused_during, longest)) = tokio::join!(
        traffic(&stack, &key, Duration::from_secs(5)),
        keys_asked_for(&stack, &tenant_id, Duration::from_secs(5)),
    );
    let health = stack.admin(Method::GET, "/healthz", None).await;
    cluster.start_server().unwrap_or_else(|e| panic!("{e}"));
    let restarted = Instant::now();
    eprintln!(
        "database down {:?}: keys made {}, refused {}, longest answer {longest:?}",
        restarted - stopped,
        made_during.len(),
        refused_during.len()
    );
    // Every refusal says why, and none waits out the pool's 10 s.
    assert_eq!(made_during, Vec::<String>::new());
    assert!(!refused_during.is_empty());
    for (status, code) in &refused_during {
        assert_eq!((*status, code.as_str()), (503, "database_unavailable"));
    }
    assert!(longest < Duration::from_secs(6), "{longest:?}");
    assert_eq!(
        (health.status.as_u16(), health.body["code"].as_str()),
        (503, Some("database_unavailable"))
    );

    // Back without a restart of the control plane.
    let (made_first, recovered) =
        eventually(Duration::from_secs(15), "a key made again", || async {
            let r = stack
                .admin(
                    Method::POST,
                    &format!("/v1/tenants/{tenant_id}/keys"),
                    Some(json!({"name": "after"})),
                )
                .await;
            (r.status == StatusCode::CREATED)
                .then(|| r.body["id"].as_str().unwrap_or_default().to_owned())
        })
        .await;
    let (after, (made_after, refused_after, _)) = tokio::join!(
        traffic(&stack, &key, Duration::from_secs(3)),
        keys_asked_for(&stack, &tenant_id, Duration::from_secs(3)),
    );
    assert!(refused_after.is_empty(), "{refused_after:?}");
    eprintln!(
        "(200s, 429s, others): before {before:?}, database down {during:?}, back {after:?}; \
         the first key was made again {recovered:?} after postgres accepted connections"
    );

    // Exactly the keys answered 201 exist, each with its audit entry: no
    // refused request left a row behind, no accepted one was lost.
    let made: BTreeSet<String> = made_before
        .into_iter()
        .chain([made_first])
        .chain(made_after)
        .collect();
    assert_eq!(
        listed(
            &stack,
            &format!("/v1/tenants/{tenant_id}/keys?limit=200"),
            "id"
        )
        .await,
        made
    );
    assert_eq!(
        listed(
            &stack,
            &format!("/v1/audit?action=key.create&tenant_id={tenant_id}&limit=200"),
            "resource_id"
        )
        .await,
        made
    );
    // The Envoy's usage reports refused while it was down arrive later, once.
    counted_once(
        &stack,
        stack.control_plane_port,
        &key_id,
        1,
        &[before, during, after],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_replicas_one_killed_the_envoys_carry_on_through_the_other() {
    let url = fresh_postgres_database("replica_killed");
    let mut stack = Stack::start_with_database(&url).await;
    let other = stack.start_replica().await;
    // An Envoy whose control-plane cluster lists both replicas, as the
    // shipped configuration says to.
    let (port, admin_port) = (free_port(), free_port());
    let one = format!("port_value: {} }} }} }}", stack.control_plane_port);
    let config = stack
        .envoy_config(port, admin_port, stack.upstream_port, stack.control_plane_port)
        .replacen(
            &one,
            &format!(
                "{one}\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {other} }} }} }}"
            ),
            1,
        );
    assert!(
        config.contains(&format!("port_value: {other} ")),
        "{config}"
    );
    let path = stack.dir.path().join("envoy-both.yaml");
    std::fs::write(&path, config).expect("the Envoy config written");
    stack.add_envoy("envoy-both", &path, admin_port, &[]).await;

    let limit = json!({"name": "per-second", "max": 20, "window_seconds": 1});
    let (key_id, key) = stack.tenant_with_key(limit.clone()).await;
    eventually(Duration::from_secs(10), "the key passes", || async {
        (stack.status_through(port, &key).await == StatusCode::OK).then_some(())
    })
    .await;
    let before = traffic_through(&stack, port, &key, Duration::from_secs(2)).await;
    stack.kill_control_plane();
    let killed = Instant::now();
    // A key made through the survivor passes at the Envoy that lost half of
    // its control plane.
    let (new_id, new_key) = stack.tenant_with_key_via(other, limit).await;
    let (_, passes) = eventually(Duration::from_secs(10), "a new key passes", || async {
        (stack.status_through(port, &new_key).await == StatusCode::OK).then_some(())
    })
    .await;
    let passed_after_kill = killed.elapsed();
    let during = traffic_through(&stack, port, &key, Duration::from_secs(4)).await;
    // Once the dead one is out of rotation, a change through the survivor
    // arrives as it would with one control plane.
    let r = stack
        .admin_via(
            other,
            Method::PATCH,
            &format!("/v1/keys/{new_id}"),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let (_, refused) = eventually(Duration::from_secs(5), "the key refused", || async {
        (stack.status_through(port, &new_key).await == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    eprintln!(
        "(200s, 429s, others): before {before:?}, one replica killed {during:?}; \
         a key made through the other passed {passes:?} after it was made \
         ({passed_after_kill:?} after the kill), and was refused {refused:?} after it was deactivated"
    );
    // Everything the Envoy admitted is counted once, through the survivor.
    let complete = counted_once(&stack, other, &key_id, 1, &[before, during]).await;
    eprintln!("usage complete {complete:?} after the traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_killed_and_started_again_has_its_whole_config_at_once_and_counts_nothing_twice() {
    let mut stack = Stack::start().await;
    let limit = json!({"name": "per-second", "max": 20, "window_seconds": 1});
    let (key_id, key) = stack.tenant_with_key(limit.clone()).await;
    // Enough keys that the config comes in several pages; the last one made
    // is on the last page.
    let tenant_id = stack.tenant_on_plan(limit).await;
    let batch = stack
        .admin(
            Method::POST,
            &format!("/v1/tenants/{tenant_id}/keys/batch"),
            Some(json!({"count": KEYS})),
        )
        .await;
    assert_eq!(batch.status, StatusCode::CREATED, "{:?}", batch.body);
    let last = batch.body["keys"][KEYS - 1]["key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    stack
        .until_status(&last, 200, Duration::from_secs(30))
        .await;
    stack.until_status(&key, 200, Duration::from_secs(10)).await;

    let before = traffic(&stack, &key, Duration::from_secs(3)).await;
    // What an Envoy admits in about the last second before it dies may be
    // lost: it had not reported it yet.
    let last_second = traffic(&stack, &key, Duration::from_millis(1500)).await;
    stack.kill_envoy();
    let started = Instant::now();
    stack.restart_envoy().await;
    let ready = started.elapsed();
    // Until the key and the last one made both pass; the key's 200s on the
    // way count as admitted too.
    let admitted_meanwhile = std::sync::atomic::AtomicU64::new(0);
    let (_, full) = eventually(Duration::from_secs(30), "the whole config", || async {
        let (first, last) = tokio::join!(stack.get_with_key(&key), stack.get_with_key(&last));
        if first.status == StatusCode::OK {
            admitted_meanwhile.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        (first.status == StatusCode::OK && last.status == StatusCode::OK).then_some(())
    })
    .await;
    let after = traffic(&stack, &key, Duration::from_secs(3)).await;
    eprintln!(
        "(200s, 429s, others): before {before:?}, its last 1.5 s {last_second:?}, after {after:?}; \
         {} keys: Envoy ready {ready:?} after it was started again, its whole config {:?} after that",
        KEYS + 1,
        full
    );
    let phases = [&before, &last_second, &after];
    for (ok, _, wrong) in phases {
        assert!(wrong.is_empty(), "{phases:?}");
        assert!(*ok > 0, "{phases:?}");
    }
    // The first 200 of `until_status`, then every phase's.
    let surely = 1 + before.0 + admitted_meanwhile.into_inner() + after.0;
    let at_most = surely + last_second.0;
    let (used, _) = eventually(Duration::from_secs(15), "usage counted", || async {
        let used = stack.used(&key_id).await;
        (used >= surely).then_some(used)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = stack.used(&key_id).await;
    eprintln!("counted {later} of {at_most} admitted ({surely} sure to be reported)");
    assert!(later <= at_most, "counted twice: {later} > {at_most}");
    assert!(later >= used, "{later} < {used}");
}

/// Keys on the restarted Envoy's config besides the one under traffic.
const KEYS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whatever_breaks_between_envoy_and_the_control_plane_the_last_config_stays_and_usage_counts_once(
) {
    let mut stack = Stack::start_without_envoy().await;
    let proxy = FaultProxy::start(stack.control_plane_port).await;
    let (port, admin_port) = (free_port(), free_port());
    let config = stack.envoy_config(port, admin_port, stack.upstream_port, proxy.port);
    let path = stack.dir.path().join("envoy-behind-faults.yaml");
    std::fs::write(&path, config).expect("the Envoy config written");
    stack
        .add_envoy("envoy-behind-faults", &path, admin_port, &[])
        .await;
    let limit = json!({"name": "per-second", "max": 20, "window_seconds": 1});
    let (key_id, key) = stack.tenant_with_key(limit.clone()).await;
    let (revoked_id, revoked) = stack.tenant_with_key(limit.clone()).await;
    stack.deactivate(&revoked_id).await;
    let admitted_first = std::sync::atomic::AtomicU64::new(0);
    eventually(Duration::from_secs(10), "the key passes", || async {
        let (status, revoked) = tokio::join!(
            stack.status_through(port, &key),
            stack.status_through(port, &revoked)
        );
        if status == StatusCode::OK {
            admitted_first.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        (status == StatusCode::OK && revoked == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    let mut admitted = admitted_first.into_inner();

    let faults = [
        Fault::Delay(Duration::from_secs(7)),
        Fault::Reset,
        Fault::Truncate,
        Fault::Garbage,
        Fault::ServerError,
        Fault::Huge(100 << 20),
    ];
    for fault in faults {
        let before = proxy.faulted();
        proxy.set(fault);
        let (ok, limited, wrong) =
            traffic_through(&stack, port, &key, Duration::from_secs(4)).await;
        // The last good config stays: the key is enforced, the revoked one
        // refused.
        let revoked_now = stack.status_through(port, &revoked).await;
        eprintln!(
            "{fault:?}: {} requests faulted; (200s, 429s, others) {:?}; the revoked key {revoked_now}",
            proxy.faulted() - before,
            (ok, limited, &wrong)
        );
        assert!(proxy.faulted() > before, "{fault:?} was never applied");
        assert!(
            wrong.is_empty() && ok > 0 && limited > 0,
            "{fault:?}: {wrong:?}"
        );
        assert_eq!(revoked_now, StatusCode::UNAUTHORIZED, "{fault:?}");
        admitted += ok;
    }
    proxy.set(Fault::Pass);
    let healed = Instant::now();
    // Sync resumes: a key made now passes.
    let (_, new_key) = stack.tenant_with_key(limit).await;
    let (_, synced) = eventually(Duration::from_secs(15), "a new key passes", || async {
        (stack.status_through(port, &new_key).await == StatusCode::OK).then_some(())
    })
    .await;
    let stats = reqwest::get(format!(
        "http://127.0.0.1:{admin_port}/stats?filter=tollgate\\.(sync_failures|usage_report_failures)"
    ))
    .await
    .expect("Envoy's admin answers")
    .text()
    .await
    .expect("its stats");
    eprintln!(
        "healed: a new key passed {synced:?} after; {}",
        stats.trim().replace('\n', ", ")
    );
    for counter in ["sync_failures_total", "usage_report_failures_total"] {
        let failures: u64 = stats
            .lines()
            .find(|line| line.contains(counter))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0);
        assert!(failures > 0, "{counter} not counted: {stats}");
    }
    // Every batch that reached the control plane, however often, and
    // whatever became of its answer, counted once.
    stack
        .until_used(&key_id, admitted, Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.used(&key_id).await, admitted, "counted again later");
    eprintln!(
        "usage exact, {admitted} admitted, {:?} after the faults ended",
        healed.elapsed()
    );
    let log = stack.log("envoy-behind-faults");
    assert!(!log.contains("panicked"), "the filter panicked:\n{log}");
}
