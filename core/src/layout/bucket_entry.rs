//! A bucket entry (`tg3/b/`, `tg3/bt/`, `tg3/ba/`): every token bucket that
//! meters one key, tenant or anonymous slot in one value, so one CAS covers
//! all of them and a request consumes from all of them or none.
//!
//! Besides the limits' buckets an entry holds pseudo-buckets, named with an
//! `@` that no limit name can start with: the key's own quota count, its
//! quota use through other Envoys, the client that owns an anonymous slot,
//! this Envoy's lease of the entry's fleet-wide limits, and its slice of
//! the key's quota. [`BucketEntry`] is the one place that knows those names and what
//! their two numbers mean, so the ledger and the standings deal in counts
//! and owners rather than in buckets that are not buckets.

use crate::bucket::Bucket;
use crate::fleet::{Lease, Slice};
use crate::store::SharedStore;

/// Levels in units of `window_ms × FULL_SHARE` per token (layout `tg3`).
const BUCKETS_FORMAT: u8 = 2;
/// The pseudo-bucket holding the key's own quota count: `level` is the
/// count, `last_fill_ms` the start of the period it counts.
const QUOTA_ENTRY: &str = "@quota";
/// The pseudo-bucket holding the key's quota use through other Envoys:
/// `level` is the count, `last_fill_ms` the start of its period.
const OTHERS_ENTRY: &str = "@others";
/// The pseudo-bucket in `ba/` naming the client that owns the slot:
/// `level` is its identity, `last_fill_ms` is 0.
const OWNER_ENTRY: &str = "@owner";
/// The pseudo-bucket holding this Envoy's lease of the entry's fleet-wide
/// limits: `level` is the share, `last_fill_ms` the lease's generation.
const LEASE_ENTRY: &str = "@lease";
/// The pseudo-bucket holding this Envoy's slice of the key's quota: `level`
/// is the slice's generation in its high 64 bits and its cap in the low
/// ones, `last_fill_ms` the start of the period it is of.
const SLICE_ENTRY: &str = "@slice";
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

/// A quota count as a bucket entry keeps it: how many requests, counted in
/// the period that starts at `period_start_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaCount {
    /// Kept as stored, so a count written back unchanged is the same bytes.
    used: u128,
    period_start_ms: u64,
}

impl QuotaCount {
    pub fn new(used: u64, period_start_ms: u64) -> Self {
        Self {
            used: u128::from(used),
            period_start_ms,
        }
    }

    /// The count in the period that starts at `period_start_ms`: a count of
    /// another period says nothing about this one.
    pub fn used_in(&self, period_start_ms: u64) -> u64 {
        if self.period_start_ms == period_start_ms {
            u64::try_from(self.used).unwrap_or(u64::MAX)
        } else {
            0
        }
    }

    fn stored(bucket: Bucket) -> Self {
        Self {
            used: bucket.level,
            period_start_ms: bucket.last_fill_ms,
        }
    }

    fn as_bucket(self) -> Bucket {
        Bucket {
            level: self.used,
            last_fill_ms: self.period_start_ms,
        }
    }
}

/// One bucket entry, its limits' buckets named by the bytes it was read from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketEntry<'a> {
    /// The limits' buckets by limit name, in the order stored.
    pub buckets: Vec<(&'a str, Bucket)>,
    /// The key's own quota count.
    pub quota: Option<QuotaCount>,
    /// The key's quota use through other Envoys, written by the leader from
    /// the control plane's standings, so a request reads one entry, not two.
    pub others: Option<QuotaCount>,
    /// The client that owns an anonymous slot ([`super::client_identity`]).
    pub owner: Option<u128>,
    /// This Envoy's lease of the entry's fleet-wide limits, written by the
    /// leader from usage receipts.
    pub lease: Option<Lease>,
    /// This Envoy's slice of the key's quota, written by the leader from
    /// usage receipts.
    pub slice: Option<Slice>,
}

impl<'a> BucketEntry<'a> {
    /// What [`encode`](Self::encode) wrote. Bytes of another format read as
    /// an empty entry and a cut entry as what precedes the cut: a limit whose
    /// bucket does not read starts full, a count that does not read at 0.
    pub fn decode(bytes: &'a [u8]) -> Self {
        let mut entry = Self::default();
        for (name, bucket) in BucketsIn(stored_buckets(bytes)) {
            // The first of a name is the one read, as for a limit's bucket.
            match name {
                QUOTA_ENTRY => entry.quota = entry.quota.or(Some(QuotaCount::stored(bucket))),
                OTHERS_ENTRY => entry.others = entry.others.or(Some(QuotaCount::stored(bucket))),
                OWNER_ENTRY => entry.owner = entry.owner.or(Some(bucket.level)),
                LEASE_ENTRY => {
                    entry.lease = entry.lease.or(Some(Lease {
                        share: u32::try_from(bucket.level).unwrap_or(0),
                        generation: bucket.last_fill_ms,
                    }))
                }
                SLICE_ENTRY => {
                    entry.slice = entry.slice.or(Some(Slice {
                        cap: u64::try_from(bucket.level & u128::from(u64::MAX)).unwrap_or(0),
                        generation: u64::try_from(bucket.level >> 64).unwrap_or(0),
                        period_start_ms: bucket.last_fill_ms,
                    }))
                }
                _ => entry.buckets.push((name, bucket)),
            }
        }
        entry
    }

