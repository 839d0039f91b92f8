//! What the unit tests share: the config they sync, and the checks that hold the hand-written JSON to
//! serde_json.
//!
//! One of each, so that a test module reads as what it checks rather than
//! as another copy of how a plan or a key is spelled, and so a field added
//! to the wire types is filled in once.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::Limit;
use crate::json::{from_slice, to_vec, FromJson, ToJson};
use crate::key::{ApiKey, KeyHash};
use crate::layout::apply_sync;
use crate::store::MemoryStore;
use crate::wire::{LimitScope, SyncResponse, WireKey, WireLimit, WirePlan};

pub use crate::fixtures::limit;

/// Key number `n`: its body is 32 times the `n`th letter, so keys differ
/// and a test can name them by number.
pub fn key(n: u8) -> ApiKey {
    let body: String = core::iter::repeat_n((b'a' + n) as char, 32).collect();
    ApiKey::from_body(&body).unwrap()
}

/// A limit as the filter enforces it, named "l", for the bucket arithmetic.
pub fn bucket_limit(max: u64, window_seconds: u64, burst: u64) -> Limit {
    Limit {
        name: "l".into(),
        max,
        window_seconds,
        max_tokens: burst,
        scope: LimitScope::Key,
        per_envoy: false,
    }
}

impl WireLimit {
    pub(crate) fn with_burst(self, burst: u64) -> Self {
        Self {
            burst: Some(burst),
            ..self
        }
    }

    /// The limit each Envoy enforces on its own.
    pub(crate) fn per_envoy(self) -> Self {
        Self {
            per_envoy: true,
            ..self
        }
    }

    /// The limit shared by every key of a tenant.
    pub(crate) fn per_tenant(self) -> Self {
        Self {
            scope: LimitScope::Tenant,
            ..self
        }
    }
}

/// A plan without a quota or route costs.
pub fn plan(id: &str, name: &str, limits: Vec<WireLimit>) -> WirePlan {
    WirePlan {
        id: id.into(),
        name: name.into(),
        limits,
        monthly_quota: None,
        route_costs: vec![],
    }
}

impl WirePlan {
    pub(crate) fn with_quota(self, monthly_quota: u64) -> Self {
        Self {
            monthly_quota: Some(monthly_quota),
            ..self
        }
    }
}

/// An active key with nothing of its own: its plan decides.
pub fn wire_key(hash: &KeyHash, id: &str, tenant_id: &str, plan_id: &str) -> WireKey {
    WireKey {
        hash: hash.to_hex(),
        id: id.into(),
        tenant_id: tenant_id.into(),
        plan_id: plan_id.into(),
        active: true,
        ..Default::default()
    }
}

/// A sync answer of these plans and keys, the last page of `version`.
pub fn sync(version: u64, plans: Vec<WirePlan>, keys: Vec<WireKey>) -> SyncResponse {
    SyncResponse {
        version,
        plans,
        keys,
        ..Default::default()
    }
}

/// The smallest config with a key: `plan_1` ("Free", one request a second)
/// and key `key_1` of tenant `tnt_1` on it.
pub fn sync_with_key(version: u64, hash: &KeyHash) -> SyncResponse {
    sync(
        version,
        vec![plan("plan_1", "Free", vec![limit("per-second", 1, 1)])],
        vec![wire_key(hash, "key_1", "tnt_1", "plan_1")],
    )
}

/// A store with these plans and keys applied as version 1, on an Envoy
/// alone in its fleet ([`alone`]).
pub fn store(plans: Vec<WirePlan>, keys: Vec<WireKey>) -> MemoryStore {
    let store = MemoryStore::new();
    apply_sync(&store, &sync(1, plans, keys)).unwrap();
    alone(&store);
    store
}

/// Leases the whole of every fleet-wide limit to this Envoy, for good
/// ([`crate::fixtures::alone`]).
pub fn alone(store: &MemoryStore) {
    crate::fixtures::alone(store).unwrap();
}

/// Whether we accept `input` as a `T`, asserting that serde_json says the
/// same and, when both accept, reads the same value.
pub fn agree<T>(input: &[u8]) -> bool
where
    T: FromJson + DeserializeOwned + PartialEq + Debug,
{
    let ours = from_slice::<T>(input);
    let theirs = serde_json::from_slice::<T>(input);
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{:?}", String::from_utf8_lossy(input)),
        (Err(_), Err(_)) => {}
        _ => panic!(
            "{:?}: ours {ours:?}, serde_json {theirs:?}",
            String::from_utf8_lossy(input)
        ),
    }
    ours.is_ok()
}

/// `value` written as serde_json writes it, and read back from that.
pub fn round_trip<T>(value: &T)
where
    T: ToJson + FromJson + Serialize + DeserializeOwned + PartialEq + Debug,
{
    let expected = serde_json::to_vec(value).unwrap();
    assert_eq!(
        String::from_utf8(to_vec(value)).unwrap(),
        String::from_utf8(expected.clone()).unwrap()
    );
    reads_back(value);
}

/// `value` read back from what serde_json writes for it.
pub fn reads_back<T>(value: &T)
where
    T: FromJson + Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = serde_json::to_vec(value).unwrap();
    assert_eq!(from_slice::<T>(&bytes).as_ref(), Ok(value));
    let pretty = serde_json::to_vec_pretty(value).unwrap();
    assert_eq!(from_slice::<T>(&pretty).as_ref(), Ok(value));
    assert!(agree::<T>(&bytes) && agree::<T>(&pretty));
}

/// Every document one byte away from `bytes` (cut short, a byte replaced,
/// a byte inserted) gets serde_json's verdict as a `T`, and its value.
pub fn mutations_agree<T>(bytes: &[u8])
where
    T: FromJson + DeserializeOwned + PartialEq + Debug,
{
    const BYTES: &[u8] = b" \t\n\r\"\\,:[]{}0159-+.eEnutfalx/\x00\x1f\x7f\x80\xc3\xff";
    assert!(agree::<T>(bytes));
    let mut accepted = 0;
    for at in 0..=bytes.len() {
        agree::<T>(&bytes[..at]);
        for &b in BYTES {
            let mut inserted = bytes.to_vec();
            inserted.insert(at, b);
            accepted += usize::from(agree::<T>(&inserted));
            if at < bytes.len() {
                let mut replaced = bytes.to_vec();
                replaced[at] = b;
                accepted += usize::from(agree::<T>(&replaced));
            }
        }
    }
    // Both verdicts occur: whitespace and string contents are accepted.
    assert!(accepted > bytes.len(), "{accepted}");
}
