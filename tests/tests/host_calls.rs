//! Host calls per request, counted exactly, at 1, 1,000 and 100,000 keys.
//!
//! A host call that hands data back costs about a microsecond, so their
//! number is most of what the filter adds to a request, and a count does
//! not depend on the machine: it belongs in a test. The filter's
//! `host-call-counts` build (`host::counts`) counts every call a request's
//! callbacks make, by kind, and hands Envoy one count per request; this
//! test runs it in real Envoy with one worker, sends each kind of request
//! 3 ms apart (so every request reads the config version: the VM's memo
//! keeps it for one millisecond) and holds each outcome's calls to exact
//! numbers, the same whatever the number of keys loaded.
//!
//! A second Envoy runs the same build with the leanest headers an operator
//! may choose (`rate_limit_headers: ["ietf"]`, no tenant or plan header):
//! each header left out is one call fewer, and nothing else changes.
//!
//! The numbers differ only by what the VM's memo (`core::cache`) already
//! holds: a key's record, or its absence, is read once per config version
//! and worker, and so is a plan. So each outcome has a first request (the
//! key and its plan read), warm ones (nothing read but the version and the
//! bucket), and, for keys, cold ones (a key not seen yet under a plan that
//! was: its record read).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tollgate_core::key::ApiKey;
use tollgate_e2e::harness::{
    env_path, eventually, free_port, plugin_config_with, with_plugin_config, Stack,
};
use tollgate_launch::host_calls::{self, since, totals, Histogram};

/// Requests this far apart each read the config version.
const PACE: Duration = Duration::from_millis(3);
/// Warm requests and cold keys per outcome and scale.
const N: usize = 20;

/// What the counting build has counted so far on the Envoy at `admin_port`.
async fn histogram(stack: &Stack, admin_port: u16) -> Histogram {
    let text = stack
        .envoy_stats_text(admin_port, r"tollgate_test\.host_calls")
        .await;
    host_calls::parse(&text).expect("the counting build's stats")
}

