//! Where config and bucket state live in shared data, and how they are encoded.
//!
//! Every name starts with [`NAMESPACE`], `tg` and the layout version: under
//! Istio every Wasm plugin of a proxy shares one shared-data namespace (the
//! empty `vm_id`), and during a rolling upgrade an old and a new image run
//! side by side in one Envoy. A change to any encoding below bumps the
//! version, so neither ever reads the other's entries; each keeps its own
//! config, lease and usage until the old one is gone.
//!
//! - `tg3/version`: the config version applied (u64 little-endian), when the
//!   last sync succeeded, and the fleet terms of the last usage receipt
//!   ([`Applied`]). Absent until the first sync: the filter then fails closed.
//! - `tg3/p/<plan id>`: a plan (wire JSON).
//! - `tg3/k/<lookup id>`: a key record, compact binary ([`encode_key_record`]):
//!   with a million keys, bytes per key is what Envoy's memory is made of.
//! - `tg3/b/<lookup id>`: all token buckets of one key in one entry, and the
//!   key's own quota count for the period ([`BucketEntry`]), so one CAS covers
//!   every window and the quota and a request consumes from all of them or
//!   none. It also holds the key's quota use through other Envoys
//!   ([`BucketEntry::others`], written by the leader from the control plane's
//!   standings), and this Envoy's lease of the key's fleet-wide limits
//!   ([`BucketEntry::lease`]), so a request reads one entry, not three.
//! - `tg3/bt/<tenant id>`: the buckets of the tenant-scoped limits.
//! - `tg3/ba/<slot>`: the buckets of anonymous clients, one slot per hash of
//!   the client address (so memory stays bounded), with the slot's owner.
//! - `tg3/anonymous`: anonymous access (wire JSON).
//! - `tg3/fleet`: the fleet terms of the last usage receipt, which the
//!   version entry copies: a receipt may come before the first config.
//! - `tg3/lease`, `tg3/roots`, `tg3/report` and the queue `tg3/usage`: the
//!   leader election and the usage hand-over between root contexts (the
//!   filter's `lease` and `report` modules).
//! - `tg3/instance`: the Envoy's id in the control plane's proxy registry
//!   (the filter's `identity` module).
//!
//! Only the leader writes `tg3/version`, `tg3/p/`, `tg3/k/` and
//! `tg3/anonymous`. Envoy lets a write to an absent entry through whatever
//! its CAS token, so a bucket entry is created by a write guarded with a
//! token no present entry has ([`read_for_update`]): of racing creators one
//! writes it and the others' write fails like any lost CAS race, so their
//! loop reads again and sees every consumption.
//!
//! One module per concern: `names` says where each entry lives,
//! `key_record` and `bucket_entry` how the two binary entries are encoded,
//! and `apply` how the leader writes config and standings. Other crates use
//! the names re-exported here.

mod apply;
mod bucket_entry;
mod key_record;
mod names;

pub use apply::{
    applied_state, applied_version, apply_leases, apply_standings, apply_sync, apply_sync_at,
    read_anonymous, read_leases, read_plan, Applied, AppliedTerms, ApplyError,
};
pub use bucket_entry::{read_for_update, BucketEntry, QuotaCount};
pub use key_record::{decode_key_record, encode_key_record, read_key};
pub use names::{
    anonymous_buckets_key, buckets_key, client_identity, key_record_key, plan_key,
    tenant_buckets_key, EntryName, ANONYMOUS_KEY, ANONYMOUS_SLOTS, FLEET_KEY, INSTANCE_KEY,
    LEASE_KEY, NAMESPACE, REPORT_KEY, ROOTS_KEY, USAGE_QUEUE, VERSION_KEY,
};
