//! The names of the shared-data entries and queues: what lives where.
//!
//! Apart from the encodings so that a reader can see the whole namespace in
//! one screen, and so that a name is made in one place: the filter's lease,
//! reporter and queue use these too, and a name spelled twice would be a
//! name that can drift.

use crate::key::KeyHash;

/// The start of every shared-data and queue name: `tg` and the layout
/// version. Six bytes with the kind (`tg3/k/`), so a key's entry name is
/// 22 bytes, the longest string Envoy's C++ library keeps without a heap
/// block (see [`KeyHash::lookup_id`]).
pub const NAMESPACE: &str = "tg3/";
pub const VERSION_KEY: &str = "tg3/version";
pub const ANONYMOUS_KEY: &str = "tg3/anonymous";
/// Which root context leads (the filter's `lease`).
pub const LEASE_KEY: &str = "tg3/lease";
/// The last root-context number handed out: each root context takes the
/// next, so every contender for the lease has its own.
pub const ROOTS_KEY: &str = "tg3/roots";
/// The usage reporter's state, kept here rather than in any VM so a new
/// leader carries on where the last one stopped ([`crate::usage::ReportState`]).
pub const REPORT_KEY: &str = "tg3/report";
/// This Envoy's instance id in the proxy registry, drawn by the first
/// leader and kept by every later one (the filter's `identity` module).
pub const INSTANCE_KEY: &str = "tg3/instance";
/// The fleet terms of the last usage receipt ([`super::AppliedTerms`]),
/// kept apart from the version entry too, so a receipt applied before the
/// first config is not lost: that config's version entry starts with them.
pub const FLEET_KEY: &str = "tg3/fleet";
/// The shared queue through which every VM hands its counts to the leader.
pub const USAGE_QUEUE: &str = "tg3/usage";
/// Anonymous clients share this many bucket slots.
pub const ANONYMOUS_SLOTS: u32 = 65_536;

pub fn plan_key(plan_id: &str) -> String {
    format!("tg3/p/{plan_id}")
}

pub fn key_record_key(hash: &KeyHash) -> EntryName {
    key_entry(b"tg3/k/", hash)
}

pub fn buckets_key(hash: &KeyHash) -> EntryName {
    key_entry(b"tg3/b/", hash)
}

pub fn tenant_buckets_key(tenant_id: &str) -> EntryName {
    EntryName::Other(format!("tg3/bt/{tenant_id}"))
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

pub fn anonymous_buckets_key(identity: u128) -> EntryName {
    let slot = KeyHash::of(&identity.to_le_bytes()).prefix_u32();
    EntryName::Other(format!("tg3/ba/{}", slot % ANONYMOUS_SLOTS))
}

/// A key's entry name: a six-byte prefix and its lookup id, 22 bytes.
const KEY_ENTRY_LEN: usize = 22;

/// The name of an entry a request reads: a key's ([`key_record_key`],
/// [`buckets_key`]) kept without a heap block, as every request with a key
/// names its bucket entry, and with many keys most name their record's
/// too; a tenant's or an anonymous client's as text. Read as a `str`.
#[derive(Clone, PartialEq, Eq)]
pub enum EntryName {
    Key([u8; KEY_ENTRY_LEN]),
    Other(String),
}

impl core::ops::Deref for EntryName {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Self::Key(name) => core::str::from_utf8(name).unwrap_or_default(),
            Self::Other(name) => name,
        }
    }
}

impl core::fmt::Debug for EntryName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(&**self, f)
    }
}

/// `prefix` and `hash`'s lookup id. Not inlined: the filter makes these
/// names in several places, and one copy of the code will do.
#[inline(never)]
fn key_entry(prefix: &[u8; KEY_ENTRY_LEN - 16], hash: &KeyHash) -> EntryName {
    let mut name = [0; KEY_ENTRY_LEN];
    let (head, tail) = name.split_at_mut(prefix.len());
    head.copy_from_slice(prefix);
    tail.copy_from_slice(&hash.lookup_id_bytes());
    EntryName::Key(name)
}
