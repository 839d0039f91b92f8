//! A VM's memo of the config it has read from shared data, valid for one
//! applied config version.
//!
//! Reading a key record or a plan costs a host call that copies the value
//! into the VM, and parsing it; together that was most of a request's cost.
//! Every sync that changes anything writes a new `tg/version` last, and a
//! request reads that version anyway (no version, no config), so the memo
//! keeps what it read until the version moves, then forgets all of it. A
//! revoked key is therefore refused by the first request that sees the
//! version that revoked it, exactly as without the memo. Absent keys are
//! remembered too, so a stream of unknown keys costs no more than known ones.
//! It is bounded: when full, the key remembered longest ago makes room for
//! each new one. Nothing is forgotten all at once: freeing 16k records took
//! 3 ms of one request natively (more in Wasm), a stall for every request
//! queued behind it, whenever a worker saw more keys than that or the
//! version moved. A moved version's keys are set aside and freed a few per
//! lookup ([`RETIRED_PER_LOOKUP`]). The version itself is read at
//! most once per millisecond of the host clock: a busy worker takes tens of
//! requests each millisecond, and a change is then seen at most 1 ms later.
//!
//! Its maps hash with foldhash seeded by the caller, not std's SipHash:
//! foldhash is several times cheaper on a request path that hashes a key
//! hash and a plan id, and std's `RandomState` would bring its own source of
//! randomness (with 5 KB of WASI error names) into `filter.wasm`. The seed
//! is what keeps a client from choosing keys that collide; with it secret,
//! it would also have to grind SHA-256.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use foldhash::fast::FixedState;

use crate::config::{Anonymous, KeyRecord, Plan};
use crate::fleet::Terms;
use crate::key::KeyHash;
use crate::layout::{applied_state, read_anonymous, read_key, read_plan};
use crate::store::SharedStore;

/// Key records (or their absence) remembered per VM before starting over.
pub const MAX_KEYS: usize = 16_384;
/// Plans remembered per VM before starting over.
pub const MAX_PLANS: usize = 1_024;
/// Keys of an earlier version freed per key lookup: 16k of them in 2,048
/// lookups, about 1.6 µs a lookup natively.
pub const RETIRED_PER_LOOKUP: usize = 8;

type KeyMap = HashMap<KeyHash, Option<Rc<KeyRecord>>, FixedState>;

#[derive(Debug, Default)]
pub struct ConfigCache {
    version: Option<u64>,
    /// When `version` was last read from the store.
    version_read_ms: Option<u64>,
    /// When the last successful sync ended, as of that read.
    synced_at_ms: Option<u64>,
    /// The fleet terms, as of that read.
    fleet: Option<Terms>,
    keys: KeyMap,
    /// The keys of `keys`, the longest remembered first.
    key_order: VecDeque<KeyHash>,
    /// An earlier version's keys, still to be freed.
    retired: Retired,
    plans: HashMap<String, Option<Rc<Plan>>, FixedState>,
    anonymous: Option<Option<Rc<Anonymous>>>,
}

impl ConfigCache {
    /// A memo with a fixed hash seed: for tests and one-off decisions.
    pub fn new() -> Self {
        Self::default()
    }

