//! Metering across ledgers: monthly quotas and their periods, route costs,
//! tenant-scoped and anonymous buckets, and the refunds that keep a refused
//! request from consuming anywhere.

use super::*;
use crate::layout::{applied_version, apply_standings, apply_sync};
use crate::period::quota_period;
use crate::store::{MemoryStore, SetError};
use crate::testing::{key, limit, plan, store, sync, wire_key};
use crate::wire::{QuotaStanding, WireAnonymous, WireKey, WireRouteCost, WireScope};

/// 2026-11-23T00:00:00Z.
const T0: u64 = 1_795_392_000_000;

/// Key `n` as `key_<n>` of `tenant` on `plan`.
fn numbered_key(n: u8, tenant: &str, plan: &str) -> WireKey {
    wire_key(&key(n).hash(), &format!("key_{n}"), tenant, plan)
}

fn req(store: &MemoryStore, n: u8, method: &str, path: &str, now: u64) -> Decision {
    let k = key(n);
    let facts = RequestFacts {
        api_key: Some(k.expose()),
        method,
        path,
        client_ip: ClientIp::Unknown,
    };
    decide(&facts, store, now)
}

fn get(store: &MemoryStore, n: u8, now: u64) -> Decision {
    req(store, n, "GET", "/", now)
}

fn anon(store: &MemoryStore, ip: &str, path: &str, now: u64) -> Decision {
    let facts = RequestFacts {
        api_key: None,
        method: "GET",
        path,
        client_ip: ClientIp::Known(ip.parse().unwrap()),
    };
    decide(&facts, store, now)
}

fn allowed(d: &Decision) -> &Allowed {
    match d {
        Decision::Allow(a) => a,
        Decision::Deny(d) => panic!("expected allow, got {d:?}"),
    }
}

fn denied(d: &Decision) -> &Denied {
    match d {
        Decision::Deny(d) => d,
        Decision::Allow(a) => panic!("expected deny, got {a:?}"),
    }
}

fn policy<'a>(policies: &'a [PolicyStatus], name: &str) -> &'a PolicyStatus {
    policies.iter().find(|p| &*p.name == name).unwrap()
}

#[test]
fn quota_admits_exactly_the_quota_then_429_until_the_period_ends() {
    let s = store(
        vec![plan("p", "P", vec![]).with_quota(3)],
        vec![numbered_key(0, "t", "p")],
    );
    for left in [2, 1, 0] {
        let a = get(&s, 0, T0 + 5);
        assert_eq!(policy(&allowed(&a).policies, "monthly").remaining, left);
    }
    let d = get(&s, 0, T0 + 5);
    let d = denied(&d);
    assert_eq!(d.reason, DenyReason::QuotaExceeded);
    assert_eq!(d.reason.code(), "quota_exceeded");
    assert_eq!(d.reason.status(), 429);
    assert_eq!(d.violated, vec!["monthly".to_owned()]);
    let period = quota_period(T0, None);
    let until_reset = ceil_seconds(period.end_ms - (T0 + 5));
    assert_eq!(d.retry_after, Some(until_reset));
    assert_eq!(
        d.detail,
        format!("Monthly quota used up; it resets in {until_reset} s (policies monthly).")
    );
    let monthly = policy(&d.policies, "monthly");
    assert_eq!((monthly.quota, monthly.remaining), (3, 0));
    assert_eq!(monthly.window_seconds, 30 * 86_400);
    // The last millisecond of the period still refuses; the first of the next admits.
    assert!(matches!(get(&s, 0, period.end_ms - 1), Decision::Deny(_)));
    let next = get(&s, 0, period.end_ms);
    assert_eq!(policy(&allowed(&next).policies, "monthly").remaining, 2);
}

#[test]
fn a_request_refused_by_one_window_consumes_from_no_window_and_not_the_quota() {
    let s = store(
        vec![plan(
            "p",
            "P",
            vec![limit("per-second", 1, 1), limit("per-hour", 100, 3600)],
        )
        .with_quota(50)],
        vec![numbered_key(0, "t", "p")],
    );
    allowed(&get(&s, 0, T0));
    for _ in 0..10 {
        let d = get(&s, 0, T0 + 10);
        assert_eq!(denied(&d).reason, DenyReason::RateLimited);
        assert_eq!(denied(&d).violated, vec!["per-second".to_owned()]);
    }
    let a = get(&s, 0, T0 + 1000);
    let p = &allowed(&a).policies;
    assert_eq!(policy(p, "per-hour").remaining, 98);
    assert_eq!(policy(p, "monthly").remaining, 48);
}

