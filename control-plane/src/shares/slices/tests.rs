//! Slicing against simulated Envoys that admit a key the way the filter
//! does (`tollgate_core::fleet::quota_cap`), report their counts and apply
//! the answers, some receipts lost: the fleet never admits past the quota,
//! and with demand that goes on it admits the whole quota.

use std::collections::HashMap;

use tollgate_core::fleet::{quota_cap, QuotaView, Slice, Terms};

use super::super::{Allocator, Report, SharesConfig};
use super::*;

const T0: u64 = 1_800_000_000_000;
const PERIOD_START: u64 = T0 - 1_000_000;
const PERIOD_END: u64 = T0 + 100_000_000;
const HASH: &str = "ab";

/// One Envoy as the filter keeps one key's quota.
#[derive(Default)]
struct Envoy {
    name: String,
    terms: Option<Terms>,
    acked: u64,
    slice: Option<Slice>,
    /// Its own count, as its bucket entry keeps it.
    own: u64,
    /// What it has reported of `own`.
    reported: u64,
    /// The other Envoys' count, as its last standing said.
    others: u64,
    pending: u64,
}

struct Fleet {
    allocator: Allocator,
    envoys: Vec<Envoy>,
    quota: u64,
    horizon: u64,
    now: u64,
}

impl Fleet {
    fn new(n: usize, quota: u64, horizon: u64) -> Self {
        let mut fleet = Self {
            allocator: Allocator::new(SharesConfig::default(), T0, false),
            envoys: (0..n)
                .map(|i| Envoy {
                    name: format!("envoy-{i}"),
                    ..Envoy::default()
                })
                .collect(),
            quota,
            horizon,
            now: T0,
        };
        // Everyone counted, and the defaults settled.
        for _ in 0..3 {
            for i in 0..n {
                fleet.report(i, false);
            }
            fleet.now += 1_000;
        }
        fleet
    }

    /// Envoy `i` is asked `n` requests: how many it admits.
    fn ask(&mut self, i: usize, n: u64) -> u64 {
        let (quota, horizon, now) = (self.quota, self.horizon, self.now);
        let e = &mut self.envoys[i];
        let mut admitted = 0;
        for _ in 0..n {
            let view = QuotaView {
                max: quota,
                period_start_ms: PERIOD_START,
                own: e.own,
                others: e.others,
                horizon: Some(horizon),
            };
            let cap = quota_cap(e.terms, e.slice, view, now);
            if e.own + e.others >= quota {
                continue;
            }
            if cap.is_some_and(|cap| e.own >= cap) {
                e.pending += 1;
                continue;
            }
            e.own += 1;
            admitted += 1;
        }
        let total: u64 = self.envoys.iter().map(|e| e.own).sum();
        assert!(total <= self.quota, "{total} admitted of {}", self.quota);
        admitted
    }

    fn facts(&self) -> QuotaFacts {
        let used_by: HashMap<String, u64> = self
            .envoys
            .iter()
            .map(|e| (e.name.clone(), e.reported))
            .collect();
        QuotaFacts {
            key_id: "key_1".into(),
            key_hash: HASH.into(),
            period_start_ms: PERIOD_START,
            period_end_ms: PERIOD_END,
            quota: self.quota,
            used: used_by.values().sum(),
            used_by,
        }
    }

    /// Envoy `i` reports (its batch is counted) and applies the answer
    /// unless it is `lost`.
    fn report(&mut self, i: usize, lost: bool) {
        let e = &mut self.envoys[i];
        let asked = e.own - e.reported;
        let pending = std::mem::take(&mut e.pending);
        e.reported = e.own;
        let (name, acked) = (e.name.clone(), e.acked);
        let facts = self.facts();
        let asking = asked + pending > 0;
        let sliced = self.allocator.is_sliced(HASH);
        let held = !self.allocator.sliced_keys_held(&name).is_empty();
        let report = Report {
            proxy: name.clone(),
            acked,
            slices: (asking && (pending > 0 || sliced))
                .then(|| SliceDemand {
                    key_id: "key_1".into(),
                    key_hash: HASH.into(),
                    asked: asked + pending,
                    pending: pending > 0,
                })
                .into_iter()
                .collect(),
            quota_facts: (asking || held)
                .then_some(facts.clone())
                .into_iter()
                .collect(),
            ..Report::default()
        };
        let answer = self.allocator.report(&report, self.now, 1_000 + i as u64);
        let others = facts.used - facts.used_by[&name];
        if let (Some(leases), false) = (answer, lost) {
            let e = &mut self.envoys[i];
            for s in &leases.slices {
                e.slice = Some(Slice {
                    cap: s.cap,
                    generation: leases.generation,
                    period_start_ms: s.period_start_ms,
                });
            }
            e.terms = Some(Terms {
                generation: leases.generation,
                valid_until_ms: self.now + leases.valid_ms,
                default_share: leases.default_share as u32,
            });
            e.acked = leases.seq;
            e.others = others;
        }
    }