    /// A memo whose maps hash with `seed`, which should be random.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            keys: HashMap::with_hasher(FixedState::with_seed(seed)),
            plans: HashMap::with_hasher(FixedState::with_seed(seed.rotate_left(32))),
            ..Self::default()
        }
    }

    /// The applied version, read from `store` unless it was read at `now_ms`
    /// already; `None` until a config has been applied.
    pub fn version(&mut self, store: &impl SharedStore, now_ms: u64) -> Option<u64> {
        if self.version.is_some() && self.version_read_ms == Some(now_ms) {
            return self.version;
        }
        let applied = applied_state(store)?;
        self.at_version(applied.version);
        self.version_read_ms = Some(now_ms);
        self.synced_at_ms = applied.synced_at_ms;
        self.fleet = applied.fleet.map(|f| f.terms);
        Some(applied.version)
    }

    /// When the last successful sync ended, as of the last
    /// [`ConfigCache::version`] read (no read of its own).
    pub fn synced_at_ms(&self) -> Option<u64> {
        self.synced_at_ms
    }

    /// This Envoy's fleet terms, as of the last [`ConfigCache::version`]
    /// read (no read of its own).
    pub fn fleet(&self) -> Option<Terms> {
        self.fleet
    }

    /// Forgets everything unless `version` is the one remembered.
    pub fn at_version(&mut self, version: u64) {
        if self.version != Some(version) {
            // Same room as before, so the new version's keys cause no
            // growth either. What an even earlier version left goes now.
            let room = self.keys.capacity();
            let hasher = self.keys.hasher().clone();
            let order_room = self.key_order.capacity();
            self.retired = Retired {
                keys: std::mem::replace(
                    &mut self.keys,
                    HashMap::with_capacity_and_hasher(room, hasher),
                ),
                order: std::mem::replace(&mut self.key_order, VecDeque::with_capacity(order_room)),
            };
            self.plans.clear();
            self.anonymous = None;
            self.version = Some(version);
        }
    }

    pub fn key(&mut self, store: &impl SharedStore, hash: &KeyHash) -> Option<Rc<KeyRecord>> {
        self.retired.forget(RETIRED_PER_LOOKUP);
        if let Some(known) = self.keys.get(hash) {
            return known.clone();
        }
        let record = read_key(store, hash).map(Rc::new);
        if self.keys.len() >= MAX_KEYS {
            if let Some(oldest) = self.key_order.pop_front() {
                self.keys.remove(&oldest);
            }
        }
        self.keys.insert(*hash, record.clone());
        self.key_order.push_back(*hash);
        record
    }

    pub fn plan(&mut self, store: &impl SharedStore, plan_id: &str) -> Option<Rc<Plan>> {
        if let Some(known) = self.plans.get(plan_id) {
            return known.clone();
        }
        let plan = read_plan(store, plan_id).map(Rc::new);
        if self.plans.len() >= MAX_PLANS {
            self.plans.clear();
        }
        self.plans.insert(plan_id.to_owned(), plan.clone());
        plan
    }

    pub fn anonymous(&mut self, store: &impl SharedStore) -> Option<Rc<Anonymous>> {
        self.anonymous
            .get_or_insert_with(|| read_anonymous(store).map(Rc::new))
            .clone()
    }
}

/// Keys remembered under an earlier version, freed a few at a time.
#[derive(Debug, Default)]
struct Retired {
    keys: KeyMap,
    order: VecDeque<KeyHash>,
}

