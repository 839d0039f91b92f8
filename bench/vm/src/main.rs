//! Tollgate's own work per request, in V8 but without Envoy:
//! `cargo xtask bench --vm` builds this for `wasm32-wasip1` and runs it in
//! Node.js, whose WebAssembly engine is V8, as Envoy's is.
//!
//! The Envoy benchmark measures what a request costs Envoy, host calls and
//! all, and on this machine its rounds move by several microseconds: less
//! than that, it cannot tell apart. What the filter's own Rust costs per
//! request is well under that, so it is measured here alone, the way the
//! filter runs it on an allowed request (`decide_cached` with the VM's memo,
//! the rate-limit headers, the usage tally and its hand-over), with
//! core's in-memory store standing in for Envoy's shared data: the host
//! calls themselves are the Envoy benchmark's to measure, and the store's
//! map lookups are counted in here.
//!
//! Each figure is the median of [`REPEATS`] timings of `requests` requests,
//! in nanoseconds per request, with the spread. One more row times the
//! leader's side of usage reporting per key counted: it runs on Envoy's
//! main thread, which a worker may share a CPU with, so its length is
//! latency for the requests that wait behind it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use tollgate_core::cache::ConfigCache;
use tollgate_core::decide::{decide_cached, ClientIp, Decision, RequestFacts};
use tollgate_core::fixtures::{alone, limit};
use tollgate_core::key::ApiKey;
use tollgate_core::layout::apply_sync;
use tollgate_core::response::RateLimitHeaders;
use tollgate_core::store::MemoryStore;
use tollgate_core::usage::{HandOvers, ReportState, Tally};
use tollgate_core::wire::{SyncResponse, WireKey, WirePlan};

const REPEATS: usize = 5;
/// Requests between two hand-overs of the tally: a worker at 20k requests
/// a second hands over every 50 ms tick.
const HAND_OVER_EVERY: u64 = 1_000;
/// Requests whose allocations [`Bench::allocations`] counts: ten
/// hand-overs' worth.
const ALLOCATIONS_COUNTED: u64 = 10 * HAND_OVER_EVERY;
/// A Unix time in ms in the middle of a month.
const T0: u64 = 1_800_000_000_000;

/// The system allocator, counting what it hands out: a heap allocation is
/// work in the VM (and `dlmalloc`'s code and data, cold in Envoy between
/// requests), so how many a request makes is reported beside its time,
/// and held to exact numbers by this file's test.
struct Counting;

thread_local! {
    /// Per thread, so that the test counts its own requests only. No
    /// destructor and a constant start: touching it never allocates.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations_so_far() -> u64 {
    ALLOCATIONS.try_with(Cell::get).unwrap_or(0)
}

// SAFETY: every call is passed on to `System` unchanged; the counter is
// all that is added.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let (requests, scales): (u64, &[u32]) = if smoke {
        (2_000, &[10, 1_000])
    } else {
        (500_000, &[1_000, 100_000])
    };
    println!("| what | keys | ns per request, median [min–max] of {REPEATS} |");
    println!("|---|---|---|");
    for &keys in scales {
        let bench = Bench::new(keys);
        let allowed = bench.time(requests, Bench::allowed);
        println!(
            "| an allowed request: decision, headers, tally | {keys} | {} |",
            spread(allowed)
        );
        println!(
            "| heap allocations per allowed request (and reallocations) | {keys} | {:.2} |",
            bench.allocations(Bench::allowed)
        );
        let unknown = bench.time(requests, Bench::unknown);
        println!(
            "| a key never issued (401) | {keys} | {} |",
            spread(unknown)
        );
    }
    let reported = if smoke { 1_000 } else { 20_000 };
    println!(
        "| the leader's report, per key counted: drain, seal, store, settle | {reported} | {} |",
        spread(time_report(reported))
    );
}

