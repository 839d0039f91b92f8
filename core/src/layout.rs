//! Where config and bucket state live in shared data, and how they are encoded.
//!
//! Every name starts with [`NAMESPACE`], `tg` and the layout version: under
//! Istio every Wasm plugin of a proxy shares one shared-data namespace (the
//! empty `vm_id`), and during a rolling upgrade an old and a new image run
//! side by side in one Envoy. A change to any encoding below bumps the
//! version, so neither ever reads the other's entries; each keeps its own
//! config, lease and usage until the old one is gone.
//!
//! - `tg2/version`: the config version applied (u64 little-endian). Absent
//!   until the first sync: the filter then fails closed.
//! - `tg2/p/<plan id>`: a plan (wire JSON).
//! - `tg2/k/<lookup id>`: a key record, compact binary ([`encode_key_record`]):
//!   with a million keys, bytes per key is what Envoy's memory is made of.
//! - `tg2/b/<lookup id>`: all token buckets of one key in one entry, and the
//!   key's own quota count for the period ([`QUOTA_ENTRY`]), so one CAS covers
//!   every window and the quota and a request consumes from all of them or
//!   none. It also holds the key's quota use through other Envoys
//!   ([`OTHERS_ENTRY`], written by the leader from the control plane's
//!   standings), so a request reads one entry, not two.
//! - `tg2/bt/<tenant id>`: the buckets of the tenant-scoped limits.
//! - `tg2/ba/<slot>`: the buckets of anonymous clients, one slot per hash of
//!   the client address (so memory stays bounded), with the slot's owner.
//! - `tg2/anonymous`: anonymous access (wire JSON).
//! - `tg2/lease`, `tg2/roots`, `tg2/report` and the queue `tg2/usage`: the
//!   leader election and the usage hand-over between root contexts (the
//!   filter's `lease` and `report` modules).
//!
//! Only the leader writes `tg2/version`, `tg2/p/`, `tg2/k/` and
//! `tg2/anonymous`. Envoy lets a write to an absent entry through whatever
//! its CAS token, so a bucket entry is created by a write guarded with a
//! token no present entry has ([`read_for_update`]): of racing creators one
//! writes it and the others' write fails like any lost CAS race, so their
//! loop reads again and sees every consumption.

use crate::bucket::Bucket;
use crate::config::{Anonymous, InvalidConfig, KeyRecord, Plan};
use crate::json::{self, Field, Fields, FromJson, Object, Reader, ToJson};
use crate::key::KeyHash;
use crate::store::{SetError, SharedStore};
use crate::wire::{SyncResponse, WireAnonymous, WireKey, WireLimit, WirePlan, WireScope};

/// The start of every shared-data and queue name: `tg` and the layout
/// version. Six bytes with the kind (`tg2/k/`), so a key's entry name is
/// 22 bytes, the longest string Envoy's C++ library keeps without a heap
/// block (see [`KeyHash::push_lookup_id`]).
pub const NAMESPACE: &str = "tg2/";
pub const VERSION_KEY: &str = "tg2/version";
pub const ANONYMOUS_KEY: &str = "tg2/anonymous";
/// Which root context leads (the filter's `lease`).
pub const LEASE_KEY: &str = "tg2/lease";
/// The last root-context number handed out: each root context takes the
/// next, so every contender for the lease has its own.
pub const ROOTS_KEY: &str = "tg2/roots";
/// The usage reporter's state, kept here rather than in any VM so a new
/// leader carries on where the last one stopped ([`crate::usage::ReportState`]).
pub const REPORT_KEY: &str = "tg2/report";
/// The shared queue through which every VM hands its counts to the leader.
pub const USAGE_QUEUE: &str = "tg2/usage";
const BUCKETS_FORMAT: u8 = 1;
/// The pseudo-bucket in `b/` holding the key's own quota count: `level` is
/// the count, `last_fill_ms` the start of the period it counts. Limit names
/// cannot start with `@`.
pub const QUOTA_ENTRY: &str = "@quota";
/// The pseudo-bucket in `b/` holding the key's quota use through other
/// Envoys: `level` is the count, `last_fill_ms` the start of its period.
pub const OTHERS_ENTRY: &str = "@others";
/// The pseudo-bucket in `ba/` naming the client that owns the slot.
pub const OWNER_ENTRY: &str = "@owner";
/// Anonymous clients share this many bucket slots.
pub const ANONYMOUS_SLOTS: u32 = 65_536;
/// A CAS token no entry will have: "write only if absent" in Envoy's terms.
/// Overwriting a present entry with it would need that entry's token to be
/// exactly this one, one value in 2^32 in that instant's race.
const CREATE_ONLY: u32 = u32::MAX;