async fn issue_keys(stack: &Stack, tenant: &str, count: usize) -> Vec<String> {
    let mut keys = Vec::with_capacity(count);
    while keys.len() < count {
        let batch = (count - keys.len()).min(10_000);
        let reply = stack
            .admin(
                Method::POST,
                &format!("/v1/tenants/{tenant}/keys/batch"),
                Some(json!({"count": batch, "name": "load"})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        keys.extend(
            reply.body["keys"]
                .as_array()
                .expect("keys")
                .iter()
                .map(|k| k["key"].as_str().expect("a plaintext key").to_owned()),
        );
    }
    keys
}

/// Waits until the Envoy on `admin_port` has applied the control plane's
/// current config version, without a request (which would fill the memo).
async fn until_applied(stack: &Stack, admin_port: u16) {
    let health = stack.admin(Method::GET, "/healthz", None).await;
    let version = health.body["config_version"].as_u64().expect("a version");
    eventually(Duration::from_secs(60), "the config applied", || async {
        let text = stack
            .envoy_stats_text(admin_port, r"tollgate\.config_version$")
            .await;
        let applied: u64 = text.split(": ").nth(1)?.trim().parse().ok()?;
        (applied == version).then_some(())
    })
    .await;
}

async fn get(stack: &Stack, port: u16, path: &str, key: Option<&str>) -> u16 {
    tokio::time::sleep(PACE).await;
    let mut request = stack.client.get(format!("http://127.0.0.1:{port}{path}"));
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    request
        .send()
        .await
        .expect("Envoy answers")
        .status()
        .as_u16()
}

/// Sends `key` (or none) `times` times, each answered `status`.
async fn send(stack: &Stack, port: u16, path: &str, key: Option<&str>, times: usize, status: u16) {
    for _ in 0..times {
        assert_eq!(get(stack, port, path, key).await, status, "{path} {key:?}");
    }
}

/// An Envoy (one worker) running the counting build, with `more` added to
/// its plugin configuration. `fewer_writes`: the header writes an allowed
/// request makes fewer than with the defaults.
struct Counting {
    name: &'static str,
    port: u16,
    admin_port: u16,
    fewer_writes: u64,
}

async fn counting_envoy(
    stack: &mut Stack,
    name: &'static str,
    more: Value,
    fewer_writes: u64,
) -> Counting {
    let (port, admin_port) = (free_port(), free_port());
    let config = stack
        .envoy_config(
            port,
            admin_port,
            stack.upstream_port,
            stack.control_plane_port,
        )
        .replace(
            &env_path("TOLLGATE_FILTER_WASM").display().to_string(),
            &env_path("TOLLGATE_FILTER_HOST_CALLS_WASM")
                .display()
                .to_string(),
        );
    let config = with_plugin_config(&config, &plugin_config_with(json!({}), more));
    let path = stack.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, config).unwrap();
    // One worker: one VM answers every request, so what its memo holds is
    // what the requests before put there.
    stack
        .add_envoy_with_workers(name, &path, admin_port, &[], 1)
        .await;
    Counting {
        name,
        port,
        admin_port,
        fewer_writes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outcome_makes_the_same_exact_host_calls_at_1_1k_and_100k_keys() {
    let mut stack = Stack::start_without_envoy().await;
    let plan = stack
        .admin(
            Method::POST,
            "/v1/plans",
            // Per Envoy, so that the two counting Envoys need not share it
            // out first; a fleet-wide limit's share rides on the version
            // entry and costs no call of its own.
            Some(json!({"name": "roomy", "limits": [
                {"name": "per-second", "max": 1_000_000, "window_seconds": 1, "per_envoy": true}
            ]})),
        )
        .await;
    assert_eq!(plan.status, StatusCode::CREATED, "{:?}", plan.body);
    let plan_id = plan.body["id"].as_str().expect("plan id").to_owned();
    let tenant = stack
        .admin(
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": "loaded", "plan_id": plan_id})),
        )
        .await;
    let tenant = tenant.body["id"].as_str().expect("tenant id").to_owned();
    let open = stack
        .admin(
            Method::PUT,
            "/v1/anonymous-access",
            Some(json!({"routes": [{"path_prefix": "/open"}], "plan_id": plan_id})),
        )
        .await;
    assert_eq!(open.status, StatusCode::OK, "{:?}", open.body);
    let (disabled_id, disabled) = stack.new_key(&tenant).await;
    stack.deactivate(&disabled_id).await;
    let scarce = stack
        .tenant_on_plan(
            json!({"name": "per-hour", "max": 1, "window_seconds": 3600, "per_envoy": true}),
        )
        .await;
    let (_, spent) = stack.new_key(&scarce).await;

    let envoys = [
        counting_envoy(&mut stack, "counting-envoy", json!({}), 0).await,
        counting_envoy(
            &mut stack,
            "lean-envoy",
            json!({
                "rate_limit_headers": ["ietf"],
                "identity_headers": {"tenant_id": null, "plan": null}
            }),
            // Of an allowed request's 9 header writes: the three
            // X-RateLimit-*, x-tenant-id and x-plan.
            5,
        )
        .await,
    ];

    let mut loaded: Vec<String> = Vec::new();
    let mut unknown = (0..).map(|i: u64| {
        ApiKey::from_body(&format!("{i:0>32}"))
            .unwrap()
            .expose()
            .to_owned()
    });
    let mut seen = Vec::new();
    for scale in [1, 1_000, 100_000] {
        let more = issue_keys(&stack, &tenant, scale - loaded.len()).await;
        loaded.extend(more);
        for envoy in &envoys {
            until_applied(&stack, envoy.admin_port).await;
        }
        // Never issued: the same ones through both Envoys.
        let never: Vec<String> = unknown.by_ref().take(1 + N).collect();
        for envoy in &envoys {
            let (port, admin_port) = (envoy.port, envoy.admin_port);
            // The scarce key's one request is spent at the first scale;
            // after that it is refused. Sent before the reading, it leaves
            // the memo holding that key, its plan and the version, none of
            // which the others use.
            let _ = get(&stack, port, "/anything", Some(&spent)).await;
            let before = histogram(&stack, admin_port).await;

            // Allowed: the first key (its record and plan read), the same
            // key again, then keys not seen yet under that plan.
            send(&stack, port, "/anything", Some(&loaded[0]), 1 + N, 200).await;
            let cold = loaded.get(1..=N).unwrap_or_default();
            for key in cold {
                send(&stack, port, "/anything", Some(key), 1, 200).await;
            }
            // A key never issued (refused as invalid, like one that is not
            // a key at all), again, then others.
            send(&stack, port, "/anything", Some(&never[0]), 1 + N, 401).await;
            for other in &never[1..] {
                send(&stack, port, "/anything", Some(other), 1, 401).await;
            }
            send(&stack, port, "/anything", Some(&disabled), 1 + N, 401).await;
            send(&stack, port, "/anything", Some(&spent), N, 429).await;
            // No key: the first such request reads the anonymous access
            // (the route is not open), the next have it.
            send(&stack, port, "/anything", None, 1 + N, 401).await;
            send(&stack, port, "/open/x", None, 1 + N, 200).await;

            let counted = since(&before, &histogram(&stack, admin_port).await);
            seen.push((envoy, scale, cold.len() as u64, counted));
        }
    }

    // What each Envoy sends: the lean one no X-RateLimit-*, no tenant or
    // plan header, and a client's forged ones removed all the same.
    for envoy in &envoys {
        let answer = stack
            .client
            .get(format!("http://127.0.0.1:{}/anything", envoy.port))
            .header("x-api-key", &loaded[0])
            .header("x-tenant-id", "forged")
            .header("x-plan", "forged")
            .send()
            .await
            .expect("Envoy answers");
        let sent: Vec<&str> = ["ratelimit", "ratelimit-policy", "x-ratelimit-remaining"]
            .into_iter()
            .filter(|name| answer.headers().contains_key(*name))
            .collect();
        let upstream: Value = answer.json().await.expect("the upstream's echo");
        let seen = &upstream["headers"];
        let lean = envoy.fewer_writes > 0;
        if lean {
            assert_eq!(sent, ["ratelimit", "ratelimit-policy"], "{}", envoy.name);
            assert!(seen.get("x-tenant-id").is_none(), "{seen}");
            assert!(seen.get("x-plan").is_none(), "{seen}");
        } else {
            assert_eq!(
                sent,
                ["ratelimit", "ratelimit-policy", "x-ratelimit-remaining"],
                "{}",
                envoy.name
            );
            assert_eq!(seen["x-tenant-id"], tenant.as_str(), "{seen}");
            assert_eq!(seen["x-plan"], "roomy", "{seen}");
        }
        assert!(seen["x-api-key-id"].is_string(), "{seen}");
        assert!(seen.get("x-api-key").is_none(), "{seen}");

        // A refusal carries the chosen sets too; Retry-After always.
        let refused = stack
            .client
            .get(format!("http://127.0.0.1:{}/anything", envoy.port))
            .header("x-api-key", &spent)
            .send()
            .await
            .expect("Envoy answers");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = refused.headers();
        assert!(
            h.contains_key("retry-after") && h.contains_key("ratelimit"),
            "{h:?}"
        );
        assert_eq!(h.contains_key("x-ratelimit-reset"), !lean, "{h:?}");
    }

    // The exact numbers, each request's calls by outcome (see the
    // module's header for first, warm and cold).
    for (envoy, scale, cold_keys, counted) in &seen {
        let fewer = envoy.fewer_writes;
        let expect = |first: Option<u64>, warm: u64, cold: Option<(u64, u64)>| {
            let mut out = BTreeMap::new();
            if let Some(first) = first {
                *out.entry(first).or_default() += 1;
            }
            *out.entry(warm).or_default() += N as u64;
            if let Some((calls, requests)) = cold {
                if requests > 0 {
                    *out.entry(calls).or_default() += requests;
                }
            }
            out
        };
        let cases: [(&str, BTreeMap<u64, u64>); 6] = [
            (
                "allowed",
                expect(
                    Some(ALLOWED_FIRST - fewer),
                    ALLOWED - fewer,
                    Some((ALLOWED_COLD - fewer, *cold_keys)),
                ),
            ),
            (
                "invalid_api_key",
                expect(
                    Some(NEVER_ISSUED_FIRST),
                    NEVER_ISSUED,
                    Some((NEVER_ISSUED_FIRST, N as u64)),
                ),
            ),
            (
                "disabled_api_key",
                expect(Some(DISABLED_FIRST), DISABLED, None),
            ),
            ("rate_limited", expect(None, RATE_LIMITED, None)),
            (
                "missing_api_key",
                expect(Some(MISSING_FIRST), MISSING, None),
            ),
            // The anonymous access was read by the first keyless request;
            // an anonymous request has no tenant id to leave out.
            (
                "anonymous",
                expect(
                    Some(ANONYMOUS - fewer.saturating_sub(1)),
                    ANONYMOUS - fewer.saturating_sub(1),
                    None,
                ),
            ),
        ];
        for (outcome, expected) in cases {
            assert_eq!(
                totals(counted, outcome),
                expected,
                "{}, {outcome} at {scale} keys: requests by host calls made; by kind: {:#?}",
                envoy.name,
                counted.get(outcome)
            );
        }
    }
}

// Every request: its headers read in one call, the clock, the config
// version. An allowed one then reads its bucket and writes it back with
// CAS, and writes 9 headers: the key removed, `x-tenant-id`,
// `x-api-key-id` and `x-plan` on the request, `RateLimit-Policy`,
// `RateLimit` and the three `X-RateLimit-*` on the response. A refusal is
// one local reply; a rate-limited key reads its bucket first. The memo's
// misses add one read each: a key's record or its absence, the plan, the
// anonymous access.
const ALLOWED: u64 = 14;
/// A key not seen yet under a plan that was: its record read.
const ALLOWED_COLD: u64 = 15;
/// The first key under its plan: the record and the plan read.
const ALLOWED_FIRST: u64 = 16;
const NEVER_ISSUED: u64 = 4;
const NEVER_ISSUED_FIRST: u64 = 5;
const DISABLED: u64 = 4;
const DISABLED_FIRST: u64 = 5;
const RATE_LIMITED: u64 = 5;
const MISSING: u64 = 4;
const MISSING_FIRST: u64 = 5;
/// Its client address read (its bucket is per address), its bucket read
/// and written, and 6 headers written: `x-plan` and the five rate-limit
/// headers (no key to remove, no tenant or key id).
const ANONYMOUS: u64 = 12;
