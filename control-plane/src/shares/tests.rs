//! The allocator against simulated Envoys that apply receipts the way the
//! filter does (`tollgate_core::fleet`), some late, some lost: at every step
//! the shares in force on all Envoys together stay within the whole.

use std::collections::HashMap;

use tollgate_core::fleet::{share, Lease, Terms};

use super::*;

const T0: u64 = 1_800_000_000_000;

fn key(n: u8) -> Entry {
    Entry::Key(format!("{n:02x}").repeat(32))
}

/// One Envoy as the filter keeps its leases.
#[derive(Default)]
struct Envoy {
    /// Its reporter id: a restarted Envoy is another one.
    name: String,
    /// Its cluster and node id, kept through a restart.
    node: String,
    terms: Option<Terms>,
    seq: u64,
    leases: HashMap<Entry, Lease>,
}

impl Envoy {
    fn named(i: usize) -> Self {
        Self {
            name: format!("envoy-{i}"),
            node: format!("e2e/node-{i}"),
            ..Self::default()
        }
    }

    /// The same Envoy started again: a new reporter on the same node.
    fn restarted(&self, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            node: self.node.clone(),
            ..Self::default()
        }
    }

    fn apply(&mut self, leases: &FleetLeases, sent_at_ms: u64) {
        for g in &leases.grants {
            let entry = match (&g.key_hash, &g.tenant_id) {
                (Some(h), _) => Entry::Key(h.clone()),
                (None, Some(t)) => Entry::Tenant(t.clone()),
                _ => unreachable!(),
            };
            let lease = Lease {
                share: g.share as u32,
                generation: leases.generation,
            };
            self.leases.insert(entry, lease);
        }
        self.terms = Some(Terms {
            generation: leases.generation,
            valid_until_ms: sent_at_ms + leases.valid_ms,
            default_share: leases.default_share as u32,
        });
        self.seq = leases.seq;
    }

    fn share(&self, entry: &Entry, now_ms: u64) -> u64 {
        u64::from(share(self.terms, self.leases.get(entry).copied(), now_ms))
    }
}

/// Demand that was refused somewhere: what gives a key grants of its own.
fn refused(demand: &[(Entry, u64)]) -> Vec<Demand> {
    demand
        .iter()
        .map(|(entry, asked)| Demand {
            entry: entry.clone(),
            asked: *asked,
            refused: true,
        })
        .collect()
}

/// A reproducible stream of numbers below `n` (xorshift from `seed`).
pub(super) fn random(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut rng = seed;
    move |n| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    }
}

struct Fleet {
    allocator: Allocator,
    envoys: Vec<Envoy>,
    now: u64,
}

impl Fleet {
    fn new(n: usize) -> Self {
        Self {
            allocator: Allocator::new(SharesConfig::default(), T0, false),
            envoys: (0..n).map(Envoy::named).collect(),
            now: T0,
        }
    }

    /// Envoy `i` reports `demand` and applies the answer (unless `lost`).
    fn report(&mut self, i: usize, demand: &[(Entry, u64)], lost: bool) -> Option<FleetLeases> {
        let report = Report {
            proxy: self.envoys[i].name.clone(),
            node: self.envoys[i].node.clone(),
            acked: self.envoys[i].seq,
            demand: refused(demand),
            ..Report::default()
        };
        let answer = self.allocator.report(&report, self.now, 1_000 + i as u64);
        if let (Some(leases), false) = (&answer, lost) {
            self.envoys[i].apply(leases, self.now);
        }
        let mut entries: Vec<Entry> = demand.iter().map(|(e, _)| e.clone()).collect();
        entries.push(key(250));
        self.check(&entries);
        answer
    }

    /// In force on all Envoys together, for `entry`.
    fn in_force(&self, entry: &Entry) -> u64 {
        self.envoys.iter().map(|e| e.share(entry, self.now)).sum()
    }

    fn check(&self, entries: &[Entry]) {
        for entry in entries {
            let in_force = self.in_force(entry);
            let committed = self.allocator.committed(entry);
            assert!(in_force <= FULL, "{entry:?}: {in_force} in force");
            assert!(in_force <= committed, "{entry:?}: {in_force} > {committed}");
            assert!(committed <= FULL, "{entry:?}: {committed} committed");
        }
    }

    /// Every Envoy reports once, in order, asking `asks[i]` of `entry`.
    fn round(&mut self, entry: &Entry, asks: &[u64]) {
        for (i, &asked) in asks.iter().enumerate() {
            let demand = if asked > 0 {
                vec![(entry.clone(), asked)]
            } else {
                vec![]
            };
            self.report(i, &demand, false);
        }
        self.now += 1_000;
    }

