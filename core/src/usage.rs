//! Counting what the filter decided, until the counts reach the control plane.
//!
//! Each worker tallies its decisions in memory (no host call per request),
//! hands the tally to the Envoy's sync service now and then, and the service
//! merges the tallies into the next [`UsageBatch`]. Memory is bounded: past
//! [`MAX_KEYS`] distinct keys, further counts are dropped and the drop is
//! itself counted, so the loss is visible rather than silent.

use std::collections::BTreeMap;

use crate::wire::{KeyUsage, UsageBatch};

/// The keyless outcome counted for admitted anonymous requests.
pub const ANONYMOUS: &str = "anonymous";

/// Most distinct keys one tally holds.
pub const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    keys: BTreeMap<String, KeyUsage>,
    unattributed: BTreeMap<String, u64>,
    dropped: u64,
}

impl Tally {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.unattributed.is_empty() && self.dropped == 0
    }

    fn entry(&mut self, key_id: &str) -> Option<&mut KeyUsage> {
        if !self.keys.contains_key(key_id) && self.keys.len() >= MAX_KEYS {
            return None;
        }
        Some(
            self.keys
                .entry(key_id.to_owned())
                .or_insert_with(|| KeyUsage {
                    key_id: key_id.to_owned(),
                    ..KeyUsage::default()
                }),
        )
    }

    /// An admitted request that cost `cost`.
    pub fn allowed(&mut self, key_id: &str, cost: u64, now_ms: u64) {
        match self.entry(key_id) {
            Some(usage) => {
                usage.allowed = usage.allowed.saturating_add(1);
                usage.cost = usage.cost.saturating_add(cost);
                usage.last_used_ms = usage.last_used_ms.max(Some(now_ms));
            }
            None => self.dropped = self.dropped.saturating_add(1),
        }
    }

    /// An anonymous request admitted: counted with the keyless outcomes.
    pub fn anonymous(&mut self) {
        let n = self.unattributed.entry(ANONYMOUS.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// A refusal, by its `code`, charged to the key when one was identified.
    pub fn denied(&mut self, key_id: Option<&str>, code: &str) {
        let counts = match key_id {
            Some(key_id) => match self.entry(key_id) {
                Some(usage) => &mut usage.denied,
                None => {
                    self.dropped = self.dropped.saturating_add(1);
                    return;
                }
            },
            None => &mut self.unattributed,
        };
        let n = counts.entry(code.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: Tally) {
        self.dropped = self.dropped.saturating_add(other.dropped);
        add_counts(&mut self.unattributed, other.unattributed);
        for (key_id, usage) in other.keys {
            let weight = usage
                .allowed
                .saturating_add(usage.denied.values().sum::<u64>());
            match self.entry(&key_id) {
                Some(mine) => {
                    mine.allowed = mine.allowed.saturating_add(usage.allowed);
                    mine.cost = mine.cost.saturating_add(usage.cost);
                    mine.last_used_ms = mine.last_used_ms.max(usage.last_used_ms);
                    add_counts(&mut mine.denied, usage.denied);
                }
                None => self.dropped = self.dropped.saturating_add(weight),
            }
        }
    }

    /// Empties the tally into a batch named `batch_id`.
    pub fn seal(&mut self, batch_id: String) -> UsageBatch {
        let taken = std::mem::take(self);
        UsageBatch {
            batch_id,
            keys: taken.keys.into_values().collect(),
            unattributed: taken.unattributed,
            dropped: taken.dropped,
            ..UsageBatch::default()
        }
    }

    /// The tally a worker hands over, as bytes for a shared queue.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.seal_ref()).unwrap_or_default()
    }

    /// Reads what [`Tally::to_bytes`] wrote; `None` if it is not that.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let batch: UsageBatch = serde_json::from_slice(bytes).ok()?;
        let mut tally = Tally {
            unattributed: batch.unattributed,
            dropped: batch.dropped,
            ..Tally::default()
        };
        for usage in batch.keys {
            tally.keys.insert(usage.key_id.clone(), usage);
        }
        Some(tally)
    }

    fn seal_ref(&self) -> UsageBatch {
        UsageBatch {
            batch_id: String::new(),
            keys: self.keys.values().cloned().collect(),
            unattributed: self.unattributed.clone(),
            dropped: self.dropped,
            ..UsageBatch::default()
        }
    }
}

fn add_counts(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (code, n) in from {
        let mine = into.entry(code).or_insert(0);
        *mine = mine.saturating_add(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    #[test]
    fn counts_allowed_and_denied_per_key_and_unattributed() {
        let mut t = Tally::default();
        assert!(t.is_empty());
        t.allowed("key_a", 1, 1_000);
        t.allowed("key_a", 3, 900);
        t.anonymous();
        t.denied(Some("key_a"), "rate_limited");
        t.denied(None, "invalid_api_key");
        t.denied(None, "invalid_api_key");
        let batch = t.seal("b1".into());
        assert!(t.is_empty());
        assert_eq!(batch.batch_id, "b1");
        assert_eq!(batch.keys.len(), 1);
        let a = &batch.keys[0];
        assert_eq!((a.allowed, a.cost, a.last_used_ms), (2, 4, Some(1_000)));
        assert_eq!(batch.unattributed.get(ANONYMOUS), Some(&1));
        assert_eq!(a.denied.get("rate_limited"), Some(&1));
        assert_eq!(batch.unattributed.get("invalid_api_key"), Some(&2));
    }

    #[test]
    fn merging_adds_and_round_trips_through_bytes() {
        let mut worker = Tally::default();
        worker.allowed("key_a", 2, 5);
        worker.denied(Some("key_b"), "forbidden");
        let mut service = Tally::default();
        service.allowed("key_a", 1, 7);
        service.merge(Tally::from_bytes(&worker.to_bytes()).unwrap());
        service.merge(Tally::from_bytes(&worker.to_bytes()).unwrap());
        let batch = service.seal("b".into());
        let a = batch.keys.iter().find(|k| k.key_id == "key_a").unwrap();
        assert_eq!((a.allowed, a.cost, a.last_used_ms), (3, 5, Some(7)));
        let b = batch.keys.iter().find(|k| k.key_id == "key_b").unwrap();
        assert_eq!((b.allowed, b.last_used_ms), (0, None));
        assert_eq!(b.denied.get("forbidden"), Some(&2));
        assert!(Tally::from_bytes(b"not json").is_none());
    }

    #[test]
    fn past_max_keys_counts_are_dropped_and_the_drop_is_counted() {
        let mut t = Tally::default();
        for i in 0..MAX_KEYS {
            t.allowed(&format!("k{i}"), 1, 1);
        }
        t.allowed("k0", 1, 2);
        t.allowed("one-too-many", 1, 2);
        t.denied(Some("another"), "rate_limited");
        let mut other = Tally::default();
        other.allowed("third", 1, 1);
        other.allowed("third", 1, 1);
        t.merge(other);
        let batch = t.seal(String::new());
        assert_eq!(batch.keys.len(), MAX_KEYS);
        assert_eq!(batch.dropped, 4);
        assert_eq!(
            batch
                .keys
                .iter()
                .find(|k| k.key_id == "k0")
                .unwrap()
                .allowed,
            2
        );
    }
}