/// A bucket entry's bytes and the CAS token to write it back with. An absent
/// entry reads as empty with `CREATE_ONLY`, so the write creates it, and
/// fails like a lost race if another worker created it first. Creating it
/// empty and reading it back took two more host calls on every key's first
/// request, which with a million keys is most requests.
pub fn read_for_update(store: &impl SharedStore, entry: &str) -> (Vec<u8>, u32) {
    store.get(entry).unwrap_or((Vec::new(), CREATE_ONLY))
}

pub fn tenant_buckets_key(tenant_id: &str) -> String {
    format!("tg2/bt/{tenant_id}")
}

/// An anonymous client's identity: its IPv4 address, or its IPv6 /64 (one
/// subscriber's usual allocation), as a number.
pub fn client_identity(ip: std::net::IpAddr) -> u128 {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> 64 << 64) | 1,
    }
}

pub fn anonymous_buckets_key(identity: u128) -> String {
    let slot = KeyHash::of(&identity.to_le_bytes()).prefix_u32();
    format!("tg2/ba/{}", slot % ANONYMOUS_SLOTS)
}

/// Compare-and-swap attempts for writing one standing before the receipt is
/// left for the next report (its cursor is not advanced).
const STANDING_ATTEMPTS: usize = 16;

/// Applies the standings of a usage receipt into the keys' bucket entries.
/// Bad hashes are skipped, not fatal: standings are advisory counts, not config.
pub fn apply_standings(
    store: &impl SharedStore,
    standings: &[crate::wire::QuotaStanding],
) -> Result<usize, SetError> {
    let mut applied = 0;
    for s in standings {
        let Some(hash) = KeyHash::from_hex(&s.key_hash) else {
            continue;
        };
        let entry = buckets_key(&hash);
        let others = Bucket {
            level: u128::from(s.others_used),
            last_fill_ms: s.period_start_ms,
        };
        write_others(store, &entry, others)?;
        applied += 1;
    }
    Ok(applied)
}

/// Sets the [`OTHERS_ENTRY`] of one bucket entry, keeping its buckets: a
/// compare-and-swap loop like a request's, which it races with.
fn write_others(store: &impl SharedStore, entry: &str, others: Bucket) -> Result<(), SetError> {
    for _ in 0..STANDING_ATTEMPTS {
        let (bytes, cas) = read_for_update(store, entry);
        let kept = decode_buckets(&bytes)
            .into_iter()
            .filter(|(name, _)| *name != OTHERS_ENTRY);
        let value = encode_buckets(kept.chain([(OTHERS_ENTRY, others)]));
        match store.set(entry, Some(&value), Some(cas)) {
            Err(SetError::CasMismatch) => continue,
            done => return done,
        }
    }
    Err(SetError::CasMismatch)
}

pub fn read_anonymous(store: &impl SharedStore) -> Option<Anonymous> {
    let (bytes, _) = store.get(ANONYMOUS_KEY)?;
    let wire: WireAnonymous = json::from_slice(&bytes).ok()?;
    Anonymous::try_from(&wire).ok()
}

pub fn plan_key(plan_id: &str) -> String {
    format!("tg2/p/{plan_id}")
}

pub fn key_record_key(hash: &KeyHash) -> String {
    entry_name("tg2/k/", hash)
}

