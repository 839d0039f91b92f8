//! `sync_decode`: the filter's path from the body of a control-plane answer
//! to the config it enforces, as the leader takes it (`filter/src/sync.rs`
//! and `report.rs`): `json::from_slice`, then `layout::apply_sync_at` into
//! shared data (here the core's `MemoryStore`, which behaves as Envoy's),
//! then what every worker reads back (`read_plan`, `read_key`,
//! `read_anonymous`, the version entry).
//!
//! The store starts with a config applied (version 1, the tests' `plan_1`
//! and the key hashed from `k`), so an answer can be stale, replace what is
//! there, or delete it. Properties: nothing panics; an answer is applied
//! exactly when every part of it validates on its own, and a refused answer
//! leaves every entry as it was (refused whole, never half applied); what
//! is applied reads back as the validated form of the last copy sent, with
//! deletions last and the version only on the last page; and everything
//! read back holds what validated config promises. A usage receipt, the
//! leader's other answer, and raw bytes as stored entries go the same way.

use std::collections::BTreeMap;

use tollgate_core::config::{Anonymous, KeyRecord, Plan};
use tollgate_core::fleet::{Lease, Slice, FULL_SHARE};
use tollgate_core::json;
use tollgate_core::key::KeyHash;
use tollgate_core::layout::{
    applied_state, apply_leases, apply_standings, apply_sync, apply_sync_at, buckets_key,
    decode_key_record, encode_key_record, key_record_key, read_anonymous, read_key, read_leases,
    read_plan, tenant_buckets_key, ApplyError, BucketEntry, QuotaCount, VERSION_KEY,
};
use tollgate_core::store::{MemoryStore, SharedStore};
use tollgate_core::wire::{
    LimitScope, SyncResponse, UsageReceipt, WireAnonymous, WireKey, WireLimit, WirePlan,
};

use crate::validated;

/// The leader's clock when the answer arrives.
const NOW_MS: u64 = 1_700_000_000_000;
/// The version the store holds before the answer.
const APPLIED: u64 = 1;

pub fn check(input: &[u8]) {
    if let Ok(sync) = json::from_slice::<SyncResponse>(input) {
        sync_answer(&sync);
    }
    if let Ok(receipt) = json::from_slice::<UsageReceipt>(input) {
        usage_receipt(&receipt);
    }
    stored_entries(input);
}

/// What the store holds before: the config of the core's tests.
fn config_before() -> SyncResponse {
    SyncResponse {
        version: APPLIED,
        plans: vec![WirePlan {
            id: "plan_1".into(),
            name: "Free".into(),
            limits: vec![WireLimit {
                name: "per-second".into(),
                max: 1,
                window_seconds: 1,
                burst: None,
                scope: LimitScope::Key,
                per_envoy: false,
            }],
            monthly_quota: None,
            route_costs: Vec::new(),
        }],
        keys: vec![WireKey {
            hash: KeyHash::of(b"k").to_hex(),
            id: "key_1".into(),
            tenant_id: "tnt_1".into(),
            plan_id: "plan_1".into(),
            active: true,
            ..WireKey::default()
        }],
        anonymous: Some(WireAnonymous::default()),
        ..SyncResponse::default()
    }
}

fn store_before() -> MemoryStore {
    let store = MemoryStore::new();
    apply_sync(&store, &config_before()).expect("the starting config applies");
    store
}

/// Every entry and its bytes, to see that a refusal changed none.
fn entries(store: &MemoryStore) -> BTreeMap<String, Vec<u8>> {
    store
        .keys()
        .into_iter()
        .filter_map(|name| store.get(&name).map(|(bytes, _)| (name, bytes)))
        .collect()
}

/// Whether every part of `sync` validates on its own.
fn every_part_valid(sync: &SyncResponse) -> bool {
    sync.plans.iter().all(|p| Plan::try_from(p).is_ok())
        && sync
            .keys
            .iter()
            .all(|k| KeyRecord::try_from(k).is_ok() && encode_key_record(k).is_ok())
        && sync
            .anonymous
            .as_ref()
            .is_none_or(|a| Anonymous::try_from(a).is_ok())
        && sync
            .deleted_keys
            .iter()
            .all(|hex| KeyHash::from_hex(hex).is_some())
}

fn sync_answer(sync: &SyncResponse) {
    let store = store_before();
    let before = entries(&store);
    let result = apply_sync_at(&store, sync, Some(NOW_MS));
    if sync.version < APPLIED {
        let stale = ApplyError::Stale {
            applied: APPLIED,
            offered: sync.version,
        };
        assert_eq!(result, Err(stale));
        assert_eq!(entries(&store), before, "a stale answer wrote");
        return;
    }
    match result {
        Ok(version) => {
            assert_eq!(version, sync.version);
            assert!(every_part_valid(sync), "applied with an invalid part");
            reads_back(&store, sync);
        }
        Err(ApplyError::Invalid(why)) => {
            assert!(!why.0.is_empty());
            assert!(!every_part_valid(sync), "refused, every part valid: {why}");
            assert_eq!(entries(&store), before, "refused, but not whole: {why}");
        }
        Err(other) => panic!("the memory store refuses no write: {other}"),
    }
}

