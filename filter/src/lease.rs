//! Which root context leads this Envoy: the one holding the lease in shared data.
//!
//! Envoy gives a Wasm HTTP filter one VM per worker thread plus one on the
//! main thread, each with its own root context, and nothing that runs once
//! per process (Istio and Envoy Gateway deliver only the filter). Every root
//! context ticks; exactly one of them must long-poll the control plane and
//! report usage. They elect it through one shared-data entry
//! ([`LEASE_KEY`]), written only with compare-and-swap:
//!
//! - a lease that is absent or expired is taken by whoever writes first;
//! - the holder renews it while it ticks, so it lapses [`LEASE_MS`] after
//!   the holder's VM stopped (worker gone, VM crashed, root context replaced
//!   by a configuration update); a holder going away cleanly gives it up at
//!   once ([`Lease::release`]);
//! - a root context whose VM serves no requests (the main thread's) is the
//!   better leader, since the leader's work (applying config, merging usage)
//!   would otherwise stall requests on its worker: such a contender asks for
//!   the lease of a holder that serves requests, and the holder hands it
//!   over ([`Lease::hand_over`]) once its long-poll has ended, so that the
//!   control plane never holds two polls for one Envoy, and between two of
//!   its own callbacks, so that no answer it is applying races the new
//!   leader's.
//!
//! Each root context has its own number, drawn from a shared counter
//! ([`ROOTS_KEY`]), since context ids repeat across VMs.

use tollgate_core::layout::{LEASE_KEY, ROOTS_KEY};
use tollgate_core::store::{SetError, SharedStore};

/// How long a lease lasts without renewal: the longest an Envoy goes
/// without a leader after its leader stopped without giving it up.
pub const LEASE_MS: u64 = 2_000;
/// The holder renews once less than this is left, so a renewal is a write
/// every half second rather than every tick.
const RENEW_BELOW_MS: u64 = 1_500;
/// A write token no present entry has: "create only" in Envoy's terms.
const CREATE_ONLY: u32 = u32::MAX;
const FORMAT: u8 = 1;
/// Attempts at drawing a root number before leaving it to the next tick.
const DRAW_ATTEMPTS: usize = 8;

/// The lease as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub holder: u32,
    pub expires_ms: u64,
    /// Whether the holder's VM serves requests.
    pub serving: bool,
    /// A contender that serves none and asked for the lease; 0 if none.
    pub wanted_by: u32,
}

impl Record {
    fn to_bytes(self) -> [u8; 18] {
        let mut out = [0u8; 18];
        let (format, rest) = out.split_at_mut(1);
        format.copy_from_slice(&[FORMAT]);
        let (holder, rest) = rest.split_at_mut(4);
        holder.copy_from_slice(&self.holder.to_le_bytes());
        let (expires, rest) = rest.split_at_mut(8);
        expires.copy_from_slice(&self.expires_ms.to_le_bytes());
        let (serving, wanted) = rest.split_at_mut(1);
        serving.copy_from_slice(&[u8::from(self.serving)]);
        wanted.copy_from_slice(&self.wanted_by.to_le_bytes());
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (&FORMAT, rest) = bytes.split_first()? else {
            return None;
        };
        let (holder, rest) = rest.split_first_chunk::<4>()?;
        let (expires, rest) = rest.split_first_chunk::<8>()?;
        let (&serving, rest) = rest.split_first()?;
        let wanted: [u8; 4] = rest.try_into().ok()?;
        Some(Self {
            holder: u32::from_le_bytes(*holder),
            expires_ms: u64::from_le_bytes(*expires),
            serving: serving != 0,
            wanted_by: u32::from_le_bytes(wanted),
        })
    }
}

/// Reads the lease: the record (if any, and readable) and the token to write
/// it back with.
pub fn read(store: &impl SharedStore) -> (Option<Record>, u32) {
    match store.get(LEASE_KEY) {
        Some((bytes, cas)) => (Record::from_bytes(&bytes), cas),
        None => (None, CREATE_ONLY),
    }
}

/// Draws this root context's number: the next of the shared counter.
pub fn draw_number(store: &impl SharedStore) -> Option<u32> {
    for _ in 0..DRAW_ATTEMPTS {
        let (last, cas) = match store.get(ROOTS_KEY) {
            Some((bytes, cas)) => {
                let raw: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
                (u32::from_le_bytes(raw), cas)
            }
            None => (0, CREATE_ONLY),
        };
        // 0 means "nobody" in a record.
        let next = last.checked_add(1).filter(|n| *n != 0).unwrap_or(1);
        match store.set(ROOTS_KEY, Some(&next.to_le_bytes()), Some(cas)) {
            Ok(()) => return Some(next),
            Err(SetError::CasMismatch) => continue,
            Err(SetError::Host(_)) => return None,
        }
    }
    None
}

/// One root context's side of the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    me: u32,
    /// Whether the last tick found this root context leading.
    leading: bool,
    /// Whether a contender that serves no requests asked for the lease
    /// while this one, serving requests, leads.
    asked: bool,
}

