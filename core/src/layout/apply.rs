//! Applying what the leader receives: a sync answer into the config entries
//! (plans, key records, anonymous access, the version), and a usage
//! receipt's standings into the keys' bucket entries; and reading the config
//! entries back.
//!
//! The leader is the only writer of config, so this is where a bad answer is
//! refused whole and the version is written last: every VM reads the version
//! first and trusts what it names.

use crate::config::{Anonymous, InvalidConfig, KeyRecord, Plan};
use crate::fleet::{Lease, Slice, Terms, FULL_SHARE};
use crate::json;
use crate::key::KeyHash;
use crate::store::{SetError, SharedStore};
use crate::wire::{FleetLeases, QuotaStanding, SyncResponse, WireAnonymous, WirePlan};

use super::bucket_entry::{read_for_update, BucketEntry, QuotaCount};
use super::key_record::encode_key_record;
use super::names::{
    buckets_key, key_record_key, plan_key, tenant_buckets_key, ANONYMOUS_KEY, FLEET_KEY,
    VERSION_KEY,
};
use crate::json::write::Quoted;

/// The config version this Envoy has applied, if any.
pub fn applied_version(store: &impl SharedStore) -> Option<u64> {
    applied_state(store).map(|applied| applied.version)
}

/// What the version entry holds: the applied version; then, when the
/// leader recorded it, when the last successful sync ended (Unix ms); then
/// the fleet terms of the last usage receipt applied. Every worker reads it
/// on each request anyway, so neither the staleness budget nor fleet-wide
/// limits cost a host call of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub version: u64,
    pub synced_at_ms: Option<u64>,
    pub fleet: Option<AppliedTerms>,
}

/// The fleet terms as stored: what requests use, and the receipt's `seq`
/// the next usage report acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedTerms {
    pub terms: Terms,
    pub seq: u64,
}

/// `synced_at_ms` unknown, when fleet terms follow it.
const UNKNOWN_SYNC: u64 = u64::MAX;

/// The version entry, if a config has been applied.
pub fn applied_state(store: &impl SharedStore) -> Option<Applied> {
    let (bytes, _) = store.get(VERSION_KEY)?;
    decode_applied(&bytes)
}

fn word(bytes: &[u8], at: usize) -> Option<u64> {
    let raw: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}

fn decode_applied(bytes: &[u8]) -> Option<Applied> {
    Some(Applied {
        version: word(bytes, 0)?,
        synced_at_ms: word(bytes, 8).filter(|&at| at != UNKNOWN_SYNC),
        fleet: bytes.get(16..).and_then(decode_terms),
    })
}

/// Four words: generation, valid until, default share, seq.
fn decode_terms(bytes: &[u8]) -> Option<AppliedTerms> {
    let default_share = word(bytes, 16)?.min(u64::from(FULL_SHARE));
    Some(AppliedTerms {
        terms: Terms {
            generation: word(bytes, 0)?,
            valid_until_ms: word(bytes, 8)?,
            default_share: u32::try_from(default_share).unwrap_or(0),
        },
        seq: word(bytes, 24)?,
    })
}

fn encode_terms(fleet: &AppliedTerms, out: &mut Vec<u8>) {
    let t = fleet.terms;
    for word in [
        t.generation,
        t.valid_until_ms,
        u64::from(t.default_share),
        fleet.seq,
    ] {
        out.extend_from_slice(&word.to_le_bytes());
    }
}

/// The fleet terms of the last receipt applied, config or not.
pub fn read_leases(store: &impl SharedStore) -> Option<AppliedTerms> {
    let (bytes, _) = store.get(FLEET_KEY)?;
    decode_terms(&bytes)
}