pub fn buckets_key(hash: &KeyHash) -> String {
    entry_name("tg2/b/", hash)
}

/// `prefix` and the key's lookup id: 22 bytes for the six-byte prefixes.
fn entry_name(prefix: &str, hash: &KeyHash) -> String {
    let mut name = String::with_capacity(prefix.len() + 16);
    name.push_str(prefix);
    hash.push_lookup_id(&mut name);
    name
}

/// The config version this Envoy has applied, if any.
pub fn applied_version(store: &impl SharedStore) -> Option<u64> {
    let (bytes, _) = store.get(VERSION_KEY)?;
    let raw: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}

pub fn read_plan(store: &impl SharedStore, plan_id: &str) -> Option<Plan> {
    let (bytes, _) = store.get(&plan_key(plan_id))?;
    let wire: WirePlan = json::from_slice(&bytes).ok()?;
    Plan::try_from(&wire).ok()
}

pub fn read_key(store: &impl SharedStore, hash: &KeyHash) -> Option<KeyRecord> {
    let (bytes, _) = store.get(&key_record_key(hash))?;
    decode_key_record(&bytes, hash)
}

/// The record's format. Records of the formats before it (2: ids as text)
/// lived under the unversioned names, which this layout never reads.
const KEY_FORMAT: u8 = 3;
const KEY_ACTIVE: u8 = 1;
const KEY_EXPIRES: u8 = 2;
const KEY_QUOTA: u8 = 4;
const KEY_ANCHOR: u8 = 8;
const KEY_EXTRAS: u8 = 16;
/// The id, tenant and plan, in this order, with the flag telling that the
/// field is packed ([`pack_id`]) and the kind the control plane gives it.
const KEY_ID_FIELDS: [(u8, &str); 3] = [(32, "key_"), (64, "tnt_"), (128, "plan_")];

/// The rarely set parts of a key record, kept as JSON after the binary head.
/// Unknown fields are skipped, not refused: serde read it without
/// `deny_unknown_fields`, and records in shared data outlive filters.
#[derive(Default)]
#[cfg_attr(test, derive(Debug, PartialEq, serde::Serialize, serde::Deserialize))]
struct KeyExtras {
    #[cfg_attr(test, serde(default, skip_serializing_if = "Option::is_none"))]
    scopes: Option<Vec<WireScope>>,
    #[cfg_attr(test, serde(default, skip_serializing_if = "Option::is_none"))]
    allowed_cidrs: Option<Vec<String>>,
    #[cfg_attr(test, serde(default, skip_serializing_if = "Option::is_none"))]
    limits: Option<Vec<WireLimit>>,
}

const EXTRAS_FIELDS: Fields = Fields::open(&[
    Field::optional("scopes"),
    Field::optional("allowed_cidrs"),
    Field::optional("limits"),
]);