impl Lease {
    pub fn new(me: u32) -> Self {
        Self {
            me,
            leading: false,
            asked: false,
        }
    }

    /// Whether the lease should go to the contender that asked for it, at
    /// the leader's next quiet moment ([`Lease::hand_over`]).
    pub fn asked(&self) -> bool {
        self.leading && self.asked
    }

    pub fn me(&self) -> u32 {
        self.me
    }

    pub fn leading(&self) -> bool {
        self.leading
    }

    /// One tick at `now`: take, renew, ask for or hand over the lease.
    /// `serving` says whether this VM has served requests. Returns whether
    /// this root context leads until its next tick.
    pub fn tick(&mut self, store: &impl SharedStore, now: u64, serving: bool) -> bool {
        self.asked = false;
        self.leading = self.decide(store, now, serving);
        self.leading
    }

    fn decide(&mut self, store: &impl SharedStore, now: u64, serving: bool) -> bool {
        let (record, cas) = read(store);
        let mine = Record {
            holder: self.me,
            expires_ms: now.saturating_add(LEASE_MS),
            serving,
            wanted_by: 0,
        };
        let write = |record: Record| {
            store
                .set(LEASE_KEY, Some(&record.to_bytes()), Some(cas))
                .is_ok()
        };
        match record {
            // Absent, unreadable or lapsed: the first writer takes it.
            None => write(mine),
            Some(r) if now >= r.expires_ms => write(mine),
            Some(r) if r.holder == self.me => {
                self.asked = r.wanted_by != 0 && r.wanted_by != self.me && serving;
                if r.expires_ms.saturating_sub(now) >= RENEW_BELOW_MS
                    && r.serving == serving
                    && (r.wanted_by == 0 || serving)
                {
                    return true;
                }
                // A lost race here means someone took a lease that had
                // lapsed: that is theirs now.
                write(Record {
                    wanted_by: if serving { r.wanted_by } else { 0 },
                    ..mine
                })
            }
            Some(r) => {
                if r.serving && !serving && r.wanted_by == 0 {
                    write(Record {
                        wanted_by: self.me,
                        ..r
                    });
                }
                false
            }
        }
    }

    /// Gives the lease to the contender that asked for it; whether it did.
    pub fn hand_over(&mut self, store: &impl SharedStore, now: u64) -> bool {
        let (Some(r), cas) = read(store) else {
            return false;
        };
        if r.holder != self.me || r.wanted_by == 0 || r.wanted_by == self.me {
            return false;
        }
        let theirs = Record {
            holder: r.wanted_by,
            expires_ms: now.saturating_add(LEASE_MS),
            serving: false,
            wanted_by: 0,
        };
        let handed = store
            .set(LEASE_KEY, Some(&theirs.to_bytes()), Some(cas))
            .is_ok();
        if handed {
            self.leading = false;
            self.asked = false;
        }
        handed
    }

    /// Whether this root context holds the lease at `now`, read afresh: for
    /// answers that arrive between ticks, which only the holder applies.
    pub fn confirm(&self, store: &impl SharedStore, now: u64) -> bool {
        matches!(read(store).0, Some(r) if r.holder == self.me && now < r.expires_ms)
    }

