//! Properties of the ledger for any sequence of requests: any costs, any
//! steps of the clock, any number of lost compare-and-swap races. However
//! they come, a key's and its tenant's limits never admit more than
//! `burst + rate · elapsed`, and the quota counts exactly what was
//! admitted: a refused request consumes nothing.

use proptest::prelude::*;

use super::*;
use crate::layout::{buckets_key, tenant_buckets_key, BucketEntry};
use crate::period::quota_period;
use crate::store::MemoryStore;
use crate::testing::{key, limit, plan, store, wire_key};
use crate::wire::{LimitScope, WireRouteCost};

/// 2026-11-23T00:00:00Z.
const T0: u64 = 1_795_392_000_000;

/// One request: its cost (0 to 2, by path), the milliseconds since the one
/// before, and the CAS races it loses on any entry and on its tenant's
/// entry alone (from 32 on, the tenant's write gives up after the key's
/// went through, and the key's must be given back).
#[derive(Debug, Clone)]
struct Step {
    cost: u64,
    after_ms: u64,
    lost_races: u32,
    lost_on_tenant: u32,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let races = || prop_oneof![3 => Just(0u32), 1 => 0..40u32];
    prop::collection::vec(
        (0..3u64, prop_oneof![0..5u64, 0..1_500u64], races(), races()).prop_map(
            |(cost, after_ms, lost_races, lost_on_tenant)| Step {
                cost,
                after_ms,
                lost_races,
                lost_on_tenant,
            },
        ),
        1..200,
    )
}

/// `max` per `window_s` with a burst of `burst`: at most this many units in
/// the `elapsed_ms` since a full bucket.
fn bound(max: u64, window_s: u64, burst: u64, elapsed_ms: u64) -> u64 {
    burst + max * elapsed_ms / (window_s * 1_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn limits_hold_and_refusals_consume_nothing(
        (max, window_s, extra) in (1..20u64, 1..5u64, 0..20u64),
        (tenant_max, tenant_burst) in (1..30u64, 0..10u64),
        steps in steps(),
    ) {
        let burst = max + extra;
        let mut key_limit = limit("key", max, window_s);
        key_limit.burst = Some(burst);
        let mut tenant_limit = limit("tenant", tenant_max, 1);
        tenant_limit.burst = Some(tenant_max + tenant_burst);
        tenant_limit.scope = LimitScope::Tenant;
        let mut p = plan("p", "P", vec![key_limit, tenant_limit]).with_quota(1_000_000);
        p.route_costs = (0..3)
            .map(|cost| WireRouteCost {
                methods: None,
                path_prefix: Some(format!("/cost{cost}")),
                cost,
            })
            .collect();
        let s: MemoryStore = store(vec![p], vec![wire_key(&key(0).hash(), "key_0", "t", "p")]);
        let k = key(0);
        let tenant_entry = tenant_buckets_key("t");
        let mut now = T0;
        let mut admitted = 0u64;
        for step in &steps {
            now += step.after_ms;
            s.inject_cas_conflicts(step.lost_races);
            s.inject_cas_conflicts_on(&tenant_entry, step.lost_on_tenant);
            let path = format!("/cost{}", step.cost);
            let facts = RequestFacts {
                api_key: Some(k.expose()),
                method: "GET",
                path: &path,
                client_ip: ClientIp::Unknown,
            };
            match decide(&facts, &s, now) {
                Decision::Allow(a) => {
                    prop_assert_eq!(a.cost, step.cost);
                    admitted += a.cost;
                }
                Decision::Deny(d) => prop_assert_eq!(d.reason, DenyReason::RateLimited),
            }
            s.inject_cas_conflicts(0);
            s.inject_cas_conflicts_on(&tenant_entry, 0);
            let elapsed = now - T0;
            prop_assert!(admitted <= bound(max, window_s, burst, elapsed));
            prop_assert!(admitted <= bound(tenant_max, 1, tenant_max + tenant_burst, elapsed));
            let (bytes, _) = s.get(&buckets_key(&k.hash())).unwrap_or_default();
            let period = quota_period(now, None).start_ms;
            let counted = BucketEntry::decode(&bytes).quota.map_or(0, |c| c.used_in(period));
            prop_assert_eq!(counted, admitted);
        }
    }
}
