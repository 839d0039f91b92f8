//! The pipeline's checks, in the order `decide` runs them, on a store
//! filled by one sync answer.

use super::*;
use crate::key::ApiKey;
use crate::store::MemoryStore;
use crate::testing::{key, limit, plan, store, wire_key};
use crate::wire::{WireKey, WireLimit};

const T0: u64 = 1_800_000_000_000;

fn store_with(limits: Vec<WireLimit>, active: bool) -> (MemoryStore, ApiKey) {
    store_with_key(limits, |k| k.active = active)
}

/// Key 0 as `key_1` of `tnt_1`, edited, on `plan_1` ("Pro") with `limits`.
fn store_with_key(
    limits: Vec<WireLimit>,
    edit: impl FnOnce(&mut WireKey),
) -> (MemoryStore, ApiKey) {
    let k = key(0);
    let mut wire_key = wire_key(&k.hash(), "key_1", "tnt_1", "plan_1");
    edit(&mut wire_key);
    (
        store(vec![plan("plan_1", "Pro", limits)], vec![wire_key]),
        k,
    )
}

fn run(store: &MemoryStore, key: &str, now: u64) -> Decision {
    run_as(store, key, "GET", "/", None, now)
}

fn run_as(
    store: &MemoryStore,
    key: &str,
    method: &str,
    path: &str,
    ip: Option<&str>,
    now: u64,
) -> Decision {
    let facts = RequestFacts {
        api_key: Some(key),
        method,
        path,
        client_ip: ip.map(|ip| ip.parse().unwrap()).into(),
    };
    decide(&facts, store, now)
}

fn reason(d: &Decision) -> Option<DenyReason> {
    match d {
        Decision::Allow(_) => None,
        Decision::Deny(d) => Some(d.reason),
    }
}

#[test]
fn key_comes_from_x_api_key_then_bearer() {
    assert_eq!(presented_key(Some("a"), Some("Bearer b")), Some("a"));
    assert_eq!(presented_key(None, Some("Bearer b")), Some("b"));
    assert_eq!(presented_key(None, Some("bearer  b ")), Some("b"));
    assert_eq!(presented_key(Some(""), Some("Basic b")), None);
    assert_eq!(presented_key(None, Some("Bearer")), None);
    assert_eq!(presented_key(None, None), None);
}

#[test]
fn missing_malformed_and_unconfigured() {
    let empty = MemoryStore::new();
    assert_eq!(
        reason(&decide(&RequestFacts::default(), &empty, T0)),
        Some(DenyReason::MissingApiKey)
    );
    assert_eq!(
        reason(&run(&empty, "tg_nope", T0)),
        Some(DenyReason::InvalidApiKey)
    );
    // Malformed keys are refused before the config check.
    assert_eq!(
        reason(&run(&empty, key(1).expose(), T0)),
        Some(DenyReason::ConfigUnavailable)
    );
    let (store, _) = store_with(vec![], true);
    assert_eq!(
        reason(&run(&store, key(1).expose(), T0)),
        Some(DenyReason::InvalidApiKey)
    );
}

#[test]
fn disabled_key_is_refused() {
    let (store, k) = store_with(vec![limit("s", 1, 1)], false);
    assert_eq!(
        reason(&run(&store, k.expose(), T0)),
        Some(DenyReason::DisabledApiKey)
    );
}

#[test]
fn allowed_carries_identity_and_policies() {
    let (store, k) = store_with(vec![limit("per-minute", 60, 60).with_burst(3)], true);
    let Decision::Allow(a) = run(&store, k.expose(), T0) else {
        panic!("expected allow")
    };
    assert_eq!(
        (
            a.tenant_id.as_deref(),
            a.key_id.as_deref(),
            Some(&*a.plan_name)
        ),
        (Some("tnt_1"), Some("key_1"), Some("Pro"))
    );
    assert_eq!(
        a.policies,
        // Burst 3 at 1 per second: 3 held, empty to full in 3 s.
        vec![PolicyStatus {
            name: "per-minute".into(),
            quota: 3,
            window_seconds: 3,
            remaining: 2,
            reset_seconds: 1,
        }]
    );
}