#[test]
fn route_costs_are_consumed_from_buckets_and_quota_and_free_routes_pass_when_used_up() {
    let mut p = plan("p", "P", vec![limit("per-minute", 10, 60)]).with_quota(6);
    p.route_costs = vec![
        WireRouteCost {
            methods: Some(vec!["POST".into()]),
            path_prefix: Some("/v1/parse".into()),
            cost: 3,
        },
        WireRouteCost {
            methods: Some(vec!["GET".into()]),
            path_prefix: None,
            cost: 0,
        },
    ];
    let s = store(vec![p], vec![numbered_key(0, "t", "p")]);
    let a = req(&s, 0, "POST", "/v1/parse", T0);
    let a = allowed(&a);
    assert_eq!(a.cost, 3);
    assert_eq!(policy(&a.policies, "per-minute").remaining, 7);
    assert_eq!(policy(&a.policies, "monthly").remaining, 3);
    // Unmatched routes cost 1.
    let a = req(&s, 0, "DELETE", "/v1/x", T0);
    assert_eq!(allowed(&a).cost, 1);
    // 2 left: a cost-3 request does not fit, and takes nothing.
    let d = req(&s, 0, "POST", "/v1/parse/doc", T0);
    assert_eq!(denied(&d).reason, DenyReason::QuotaExceeded);
    let a = req(&s, 0, "PUT", "/", T0);
    assert_eq!(policy(&allowed(&a).policies, "monthly").remaining, 1);
    let a = req(&s, 0, "PUT", "/", T0);
    assert_eq!(policy(&allowed(&a).policies, "monthly").remaining, 0);
    // Free routes stay open with the quota used up.
    let a = req(&s, 0, "GET", "/v1/parse", T0);
    assert_eq!(allowed(&a).cost, 0);
}

#[test]
fn other_envoys_use_counts_only_in_its_own_period() {
    let s = store(
        vec![plan("p", "P", vec![]).with_quota(10)],
        vec![numbered_key(0, "t", "p")],
    );
    let period = quota_period(T0, None);
    let standing = |start, used| QuotaStanding {
        key_hash: key(0).hash().to_hex(),
        period_start_ms: start,
        others_used: used,
    };
    apply_standings(&s, &[standing(period.start_ms, 8)]).unwrap();
    let a = get(&s, 0, T0);
    assert_eq!(policy(&allowed(&a).policies, "monthly").remaining, 1);
    allowed(&get(&s, 0, T0));
    assert_eq!(denied(&get(&s, 0, T0)).reason, DenyReason::QuotaExceeded);
    // A standing of last period says nothing about this one.
    apply_standings(&s, &[standing(period.start_ms - 1, 100)]).unwrap();
    let a = get(&s, 0, T0);
    assert_eq!(policy(&allowed(&a).policies, "monthly").remaining, 7);
    // A standing shares the key's bucket entry: it races requests by CAS
    // and keeps the key's own count.
    s.inject_cas_conflicts(3);
    assert_eq!(apply_standings(&s, &[standing(period.start_ms, 5)]), Ok(1));
    let a = get(&s, 0, T0);
    assert_eq!(policy(&allowed(&a).policies, "monthly").remaining, 1);
    s.inject_cas_conflicts(u32::MAX);
    assert!(apply_standings(&s, &[standing(period.start_ms, 0)]).is_err());
    s.inject_cas_conflicts(0);
    // Unreadable hashes are skipped.
    let mut bad = standing(period.start_ms, 1);
    bad.key_hash = "zz".into();
    assert_eq!(apply_standings(&s, &[bad]), Ok(0));
}

#[test]
fn a_plan_upgrade_mid_period_keeps_the_use_and_applies_the_new_quota_at_once() {
    let s = store(
        vec![
            plan("free", "FREE", vec![]).with_quota(2),
            plan("pro", "PRO", vec![]).with_quota(5),
        ],
        vec![numbered_key(0, "t", "free")],
    );
    allowed(&get(&s, 0, T0));
    allowed(&get(&s, 0, T0));
    assert_eq!(denied(&get(&s, 0, T0)).reason, DenyReason::QuotaExceeded);
    apply_sync(&s, &sync(2, vec![], vec![numbered_key(0, "t", "pro")])).unwrap();
    let a = get(&s, 0, T0);
    let m = policy(&allowed(&a).policies, "monthly").clone();
    assert_eq!((m.quota, m.remaining), (5, 2));
    // A key override raises it further, again at once.
    let mut raised = numbered_key(0, "t", "pro");
    raised.monthly_quota = Some(100);
    apply_sync(&s, &sync(3, vec![], vec![raised])).unwrap();
    let a = get(&s, 0, T0);
    assert_eq!(policy(&allowed(&a).policies, "monthly").remaining, 96);
}