    /// Rounds with no demand until the defaults have settled: the first
    /// Envoy to report was alone then, and gave up its whole default only
    /// as the others joined.
    fn settle(&mut self) {
        let idle = vec![0; self.envoys.len()];
        for _ in 0..3 {
            self.round(&key(9), &idle);
        }
    }

    fn shares(&self, entry: &Entry) -> Vec<u64> {
        self.envoys
            .iter()
            .map(|e| e.share(entry, self.now))
            .collect()
    }
}

#[test]
fn an_envoy_alone_gets_the_whole_with_its_first_receipt() {
    let mut fleet = Fleet::new(1);
    let leases = fleet.report(0, &[(key(1), 5)], false).unwrap();
    assert_eq!(leases.default_share, FULL);
    assert_eq!(fleet.shares(&key(1)), vec![FULL]);
    assert_eq!(fleet.shares(&key(2)), vec![FULL]);
}

#[test]
fn envoys_asking_alike_converge_on_equal_shares_and_the_defaults_too() {
    let mut fleet = Fleet::new(3);
    for _ in 0..10 {
        fleet.round(&key(1), &[50, 50, 50]);
    }
    // Within two nudges of a third each (a share is not lowered for less
    // than one), and all of it in use.
    let shares = fleet.shares(&key(1));
    for &s in &shares {
        assert!(s >= FULL / 3 - FULL / 32, "{shares:?}");
    }
    assert!(
        shares.iter().sum::<u64>() >= FULL - FULL / 100,
        "{shares:?}"
    );
    for s in fleet.shares(&key(2)) {
        assert_eq!(s, FULL / 3);
    }
}

#[test]
fn a_key_used_through_one_envoy_gets_all_of_it_there_within_three_reports() {
    let mut fleet = Fleet::new(3);
    fleet.settle();
    assert_eq!(fleet.shares(&key(1)), vec![FULL / 3; 3]);
    for _ in 0..3 {
        fleet.round(&key(1), &[40, 0, 0]);
    }
    assert_eq!(fleet.shares(&key(1)), vec![FULL, 0, 0]);
    // It moves when the demand does, never overlapping; what the first
    // Envoy asked fades by half a report.
    for _ in 0..8 {
        fleet.round(&key(1), &[0, 0, 40]);
    }
    let shares = fleet.shares(&key(1));
    assert!(shares[2] >= FULL - FULL / 100, "{shares:?}");
}

#[test]
fn shares_follow_uneven_demand() {
    let mut fleet = Fleet::new(2);
    fleet.settle();
    for _ in 0..10 {
        fleet.round(&key(1), &[30, 10]);
    }
    let shares = fleet.shares(&key(1));
    assert!(shares[0] > 2 * shares[1], "{shares:?}");
    assert!(shares[0] + shares[1] >= FULL - FULL / 100, "{shares:?}");
}

#[test]
fn a_joining_envoy_gets_its_default_only_once_the_others_gave_theirs_up() {
    let mut fleet = Fleet::new(2);
    fleet.settle();
    assert_eq!(fleet.shares(&key(2)), vec![FULL / 2; 2]);
    fleet.envoys.push(Envoy::named(2));
    let first = fleet.report(2, &[], false).unwrap();
    assert_eq!(first.default_share, 0, "nothing is free yet");
    // The others lower theirs, then acknowledge; then there is room.
    fleet.round(&key(9), &[0, 0, 0]);
    fleet.round(&key(9), &[0, 0, 0]);
    assert_eq!(fleet.shares(&key(2)), vec![FULL / 3; 3]);
}

#[test]
fn a_silent_envoy_lapses_to_its_default_and_what_it_held_goes_elsewhere() {
    let mut fleet = Fleet::new(2);
    fleet.settle();
    for _ in 0..3 {
        fleet.round(&key(1), &[40, 0]);
    }
    assert_eq!(fleet.shares(&key(1)), vec![FULL, 0]);
    // Envoy 0 goes quiet; envoy 1 asks. Within the lease length nothing moves.
    for _ in 0..9 {
        fleet.report(1, &[(key(1), 40)], false);
        fleet.now += 1_000;
    }
    assert_eq!(fleet.shares(&key(1))[1], 0);
    for _ in 0..3 {
        fleet.report(1, &[(key(1), 40)], false);
        fleet.now += 1_000;
    }
    // Envoy 0's lease lapsed to its default: the rest is envoy 1's.
    assert_eq!(fleet.shares(&key(1)), vec![FULL / 2, FULL / 2]);
    // Back, it is first told its lapsed share, before its terms renew.
    fleet.report(0, &[], false);
    assert!(fleet.in_force(&key(1)) <= FULL);
}