/// The version entry's bytes.
fn encode_applied(applied: &Applied) -> Vec<u8> {
    let mut bytes = applied.version.to_le_bytes().to_vec();
    if applied.synced_at_ms.is_some() || applied.fleet.is_some() {
        let at = applied.synced_at_ms.unwrap_or(UNKNOWN_SYNC);
        bytes.extend_from_slice(&at.to_le_bytes());
    }
    if let Some(fleet) = &applied.fleet {
        encode_terms(fleet, &mut bytes);
    }
    bytes
}

pub fn read_plan(store: &impl SharedStore, plan_id: &str) -> Option<Plan> {
    let (bytes, _) = store.get(&plan_key(plan_id))?;
    let wire: WirePlan = json::from_slice(&bytes).ok()?;
    Plan::try_from(&wire).ok()
}

pub fn read_anonymous(store: &impl SharedStore) -> Option<Anonymous> {
    let (bytes, _) = store.get(ANONYMOUS_KEY)?;
    let wire: WireAnonymous = json::from_slice(&bytes).ok()?;
    Anonymous::try_from(&wire).ok()
}

/// Why a sync response was not applied. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    Invalid(InvalidConfig),
    Write(SetError),
    /// The response is older than what is already applied.
    Stale {
        applied: u64,
        offered: u64,
    },
}

impl core::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Invalid(e) => write!(f, "invalid config, none of it applied: {e}"),
            Self::Write(e) => write!(f, "{e}"),
            Self::Stale { applied, offered } => {
                write!(
                    f,
                    "offered version {offered} is older than applied {applied}"
                )
            }
        }
    }
}

/// Applies a sync response: validates all of it first (a bad response is
/// rejected whole and the old config stays), then writes plans, keys and
/// deletions, and the version last, unless more pages follow
/// ([`SyncResponse::next`]): then the version waits for the last page.
/// Bucket entries are not created here but on a key's first request, so a
/// key that is never used costs only its record.
pub fn apply_sync(store: &impl SharedStore, sync: &SyncResponse) -> Result<u64, ApplyError> {
    apply_sync_at(store, sync, None)
}

/// [`apply_sync`], recording with the version that this sync succeeded at
/// `synced_at_ms` (the leader's clock), for the staleness budget.
pub fn apply_sync_at(
    store: &impl SharedStore,
    sync: &SyncResponse,
    synced_at_ms: Option<u64>,
) -> Result<u64, ApplyError> {
    let before = applied_state(store);
    if let Some(applied) = before {
        if sync.version < applied.version {
            return Err(ApplyError::Stale {
                applied: applied.version,
                offered: sync.version,
            });
        }
    }
    for plan in &sync.plans {
        Plan::try_from(plan).map_err(ApplyError::Invalid)?;
    }
    let mut keys = Vec::with_capacity(sync.keys.len());
    for key in &sync.keys {
        let record = KeyRecord::try_from(key).map_err(ApplyError::Invalid)?;
        keys.push((
            record.hash,
            encode_key_record(key).map_err(ApplyError::Invalid)?,
        ));
    }
    if let Some(anonymous) = &sync.anonymous {
        Anonymous::try_from(anonymous).map_err(ApplyError::Invalid)?;
    }
    let mut deleted = Vec::with_capacity(sync.deleted_keys.len());
    for hex in &sync.deleted_keys {
        deleted.push(KeyHash::from_hex(hex).ok_or_else(|| {
            ApplyError::Invalid(InvalidConfig(format!(
                "deleted key hash {} is not 64 hex digits",
                Quoted(hex)
            )))
        })?);
    }

    for plan in &sync.plans {
        store
            .set(&plan_key(&plan.id), Some(&json::to_vec(plan)), None)
            .map_err(ApplyError::Write)?;
    }
    for (hash, bytes) in &keys {
        store
            .set(&key_record_key(hash), Some(bytes), None)
            .map_err(ApplyError::Write)?;
    }
    for hash in &deleted {
        for entry in [key_record_key(hash), buckets_key(hash)] {
            store.set(&entry, None, None).map_err(ApplyError::Write)?;
        }
    }
    for plan_id in &sync.deleted_plans {
        store
            .set(&plan_key(plan_id), None, None)
            .map_err(ApplyError::Write)?;
    }
    if let Some(anonymous) = &sync.anonymous {
        store
            .set(ANONYMOUS_KEY, Some(&json::to_vec(anonymous)), None)
            .map_err(ApplyError::Write)?;
    }
    if sync.next.is_none() {
        store
            .set(
                VERSION_KEY,
                Some(&encode_applied(&Applied {
                    version: sync.version,
                    synced_at_ms,
                    // Leases are the usage reporter's: a sync keeps them,
                    // or takes those a receipt brought before any config.
                    fleet: before.and_then(|b| b.fleet).or_else(|| read_leases(store)),
                })),
                None,
            )
            .map_err(ApplyError::Write)?;
    }
    Ok(sync.version)
}

