//! Fleet-wide rate limits through real Envoys (2 workers each) on one
//! control plane: one key at 10 requests a second with a burst of 10,
//! hammered through several Envoys, is admitted at most `burst + rate·T`
//! plus the stated slack across all of them, and at least 90 % of that
//! (shares follow demand, no Envoy starves); used through one Envoy, it
//! gets the whole rate there after the learning time; Envoys joining and
//! leaving, and the control plane frozen past a lease's length, keep the
//! bound; a tenant's limit holds the same way across its keys, and across
//! Envoys that report to different control-plane replicas. And a monthly
//! quota, hammered through three Envoys, admits exactly its size.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tollgate_e2e::harness::{
    eventually, free_port, fresh_postgres_database, hammer, Frozen, Hammered, Stack,
};

const RATE: u64 = 10;
const BURST: u64 = 10;
/// One request per Envoy, for shares of the burst below one request and
/// rounding to 65,536ths (see `tollgate_core::bucket::Meter`).
const SLACK_PER_ENVOY: u64 = 1;
/// Between one Envoy's requests in a hammer: about 150 a second each.
const GAP: Duration = Duration::from_millis(5);
/// A key's shares move to where its demand is within three reports (one a
/// second), as the README states; this allows for a slow machine.
const LEARNING: Duration = Duration::from_secs(4);

/// The most the fleet may admit over `elapsed` with `envoys` Envoys.
fn bound(elapsed: Duration, envoys: u64) -> u64 {
    BURST + (RATE as f64 * elapsed.as_secs_f64()).ceil() as u64 + SLACK_PER_ENVOY * envoys
}

/// A stack of `n` Envoys and a key at `RATE`/s with a burst of `BURST`,
/// admitted through every one of them.
async fn fleet_with_key(n: usize) -> (Stack, Vec<u16>, String) {
    let mut stack = Stack::start().await;
    let mut ports = vec![stack.envoy_port];
    for _ in 1..n {
        ports.push(stack.start_another_envoy().await);
    }
    let limit = json!({"name": "per-second", "max": RATE, "window_seconds": 1, "burst": BURST});
    let (_, key) = stack.tenant_with_key(limit).await;
    until_passing(&stack, &ports, &key).await;
    (stack, ports, key)
}

/// Waits until `key` passes through every Envoy on `ports`.
async fn until_passing(stack: &Stack, ports: &[u16], key: &str) {
    for &port in ports {
        eventually(Duration::from_secs(10), "the key passes", || async {
            (stack.status_through(port, key).await == StatusCode::OK).then_some(())
        })
        .await;
    }
}