/// The leader's work for one report of `keys` distinct keys, each used
/// once, handed over by a worker in 20 ticks' worth: ns per key, median of
/// [`REPEATS`] after one untimed pass. It runs on Envoy's main thread,
/// which a worker may share a CPU with; at the Envoy benchmark's closed
/// loop over 100k keys a report holds some 20k keys.
fn time_report(keys: u32) -> Vec<f64> {
    let per_hand_over = (keys / 20).max(1);
    let hand_overs: Vec<Vec<u8>> = (0..keys)
        .collect::<Vec<_>>()
        .chunks(per_hand_over as usize)
        .map(|part| {
            let mut tally = Tally::default();
            for i in part {
                tally.allowed(&format!("key_{i:0>20}").into(), 1, T0 + u64::from(*i));
            }
            tally.to_bytes()
        })
        .collect();
    let empty = ReportState::new("rpt_0123456789abcdef".into()).to_bytes();
    (0..=REPEATS)
        .map(|_| {
            let started = Instant::now();
            // on_tick: drain, seal, store.
            let mut drained = HandOvers::default();
            for bytes in &hand_overs {
                let Some(next) = HandOvers::from_bytes(bytes) else {
                    fail(&"a hand-over did not read back");
                };
                drained.append(&next);
            }
            let mut state = ReportState::from_bytes(&empty).unwrap_or_else(|| fail(&"state"));
            state.seal(&drained, 0);
            let stored = state.to_bytes();
            // The receipt: read, settle, store.
            let mut state = ReportState::from_bytes(&stored).unwrap_or_else(|| fail(&"state"));
            let batch_id = state.pending.as_ref().map(|p| p.batch_id.clone());
            if !state.settle(&batch_id.unwrap_or_default()) {
                fail(&"the batch did not settle");
            }
            let stored = state.to_bytes();
            let ns = started.elapsed().as_nanos() as f64 / f64::from(keys);
            if stored.is_empty() {
                println!("(never)");
            }
            ns
        })
        .skip(1)
        .collect()
}

/// A store loaded with `keys` keys on the benchmark's plan, and what a VM
/// keeps between requests.
struct Bench {
    store: MemoryStore,
    keys: Vec<String>,
    never_issued: Vec<String>,
}

struct Vm {
    cache: ConfigCache,
    tally: Tally,
    /// Keeps the optimiser from dropping the work.
    sink: usize,
}

impl Bench {
    fn new(keys: u32) -> Self {
        let key = |i: u32| ApiKey::from_body(&format!("{i:0>32}")).unwrap_or_else(|e| fail(&e));
        let issued: Vec<ApiKey> = (0..keys).map(key).collect();
        // The Envoy benchmark's plan: two windows and a quota, none reached.
        let plan = WirePlan {
            id: "pln_bench".into(),
            name: "Bench".into(),
            limits: vec![
                limit("per-second", 1_000_000_000, 1),
                limit("per-hour", 1_000_000_000_000, 3_600),
            ],
            monthly_quota: Some(1_000_000_000_000),
            route_costs: Vec::new(),
        };
        let wire_keys = issued
            .iter()
            .enumerate()
            .map(|(i, k)| WireKey {
                hash: k.hash().to_hex(),
                id: format!("key_{i:0>20}"),
                tenant_id: "tnt_00000000000000000001".into(),
                plan_id: plan.id.clone(),
                active: true,
                ..WireKey::default()
            })
            .collect();
        let store = MemoryStore::new();
        let sync = SyncResponse {
            version: 1,
            plans: vec![plan],
            keys: wire_keys,
            ..SyncResponse::default()
        };
        apply_sync(&store, &sync).unwrap_or_else(|e| fail(&e));
        // This Envoy alone in its fleet: every fleet-wide limit is its own.
        alone(&store).unwrap_or_else(|e| fail(&format!("{e:?}")));
        Self {
            store,
            keys: issued.iter().map(|k| k.expose().to_owned()).collect(),
            never_issued: (keys..keys + 1_000)
                .map(|i| key(i).expose().to_owned())
                .collect(),
        }
    }

    /// `requests` requests in a fresh VM, `REPEATS` times: ns per request.
    /// A first, untimed pass lets V8 compile the hot code with its
    /// optimising tier, as a long-running Envoy has.
    fn time(&self, requests: u64, each: fn(&Self, &mut Vm, u64)) -> Vec<f64> {
        (0..=REPEATS)
            .map(|_| {
                let mut vm = Vm {
                    cache: ConfigCache::with_seed(0x5eed),
                    tally: Tally::default(),
                    sink: 0,
                };
                let started = Instant::now();
                for i in 0..requests {
                    each(self, &mut vm, i);
                }
                let ns = started.elapsed().as_nanos() as f64 / requests as f64;
                if vm.sink == usize::MAX {
                    println!("(never)");
                }
                ns
            })
            .skip(1)
            .collect()
    }