/// Compare-and-swap attempts for writing one standing before the receipt is
/// left for the next report (its cursor is not advanced).
const STANDING_ATTEMPTS: usize = 16;

/// Applies the standings of a usage receipt into the keys' bucket entries.
/// Bad hashes are skipped, not fatal: standings are advisory counts, not config.
pub fn apply_standings(
    store: &impl SharedStore,
    standings: &[QuotaStanding],
) -> Result<usize, SetError> {
    let mut applied = 0;
    for s in standings {
        let Some(hash) = KeyHash::from_hex(&s.key_hash) else {
            continue;
        };
        let others = QuotaCount::new(s.others_used, s.period_start_ms);
        write_others(store, &buckets_key(&hash), others)?;
        applied += 1;
    }
    Ok(applied)
}

/// Sets the other Envoys' count of one bucket entry, keeping the rest.
fn write_others(store: &impl SharedStore, entry: &str, others: QuotaCount) -> Result<(), SetError> {
    update_entry(store, entry, |e| e.others = Some(others))
}

/// Changes one bucket entry with `change`, keeping the rest: a
/// compare-and-swap loop like a request's, which it races with.
fn update_entry(
    store: &impl SharedStore,
    entry: &str,
    change: impl Fn(&mut BucketEntry<'_>),
) -> Result<(), SetError> {
    for _ in 0..STANDING_ATTEMPTS {
        let (bytes, cas) = read_for_update(store, entry);
        let mut buckets = BucketEntry::decode(&bytes);
        change(&mut buckets);
        match store.set(entry, Some(&buckets.encode()), Some(cas)) {
            Err(SetError::CasMismatch) => continue,
            done => return done,
        }
    }
    Err(SetError::CasMismatch)
}

/// Applies a receipt's fleet leases: each grant into its bucket entry, then
/// the terms, valid `valid_ms` from `sent_at_ms` (when the report left this
/// Envoy, so never later than the control plane counts from). Grants first:
/// a request between the two sees a new grant under old terms, which the
/// control plane allowed for when it sent them (see `tollgate_core::fleet`).
/// The terms go to [`FLEET_KEY`], and into the version entry once there is one.
pub fn apply_leases(
    store: &impl SharedStore,
    leases: &FleetLeases,
    sent_at_ms: u64,
) -> Result<(), SetError> {
    let clamp = |share: u64| u32::try_from(share.min(u64::from(FULL_SHARE))).unwrap_or(0);
    for grant in &leases.grants {
        let entry = match (&grant.key_hash, &grant.tenant_id) {
            (Some(hex), _) => match KeyHash::from_hex(hex) {
                Some(hash) => buckets_key(&hash),
                None => continue,
            },
            (None, Some(tenant)) => tenant_buckets_key(tenant),
            (None, None) => continue,
        };
        let lease = Lease {
            share: clamp(grant.share),
            generation: leases.generation,
        };
        update_entry(store, &entry, |e| e.lease = Some(lease))?;
    }
    for slice in &leases.slices {
        let Some(hash) = KeyHash::from_hex(&slice.key_hash) else {
            continue;
        };
        let slice = Slice {
            cap: slice.cap,
            generation: leases.generation,
            period_start_ms: slice.period_start_ms,
        };
        update_entry(store, &buckets_key(&hash), |e| e.slice = Some(slice))?;
    }
    let terms = AppliedTerms {
        terms: Terms {
            generation: leases.generation,
            valid_until_ms: sent_at_ms.saturating_add(leases.valid_ms),
            default_share: clamp(leases.default_share),
        },
        seq: leases.seq,
    };
    let mut bytes = Vec::with_capacity(32);
    encode_terms(&terms, &mut bytes);
    store.set(FLEET_KEY, Some(&bytes), None)?;
    for _ in 0..STANDING_ATTEMPTS {
        let Some((bytes, cas)) = store.get(VERSION_KEY) else {
            // No config yet: its first version entry takes them from FLEET_KEY.
            return Ok(());
        };
        let Some(mut applied) = decode_applied(&bytes) else {
            return Ok(());
        };
        applied.fleet = Some(terms);
        match store.set(VERSION_KEY, Some(&encode_applied(&applied)), Some(cas)) {
            Err(SetError::CasMismatch) => continue,
            done => return done,
        }
    }
    Err(SetError::CasMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::Bucket;
    use crate::layout::key_record::{read_key, KeyExtras};
    use crate::store::MemoryStore;
    use crate::testing::sync_with_key;
    use crate::wire::WireScope;

    #[test]
    fn entries_are_what_serde_json_wrote_so_earlier_filters_entries_still_read() {
        let store = MemoryStore::new();
        let hash = KeyHash::of(b"k");
        let mut sync = sync_with_key(1, &hash);
        sync.plans[0].monthly_quota = Some(1_000);
        sync.plans[0].route_costs = vec![crate::wire::WireRouteCost {
            methods: Some(vec!["POST".into()]),
            path_prefix: Some("/batch".into()),
            cost: 5,
        }];
        sync.plans[0].limits[0].scope = crate::wire::LimitScope::Tenant;
        let scopes = vec![WireScope {
            methods: Some(vec!["GET".into()]),
            path_prefix: Some("/v1/".into()),
        }];
        sync.keys[0].scopes = Some(scopes.clone());
        sync.keys[0].allowed_cidrs = Some(vec!["10.0.0.0/8".into()]);
        sync.anonymous = Some(WireAnonymous {
            routes: scopes.clone(),
            plan_id: Some("plan_1".into()),
        });
        apply_sync(&store, &sync).unwrap();

        let plan = serde_json::to_vec(&sync.plans[0]).unwrap();
        assert_eq!(store.get(&plan_key("plan_1")).unwrap().0, plan);
        let anonymous = serde_json::to_vec(&sync.anonymous).unwrap();
        assert_eq!(store.get(ANONYMOUS_KEY).unwrap().0, anonymous);
        let extras = serde_json::to_vec(&KeyExtras {
            scopes: Some(scopes),
            allowed_cidrs: Some(vec!["10.0.0.0/8".into()]),
            limits: None,
        })
        .unwrap();
        let record = store.get(&key_record_key(&hash)).unwrap().0;
        assert!(record.ends_with(&extras));
        // So what serde_json wrote reads as what was applied.
        assert_eq!(
            read_plan(&store, "plan_1"),
            Plan::try_from(&sync.plans[0]).ok()
        );
        let applied = sync
            .anonymous
            .as_ref()
            .map(|a| Anonymous::try_from(a).unwrap());
        assert_eq!(read_anonymous(&store), applied);
        assert_eq!(
            read_key(&store, &hash),
            KeyRecord::try_from(&sync.keys[0]).ok()
        );
    }

    #[test]
    fn apply_writes_everything_and_the_version_last() {
        let store = MemoryStore::new();
        let hash = KeyHash::of(b"k");
        assert_eq!(applied_version(&store), None);
        assert_eq!(apply_sync(&store, &sync_with_key(3, &hash)), Ok(3));
        assert_eq!(applied_version(&store), Some(3));
        assert_eq!(&*read_key(&store, &hash).unwrap().id, "key_1");
        assert_eq!(&*read_plan(&store, "plan_1").unwrap().name, "Free");
        // Created on the key's first request, not for every key synced.
        assert!(store.get(&buckets_key(&hash)).is_none());
    }

    #[test]
    fn a_page_with_more_to_come_writes_its_keys_but_not_the_version() {
        let store = MemoryStore::new();
        let (first, second) = (KeyHash::of(b"k1"), KeyHash::of(b"k2"));
        let mut page = sync_with_key(5, &first);
        page.next = Some("5.abc".into());
        assert_eq!(apply_sync(&store, &page), Ok(5));
        assert!(read_key(&store, &first).is_some());
        assert_eq!(applied_version(&store), None, "no version mid-walk");
        assert_eq!(apply_sync(&store, &sync_with_key(6, &second)), Ok(6));
        assert!(read_key(&store, &first).is_some() && read_key(&store, &second).is_some());
        assert_eq!(applied_version(&store), Some(6));
    }

    #[test]
    fn a_bad_response_is_rejected_whole() {
        let store = MemoryStore::new();
        let hash = KeyHash::of(b"k");
        apply_sync(&store, &sync_with_key(1, &hash)).unwrap();
        let before = store.keys();
        let mut bad = sync_with_key(2, &KeyHash::of(b"other"));
        bad.plans[0].limits[0].max = 0;
        assert!(matches!(
            apply_sync(&store, &bad),
            Err(ApplyError::Invalid(_))
        ));
        let mut bad = sync_with_key(2, &KeyHash::of(b"other"));
        bad.deleted_keys.push("xyz".into());
        assert!(matches!(
            apply_sync(&store, &bad),
            Err(ApplyError::Invalid(_))
        ));
        assert_eq!(store.keys(), before);
        assert_eq!(applied_version(&store), Some(1));
    }

    #[test]
    fn deletion_removes_the_record_and_stale_versions_are_refused() {
        let store = MemoryStore::new();
        let hash = KeyHash::of(b"k");
        apply_sync(&store, &sync_with_key(1, &hash)).unwrap();
        let delete = SyncResponse {
            version: 2,
            deleted_keys: vec![hash.to_hex()],
            ..Default::default()
        };
        apply_sync(&store, &delete).unwrap();
        assert!(read_key(&store, &hash).is_none());
        assert!(read_plan(&store, "plan_1").is_some());
        let delete_plan = SyncResponse {
            version: 2,
            deleted_plans: vec!["plan_1".into()],
            ..Default::default()
        };
        apply_sync(&store, &delete_plan).unwrap();
        assert!(read_plan(&store, "plan_1").is_none());
        assert_eq!(
            apply_sync(&store, &sync_with_key(1, &hash)),
            Err(ApplyError::Stale {
                applied: 2,
                offered: 1
            })
        );
    }

    #[test]
    fn an_existing_bucket_survives_a_key_update() {
        let store = MemoryStore::new();
        let hash = KeyHash::of(b"k");
        apply_sync(&store, &sync_with_key(1, &hash)).unwrap();
        let state = BucketEntry {
            buckets: vec![(
                "per-second",
                Bucket {
                    level: 0,
                    last_fill_ms: 9,
                },
            )],
            ..Default::default()
        }
        .encode();
        store.set(&buckets_key(&hash), Some(&state), None).unwrap();
        let mut update = sync_with_key(2, &hash);
        update.keys[0].active = false;
        apply_sync(&store, &update).unwrap();
        assert_eq!(store.get(&buckets_key(&hash)).unwrap().0, state);
        assert!(!read_key(&store, &hash).unwrap().active);
    }
}