    /// The stored bucket of the limit named `name`.
    pub fn bucket(&self, name: &str) -> Option<Bucket> {
        self.buckets
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, bucket)| *bucket)
    }

    /// The entry's bytes: the limits' buckets, then the quota count, the
    /// other Envoys' count and the owner, each only if set.
    pub fn encode(&self) -> Vec<u8> {
        let owner = |level| Bucket {
            level,
            last_fill_ms: 0,
        };
        let lease = |lease: Lease| Bucket {
            level: u128::from(lease.share),
            last_fill_ms: lease.generation,
        };
        let slice = |slice: Slice| Bucket {
            level: u128::from(slice.generation) << 64 | u128::from(slice.cap),
            last_fill_ms: slice.period_start_ms,
        };
        let pseudo = [
            self.quota.map(|count| (QUOTA_ENTRY, count.as_bucket())),
            self.others.map(|count| (OTHERS_ENTRY, count.as_bucket())),
            self.owner.map(|identity| (OWNER_ENTRY, owner(identity))),
            self.lease.map(|l| (LEASE_ENTRY, lease(l))),
            self.slice.map(|s| (SLICE_ENTRY, slice(s))),
        ];
        encode_buckets(
            self.buckets
                .iter()
                .copied()
                .chain(pseudo.into_iter().flatten()),
        )
    }
}

/// What follows the format byte of an entry's bytes; nothing for bytes of
/// another format.
fn stored_buckets(bytes: &[u8]) -> &[u8] {
    match bytes.split_first() {
        Some((&BUCKETS_FORMAT, rest)) => rest,
        _ => &[],
    }
}

/// The buckets of an entry's bytes, by name, borrowed from them, up to the
/// first that does not read.
struct BucketsIn<'a>(&'a [u8]);

impl<'a> Iterator for BucketsIn<'a> {
    type Item = (&'a str, Bucket);

    fn next(&mut self) -> Option<Self::Item> {
        let (&len, tail) = self.0.split_first()?;
        let len = usize::from(len);
        let read = (|| {
            let name = core::str::from_utf8(tail.get(..len)?).ok()?;
            let level = <[u8; 16]>::try_from(tail.get(len..len + 16)?).ok()?;
            let last = <[u8; 8]>::try_from(tail.get(len + 16..len + 24)?).ok()?;
            Some((
                name,
                Bucket {
                    level: u128::from_le_bytes(level),
                    last_fill_ms: u64::from_le_bytes(last),
                },
            ))
        })();
        self.0 = match read {
            Some(_) => tail.get(len + 24..).unwrap_or(&[]),
            None => &[],
        };
        read
    }
}

fn encode_buckets<'a>(buckets: impl IntoIterator<Item = (&'a str, Bucket)>) -> Vec<u8> {
    // Room for the buckets of a few limits and every pseudo-bucket (25
    // bytes and a name each): a request's write allocates once, not once
    // per doubling.
    let mut out = Vec::with_capacity(256);
    out.push(BUCKETS_FORMAT);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_buckets(bytes: &[u8]) -> Vec<(&str, Bucket)> {
        BucketsIn(stored_buckets(bytes)).collect()
    }

    #[test]
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

    #[test]
    fn pseudo_buckets_are_written_by_name_after_the_limits_and_read_back() {
        let b = Bucket {
            level: 7,
            last_fill_ms: 42,
        };
        let entry = BucketEntry {
            buckets: vec![("per-second", b)],
            quota: Some(QuotaCount::new(3, 1_000)),
            others: Some(QuotaCount::new(5, 1_000)),
            owner: Some(9),
            lease: Some(Lease {
                share: 300,
                generation: 77,
            }),
            slice: Some(Slice {
                cap: u64::MAX,
                generation: u64::MAX - 1,
                period_start_ms: 1_000,
            }),
        };
        let count = |level, last_fill_ms| Bucket {
            level,
            last_fill_ms,
        };
        let bytes = entry.encode();
        assert_eq!(
            bytes,
            encode_buckets([
                ("per-second", b),
                ("@quota", count(3, 1_000)),
                ("@others", count(5, 1_000)),
                ("@owner", count(9, 0)),
                ("@lease", count(300, 77)),
                (
                    "@slice",
                    count(u128::from(u64::MAX - 1) << 64 | u128::from(u64::MAX), 1_000)
                ),
            ])
        );
        assert_eq!(BucketEntry::decode(&bytes), entry);
        assert_eq!(entry.bucket("per-second"), Some(b));
        // A count of another period is no count in this one.
        assert_eq!(entry.quota.map(|c| c.used_in(1_000)), Some(3));
        assert_eq!(entry.quota.map(|c| c.used_in(2_000)), Some(0));
        assert_eq!(BucketEntry::decode(&[]), BucketEntry::default());
    }
}