    fn admitted(&self) -> u64 {
        self.envoys.iter().map(|e| e.own).sum()
    }
}

#[test]
fn three_envoys_hammering_one_key_admit_exactly_its_quota() {
    let mut fleet = Fleet::new(3, 50, 60);
    for _ in 0..20 {
        for step in 0..10 {
            for i in 0..3 {
                fleet.ask(i, 1);
            }
            fleet.now += 100;
            if step == 9 {
                for i in 0..3 {
                    fleet.report(i, false);
                }
            }
        }
    }
    assert_eq!(fleet.admitted(), 50);
    assert!(fleet.envoys.iter().all(|e| e.own > 0), "none starved");
}

#[test]
fn a_slice_left_unused_goes_back_and_serves_another_envoy() {
    let mut fleet = Fleet::new(3, 100, 60);
    // Envoy 0 alone uses the key, into the horizon and then its slices.
    for _ in 0..8 {
        fleet.ask(0, 10);
        for i in 0..3 {
            fleet.report(i, false);
        }
        fleet.now += 1_000;
    }
    let first = fleet.envoys[0].own;
    assert!(first > 40, "{first}");
    assert!(fleet.allocator.is_sliced(HASH));
    // It stops; envoy 1 takes over and gets the rest, Envoy 0's unused
    // slice included, once Envoy 0 acknowledged giving it back.
    for _ in 0..30 {
        fleet.ask(1, 10);
        for i in 0..3 {
            fleet.report(i, false);
        }
        fleet.now += 1_000;
    }
    assert_eq!(fleet.admitted(), 100);
}

/// `rounds` fleets of 2 to 4 Envoys, each with a quota of 100 to 500 and
/// the horizon `horizon(n, quota)`, run for 60 s with each Envoy asked up
/// to `per_step` requests every 100 ms and reporting about once a second,
/// a fifth of the receipts lost; then every Envoy asks on with every
/// receipt arriving. The fleet never admits past the quota (checked on
/// every request) and ends having admitted all of it.
fn random_fleets(rounds: usize, per_step: u64, horizon: fn(u64, u64) -> u64) {
    let mut next = super::super::tests::random(0x9e37_79b9_7f4a_7c15);
    for round in 0..rounds {
        let n = 2 + (round % 3);
        let quota = 100 + next(400);
        let mut fleet = Fleet::new(n, quota, horizon(n as u64, quota));
        let mut due: Vec<u64> = (0..n).map(|_| 5 + next(10)).collect();
        for step in 0..600 {
            for (i, due) in due.iter_mut().enumerate() {
                if next(3) > 0 {
                    fleet.ask(i, per_step);
                }
                if *due == step {
                    fleet.report(i, next(5) == 0);
                    *due = step + 7 + next(7);
                }
            }
            fleet.now += 100;
            // No Envoy went 10 s without a receipt: its terms hold.
            assert!(fleet
                .envoys
                .iter()
                .all(|e| e.terms.is_some_and(|t| t.valid_until_ms > fleet.now)));
        }
        for _ in 0..40 {
            for i in 0..n {
                fleet.ask(i, 5);
                fleet.report(i, false);
            }
            fleet.now += 1_000;
        }
        assert_eq!(fleet.admitted(), quota, "round {round}");
    }
}

/// At most one request per Envoy per 100 ms, and the horizon what the
/// fleet may admit in 5 s, as the filter's would be.
#[test]
fn random_demand_and_lost_receipts_never_admit_past_the_quota_and_use_it_all() {
    random_fleets(40, 1, |n, _| 50 * n);
}

/// With the horizon at the whole quota, every request is within a slice:
/// any request past the quota would be the allocator's doing.
#[test]
fn sliced_from_the_first_request_late_and_lost_receipts_never_admit_past_the_quota() {
    random_fleets(200, 3, |_, quota| quota);
}