#[test]
fn burst_then_429_with_retry_after_then_refill() {
    let (store, k) = store_with(vec![limit("per-second", 2, 1).with_burst(2)], true);
    assert!(reason(&run(&store, k.expose(), T0)).is_none());
    assert!(reason(&run(&store, k.expose(), T0)).is_none());
    let Decision::Deny(d) = run(&store, k.expose(), T0) else {
        panic!("expected deny")
    };
    assert_eq!(d.reason, DenyReason::RateLimited);
    assert_eq!(d.retry_after, Some(1));
    assert_eq!(d.violated, vec!["per-second".to_owned()]);
    assert_eq!(d.detail, "Rate limit per-second exceeded; retry in 1 s.");
    assert_eq!(d.policies[0].remaining, 0);
    assert_eq!(
        reason(&run(&store, k.expose(), T0 + 499)),
        Some(DenyReason::RateLimited)
    );
    assert!(reason(&run(&store, k.expose(), T0 + 500)).is_none());
}

#[test]
fn a_refused_request_consumes_from_no_window() {
    let (store, k) = store_with(
        vec![limit("per-second", 1, 1), limit("per-hour", 100, 3600)],
        true,
    );
    let Decision::Allow(first) = run(&store, k.expose(), T0) else {
        panic!()
    };
    assert_eq!(first.policies[1].remaining, 99);
    for _ in 0..5 {
        assert_eq!(
            reason(&run(&store, k.expose(), T0)),
            Some(DenyReason::RateLimited)
        );
    }
    let Decision::Allow(next) = run(&store, k.expose(), T0 + 1000) else {
        panic!()
    };
    assert_eq!(next.policies[1].remaining, 98);
}

#[test]
fn retry_after_comes_from_the_denying_policy() {
    let (store, k) = store_with(
        vec![limit("per-second", 10, 1), limit("per-minute", 1, 60)],
        true,
    );
    assert!(reason(&run(&store, k.expose(), T0)).is_none());
    let Decision::Deny(d) = run(&store, k.expose(), T0) else {
        panic!()
    };
    assert_eq!(d.violated, vec!["per-minute".to_owned()]);
    assert_eq!(d.retry_after, Some(60));
}

#[test]
fn each_refusing_policy_says_its_own_wait_and_retry_after_the_longest() {
    let (store, k) = store_with(
        vec![limit("per-second", 1, 1), limit("per-minute", 1, 60)],
        true,
    );
    assert!(reason(&run(&store, k.expose(), T0)).is_none());
    let Decision::Deny(d) = run(&store, k.expose(), T0 + 400) else {
        panic!()
    };
    assert_eq!(
        d.violated,
        vec!["per-second".to_owned(), "per-minute".to_owned()]
    );
    let t: Vec<_> = d.policies.iter().map(|p| p.reset_seconds).collect();
    // Not 60 for both: a per-second limit's `t` stays within its `w` of 1.
    assert_eq!(t, [1, 60]);
    assert_eq!(d.retry_after, Some(60));
    assert_eq!(
        d.detail,
        "Rate limit per-second, per-minute exceeded; retry in 60 s."
    );
    let reply = crate::response::local_reply(&d);
    let headers: Vec<_> = reply.headers().collect();
    assert!(headers.contains(&("retry-after", "60")));
    assert!(headers.contains(&(
        "ratelimit",
        "\"per-second\";r=0;t=1, \"per-minute\";r=0;t=60"
    )));
    assert!(headers.contains(&("x-ratelimit-reset", "60")));
    assert!(reply.body.contains("\"retry_after\":60}"));
}

#[test]
fn cas_conflicts_are_retried_and_never_double_count() {
    let (store, k) = store_with(vec![limit("s", 1, 3600).with_burst(3)], true);
    store.inject_cas_conflicts(MAX_CAS_ATTEMPTS - 1);
    let Decision::Allow(a) = run(&store, k.expose(), T0) else {
        panic!()
    };
    assert_eq!(a.policies[0].remaining, 2);
    store.inject_cas_conflicts(MAX_CAS_ATTEMPTS);
    let Decision::Deny(d) = run(&store, k.expose(), T0) else {
        panic!()
    };
    assert_eq!(d.retry_after, Some(1));
    let Decision::Allow(a) = run(&store, k.expose(), T0) else {
        panic!()
    };
    assert_eq!(a.policies[0].remaining, 1);
}

