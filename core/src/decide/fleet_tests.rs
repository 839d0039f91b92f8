//! Fleet-wide limits in the verdict: a key's limits metered at this
//! Envoy's share, per-Envoy limits whole, and the share's fallbacks.

use super::*;
use crate::fleet::FULL_SHARE;
use crate::key::ApiKey;
use crate::layout::{apply_leases, apply_sync, buckets_key};
use crate::store::MemoryStore;
use crate::testing::{key, limit, plan, sync, wire_key};
use crate::wire::{FleetLeases, ShareGrant, WireLimit};

const T0: u64 = 1_800_000_000_000;
const HALF: u64 = FULL_SHARE as u64 / 2;

/// Key 0 on a plan with `limits`, applied but with no fleet terms yet.
fn unleased(limits: Vec<WireLimit>) -> (MemoryStore, ApiKey) {
    let k = key(0);
    let store = MemoryStore::new();
    let keys = vec![wire_key(&k.hash(), "key_1", "tnt_1", "plan_1")];
    apply_sync(&store, &sync(1, vec![plan("plan_1", "Pro", limits)], keys)).unwrap();
    (store, k)
}

/// Leases as a receipt carries them: `default_share`, and `key_share` for key 0.
fn leases(seq: u64, default_share: u64, key_share: Option<u64>) -> FleetLeases {
    FleetLeases {
        generation: 9,
        seq,
        valid_ms: 10_000,
        default_share,
        grants: key_share
            .map(|share| ShareGrant {
                key_hash: Some(key(0).hash().to_hex()),
                tenant_id: None,
                share,
            })
            .into_iter()
            .collect(),
        slices: Vec::new(),
    }
}

fn run(store: &MemoryStore, k: &ApiKey, now: u64) -> Decision {
    let facts = RequestFacts {
        api_key: Some(k.expose()),
        method: "GET",
        path: "/",
        ..Default::default()
    };
    decide(&facts, store, now)
}

/// How many of `n` requests at `now` are admitted.
fn admitted(store: &MemoryStore, k: &ApiKey, n: usize, now: u64) -> usize {
    (0..n)
        .filter(|_| matches!(run(store, k, now), Decision::Allow(_)))
        .count()
}

#[test]
fn before_any_terms_a_fleet_wide_limit_admits_nothing_and_says_retry_in_a_second() {
    let (store, k) = unleased(vec![limit("per-second", 10, 1)]);
    match run(&store, &k, T0) {
        Decision::Deny(d) => {
            assert_eq!(d.reason, DenyReason::RateLimited);
            assert_eq!(d.retry_after, Some(1));
        }
        other => panic!("{other:?}"),
    }
    // A per-Envoy limit needs no share, and neither does a key without limits.
    let (store, k) = unleased(vec![limit("per-second", 10, 1).per_envoy()]);
    assert_eq!(admitted(&store, &k, 11, T0), 10);
    let (store, k) = unleased(vec![]);
    assert_eq!(admitted(&store, &k, 3, T0), 3);
}

#[test]
fn without_a_share_even_an_hourly_limit_says_retry_in_a_second_not_an_hour() {
    let retry_after = |store: &MemoryStore, k: &ApiKey, now: u64| match run(store, k, now) {
        Decision::Deny(d) => {
            assert_eq!(d.reason, DenyReason::RateLimited);
            assert_eq!(d.policies[0].reset_seconds, 1, "{d:?}");
            d.retry_after
        }
        other => panic!("{other:?}"),
    };
    // Before any terms...
    let (store, k) = unleased(vec![limit("per-hour", 1_000, 3_600)]);
    assert_eq!(retry_after(&store, &k, T0), Some(1));
    // ...and with all of it at other Envoys.
    apply_leases(&store, &leases(1, 0, None), T0).unwrap();
    assert_eq!(retry_after(&store, &k, T0), Some(1));
    // With a share, an empty bucket waits for its refill as always: a
    // hundredth of 1,000 an hour is one request every 360 s (361 with the
    // share rounded down to 65,536ths).
    apply_leases(&store, &leases(2, u64::from(FULL_SHARE) / 100, None), T0).unwrap();
    assert_eq!(admitted(&store, &k, 20, T0), 10);
    assert_eq!(
        match run(&store, &k, T0) {
            Decision::Deny(d) => d.retry_after,
            other => panic!("{other:?}"),
        },
        Some(361)
    );
}