#[test]
fn a_billing_anchor_moves_the_period_boundary() {
    let mut k = numbered_key(0, "t", "p");
    k.billing_anchor_day = Some(25);
    let s = store(vec![plan("p", "P", vec![]).with_quota(1)], vec![k]);
    // T0 is 23 Nov: the period runs 25 Oct .. 25 Nov.
    allowed(&get(&s, 0, T0));
    let d = get(&s, 0, T0);
    assert_eq!(denied(&d).retry_after, Some(2 * 86_400));
    allowed(&get(&s, 0, T0 + 2 * 86_400_000));
}

#[test]
fn tenant_scoped_limits_are_shared_by_the_tenants_keys_only() {
    let s = store(
        vec![plan(
            "p",
            "P",
            vec![
                limit("per-key", 10, 3600),
                limit("per-tenant", 3, 60).per_tenant(),
            ],
        )],
        vec![
            numbered_key(0, "t1", "p"),
            numbered_key(1, "t1", "p"),
            numbered_key(2, "t2", "p"),
        ],
    );
    allowed(&get(&s, 0, T0));
    allowed(&get(&s, 1, T0));
    let a = get(&s, 0, T0);
    let p = &allowed(&a).policies;
    assert_eq!(policy(p, "per-tenant").remaining, 0);
    assert_eq!(policy(p, "per-key").remaining, 8);
    let d = get(&s, 1, T0);
    assert_eq!(denied(&d).violated, vec!["per-tenant".to_owned()]);
    // The refusal took nothing from key 1's own bucket.
    let a = get(&s, 1, T0 + 20_000);
    assert_eq!(policy(&allowed(&a).policies, "per-key").remaining, 8);
    // Another tenant has its own bucket.
    allowed(&get(&s, 2, T0));
}

#[test]
fn a_lost_race_on_the_tenant_bucket_refunds_the_key_bucket() {
    let s = store(
        vec![plan(
            "p",
            "P",
            vec![
                limit("per-key", 5, 3600),
                limit("per-tenant", 1, 3600).per_tenant(),
            ],
        )
        .with_quota(9)],
        vec![numbered_key(0, "t1", "p"), numbered_key(1, "t1", "p")],
    );
    // Key 0's request is judged, its key ledger written; then key 1 takes
    // the last tenant token before key 0 writes the tenant ledger. That
    // ledger is absent until then, so key 0's write is a create that loses.
    let k1 = key(1);
    let ledgers_for_k1 = || {
        assert!(s.get(&crate::layout::tenant_buckets_key("t1")).is_none());
        let facts = RequestFacts {
            api_key: Some(k1.expose()),
            method: "GET",
            path: "/",
            client_ip: ClientIp::Unknown,
        };
        decide(&facts, &s, T0)
    };
    let racing = RacingStore {
        inner: &s,
        before_tenant_write: core::cell::Cell::new(Some(Box::new(move || {
            allowed(&ledgers_for_k1());
        }))),
    };
    let k0 = key(0);
    let facts = RequestFacts {
        api_key: Some(k0.expose()),
        method: "GET",
        path: "/",
        client_ip: ClientIp::Unknown,
    };
    let d = decide(&facts, &racing, T0);
    assert_eq!(denied(&d).violated, vec!["per-tenant".to_owned()]);
    // Key 0 got its token and its quota unit back.
    let d = get(&s, 0, T0);
    let p = &denied(&d).policies;
    assert_eq!(policy(p, "per-key").remaining, 5);
    assert_eq!(policy(p, "monthly").remaining, 9);
}

/// Runs a hook just before the first write to a tenant ledger.
struct RacingStore<'a> {
    inner: &'a MemoryStore,
    #[allow(clippy::type_complexity)]
    before_tenant_write: core::cell::Cell<Option<Box<dyn FnOnce() + 'a>>>,
}

impl crate::store::SharedStore for RacingStore<'_> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), SetError> {
        if key.starts_with("tg3/bt/") {
            if let Some(hook) = self.before_tenant_write.take() {
                hook();
            }
        }
        self.inner.set(key, value, cas)
    }
}