#[test]
fn expiry_is_enforced_at_the_exact_millisecond() {
    let (store, k) = store_with_key(vec![], |w| w.expires_at_ms = Some(T0 + 1000));
    assert!(reason(&run(&store, k.expose(), T0 + 999)).is_none());
    assert_eq!(
        reason(&run(&store, k.expose(), T0 + 1000)),
        Some(DenyReason::ExpiredApiKey)
    );
    let Decision::Deny(d) = run(&store, k.expose(), T0 + 1000) else {
        panic!()
    };
    assert_eq!(d.reason.status(), 401);
    assert_eq!(d.reason.code(), "expired_api_key");
}

#[test]
fn scopes_and_cidrs_answer_403() {
    let (store, k) = store_with_key(vec![limit("s", 100, 1)], |w| {
        w.scopes = Some(vec![crate::wire::WireScope {
            methods: Some(vec!["GET".into()]),
            path_prefix: Some("/read".into()),
        }]);
        w.allowed_cidrs = Some(vec!["10.0.0.0/8".into(), "2001:db8::/32".into()]);
    });
    let k = k.expose();
    let ok = |m, p, ip| reason(&run_as(&store, k, m, p, ip, T0));
    assert_eq!(ok("GET", "/read/x", Some("10.1.2.3")), None);
    assert_eq!(ok("GET", "/read", Some("2001:db8::7")), None);
    assert_eq!(
        ok("POST", "/read", Some("10.1.2.3")),
        Some(DenyReason::Forbidden)
    );
    assert_eq!(
        ok("GET", "/write", Some("10.1.2.3")),
        Some(DenyReason::Forbidden)
    );
    assert_eq!(
        ok("GET", "/read", Some("192.168.0.1")),
        Some(DenyReason::Forbidden)
    );
    assert_eq!(ok("GET", "/read", None), Some(DenyReason::Forbidden));
    assert_eq!(DenyReason::Forbidden.status(), 403);
}

#[test]
fn key_overrides_change_the_enforced_limits() {
    let (store, k) = store_with_key(vec![limit("per-hour", 1, 3600).with_burst(1)], |w| {
        w.limits = Some(vec![limit("per-hour", 1, 3600).with_burst(2)]);
    });
    assert!(reason(&run(&store, k.expose(), T0)).is_none());
    assert!(reason(&run(&store, k.expose(), T0)).is_none());
    assert_eq!(
        reason(&run(&store, k.expose(), T0)),
        Some(DenyReason::RateLimited)
    );
}

#[test]
fn a_plan_without_limits_admits_without_headers() {
    let (store, k) = store_with(vec![], true);
    let Decision::Allow(a) = run(&store, k.expose(), T0) else {
        panic!()
    };
    assert!(a.policies.is_empty());
}

#[test]
fn the_staleness_budget_ends_exactly_at_its_edge() {
    // Last successful sync at t = 1 000 000 ms, a 30 s budget.
    let synced = Some(1_000_000);
    assert!(!is_stale(synced, 30_000, 1_000_000));
    assert!(!is_stale(synced, 30_000, 1_029_999));
    assert!(is_stale(synced, 30_000, 1_030_000));
    assert!(is_stale(synced, 30_000, u64::MAX));
    // A clock that went back, or a sync time never recorded: not stale.
    assert!(!is_stale(synced, 30_000, 0));
    assert!(!is_stale(None, 30_000, u64::MAX));

    let denied = stale_refusal(30_000);
    assert_eq!(denied.reason, DenyReason::ConfigStale);
    assert_eq!(
        (denied.reason.status(), denied.reason.code()),
        (503, "config_stale")
    );
    assert_eq!(denied.retry_after, Some(STALE_RETRY_AFTER_SECS));
    assert!(denied.detail.contains("30 s"), "{}", denied.detail);
    let reply = crate::response::local_reply(&denied);
    assert!(reply.headers().any(|(n, v)| n == "retry-after" && v == "5"));
    assert!(reply.body.contains("\"code\":\"config_stale\""));
}