    /// Heap allocations per request, counted over requests after a first
    /// pass over every key has filled the memo.
    fn allocations(&self, each: fn(&Self, &mut Vm, u64)) -> f64 {
        self.allocations_in(each) as f64 / ALLOCATIONS_COUNTED as f64
    }

    /// The heap allocations [`Bench::allocations`] counts, in all.
    fn allocations_in(&self, each: fn(&Self, &mut Vm, u64)) -> u64 {
        let mut vm = Vm {
            cache: ConfigCache::with_seed(0x5eed),
            tally: Tally::default(),
            sink: 0,
        };
        let warm = self.keys.len() as u64;
        for i in 0..warm {
            each(self, &mut vm, i);
        }
        let before = allocations_so_far();
        for i in warm..warm + ALLOCATIONS_COUNTED {
            each(self, &mut vm, i);
        }
        allocations_so_far() - before
    }

    fn facts<'a>(key: &'a str) -> RequestFacts<'a> {
        RequestFacts {
            api_key: Some(key),
            method: "GET",
            path: "/",
            client_ip: ClientIp::from(None),
        }
    }

    /// What the filter does for an admitted request, keys in turn.
    fn allowed(&self, vm: &mut Vm, i: u64) {
        let key = &self.keys[i as usize % self.keys.len()];
        // 20 requests a millisecond, as at the Envoy benchmark's rate.
        let now = T0 + i / 20;
        let decision = decide_cached(&Self::facts(key), &self.store, &mut vm.cache, now);
        let Decision::Allow(allowed) = decision else {
            fail(&format!("request {i} was refused: {decision:?}"));
        };
        let headers = RateLimitHeaders::of(&allowed.policies);
        vm.sink += headers.iter().map(|(_, value)| value.len()).sum::<usize>();
        if let Some(key_id) = &allowed.key_id {
            vm.tally.allowed(key_id, allowed.cost, now);
        }
        if i % HAND_OVER_EVERY == HAND_OVER_EVERY - 1 {
            vm.sink += vm.tally.to_bytes().len();
            vm.tally.clear();
        }
    }

    /// A well-formed key the store does not know.
    fn unknown(&self, vm: &mut Vm, i: u64) {
        let key = &self.never_issued[i as usize % self.never_issued.len()];
        let decision = decide_cached(&Self::facts(key), &self.store, &mut vm.cache, T0 + i / 20);
        vm.sink += usize::from(matches!(decision, Decision::Deny(_)));
    }
}

/// `median [min–max]`, to one decimal.
fn spread(mut ns: Vec<f64>) -> String {
    ns.sort_by(f64::total_cmp);
    let (min, max) = (ns[0], ns[ns.len() - 1]);
    format!("{:.0} [{min:.0}–{max:.0}]", ns[ns.len() / 2])
}

fn fail(why: &dyn std::fmt::Display) -> ! {
    eprintln!("vm-work: {why}");
    std::process::exit(1)
}

/// The allocation counts of `cargo xtask bench --vm`, held exact. Counts do
/// not depend on the machine, so a change that makes a request allocate
/// more fails here rather than moving a figure nobody rereads. Natively, on
/// the same requests as the benchmark; they include the in-memory store's
/// own (a read returns a new vector, as a host call into the VM does; each
/// write makes two, which Envoy makes on the host).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_request_makes_exactly_the_allocations_it_did() {
        let mut counted = Vec::new();
        for keys in [1_000, 100_000] {
            let bench = Bench::new(keys);
            counted.push((
                keys,
                bench.allocations_in(Bench::allowed),
                bench.allocations_in(Bench::unknown),
            ));
        }
        // Over 10,000 requests: an allowed one makes 15 at 1k keys and 20
        // at 100k, where nearly each reads its key's record; a key never
        // issued makes 1, its refusal's text. Besides, every 20th request
        // reads the config version (the first in its millisecond), and the
        // allowed ones hand their tally over 10 times, 4 allocations each.
        assert_eq!(
            counted,
            [(1_000, 150_540, 10_500), (100_000, 200_540, 10_500)]
        );
    }
}