impl Retired {
    fn forget(&mut self, count: usize) {
        for _ in 0..count {
            let Some(hash) = self.order.pop_front() else {
                if self.keys.capacity() > 0 {
                    *self = Self::default();
                }
                return;
            };
            self.keys.remove(&hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::apply_sync;
    use crate::store::MemoryStore;
    use crate::testing::sync_with_key;
    use crate::wire::SyncResponse;

    fn sync(version: u64, hash: &KeyHash, active: bool) -> SyncResponse {
        let mut sync = sync_with_key(version, hash);
        sync.keys[0].active = active;
        sync
    }

    #[test]
    fn what_it_remembers_lasts_until_the_version_moves() {
        remembers_until_the_version_moves(ConfigCache::new());
        // The seed changes the hashing, nothing else.
        remembers_until_the_version_moves(ConfigCache::with_seed(0x0123_4567_89ab_cdef));
    }

    fn remembers_until_the_version_moves(mut cache: ConfigCache) {
        let store = MemoryStore::new();
        let (hash, unknown) = (KeyHash::of(b"k"), KeyHash::of(b"u"));
        apply_sync(&store, &sync(1, &hash, true)).unwrap();
        cache.at_version(1);
        assert!(cache.key(&store, &hash).unwrap().active);
        assert!(cache.key(&store, &unknown).is_none());
        assert_eq!(&*cache.plan(&store, "plan_1").unwrap().name, "Free");

        // Revoked in version 2: the old version's memo still answers...
        apply_sync(&store, &sync(2, &hash, false)).unwrap();
        cache.at_version(1);
        assert!(cache.key(&store, &hash).unwrap().active);
        // ...until the request that reads version 2.
        cache.at_version(2);
        assert!(!cache.key(&store, &hash).unwrap().active);
    }

    #[test]
    fn the_version_is_read_once_per_millisecond() {
        let store = MemoryStore::new();
        let hash = KeyHash::of(b"k");
        let mut cache = ConfigCache::new();
        assert_eq!(cache.version(&store, 10), None, "nothing applied yet");
        apply_sync(&store, &sync(1, &hash, true)).unwrap();
        assert_eq!(cache.version(&store, 10), Some(1));
        apply_sync(&store, &sync(2, &hash, false)).unwrap();
        assert_eq!(cache.version(&store, 10), Some(1), "same millisecond");
        assert_eq!(cache.version(&store, 11), Some(2));
        assert!(!cache.key(&store, &hash).unwrap().active);
    }

    #[test]
    fn the_sync_time_rides_on_the_version_read() {
        use crate::decide::is_stale;
        use crate::layout::{applied_state, apply_sync_at, Applied};
        let store = MemoryStore::new();
        let hash = KeyHash::of(b"k");
        let mut cache = ConfigCache::new();
        apply_sync(&store, &sync(1, &hash, true)).unwrap();
        assert_eq!(cache.version(&store, 10), Some(1));
        assert_eq!(cache.synced_at_ms(), None, "written without a time");
        assert!(!is_stale(cache.synced_at_ms(), 30_000, u64::MAX));

        // The leader records when each sync succeeded, same version or not.
        apply_sync_at(&store, &sync(1, &hash, true), Some(1_000)).unwrap();
        assert_eq!(
            applied_state(&store),
            Some(Applied {
                version: 1,
                synced_at_ms: Some(1_000),
                fleet: None,
            })
        );
        assert_eq!(cache.version(&store, 11), Some(1));
        assert_eq!(cache.synced_at_ms(), Some(1_000));
        assert!(!is_stale(cache.synced_at_ms(), 30_000, 30_999));
        assert!(is_stale(cache.synced_at_ms(), 30_000, 31_000));
        apply_sync_at(&store, &sync(2, &hash, true), Some(31_000)).unwrap();
        assert_eq!(cache.version(&store, 31_000), Some(2));
        assert!(!is_stale(cache.synced_at_ms(), 30_000, 31_000));
    }

    #[test]
    fn when_full_the_key_remembered_longest_ago_makes_room() {
        let store = MemoryStore::new();
        let mut cache = ConfigCache::new();
        cache.at_version(1);
        let hash = |i: u32| KeyHash::of(&i.to_le_bytes());
        for i in 0..MAX_KEYS as u32 + 2 {
            cache.key(&store, &hash(i));
            // A key seen again is not remembered twice.
            cache.key(&store, &hash(i));
        }
        assert_eq!(cache.keys.len(), MAX_KEYS);
        assert_eq!(cache.key_order.len(), MAX_KEYS);
        assert!(!cache.keys.contains_key(&hash(0)));
        assert!(!cache.keys.contains_key(&hash(1)));
        assert!(cache.keys.contains_key(&hash(2)));
        assert!(cache.keys.contains_key(&hash(MAX_KEYS as u32 + 1)));
        cache.at_version(2);
        assert!(cache.keys.is_empty() && cache.key_order.is_empty());
    }

    #[test]
    fn a_moved_versions_keys_are_freed_a_few_per_lookup() {
        let store = MemoryStore::new();
        let (hash, unknown) = (KeyHash::of(b"k"), KeyHash::of(b"u"));
        apply_sync(&store, &sync(1, &hash, true)).unwrap();
        let mut cache = ConfigCache::with_seed(7);
        cache.at_version(1);
        let other = |i: u32| KeyHash::of(&i.to_le_bytes());
        for i in 0..20 {
            cache.key(&store, &other(i));
        }
        assert!(cache.key(&store, &hash).unwrap().active);
        let room = cache.keys.capacity();

        // Revoked in version 2: nothing of version 1 answers any more...
        apply_sync(&store, &sync(2, &hash, false)).unwrap();
        cache.at_version(2);
        assert!(cache.keys.is_empty() && cache.key_order.is_empty());
        assert!(cache.keys.capacity() >= room);
        assert_eq!(cache.retired.order.len(), 21);
        assert!(!cache.key(&store, &hash).unwrap().active);
        // ...and what it remembered goes a few keys per lookup.
        assert_eq!(cache.retired.keys.len(), 21 - RETIRED_PER_LOOKUP);
        for _ in 0..2 {
            assert!(cache.key(&store, &unknown).is_none());
        }
        assert_eq!(cache.retired.keys.len(), 0);
        cache.key(&store, &unknown);
        assert_eq!(cache.retired.keys.capacity(), 0, "the table given back");
        cache.at_version(3);
        assert_eq!(cache.retired.order.len(), 2);
        // A version that moves again before they are freed frees them at once.
        cache.at_version(4);
        assert!(cache.retired.order.is_empty() && cache.retired.keys.is_empty());
    }
}