fn report(what: &str, h: &Hammered, envoys: u64) {
    eprintln!(
        "{what}: admitted {:?} = {} (bound {}), refused {:?}, over {:?}",
        h.admitted,
        h.total(),
        bound(h.elapsed, envoys),
        h.refused,
        h.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_envoys_hold_one_rate_limit_together_and_share_it_by_demand() {
    let (stack, ports, key) = fleet_with_key(3).await;
    // Every Envoy asked about alike so far: let the shares settle on thirds.
    tokio::time::sleep(LEARNING).await;
    let h = hammer(&stack.client, &ports, &key, Duration::from_secs(10), GAP).await;
    report("three Envoys, 10 s", &h, 3);
    assert!(h.total() <= bound(h.elapsed, 3), "{h:?}");
    // 90 % of burst + rate · 10 s.
    assert!(h.total() >= 99, "{h:?}");
    for (i, &admitted) in h.admitted.iter().enumerate() {
        assert!(admitted * 5 >= h.total(), "Envoy {i} starved: {h:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_limit_holds_across_envoys_and_keys() {
    let mut stack = Stack::start().await;
    let ports = [stack.envoy_port, stack.start_another_envoy().await];
    let limit = json!({"name": "per-second", "max": RATE, "window_seconds": 1,
                       "burst": BURST, "scope": "tenant"});
    let tenant_id = stack.tenant_on_plan(limit).await;
    let (_, first) = stack.new_key(&tenant_id).await;
    let (_, second) = stack.new_key(&tenant_id).await;
    for (port, key) in [(ports[0], &first), (ports[1], &second)] {
        eventually(Duration::from_secs(10), "the key passes", || async {
            (stack.status_through(port, key).await == StatusCode::OK).then_some(())
        })
        .await;
    }
    tokio::time::sleep(LEARNING).await;
    // Each key through its own Envoy: one bucket between them, fleet-wide.
    let lasting = Duration::from_secs(6);
    let (a, b) = tokio::join!(
        hammer(&stack.client, &ports[..1], &first, lasting, GAP),
        hammer(&stack.client, &ports[1..], &second, lasting, GAP),
    );
    let (total, elapsed) = (a.total() + b.total(), a.elapsed.max(b.elapsed));
    eprintln!(
        "a tenant's two keys through two Envoys: admitted {} + {} = {total} over {elapsed:?} (bound {})",
        a.total(),
        b.total(),
        bound(elapsed, 2)
    );
    assert!(total <= bound(elapsed, 2));
    assert!(a.total() > 0 && b.total() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_used_through_one_envoy_gets_the_whole_rate_there_after_learning() {
    let (stack, ports, key) = fleet_with_key(3).await;
    let one = &ports[..1];
    let learning = hammer(&stack.client, one, &key, LEARNING, GAP).await;
    report("one of three Envoys, learning", &learning, 3);
    let learned = hammer(&stack.client, one, &key, Duration::from_secs(5), GAP).await;
    report("one of three Envoys, learned", &learned, 3);
    assert!(learned.total() <= bound(learned.elapsed, 3), "{learned:?}");
    // The whole rate: 90 % of 10 a second for 5 s.
    assert!(learned.total() >= 45, "{learned:?}");
    // And the others, asked next to nothing, hold at most the one request
    // any share below one holds (the stated slack): of three, one at most.
    for &port in &ports[1..] {
        let mut admitted = 0;
        for _ in 0..3 {
            if stack.status_through(port, &key).await == StatusCode::OK {
                admitted += 1;
            }
        }
        assert!(admitted <= 1, "{admitted} of 3 through port {port}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoys_joining_and_leaving_mid_run_keep_the_bound() {
    let (mut stack, ports, key) = fleet_with_key(3).await;
    tokio::time::sleep(LEARNING).await;
    let lasting = Duration::from_secs(12);
    let started = Instant::now();
    // Two Envoys throughout, one until it stops at 6 s, and one joining at 2 s.
    let stays = tokio::spawn({
        let (client, key, ports) = (stack.client.clone(), key.clone(), ports.clone());
        async move { hammer(&client, &ports[..2], &key, lasting, GAP).await }
    });
    let leaves = tokio::spawn({
        let (client, key, port) = (stack.client.clone(), key.clone(), ports[2]);
        async move { hammer(&client, &[port], &key, Duration::from_secs(6), GAP).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let joined = stack.start_another_envoy().await;
    // Until its first config it answers 503: it has not joined yet.
    eventually(
        Duration::from_secs(10),
        "the new Envoy's config",
        || async {
            (stack.status_through(joined, &key).await != StatusCode::SERVICE_UNAVAILABLE)
                .then_some(())
        },
    )
    .await;
    let joins = tokio::spawn({
        let (client, key) = (stack.client.clone(), key.clone());
        let left = lasting.saturating_sub(started.elapsed());
        async move { hammer(&client, &[joined], &key, left, GAP).await }
    });
    let leaves = leaves.await.unwrap();
    stack.stop_envoy(ports[2]);
    let (stays, joins) = (stays.await.unwrap(), joins.await.unwrap());
    let total = stays.total() + leaves.total() + joins.total();
    let elapsed = started.elapsed();
    eprintln!(
        "join and leave: stays {:?}, leaves {:?}, joins {:?}: {total} over {elapsed:?} (bound {})",
        stays.admitted,
        leaves.admitted,
        joins.admitted,
        bound(elapsed, 4)
    );
    assert!(total <= bound(elapsed, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_control_plane_frozen_past_a_lease_shares_only_shrink() {
    let (stack, ports, key) = fleet_with_key(2).await;
    // The key is used through the first Envoy only: it holds all of it.
    let learning = hammer(&stack.client, &ports[..1], &key, LEARNING, GAP).await;
    report("one of two Envoys, learning", &learning, 2);
    let started = Instant::now();
    let frozen = Frozen::freeze(stack.control_plane_pid().expect("a control plane"));
    // Both are hammered through a freeze longer than a lease (10 s): the
    // first keeps its share until its lease lapses, then falls to at most
    // its default, half; the second keeps at most what it held.
    let valid = hammer(
        &stack.client,
        &ports,
        &key,
        Duration::from_millis(10_500),
        GAP,
    )
    .await;
    let lapsed = hammer(
        &stack.client,
        &ports,
        &key,
        Duration::from_millis(4_500),
        GAP,
    )
    .await;
    drop(frozen);
    let after = hammer(&stack.client, &ports, &key, Duration::from_secs(3), GAP).await;
    let elapsed = started.elapsed();
    report("control plane frozen, leases valid", &valid, 2);
    report("control plane frozen, leases lapsed", &lapsed, 2);
    report("control plane back", &after, 2);
    assert!(valid.total() + lapsed.total() + after.total() <= bound(elapsed, 2));
    assert!(valid.admitted[0] > 0, "{valid:?}");
    // Half the burst, and half the rate for 4.5 s, and the one request.
    let half = BURST / 2 + (RATE as f64 / 2.0 * 4.5).ceil() as u64 + SLACK_PER_ENVOY;
    assert!(lapsed.admitted[0] <= half, "{lapsed:?}");
}

/// A key with a quota of `QUOTA` (and `RATE`/s, burst `BURST`), hammered
/// through every Envoy on `ports` for 15 s, is admitted exactly `QUOTA`
/// times, through each Envoy some, and the control plane counts that.
async fn hammer_a_quota_of_50(stack: &Stack, ports: &[u16], what: &str) {
    const QUOTA: u64 = 50;
    let limit = json!({"name": "per-second", "max": RATE, "window_seconds": 1, "burst": BURST});
    let tenant_id = stack
        .tenant_on(json!({"limits": [limit], "monthly_quota": QUOTA}))
        .await;
    let (key_id, key) = stack.new_key(&tenant_id).await;
    // Until an Envoy has the key it answers 401 (or 503 before any config),
    // admitting nothing; then 200, or 429 while its first slice comes.
    let mut admitted = 0;
    for &port in ports {
        let (status, _) = eventually(Duration::from_secs(10), "the key is known", || async {
            let status = stack.status_through(port, &key).await;
            matches!(status, StatusCode::OK | StatusCode::TOO_MANY_REQUESTS).then_some(status)
        })
        .await;
        admitted += u64::from(status == StatusCode::OK);
    }
    // The fleet's 10 a second takes about 5 s to use 50; slices, a second
    // or two each time an Envoy's runs out, add to it, and more on a machine
    // busy with other work (44 of 50 in 15 s once, with three builds
    // beside the test): the hammering goes on, up to a minute, until the
    // quota is used. Admitting more than the quota fails at any time.
    let mut h = hammer(&stack.client, ports, &key, Duration::from_secs(15), GAP).await;
    while admitted + h.total() < QUOTA && h.elapsed < Duration::from_secs(60) {
        let more = hammer(&stack.client, ports, &key, Duration::from_secs(3), GAP).await;
        h = h.and(more);
    }
    eprintln!(
        "a quota of {QUOTA} through {what}: {admitted} before, then {:?}, refused {:?}, over {:?}",
        h.admitted, h.refused, h.elapsed
    );
    assert_eq!(admitted + h.total(), QUOTA, "{h:?}");
    for (i, &n) in h.admitted.iter().enumerate() {
        assert!(n > 0, "Envoy {i} got no slice: {h:?}");
    }
    // What the control plane counted is what the test saw admitted.
    stack
        .until_used(&key_id, QUOTA, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quota_of_50_hammered_through_three_envoys_admits_exactly_50() {
    let mut stack = Stack::start().await;
    let mut ports = vec![stack.envoy_port];
    for _ in 1..3 {
        ports.push(stack.start_another_envoy().await);
    }
    hammer_a_quota_of_50(&stack, &ports, "three Envoys").await;
}

/// A stack on a fresh PostgreSQL database with two replicas, and an Envoy
/// syncing from and reporting to each: the stack's own, and one on the
/// second replica only. Returns the stack and the two Envoys' ports.
/// `tls`: every hop over HTTPS, the replicas' forwarding included.
async fn two_envoys_on_two_replicas(database: &str, tls: bool) -> (Stack, [u16; 2]) {
    let url = fresh_postgres_database(database);
    let mut stack = if tls {
        Stack::start_with_database_and_tls(&url).await
    } else {
        Stack::start_with_database(&url).await
    };
    let other = stack.start_replica().await;
    let (port, admin_port) = (free_port(), free_port());
    let config = stack.envoy_config(port, admin_port, stack.upstream_port, other);
    let path = stack.dir.path().join("envoy-b.yaml");
    std::fs::write(&path, config).expect("write the bootstrap");
    stack.add_envoy("envoy-b", &path, admin_port, &[]).await;
    let ports = [stack.envoy_port, port];
    (stack, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quota_of_50_hammered_through_envoys_on_two_replicas_admits_exactly_50() {
    let (stack, ports) = two_envoys_on_two_replicas("fleet_limits_replicas_quota", false).await;
    hammer_a_quota_of_50(&stack, &ports, "two Envoys on two replicas").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoys_reporting_to_two_replicas_hold_one_rate_limit_together() {
    // Over HTTPS, as the Kubernetes manifests run them: the second replica
    // forwards its Envoy's reports to the one that allocates, which it
    // reaches at https://127.0.0.1:<port>, checking the certificate.
    let (stack, ports) = two_envoys_on_two_replicas("fleet_limits_replicas", true).await;
    let limit = json!({"name": "per-second", "max": RATE, "window_seconds": 1, "burst": BURST});
    let (_, key) = stack.tenant_with_key(limit).await;
    until_passing(&stack, &ports, &key).await;
    tokio::time::sleep(LEARNING).await;
    let h = hammer(&stack.client, &ports, &key, Duration::from_secs(10), GAP).await;
    report("two Envoys on two replicas, 10 s", &h, 2);
    // One allocator for both: each replica leasing the whole to its own
    // Envoy would admit about twice this.
    assert!(h.total() <= bound(h.elapsed, 2), "{h:?}");
    assert!(h.admitted.iter().all(|&n| n > 0), "{h:?}");
    // Every forwarded report got through.
    for log in ["control-plane", "replica"] {
        let text = stack.log(log);
        assert!(
            !text.contains("cannot reach the allocator")
                && !text.contains("refused a forwarded report"),
            "{log}: {text}"
        );
    }
}