    /// Gives the lease up if this root context holds it, so that the next
    /// tick of another one takes it without waiting for it to lapse. The
    /// record stays, lapsed: Envoy cannot delete an entry, only empty it,
    /// and an emptied one would hide the token a taker needs.
    pub fn release(&mut self, store: &impl SharedStore) {
        self.leading = false;
        if let (Some(r), cas) = read(store) {
            if r.holder == self.me {
                let lapsed = Record {
                    expires_ms: 0,
                    wanted_by: 0,
                    ..r
                };
                let _ = store.set(LEASE_KEY, Some(&lapsed.to_bytes()), Some(cas));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::store::MemoryStore;

    const T0: u64 = 1_000_000;

    #[test]
    fn the_first_contender_takes_the_lease_and_the_others_follow() {
        let s = MemoryStore::new();
        let (mut a, mut b) = (Lease::new(1), Lease::new(2));
        assert!(a.tick(&s, T0, true));
        assert!(!b.tick(&s, T0, true));
        assert!(a.tick(&s, T0 + 50, true));
        assert!(!b.tick(&s, T0 + 50, true));
        assert!(a.confirm(&s, T0 + 50) && !b.confirm(&s, T0 + 50));
    }

    #[test]
    fn a_lease_not_renewed_lapses_at_exactly_lease_ms() {
        let s = MemoryStore::new();
        let (mut a, mut b) = (Lease::new(1), Lease::new(2));
        assert!(a.tick(&s, T0, true));
        // a stops ticking.
        assert!(!b.tick(&s, T0 + LEASE_MS - 1, true));
        assert!(a.confirm(&s, T0 + LEASE_MS - 1));
        assert!(!a.confirm(&s, T0 + LEASE_MS));
        assert!(b.tick(&s, T0 + LEASE_MS, true));
        // a comes back: it is no longer leading.
        assert!(!a.tick(&s, T0 + LEASE_MS + 1, true));
    }

    #[test]
    fn the_holder_renews_before_it_lapses() {
        let s = MemoryStore::new();
        let (mut a, mut b) = (Lease::new(1), Lease::new(2));
        let mut now = T0;
        for _ in 0..200 {
            assert!(a.tick(&s, now, true));
            assert!(!b.tick(&s, now, true));
            now += 50;
        }
        // The renewal wrote a fresh expiry: still held well past LEASE_MS.
        let (r, _) = read(&s);
        assert!(r.unwrap().expires_ms > now);
    }

    #[test]
    fn two_contenders_at_the_same_instant_elect_one() {
        let s = MemoryStore::new();
        // Both read the lapsed lease before either writes: the second
        // write carries a stale token and fails.
        let (record, cas) = read(&s);
        assert!(record.is_none());
        let mut a = Lease::new(1);
        assert!(a.tick(&s, T0, true));
        let late = Record {
            holder: 2,
            expires_ms: T0 + LEASE_MS,
            serving: true,
            wanted_by: 0,
        };
        assert_eq!(
            s.set(LEASE_KEY, Some(&late.to_bytes()), Some(cas)),
            Err(SetError::CasMismatch)
        );
        assert!(a.confirm(&s, T0 + 1));
    }

    #[test]
    fn a_root_that_serves_no_requests_is_handed_the_lease() {
        let s = MemoryStore::new();
        let (mut worker, mut main) = (Lease::new(1), Lease::new(2));
        assert!(worker.tick(&s, T0, true));
        assert!(!worker.asked());
        // The main thread's root context asks; the worker still leads
        // until it hands over, at a moment of its choosing.
        assert!(!main.tick(&s, T0 + 10, false));
        assert!(worker.confirm(&s, T0 + 10));
        assert!(worker.tick(&s, T0 + 50, true));
        assert!(worker.asked());
        assert!(!main.tick(&s, T0 + 55, false), "asking once is enough");
        assert!(worker.tick(&s, T0 + 60, true) && worker.asked());
        assert!(worker.hand_over(&s, T0 + 70));
        assert!(!worker.leading() && !worker.confirm(&s, T0 + 70));
        assert!(!worker.hand_over(&s, T0 + 71), "nothing left to hand over");
        assert!(main.tick(&s, T0 + 80, false));
        // Stable from here: a serving root never asks a non-serving holder.
        for i in 1..100 {
            assert!(!worker.tick(&s, T0 + 80 + i * 50, true));
            assert!(main.tick(&s, T0 + 90 + i * 50, false) && !main.asked());
        }
    }

    #[test]
    fn a_lease_handed_to_a_contender_that_died_lapses_to_the_rest() {
        let s = MemoryStore::new();
        let (mut worker, mut gone, mut other) = (Lease::new(1), Lease::new(2), Lease::new(3));
        assert!(worker.tick(&s, T0, true));
        assert!(!gone.tick(&s, T0, false));
        assert!(worker.tick(&s, T0 + 50, true) && worker.hand_over(&s, T0 + 50));
        // `gone` never ticks again.
        assert!(!other.tick(&s, T0 + 50 + LEASE_MS - 1, true));
        assert!(other.tick(&s, T0 + 50 + LEASE_MS, true));
    }

    #[test]
    fn a_released_lease_is_taken_on_the_next_tick() {
        let s = MemoryStore::new();
        let (mut a, mut b) = (Lease::new(1), Lease::new(2));
        assert!(a.tick(&s, T0, true));
        b.release(&s);
        assert!(
            a.confirm(&s, T0),
            "releasing a lease one does not hold changes nothing"
        );
        a.release(&s);
        assert!(!a.leading());
        assert!(b.tick(&s, T0 + 1, true));
    }

    #[test]
    fn an_unreadable_lease_is_taken_over() {
        let s = MemoryStore::new();
        s.set(LEASE_KEY, Some(b"garbage"), None).unwrap();
        let mut a = Lease::new(1);
        assert!(a.tick(&s, T0, true));
        assert_eq!(read(&s).0.map(|r| r.holder), Some(1));
    }

    #[test]
    fn every_root_draws_its_own_number() {
        let s = MemoryStore::new();
        assert_eq!(draw_number(&s), Some(1));
        assert_eq!(draw_number(&s), Some(2));
        s.inject_cas_conflicts(3);
        assert_eq!(draw_number(&s), Some(3));
        s.set(ROOTS_KEY, Some(&u32::MAX.to_le_bytes()), None)
            .unwrap();
        assert_eq!(draw_number(&s), Some(1));
    }

    #[test]
    fn records_round_trip_and_garbage_reads_as_none() {
        let r = Record {
            holder: 7,
            expires_ms: T0,
            serving: true,
            wanted_by: 9,
        };
        assert_eq!(Record::from_bytes(&r.to_bytes()), Some(r));
        let bytes = r.to_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(Record::from_bytes(&bytes[..cut]), None);
        }
        assert_eq!(Record::from_bytes(&[bytes.as_slice(), &[0]].concat()), None);
    }
}