fn with_anonymous(store: &MemoryStore, routes: Vec<WireScope>) {
    let mut s = sync(
        2,
        vec![plan("demo", "DEMO", vec![limit("per-minute", 2, 60)])],
        vec![],
    );
    s.anonymous = Some(WireAnonymous {
        routes,
        plan_id: Some("demo".into()),
    });
    apply_sync(store, &s).unwrap();
}

#[test]
fn anonymous_routes_admit_without_a_key_with_limits_per_client_address() {
    let s = store(vec![], vec![]);
    assert_eq!(
        denied(&anon(&s, "10.0.0.1", "/demo", T0)).reason,
        DenyReason::MissingApiKey
    );
    with_anonymous(
        &s,
        vec![WireScope {
            methods: Some(vec!["GET".into()]),
            path_prefix: Some("/demo".into()),
        }],
    );
    let a = anon(&s, "10.0.0.1", "/demo/x", T0);
    let a = allowed(&a);
    assert_eq!((a.tenant_id.as_deref(), a.key_id.as_deref()), (None, None));
    assert_eq!(&*a.plan_name, "DEMO");
    allowed(&anon(&s, "10.0.0.1", "/demo", T0));
    let d = anon(&s, "10.0.0.1", "/demo", T0);
    assert_eq!(denied(&d).reason, DenyReason::RateLimited);
    assert_eq!(denied(&d).key_id, None);
    // Another client has its own budget; other routes still need a key.
    allowed(&anon(&s, "10.0.0.2", "/demo", T0));
    assert_eq!(
        denied(&anon(&s, "10.0.0.2", "/private", T0)).reason,
        DenyReason::MissingApiKey
    );
    // One IPv6 /64 is one client.
    allowed(&anon(&s, "2001:db8::1", "/demo", T0));
    allowed(&anon(&s, "2001:db8::2", "/demo", T0));
    assert!(matches!(
        anon(&s, "2001:db8::3", "/demo", T0),
        Decision::Deny(_)
    ));
    // Turning it off closes the routes.
    let mut off = sync(3, vec![], vec![]);
    off.anonymous = Some(WireAnonymous::default());
    apply_sync(&s, &off).unwrap();
    assert_eq!(
        denied(&anon(&s, "10.0.0.9", "/demo", T0)).reason,
        DenyReason::MissingApiKey
    );
}

#[test]
fn an_anonymous_slot_left_idle_is_taken_over_and_a_busy_one_is_shared() {
    let s = store(vec![], vec![]);
    with_anonymous(&s, vec![WireScope::default()]);
    // Find two addresses that hash to the same slot.
    let slot = |ip: &str| anonymous_buckets_key(client_identity(ip.parse().unwrap()));
    let first = "10.0.0.1";
    let other = (2..u32::MAX)
        .map(|n| std::net::Ipv4Addr::from(0x0a00_0000 + n).to_string())
        .find(|ip| slot(ip) == slot(first))
        .unwrap();
    allowed(&anon(&s, first, "/", T0));
    allowed(&anon(&s, first, "/", T0));
    // Busy: the colliding client shares the exhausted bucket.
    assert!(matches!(anon(&s, &other, "/", T0), Decision::Deny(_)));
    // Idle (refilled): it starts afresh as the new owner.
    allowed(&anon(&s, &other, "/", T0 + 60_000));
    allowed(&anon(&s, &other, "/", T0 + 60_000));
    assert!(matches!(
        anon(&s, &other, "/", T0 + 60_000),
        Decision::Deny(_)
    ));
}

#[test]
fn bad_metering_config_is_refused_whole() {
    let s = store(vec![], vec![]);
    let mut bad = sync(2, vec![], vec![]);
    bad.anonymous = Some(WireAnonymous {
        routes: vec![WireScope::default()],
        plan_id: None,
    });
    assert!(apply_sync(&s, &bad).is_err());
    let mut p = plan("p", "P", vec![limit("monthly", 1, 1)]);
    assert!(apply_sync(&s, &sync(2, vec![p.clone()], vec![])).is_err());
    p.limits.clear();
    p.route_costs = vec![WireRouteCost {
        methods: Some(vec!["G ET".into()]),
        path_prefix: None,
        cost: 1,
    }];
    assert!(apply_sync(&s, &sync(2, vec![p], vec![])).is_err());
    let mut k = numbered_key(0, "t", "p");
    k.billing_anchor_day = Some(32);
    assert!(apply_sync(&s, &sync(2, vec![], vec![k])).is_err());
    assert_eq!(applied_version(&s), Some(1));
}
