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

    /// The tally a worker hands over, as bytes for a shared queue: a
    /// compact binary form written straight from the tally. With many
    /// distinct keys each request adds an entry, so its cost per entry is a
    /// cost per request.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 64 * self.keys.len());
        out.push(TALLY_FORMAT);
        push_u64(&mut out, self.dropped);
        push_counts(&mut out, &self.unattributed);
        push_len(&mut out, self.keys.len());
        for usage in self.keys.values() {
            push_text(&mut out, &usage.key_id);
            push_u64(&mut out, usage.allowed);
            push_u64(&mut out, usage.cost);
            match usage.last_used_ms {
                Some(ms) => {
                    out.push(1);
                    push_u64(&mut out, ms);
                }
                None => out.push(0),
            }
            push_counts(&mut out, &usage.denied);
        }
        out
    }

    /// Reads what [`Tally::to_bytes`] wrote, or the JSON form that filters
    /// before it handed over (one may still be draining in an upgraded
    /// Envoy); `None` if it is neither.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        match bytes.first() {
            Some(&TALLY_FORMAT) => Reader(bytes.get(1..)?).tally(),
            Some(b'{') => Self::from_json(bytes),
            _ => None,
        }
    }

    fn from_json(bytes: &[u8]) -> Option<Self> {
        let batch: UsageBatch = crate::json::from_slice(bytes).ok()?;
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
}

/// The first byte of [`Tally::to_bytes`]; JSON starts with `{`.
const TALLY_FORMAT: u8 = 1;

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    push_u64(out, u64::try_from(len).unwrap_or(u64::MAX));
}

fn push_text(out: &mut Vec<u8>, text: &str) {
    push_len(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

fn push_counts(out: &mut Vec<u8>, counts: &BTreeMap<String, u64>) {
    push_len(out, counts.len());
    for (code, n) in counts {
        push_text(out, code);
        push_u64(out, *n);
    }
}

/// Reads [`Tally::to_bytes`]'s form from the front of its slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u64(&mut self) -> Option<u64> {
        let (n, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*n))
    }

    /// A length, which cannot exceed the bytes left (each item takes one at
    /// least), so a corrupt one cannot make a huge allocation.
    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?)
            .ok()
            .filter(|&n| n <= self.0.len())
    }

    fn text(&mut self) -> Option<String> {
        let len = self.len()?;
        let (text, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        String::from_utf8(text.to_vec()).ok()
    }

    fn counts(&mut self) -> Option<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        for _ in 0..self.len()? {
            counts.insert(self.text()?, self.u64()?);
        }
        Some(counts)
    }

    fn tally(mut self) -> Option<Tally> {
        let dropped = self.u64()?;
        let unattributed = self.counts()?;
        let mut keys = BTreeMap::new();
        for _ in 0..self.len()? {
            let key_id = self.text()?;
            let allowed = self.u64()?;
            let cost = self.u64()?;
            let (&seen, rest) = self.0.split_first()?;
            self.0 = rest;
            let last_used_ms = match seen {
                0 => None,
                1 => Some(self.u64()?),
                _ => return None,
            };
            let denied = self.counts()?;
            let usage = KeyUsage {
                key_id: key_id.clone(),
                allowed,
                cost,
                denied,
                last_used_ms,
            };
            keys.insert(key_id, usage);
        }
        self.0.is_empty().then_some(Tally {
            keys,
            unattributed,
            dropped,
        })
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
    fn handed_over_bytes_keep_everything_and_garbage_reads_as_nothing() {
        let mut t = Tally::default();
        t.allowed("key_a", 3, 1_700_000_000_000);
        t.denied(Some("key_a"), "rate_limited");
        t.denied(Some("key_é"), "quota_exceeded");
        t.denied(None, "invalid_api_key");
        t.anonymous();
        t.dropped = 7;
        let bytes = t.to_bytes();
        assert_eq!(Tally::from_bytes(&bytes), Some(t.clone()));
        assert_eq!(
            Tally::from_bytes(&Tally::default().to_bytes()),
            Some(Tally::default())
        );

        // What filters before the binary form handed over still counts.
        let json = serde_json::to_vec(&t.clone().seal(String::new())).unwrap();
        assert_eq!(Tally::from_bytes(&json), Some(t.clone()));

        for cut in 0..bytes.len() {
            assert_eq!(Tally::from_bytes(&bytes[..cut]), None, "{cut} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Tally::from_bytes(&longer), None);
        // A length past the end is refused before anything is allocated.
        let mut huge = vec![TALLY_FORMAT];
        huge.extend_from_slice(&0u64.to_le_bytes());
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Tally::from_bytes(&huge), None);
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
