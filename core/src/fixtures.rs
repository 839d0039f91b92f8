//! Fixtures that core's unit tests and other crates' tests and benchmarks
//! share (feature `test-util`): a limit as a plan spells it, and a store
//! whose Envoy is alone in its fleet.

use crate::store::{MemoryStore, SetError};
use crate::wire::{FleetLeases, LimitScope, WireLimit};

/// A limit per key whose burst is its max.
pub fn limit(name: &str, max: u64, window_seconds: u64) -> WireLimit {
    WireLimit {
        name: name.into(),
        max,
        window_seconds,
        burst: None,
        scope: LimitScope::Key,
        per_envoy: false,
    }
}

/// Leases the whole of every fleet-wide limit to this Envoy, for good: what
/// the control plane grants an Envoy with no other in its fleet.
pub fn alone(store: &MemoryStore) -> Result<(), SetError> {
    let leases = FleetLeases {
        generation: 1,
        seq: 1,
        valid_ms: u64::MAX / 2,
        default_share: u64::from(crate::fleet::FULL_SHARE),
        grants: Vec::new(),
        slices: Vec::new(),
    };
    crate::layout::apply_leases(store, &leases, 0)
}