impl FromJson for KeyExtras {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, json::Error> {
        let mut v = KeyExtras::default();
        reader.object(&EXTRAS_FIELDS, &mut |r, field| match field {
            0 => r.set(&mut v.scopes),
            1 => r.set(&mut v.allowed_cidrs),
            2 => r.set(&mut v.limits),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

impl ToJson for KeyExtras {
    fn write_json(&self, out: &mut String) {
        Object::new(out)
            .option("scopes", &self.scopes)
            .option("allowed_cidrs", &self.allowed_cidrs)
            .option("limits", &self.limits)
            .end();
    }
}

/// A key record as stored under `k/`: a format byte, flags, then the id,
/// tenant and plan, each either packed into 15 bytes or as text after a
/// length byte, then the optional expiry and quota (u64 little-endian) and
/// billing anchor day, then, only if the key has scopes, CIDRs or limits of
/// its own, those as JSON. The hash is the entry's name, so it is not stored
/// again.
///
/// A plain key is 47 bytes, where the ids as text made it 78: Envoy keeps
/// each value in its own allocation, and with a million keys that
/// allocation is a third of what Envoy's memory grows by.
pub fn encode_key_record(wire: &WireKey) -> Result<Vec<u8>, InvalidConfig> {
    let extras = KeyExtras {
        scopes: wire.scopes.clone(),
        allowed_cidrs: wire.allowed_cidrs.clone(),
        limits: wire.limits.clone(),
    };
    let has_extras =
        extras.scopes.is_some() || extras.allowed_cidrs.is_some() || extras.limits.is_some();
    let flag = |on: bool, bit: u8| if on { bit } else { 0 };
    let mut flags = flag(wire.active, KEY_ACTIVE)
        | flag(wire.expires_at_ms.is_some(), KEY_EXPIRES)
        | flag(wire.monthly_quota.is_some(), KEY_QUOTA)
        | flag(wire.billing_anchor_day.is_some(), KEY_ANCHOR)
        | flag(has_extras, KEY_EXTRAS);
    let mut out = Vec::with_capacity(48);
    out.extend_from_slice(&[KEY_FORMAT, 0]);
    let texts = [
        ("id", &wire.id),
        ("tenant_id", &wire.tenant_id),
        ("plan_id", &wire.plan_id),
    ];
    for ((field, text), (bit, kind)) in texts.into_iter().zip(KEY_ID_FIELDS) {
        if let Some(packed) = pack_id(text, kind) {
            flags |= bit;
            out.extend_from_slice(&packed);
            continue;
        }
        let len = u8::try_from(text.len()).map_err(|_| {
            InvalidConfig(format!("key {}: {field} is longer than 255 bytes", wire.id))
        })?;
        out.push(len);
        out.extend_from_slice(text.as_bytes());
    }
    if let Some(slot) = out.get_mut(1) {
        *slot = flags;
    }
    for number in [wire.expires_at_ms, wire.monthly_quota]
        .into_iter()
        .flatten()
    {
        out.extend_from_slice(&number.to_le_bytes());
    }
    out.extend(wire.billing_anchor_day);
    if has_extras {
        out.extend_from_slice(&json::to_vec(&extras));
    }
    Ok(out)
}

/// Reads what [`encode_key_record`] wrote as the record of `hash`; `None`
/// if it is not such a record or not a valid one.
pub fn decode_key_record(bytes: &[u8], hash: &KeyHash) -> Option<KeyRecord> {
    let (&[format, flags], mut rest) = bytes.split_first_chunk::<2>()?;
    if format != KEY_FORMAT {
        return None;
    }
    let mut text = |(bit, kind): (u8, &str)| -> Option<String> {
        if flags & bit != 0 {
            let (packed, tail) = rest.split_first_chunk::<PACKED_ID_LEN>()?;
            rest = tail;
            return unpack_id(packed, kind);
        }
        let (&len, tail) = rest.split_first()?;
        let (value, tail) = tail.split_at_checked(usize::from(len))?;
        rest = tail;
        String::from_utf8(value.to_vec()).ok()
    };
    let [id, tenant, plan] = KEY_ID_FIELDS;
    let (id, tenant_id, plan_id) = (text(id)?, text(tenant)?, text(plan)?);
    let mut number = |bit: u8| -> Option<Option<u64>> {
        if flags & bit == 0 {
            return Some(None);
        }
        let (value, tail) = rest.split_first_chunk::<8>()?;
        rest = tail;
        Some(Some(u64::from_le_bytes(*value)))
    };
    let expires_at_ms = number(KEY_EXPIRES)?;
    let monthly_quota = number(KEY_QUOTA)?;
    let billing_anchor_day = if flags & KEY_ANCHOR == 0 {
        None
    } else {
        let (&day, tail) = rest.split_first()?;
        rest = tail;
        Some(day)
    };
    let extras: KeyExtras = if flags & KEY_EXTRAS == 0 {
        if !rest.is_empty() {
            return None;
        }
        KeyExtras::default()
    } else {
        json::from_slice(rest).ok()?
    };
    let wire = WireKey {
        hash: String::new(),
        id,
        tenant_id,
        plan_id,
        active: flags & KEY_ACTIVE != 0,
        expires_at_ms,
        scopes: extras.scopes,
        allowed_cidrs: extras.allowed_cidrs,
        limits: extras.limits,
        monthly_quota,
        billing_anchor_day,
    };
    KeyRecord::with_hash(&wire, *hash).ok()
}

/// The ids the control plane makes are a kind and 20 alphanumerics
/// (`key_4fZ...`): two halves of ten base-62 digits, each below 2^60.
const ID_DIGITS: usize = 20;
const PACKED_ID_LEN: usize = 15;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// 62^10: one half's digits as a number are below this.
const HALF_LIMIT: u64 = 839_299_365_868_340_224;
const HALF_BITS: u32 = 60;

/// `id` in 15 bytes, if it is `kind` and 20 alphanumerics.
fn pack_id(id: &str, kind: &str) -> Option<[u8; PACKED_ID_LEN]> {
    let digits = id.strip_prefix(kind)?.as_bytes();
    if digits.len() != ID_DIGITS {
        return None;
    }
    let half = |digits: &[u8]| {
        digits.iter().try_fold(0u64, |n, &b| {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'A'..=b'Z' => b - b'A' + 10,
                b'a'..=b'z' => b - b'a' + 36,
                _ => return None,
            };
            Some(n * 62 + u64::from(d))
        })
    };
    let (high, low) = digits.split_at(ID_DIGITS / 2);
    let n = (u128::from(half(high)?) << HALF_BITS) | u128::from(half(low)?);
    n.to_le_bytes().first_chunk().copied()
}

/// What [`pack_id`] packed; `None` for bytes it cannot have written.
fn unpack_id(packed: &[u8; PACKED_ID_LEN], kind: &str) -> Option<String> {
    let mut wide = [0u8; 16];
    for (to, from) in wide.iter_mut().zip(packed) {
        *to = *from;
    }
    let n = u128::from_le_bytes(wide);
    let high = u64::try_from(n >> HALF_BITS).ok()?;
    let low = u64::try_from(n & ((1 << HALF_BITS) - 1)).ok()?;
    if high >= HALF_LIMIT || low >= HALF_LIMIT {
        return None;
    }
    let mut digits = [0u8; ID_DIGITS];
    let (high_digits, low_digits) = digits.split_at_mut(ID_DIGITS / 2);
    for (mut n, out) in [(high, high_digits), (low, low_digits)] {
        for slot in out.iter_mut().rev() {
            *slot = *BASE62.get(usize::try_from(n % 62).ok()?)?;
            n /= 62;
        }
    }
    let mut id = String::with_capacity(kind.len() + ID_DIGITS);
    id.push_str(kind);
    id.push_str(core::str::from_utf8(&digits).ok()?);
    Some(id)
}

/// Buckets of one key, by limit name, borrowed from the entry's bytes.
pub fn decode_buckets(bytes: &[u8]) -> Vec<(&str, Bucket)> {
    let mut out = Vec::new();
    let mut rest = match bytes.split_first() {
        Some((&BUCKETS_FORMAT, rest)) => rest,
        _ => return out,
    };
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        let (Some(name), Some(level), Some(last)) = (
            tail.get(..len),
            tail.get(len..len + 16),
            tail.get(len + 16..len + 24),
        ) else {
            break;
        };
        let (Ok(name), Ok(level), Ok(last)) = (
            core::str::from_utf8(name),
            <[u8; 16]>::try_from(level),
            <[u8; 8]>::try_from(last),
        ) else {
            break;
        };
        out.push((
            name,
            Bucket {
                level: u128::from_le_bytes(level),
                last_fill_ms: u64::from_le_bytes(last),
            },
        ));
        rest = tail.get(len + 24..).unwrap_or(&[]);
    }
    out
}

pub fn encode_buckets<'a>(buckets: impl IntoIterator<Item = (&'a str, Bucket)>) -> Vec<u8> {
    let mut out = vec![BUCKETS_FORMAT];
    for (name, bucket) in buckets {
        let name = name.as_bytes();
        let Ok(len) = u8::try_from(name.len()) else {
            continue;
        };
        out.push(len);
        out.extend_from_slice(name);
        out.extend_from_slice(&bucket.level.to_le_bytes());
        out.extend_from_slice(&bucket.last_fill_ms.to_le_bytes());
    }
    out
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
    if let Some(applied) = applied_version(store) {
        if sync.version < applied {
            return Err(ApplyError::Stale {
                applied,
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
                "deleted key hash {hex:?} is not 64 hex digits"
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
            .set(VERSION_KEY, Some(&sync.version.to_le_bytes()), None)
            .map_err(ApplyError::Write)?;
    }
    Ok(sync.version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::tests::{agree, mutations_agree, round_trip};
    use crate::store::MemoryStore;

    fn sync_with_key(version: u64, hash: &KeyHash) -> SyncResponse {
        SyncResponse {
            version,
            plans: vec![WirePlan {
                id: "plan_1".into(),
                name: "Free".into(),
                limits: vec![WireLimit {
                    name: "per-second".into(),
                    max: 1,
                    window_seconds: 1,
                    burst: None,
                    scope: Default::default(),
                }],
                monthly_quota: None,
                route_costs: vec![],
            }],
            keys: vec![WireKey {
                hash: hash.to_hex(),
                id: "key_1".into(),
                tenant_id: "tnt_1".into(),
                plan_id: "plan_1".into(),
                active: true,
                ..Default::default()
            }],
            deleted_keys: vec![],
            deleted_plans: vec![],
            anonymous: None,
            next: None,
        }
    }

    #[crate::testing::test]
    fn key_records_round_trip_compactly() {
        let hash = KeyHash::of(b"k");
        let record = |wire: &WireKey| Some(KeyRecord::try_from(wire).unwrap());
        // Ids as the control plane makes them are packed.
        let plain = WireKey {
            hash: hash.to_hex(),
            id: "key_0aZ9bY8cX7dW6eV5fU4g".into(),
            tenant_id: "tnt_zzzzzzzzzzzzzzzzzzzz".into(),
            plan_id: "plan_00000000000000000000".into(),
            active: true,
            ..Default::default()
        };
        let bytes = encode_key_record(&plain).unwrap();
        assert_eq!(bytes.len(), 2 + 3 * 15);
        assert_eq!(decode_key_record(&bytes, &hash), record(&plain));

        // Any other ids are kept as text.
        let other = WireKey {
            id: "key_01JD3Q8Z5K2M7".into(),
            tenant_id: "acme".into(),
            plan_id: "plan_0aZ9bY8cX7dW6eV5fU4!".into(),
            ..plain.clone()
        };
        let bytes = encode_key_record(&other).unwrap();
        assert_eq!(bytes.len(), 2 + (1 + 17) + (1 + 4) + (1 + 25));
        assert_eq!(decode_key_record(&bytes, &hash), record(&other));

        let full = WireKey {
            active: false,
            expires_at_ms: Some(1_700_000_000_123),
            scopes: Some(vec![WireScope {
                methods: Some(vec!["GET".into()]),
                path_prefix: Some("/v1/".into()),
            }]),
            allowed_cidrs: Some(vec!["10.0.0.0/8".into()]),
            limits: Some(vec![WireLimit {
                name: "per-minute".into(),
                max: 5,
                window_seconds: 60,
                burst: Some(2),
                scope: Default::default(),
            }]),
            monthly_quota: Some(7),
            billing_anchor_day: Some(31),
            ..plain.clone()
        };
        let bytes = encode_key_record(&full).unwrap();
        assert_eq!(decode_key_record(&bytes, &hash), record(&full));

        // Truncated, extended, foreign or empty bytes are no record.
        for cut in 0..bytes.len() - 1 {
            let partial = decode_key_record(&bytes[..cut], &hash);
            assert!(partial.is_none(), "decoded {cut} bytes");
        }
        // Another format is no record.
        let mut other_format = encode_key_record(&other).unwrap();
        other_format[0] = 2;
        assert_eq!(decode_key_record(&other_format, &hash), None);

        let mut longer = encode_key_record(&plain).unwrap();
        longer.push(0);
        assert!(decode_key_record(&longer, &hash).is_none());
        assert!(decode_key_record(br#"{"id":"key_1"}"#, &hash).is_none());

        let long = WireKey {
            tenant_id: "t".repeat(256),
            ..plain
        };
        assert!(encode_key_record(&long).is_err());
    }

    #[crate::testing::test]
    fn key_extras_are_json_as_serde_json_writes_and_reads_it() {
        let full = KeyExtras {
            scopes: Some(vec![
                WireScope {
                    methods: Some(vec!["GET".into(), "HEAD".into()]),
                    path_prefix: Some("/v1/\"é\"".into()),
                },
                WireScope::default(),
            ]),
            allowed_cidrs: Some(vec!["10.0.0.0/8".into(), "::1/128".into()]),
            limits: Some(vec![WireLimit {
                name: "per-minute".into(),
                max: u64::MAX,
                window_seconds: 60,
                burst: Some(0),
                scope: crate::wire::LimitScope::Tenant,
            }]),
        };
        round_trip(&full);
        round_trip(&KeyExtras::default());
        round_trip(&KeyExtras {
            scopes: Some(vec![]),
            allowed_cidrs: Some(vec![]),
            limits: Some(vec![]),
        });

        // Unknown fields are skipped whatever their value, which is
        // checked as serde_json checks a value it ignores.
        let nested =
            br#"{"x":{"a":[1,-2.5e+3,0,1E-7,true,false,null,"s\u12aB\/",{},[]]},"scopes":null}"#;
        let deep = format!(
            "{{\"x\":{}1{}}}",
            "[{\"a\":".repeat(5000),
            "}]".repeat(5000)
        );
        let cases: &[(&[u8], bool)] = &[
            (br#"{"x":1}"#, true),
            (nested, true),
            (deep.as_bytes(), true),
            (br#"{"x":1,"x":"again"}"#, true),
            (br#"{"x":"\ud800"}"#, true),
            (b"{\"x\":\"\xff\"}", true),
            (b"{\"x\":{\"\xff\\udc00\":1}}", true),
            (br#"{"x":-0.0e-0}"#, true),
            (br#"{"x":01}"#, false),
            (br#"{"x":-}"#, false),
            (br#"{"x":-a}"#, false),
            (br#"{"x":1.}"#, false),
            (br#"{"x":.1}"#, false),
            (br#"{"x":1e}"#, false),
            (br#"{"x":1e+}"#, false),
            (br#"{"x":+1}"#, false),
            (br#"{"x":[1,]}"#, false),
            (br#"{"x":[,]}"#, false),
            (br#"{"x":{"a":1,}}"#, false),
            (br#"{"x":{"a"}}"#, false),
            (br#"{"x":{"a":}}"#, false),
            (br#"{"x":{1:2}}"#, false),
            (br#"{"x":[}"#, false),
            (br#"{"x":[1}"#, false),
            (br#"{"x":{"a":1]}"#, false),
            (br#"{"x":[[]]]}"#, false),
            (br#"{"x":[[]}"#, false),
            (br#"{"x":"\q"}"#, false),
            (br#"{"x":"\u12"}"#, false),
            (b"{\"x\":\"a\nb\"}", false),
            (br#"{"x":tru}"#, false),
            (br#"{"x":nul}"#, false),
            (br#"{"x":}"#, false),
            (br#"{"x":1 2}"#, false),
            (br#"{"x":1"#, false),
            (br#"{"x":[1"#, false),
            (br#"{"x\ud800":1}"#, false),
            (br#"{"scopes":null,"scopes":null}"#, false),
            (br#"{"limits":[{"name":"a"}]}"#, false),
            (br#"[null,null,null]"#, true),
            (br#"[null,null,null,null]"#, false),
        ];
        for (input, accepted) in cases {
            let what = String::from_utf8_lossy(&input[..input.len().min(80)]);
            assert_eq!(agree::<KeyExtras>(input), *accepted, "{what}");
        }
        mutations_agree::<KeyExtras>(nested);
        mutations_agree::<KeyExtras>(&serde_json::to_vec(&full).unwrap());
    }

    #[crate::testing::test]
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

    #[crate::testing::test]
    fn packed_ids_are_exact_and_only_what_packing_writes_unpacks() {
        for id in [
            "key_00000000000000000000",
            "key_zzzzzzzzzzzzzzzzzzzz",
            "key_0000000000zzzzzzzzzz",
            "key_Az09aZ90zA8y7X6w5V4u",
        ] {
            let packed = pack_id(id, "key_").unwrap();
            assert_eq!(unpack_id(&packed, "key_").as_deref(), Some(id));
        }
        for id in [
            "key_0000000000000000000",
            "key_000000000000000000000",
            "tnt_00000000000000000000",
            "key_0000000000000000000-",
            "key_000000000000000000é",
        ] {
            assert_eq!(pack_id(id, "key_"), None, "{id}");
        }
        // Each half is below 62^10: one more in either is no id.
        let top = pack_id("key_zzzzzzzzzzzzzzzzzzzz", "key_").unwrap();
        let n = u128::from_le_bytes([top.as_slice(), &[0]].concat().try_into().unwrap());
        for over in [n + 1, n + (1 << HALF_BITS)] {
            let bytes: [u8; PACKED_ID_LEN] =
                over.to_le_bytes()[..PACKED_ID_LEN].try_into().unwrap();
            assert_eq!(unpack_id(&bytes, "key_"), None);
        }
        assert_eq!(unpack_id(&[0xff; PACKED_ID_LEN], "key_"), None);
    }

    #[crate::testing::test]
    fn buckets_round_trip_and_garbage_decodes_to_nothing() {
        let b = Bucket {
            level: 123_456_789_012_345,
            last_fill_ms: 42,
        };
        let bytes = encode_buckets([("per-second", b), ("daily", b)]);
        assert_eq!(
            decode_buckets(&bytes),
            vec![("per-second", b), ("daily", b)]
        );
        assert!(decode_buckets(&[]).is_empty());
        assert!(decode_buckets(&[9, 1, 2]).is_empty());
        assert_eq!(decode_buckets(&bytes[..bytes.len() - 1]).len(), 1);
    }

    #[crate::testing::test]
    fn apply_writes_everything_and_the_version_last() {
        let store = MemoryStore::new();
        let hash = KeyHash::of(b"k");
        assert_eq!(applied_version(&store), None);
        assert_eq!(apply_sync(&store, &sync_with_key(3, &hash)), Ok(3));
        assert_eq!(applied_version(&store), Some(3));
        assert_eq!(read_key(&store, &hash).unwrap().id, "key_1");
        assert_eq!(read_plan(&store, "plan_1").unwrap().name, "Free");
        // Created on the key's first request, not for every key synced.
        assert!(store.get(&buckets_key(&hash)).is_none());
    }

    #[crate::testing::test]
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

    #[crate::testing::test]
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

    #[crate::testing::test]
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

    #[crate::testing::test]
    fn an_existing_bucket_survives_a_key_update() {
        let store = MemoryStore::new();
        let hash = KeyHash::of(b"k");
        apply_sync(&store, &sync_with_key(1, &hash)).unwrap();
        let state = encode_buckets([(
            "per-second",
            Bucket {
                level: 0,
                last_fill_ms: 9,
            },
        )]);
        store.set(&buckets_key(&hash), Some(&state), None).unwrap();
        let mut update = sync_with_key(2, &hash);
        update.keys[0].active = false;
        apply_sync(&store, &update).unwrap();
        assert_eq!(store.get(&buckets_key(&hash)).unwrap().0, state);
        assert!(!read_key(&store, &hash).unwrap().active);
    }
}