#[test]
fn random_demand_late_and_lost_receipts_never_lease_more_than_the_whole() {
    let mut next = random(0x2545_f491_4f6c_dd1d);
    let mut fleet = Fleet::new(4);
    let keys = [key(1), key(2), key(3)];
    let mut restarts = 0..;
    for _ in 0..3_000 {
        let i = next(4) as usize;
        let mut demand: Vec<(Entry, u64)> = Vec::new();
        for k in &keys {
            if next(3) > 0 {
                demand.push((k.clone(), next(100)));
            }
        }
        fleet.report(i, &demand, next(5) == 0);
        fleet.now += next(700);
        match next(400) {
            // An Envoy restarts: a new one, with nothing, on the same
            // node or on a new one.
            0 => {
                let name = format!("envoy-{}", 100 + restarts.next().unwrap());
                fleet.envoys[i] = if next(2) == 0 {
                    fleet.envoys[i].restarted(&name)
                } else {
                    Envoy {
                        name,
                        ..Envoy::default()
                    }
                };
            }
            // Its shared data is lost, its id kept.
            1 => {
                let name = fleet.envoys[i].name.clone();
                fleet.envoys[i] = Envoy {
                    name,
                    ..Envoy::default()
                };
            }
            _ => {}
        }
    }
}

#[test]
fn a_replica_that_starts_among_live_envoys_learns_before_it_leases() {
    let mut allocator = Allocator::new(SharesConfig::default(), T0, true);
    let report = Report {
        proxy: "a".into(),
        acked: 0,
        demand: refused(&[(key(1), 3)]),
        ..Report::default()
    };
    assert_eq!(allocator.report(&report, T0 + 1_000, 1), None);
    assert_eq!(allocator.report(&report, T0 + 11_999, 1), None);
    let leases = allocator.report(&report, T0 + 12_000, 1).unwrap();
    // It presumed "a" might hold the whole default still: it does now.
    assert_eq!(leases.default_share, FULL);
}

#[test]
fn keys_never_refused_anywhere_get_no_grants_of_their_own() {
    let mut allocator = Allocator::new(SharesConfig::default(), T0, false);
    let within = |proxy: &str, acked| Report {
        proxy: proxy.into(),
        acked,
        demand: (0..1_000)
            .map(|n| Demand {
                entry: Entry::Key(format!("{n:064x}")),
                asked: 50,
                refused: false,
            })
            .collect(),
        ..Report::default()
    };
    let a = allocator.report(&within("a", 0), T0, 1).unwrap();
    allocator.report(&within("b", 0), T0 + 10, 2).unwrap();
    allocator
        .report(&within("a", a.seq), T0 + 1_000, 1)
        .unwrap();
    assert_eq!(allocator.entries(), 0);
    assert_eq!(allocator.proxies(), 2);
}

/// One Envoy alone holds all of a key; it is started again (a new reporter)
/// on `node`, the old one either killed or still reporting (a hot restart
/// draining). The shares of the key in force, 1 s apart, from the restart
/// on: the new Envoy's last.
fn restart_alone(node: &str, old_reports: bool) -> Vec<Vec<u64>> {
    let mut fleet = Fleet::new(1);
    fleet.envoys[0].node = node.to_owned();
    for _ in 0..3 {
        fleet.round(&key(1), &[50]);
    }
    assert_eq!(fleet.shares(&key(1)), vec![FULL]);
    let again = fleet.envoys[0].restarted("envoy-0-again");
    if old_reports {
        fleet.envoys.push(again);
    } else {
        // Killed: what it held is in force nowhere.
        fleet.envoys[0] = again;
    }
    let new = fleet.envoys.len() - 1;
    let mut shares = Vec::new();
    for _ in 0..5 {
        fleet.now += 500;
        if old_reports {
            fleet.report(0, &[(key(1), 25)], false);
        }
        fleet.report(new, &[(key(1), 50)], false);
        shares.push(fleet.shares(&key(1)));
        fleet.now += 500;
    }
    shares
}

#[test]
fn an_envoy_restarted_on_its_node_gets_the_whole_once_the_old_one_is_silent_3_s() {
    let shares = restart_alone("e2e/node-0", false);
    // The old one's whole is reserved until it has been silent 3 s: the
    // new one reports 1.5, 2.5 and 3.5 s after the old one's last report.
    assert_eq!(shares[..3], [vec![0], vec![0], vec![FULL]]);
}

#[test]
fn an_envoy_restarted_without_a_node_id_waits_for_its_old_one_to_be_forgotten() {
    let shares = restart_alone("", false);
    assert!(shares.iter().all(|s| s == &[0]), "{shares:?}");
}

#[test]
fn an_envoy_whose_old_self_still_reports_shares_with_it() {
    let shares = restart_alone("e2e/node-0", true);
    let last = shares.last().unwrap();
    assert!(last[0] > 0 && last[1] > 0, "{shares:?}");
}