#[test]
fn half_a_share_is_half_the_burst_and_half_the_rate_to_the_millisecond() {
    let (store, k) = unleased(vec![limit("per-second", 10, 1)]);
    apply_leases(&store, &leases(1, HALF, None), T0).unwrap();
    assert_eq!(admitted(&store, &k, 10, T0), 5);
    // 5 a second: one every 200 ms.
    assert_eq!(admitted(&store, &k, 1, T0 + 199), 0);
    assert_eq!(admitted(&store, &k, 1, T0 + 200), 1);
    match run(&store, &k, T0 + 200) {
        Decision::Deny(d) => {
            // `q` is the whole limit's; what is left is this Envoy's part.
            let p = &d.policies[0];
            assert_eq!((p.quota, p.window_seconds, p.remaining), (10, 1, 0));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_grant_of_its_own_beats_the_default_and_a_shrunk_share_cuts_the_bucket() {
    let (store, k) = unleased(vec![limit("per-second", 10, 1)]);
    apply_leases(&store, &leases(1, 0, Some(u64::from(FULL_SHARE))), T0).unwrap();
    assert_eq!(admitted(&store, &k, 4, T0), 4);
    // Shrunk to a tenth: of the 6 tokens left, 1 is this Envoy's.
    apply_leases(&store, &leases(2, 0, Some(u64::from(FULL_SHARE) / 10)), T0).unwrap();
    assert_eq!(admitted(&store, &k, 3, T0), 1);
    // And it refills at a tenth of the rate (rounded down to 65,536ths):
    // one a second, and a tenth of a millisecond.
    assert_eq!(admitted(&store, &k, 1, T0 + 1_000), 0);
    assert_eq!(admitted(&store, &k, 1, T0 + 1_001), 1);
}

#[test]
fn with_no_receipt_for_a_lease_length_a_share_falls_to_the_default() {
    let (store, k) = unleased(vec![limit("per-second", 10, 1)]);
    apply_leases(&store, &leases(1, HALF, Some(u64::from(FULL_SHARE))), T0).unwrap();
    // Valid for 10 s from the report: the whole bucket until then...
    assert_eq!(admitted(&store, &k, 10, T0 + 9_999), 10);
    // ...then half of it.
    assert_eq!(admitted(&store, &k, 10, T0 + 20_000), 5);
}

#[test]
fn per_envoy_limits_are_metered_whole_beside_fleet_wide_ones() {
    let (store, k) = unleased(vec![
        limit("per-second", 10, 1),
        limit("per-minute", 4, 60).per_envoy(),
    ]);
    apply_leases(&store, &leases(1, u64::from(FULL_SHARE) / 5, None), T0).unwrap();
    // 2 per second here (a fifth, rounded down to 65,536ths, so the
    // second pair is whole a millisecond late), 4 a minute on this Envoy alone.
    assert_eq!(admitted(&store, &k, 5, T0), 2);
    assert_eq!(admitted(&store, &k, 5, T0 + 1_001), 2);
    assert_eq!(admitted(&store, &k, 5, T0 + 2_002), 0);
}

#[test]
fn leases_before_the_first_config_come_with_it() {
    let store = MemoryStore::new();
    apply_leases(&store, &leases(4, HALF, None), T0).unwrap();
    assert_eq!(crate::layout::applied_state(&store), None);
    let k = key(0);
    let keys = vec![wire_key(&k.hash(), "key_1", "tnt_1", "plan_1")];
    let limits = vec![limit("per-second", 10, 1)];
    apply_sync(&store, &sync(1, vec![plan("plan_1", "Pro", limits)], keys)).unwrap();
    let applied = crate::layout::applied_state(&store).and_then(|a| a.fleet);
    assert_eq!(applied.map(|f| f.seq), Some(4));
    assert_eq!(admitted(&store, &k, 10, T0), 5);
}

#[test]
fn a_sync_keeps_the_leases() {
    let (store, k) = unleased(vec![limit("per-second", 10, 1)]);
    apply_leases(&store, &leases(1, HALF, Some(0)), T0).unwrap();
    let lease =
        crate::layout::BucketEntry::decode(&store.get(&buckets_key(&k.hash())).unwrap().0).lease;
    assert_eq!(lease.map(|l| (l.share, l.generation)), Some((0, 9)));
    let state = |s: &MemoryStore| crate::layout::applied_state(s).and_then(|a| a.fleet);
    let before = state(&store);
    assert_eq!(before.map(|f| f.seq), Some(1));
    let mut next = sync(
        2,
        vec![plan("plan_1", "Pro", vec![limit("per-second", 10, 1)])],
        vec![],
    );
    next.keys = vec![wire_key(&k.hash(), "key_1", "tnt_1", "plan_1")];
    apply_sync(&store, &next).unwrap();
    assert_eq!(state(&store), before);
    assert_eq!(admitted(&store, &k, 1, T0), 0, "its own grant of 0 holds");
}

/// Key 0 with a quota of 100 and 10 requests a second (burst 10), on an
/// Envoy that shares its fleet with two others, the other Envoys having
/// used `others` this period.
fn sharing_a_quota(others: u64) -> (MemoryStore, ApiKey) {
    let (store, k) = unleased_with_quota(vec![limit("per-second", 10, 1)], 100);
    apply_leases(
        &store,
        &leases(1, FULL_SHARE as u64 / 3, Some(FULL_SHARE as u64)),
        T0,
    )
    .unwrap();
    standing(&store, &k, others);
    (store, k)
}

fn unleased_with_quota(limits: Vec<WireLimit>, quota: u64) -> (MemoryStore, ApiKey) {
    let k = key(0);
    let store = MemoryStore::new();
    let keys = vec![wire_key(&k.hash(), "key_1", "tnt_1", "plan_1")];
    let plans = vec![plan("plan_1", "Pro", limits).with_quota(quota)];
    apply_sync(&store, &sync(1, plans, keys)).unwrap();
    (store, k)
}

fn standing(store: &MemoryStore, k: &ApiKey, others: u64) {
    let standing = crate::wire::QuotaStanding {
        key_hash: k.hash().to_hex(),
        period_start_ms: crate::period::quota_period(T0, None).start_ms,
        others_used: others,
    };
    crate::layout::apply_standings(store, &[standing]).unwrap();
}

/// Leases carrying only a slice of key 0's quota.
fn slice(seq: u64, generation: u64, cap: u64) -> FleetLeases {
    FleetLeases {
        generation,
        slices: vec![crate::wire::QuotaSlice {
            key_hash: key(0).hash().to_hex(),
            period_start_ms: crate::period::quota_period(T0, None).start_ms,
            cap,
        }],
        ..leases(seq, FULL_SHARE as u64 / 3, Some(FULL_SHARE as u64))
    }
}

fn reason(d: &Decision) -> Option<DenyReason> {
    match d {
        Decision::Allow(_) => None,
        Decision::Deny(d) => Some(d.reason),
    }
}

#[test]
fn the_slicing_horizon_is_what_the_tightest_fleet_wide_limit_admits_in_five_seconds() {
    let l = |max, window_seconds, max_tokens, per_envoy| Limit {
        name: "l".into(),
        max,
        window_seconds,
        max_tokens,
        scope: crate::wire::LimitScope::Key,
        per_envoy,
    };
    assert_eq!(slicing_horizon([&l(10, 1, 10, false)]), Some(60));
    // 100 a minute refills 8.3 in 5 s: a started request counts whole.
    assert_eq!(slicing_horizon([&l(100, 60, 100, false)]), Some(109));
    assert_eq!(
        slicing_horizon([&l(100, 60, 100, false), &l(2, 1, 5, false)]),
        Some(15)
    );
    // A per-Envoy limit bounds nothing across the fleet.
    assert_eq!(slicing_horizon([&l(2, 1, 5, true)]), None);
    assert_eq!(slicing_horizon([]), None);
}

#[test]
fn a_shared_quota_is_admitted_on_standings_until_its_horizon_then_only_within_a_slice() {
    // 100 − 39 = 61 left, over the horizon of 60: admitted.
    let (store, k) = sharing_a_quota(39);
    assert_eq!(reason(&run(&store, &k, T0)), None);
    // Now 60 left: nothing more without a slice, and it says so.
    let Decision::Deny(d) = run(&store, &k, T0) else {
        panic!("admitted past the horizon without a slice")
    };
    assert_eq!(d.reason, DenyReason::QuotaPending);
    assert_eq!(d.reason.code(), "quota_pending");
    assert_eq!(d.retry_after, Some(1));
    assert_eq!(d.violated, vec!["monthly".to_owned()]);
    // A slice lets its own count reach its cap: 1 counted, 4 more.
    apply_leases(&store, &slice(2, 9, 5), T0).unwrap();
    assert_eq!(admitted(&store, &k, 10, T0 + 1), 4);
    assert_eq!(
        reason(&run(&store, &k, T0 + 1)),
        Some(DenyReason::QuotaPending)
    );
    // Once the standings show nothing left, the quota is used up.
    standing(&store, &k, 95);
    assert_eq!(
        reason(&run(&store, &k, T0 + 2)),
        Some(DenyReason::QuotaExceeded)
    );
}

#[test]
fn a_slice_holds_through_an_outage_but_waiting_for_one_does_not() {
    let (store, k) = sharing_a_quota(50);
    assert_eq!(reason(&run(&store, &k, T0)), Some(DenyReason::QuotaPending));
    // The terms lapsed (10 s without a receipt): the standings rule again.
    assert_eq!(
        reason(&run(&store, &k, T0 + 9_999)),
        Some(DenyReason::QuotaPending)
    );
    assert_eq!(reason(&run(&store, &k, T0 + 10_000)), None);
    // A slice is kept to, receipts or not.
    apply_leases(&store, &slice(2, 9, 2), T0 + 10_000).unwrap();
    assert_eq!(admitted(&store, &k, 5, T0 + 10_001), 1);
    assert_eq!(admitted(&store, &k, 5, T0 + 30_000), 0);
}

#[test]
fn a_slice_of_another_generation_or_period_is_no_slice() {
    let (store, k) = sharing_a_quota(50);
    apply_leases(&store, &slice(2, 8, 50), T0).unwrap();
    // Generation 8's slice, under generation 8's terms…
    assert_eq!(admitted(&store, &k, 3, T0), 3);
    // …is void under generation 9's.
    apply_leases(&store, &leases(3, FULL_SHARE as u64 / 3, None), T0).unwrap();
    assert_eq!(reason(&run(&store, &k, T0)), Some(DenyReason::QuotaPending));
    // A slice of last period is no slice in this one.
    let mut old = slice(4, 9, 50);
    old.slices[0].period_start_ms -= 1;
    apply_leases(&store, &old, T0).unwrap();
    assert_eq!(reason(&run(&store, &k, T0)), Some(DenyReason::QuotaPending));
}

#[test]
fn an_envoy_alone_or_a_quota_without_a_fleet_wide_limit_is_never_sliced() {
    // Alone (a default share of the whole), 1 left: admitted on standings.
    let (store, k) = unleased_with_quota(vec![limit("per-second", 10, 1)], 100);
    apply_leases(&store, &leases(1, FULL_SHARE as u64, None), T0).unwrap();
    standing(&store, &k, 99);
    assert_eq!(admitted(&store, &k, 3, T0), 1);
    // Sharing the fleet, but only per-Envoy limits: nothing bounds how fast
    // the fleet goes, so standings it is.
    let mut per_envoy = limit("per-second", 10, 1);
    per_envoy.per_envoy = true;
    let (store, k) = unleased_with_quota(vec![per_envoy], 100);
    apply_leases(&store, &leases(1, FULL_SHARE as u64 / 3, None), T0).unwrap();
    standing(&store, &k, 98);
    assert_eq!(admitted(&store, &k, 3, T0), 2);
}