/// What workers read after `sync` was applied over [`config_before`].
fn reads_back(store: &MemoryStore, sync: &SyncResponse) {
    let before = config_before();
    let state = applied_state(store).expect("a version is applied");
    if sync.next.is_none() {
        assert_eq!(state.version, sync.version);
        assert_eq!(state.synced_at_ms, Some(NOW_MS));
    } else {
        // A page of a longer walk: the version waits for the last one.
        assert_eq!((state.version, state.synced_at_ms), (APPLIED, None));
    }

    // The last copy of each, and deletions after everything written.
    let mut plans: BTreeMap<&str, Option<&WirePlan>> = BTreeMap::new();
    for plan in before.plans.iter().chain(&sync.plans) {
        plans.insert(&plan.id, Some(plan));
    }
    for id in &sync.deleted_plans {
        plans.insert(id, None);
    }
    let mut valid_plans = BTreeMap::new();
    for (id, wire) in plans {
        let expected = wire.map(|w| Plan::try_from(w).expect("applied plans validate"));
        let read = read_plan(store, id);
        assert_eq!(read, expected, "plan {id:?}");
        if let Some(plan) = read {
            validated::plan(&plan);
            valid_plans.insert(id.to_owned(), plan);
        }
    }

    // By entry name: a record is found by the first 96 bits of its hash.
    let mut keys: BTreeMap<String, (KeyHash, Option<&WireKey>)> = BTreeMap::new();
    for key in before.keys.iter().chain(&sync.keys) {
        let hash = KeyHash::from_hex(&key.hash).expect("applied hashes are hex");
        keys.insert(key_record_key(&hash).to_string(), (hash, Some(key)));
    }
    for hex in &sync.deleted_keys {
        let hash = KeyHash::from_hex(hex).expect("applied deletions are hex");
        assert!(store.get(&buckets_key(&hash)).is_none());
        keys.insert(key_record_key(&hash).to_string(), (hash, None));
    }
    for (hash, wire) in keys.into_values() {
        let expected = wire.map(|w| KeyRecord::try_from(w).expect("applied keys validate"));
        let read = read_key(store, &hash);
        assert_eq!(read, expected, "key {hash:?}");
        if let Some(record) = read {
            validated::key(&record);
            if let Some(plan) = valid_plans.get(&record.plan_id) {
                validated::key_on_plan(&record, plan);
            }
        }
    }

    let anonymous = sync.anonymous.as_ref().or(before.anonymous.as_ref());
    let expected = anonymous.map(|a| Anonymous::try_from(a).expect("applied access validates"));
    let read = read_anonymous(store);
    assert_eq!(read, expected);
    if let Some(anonymous) = &read {
        validated::anonymous(anonymous);
    }
}

/// A receipt's standings and leases land in the bucket entries they name,
/// the last of each per entry, and its terms beside the version.
fn usage_receipt(receipt: &UsageReceipt) {
    let store = store_before();
    let written = apply_standings(&store, &receipt.standings).expect("the memory store writes");
    let mut expected: BTreeMap<String, BucketEntry<'static>> = BTreeMap::new();
    let mut valid = 0;
    for standing in &receipt.standings {
        let Some(hash) = KeyHash::from_hex(&standing.key_hash) else {
            continue;
        };
        valid += 1;
        let count = QuotaCount::new(standing.others_used, standing.period_start_ms);
        expected
            .entry(buckets_key(&hash).to_string())
            .or_default()
            .others = Some(count);
    }
    assert_eq!(written, valid, "bad hashes are skipped, the rest written");
    if let Some(leases) = &receipt.leases {
        apply_leases(&store, leases, NOW_MS).expect("the memory store writes");
        let share = |share: u64| u32::try_from(share.min(u64::from(FULL_SHARE))).unwrap_or(0);
        for grant in &leases.grants {
            let entry = match (&grant.key_hash, &grant.tenant_id) {
                (Some(hex), _) => match KeyHash::from_hex(hex) {
                    Some(hash) => buckets_key(&hash),
                    None => continue,
                },
                (None, Some(tenant)) => tenant_buckets_key(tenant),
                (None, None) => continue,
            };
            expected.entry(entry.to_string()).or_default().lease = Some(Lease {
                share: share(grant.share),
                generation: leases.generation,
            });
        }
        for slice in &leases.slices {
            let Some(hash) = KeyHash::from_hex(&slice.key_hash) else {
                continue;
            };
            expected
                .entry(buckets_key(&hash).to_string())
                .or_default()
                .slice = Some(Slice {
                cap: slice.cap,
                generation: leases.generation,
                period_start_ms: slice.period_start_ms,
            });
        }
        let terms = read_leases(&store).expect("terms are stored");
        assert_eq!(terms.seq, leases.seq);
        assert_eq!(terms.terms.generation, leases.generation);
        assert_eq!(
            terms.terms.valid_until_ms,
            NOW_MS.saturating_add(leases.valid_ms)
        );
        assert_eq!(terms.terms.default_share, share(leases.default_share));
        let state = applied_state(&store).expect("the version entry stays");
        assert_eq!(state.version, APPLIED);
        assert_eq!(state.fleet, Some(terms));
    }
    for (name, entry) in expected {
        let (bytes, _) = store.get(&name).expect("a written entry is there");
        assert_eq!(BucketEntry::decode(&bytes), entry, "{name}");
    }
}

/// Bytes as an entry in shared data: another filter's, or damaged. Reading
/// them must not panic; a key record that reads is a valid one, and a
/// bucket entry written back reads as what was read.
fn stored_entries(input: &[u8]) {
    let hash = KeyHash::of(b"k");
    if let Some(record) = decode_key_record(input, &hash) {
        assert_eq!(record.hash, hash);
        validated::key(&record);
    }
    let entry = BucketEntry::decode(input);
    assert_eq!(BucketEntry::decode(&entry.encode()), entry);
    let store = MemoryStore::new();
    store
        .set(VERSION_KEY, Some(input), None)
        .expect("the memory store writes");
    if let Some(state) = applied_state(&store) {
        if let Some(fleet) = state.fleet {
            assert!(fleet.terms.default_share <= FULL_SHARE);
        }
    }
}
