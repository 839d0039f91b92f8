//! The compare-and-swap ledger engine: consuming a request's cost from the
//! shared-data entries that meter it, from all of them or from none.
//!
//! Apart from the pipeline in [`super`] because it is the one part of a
//! decision that writes: every worker of every VM races on the same entries,
//! and what keeps that exact (one CAS per entry, a lost race reads again, a
//! later refusal refunds the earlier entries) is easier to judge when it is
//! all in one place and nothing else is.

use std::sync::{Arc, LazyLock};

use crate::bucket::{ceil_seconds, Bucket, Check, Meter};
use crate::config::{Limit, QUOTA_POLICY};
use crate::fleet::{self, Lease, QuotaView, Slice, Terms, FULL_SHARE};
use crate::layout::{read_for_update, BucketEntry, EntryName, QuotaCount};
use crate::period::Period;
use crate::response::bucket_status;
use crate::store::{SetError, SharedStore};

use super::PolicyStatus;

/// How many times a bucket update is retried when another worker wrote first.
pub const MAX_CAS_ATTEMPTS: u32 = 32;

/// A monthly quota as it applies to this request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Quota {
    pub(super) max: u64,
    pub(super) period: Period,
    /// Where slicing starts ([`fleet::slicing_horizon`]).
    pub(super) horizon: Option<u64>,
}

/// How long a request refused for want of a quota slice, or of any share of
/// a fleet-wide limit, is told to wait: about a report's round trip, when
/// more may have come.
pub const SLICE_WAIT_MS: u64 = 1_000;

/// [`QUOTA_POLICY`] as a policy's name: made once, then shared by every
/// request's quota status.
fn quota_name() -> Arc<str> {
    static NAME: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(QUOTA_POLICY));
    Arc::clone(&NAME)
}

/// One shared-data entry that a request consumes from: its limits' buckets
/// and, for a key, the key's own quota count.
pub(super) struct Ledger<'a> {
    pub(super) entry: EntryName,
    /// Borrowed from the key record and plan: a request copies no limit.
    pub(super) limits: Vec<&'a Limit>,
    pub(super) quota: Option<Quota>,
    /// For an anonymous slot: the client address consuming from it.
    pub(super) owner: Option<u128>,
    /// Whether its limits hold across the fleet (a key's and a tenant's,
    /// unless a limit says `per_envoy`), metered at this Envoy's share;
    /// an anonymous slot's are per Envoy.
    pub(super) fleet_wide: bool,
}

/// A ledger as read at one instant: refilled buckets, this Envoy's quota
/// count and the other Envoys' use as last reported.
struct Look {
    /// The CAS token to write the entry with ([`read_for_update`]).
    cas: u32,
    /// Each limit as this Envoy meters it now, at its share.
    meters: Vec<Meter>,
    buckets: Vec<Bucket>,
    own_used: u64,
    others_used: u64,
    /// The other Envoys' count as stored, written back unchanged.
    others: Option<QuotaCount>,
    /// This Envoy's lease as stored, written back unchanged.
    lease: Option<Lease>,
    /// This Envoy's slice of the quota as stored, written back unchanged.
    slice: Option<Slice>,
    /// The most its own quota count may reach ([`fleet::quota_cap`]).
    cap: Option<u64>,
}

impl Ledger<'_> {
    fn look(&self, store: &impl SharedStore, terms: Option<Terms>, now_ms: u64) -> Look {
        let (bytes, cas) = read_for_update(store, &self.entry);
        let stored = BucketEntry::decode(&bytes);
        let share = if self.fleet_wide {
            fleet::share(terms, stored.lease, now_ms)
        } else {
            FULL_SHARE
        };
        let meters: Vec<Meter> = self
            .limits
            .iter()
            .map(|limit| Meter::new(limit, if limit.per_envoy { FULL_SHARE } else { share }))
            .collect();
        let mut buckets: Vec<Bucket> = self
            .limits
            .iter()
            .zip(&meters)
            .map(|(limit, meter)| {
                stored
                    .bucket(&limit.name)
                    .map(|b| b.refilled(meter, now_ms))
                    .unwrap_or_else(|| Bucket::full(meter, now_ms))
            })
            .collect();
        if let Some(owner) = self.owner {
            // A slot another client left idle (all its buckets full again) is
            // taken over; a busy one is shared, which only ever admits less.
            let previous = stored.owner;
            let idle = meters
                .iter()
                .zip(&buckets)
                .all(|(meter, b)| b.ms_until_full(meter) == 0);
            if previous.is_some_and(|p| p != owner) && idle {
                buckets = meters.iter().map(|m| Bucket::full(m, now_ms)).collect();
            }
        }
        // A count of another period says nothing about this one.
        let this_period = |count: Option<QuotaCount>| match (self.quota, count) {
            (Some(quota), Some(count)) => count.used_in(quota.period.start_ms),
            _ => 0,
        };
        let own_used = this_period(stored.quota);
        let others_used = this_period(stored.others);
        let cap = self.quota.and_then(|quota| {
            let view = QuotaView {
                max: quota.max,
                period_start_ms: quota.period.start_ms,
                own: own_used,
                others: others_used,
                horizon: quota.horizon,
            };
            fleet::quota_cap(terms, stored.slice, view, now_ms)
        });
        Look {
            cas,
            meters,
            buckets,
            own_used,
            others_used,
            others: stored.others,
            lease: stored.lease,
            slice: stored.slice,
            cap,
        }
    }

    /// The buckets after consuming `cost`, or which policies refuse, each
    /// with how long until it would not.
    fn judge(&self, look: &Look, cost: u64, now_ms: u64) -> Result<Vec<Bucket>, Vec<Violation>> {
        let mut after = Vec::with_capacity(look.buckets.len());
        let mut violated = Vec::new();
        for ((limit, meter), bucket) in self.limits.iter().zip(&look.meters).zip(&look.buckets) {
            match bucket.check(meter, cost) {
                Check::Admit { level_after } => after.push(Bucket {
                    level: level_after,
                    last_fill_ms: bucket.last_fill_ms,
                }),
                Check::Deny { wait_ms } => violated.push(Violation {
                    policy: Arc::clone(&limit.name),
                    // Without a share (before the first terms, or all of it
                    // with other Envoys) the window's refill frees nothing:
                    // the next receipt may, so an hourly limit does not say
                    // to come back in an hour.
                    wait_ms: if meter.holds_nothing() {
                        wait_ms.min(SLICE_WAIT_MS)
                    } else {
                        wait_ms
                    },
                    pending: false,
                }),
            }
        }
        if let Some(quota) = &self.quota {
            let used = look.own_used.saturating_add(look.others_used);
            let own_after = look.own_used.saturating_add(cost);
            if cost > 0 && used.saturating_add(cost) > quota.max {
                violated.push(Violation {
                    policy: quota_name(),
                    wait_ms: quota.period.ms_left(now_ms),
                    pending: false,
                });
            } else if cost > 0 && look.cap.is_some_and(|cap| own_after > cap) {
                violated.push(Violation {
                    policy: quota_name(),
                    wait_ms: SLICE_WAIT_MS.min(quota.period.ms_left(now_ms)),
                    pending: true,
                });
            }
        }
        if violated.is_empty() {
            Ok(after)
        } else {
            Err(violated)
        }
    }

    /// How many policies [`policies`](Self::policies) adds.
    fn policy_count(&self) -> usize {
        self.limits.len() + usize::from(self.quota.is_some())
    }

    /// Adds the ledger's policies as they stand to `out`.
    fn policies(
        &self,
        look: &Look,
        buckets: &[Bucket],
        own_used: u64,
        now_ms: u64,
        out: &mut Vec<PolicyStatus>,
    ) {
        let others_used = look.others_used;
        out.extend(
            self.limits
                .iter()
                .zip(&look.meters)
                .zip(buckets)
                .map(|((l, m), b)| bucket_status(l, m, b)),
        );
        if let Some(quota) = &self.quota {
            let used = own_used.saturating_add(others_used);
            out.push(PolicyStatus {
                name: quota_name(),
                quota: quota.max,
                window_seconds: quota.period.seconds(),
                remaining: quota.max.saturating_sub(used),
                reset_seconds: ceil_seconds(quota.period.ms_left(now_ms)),
            });
        }
    }

    /// Writes `buckets` and the quota count `own_used`, guarded by the look's CAS token.
    fn write(
        &self,
        store: &impl SharedStore,
        look: &Look,
        buckets: &[Bucket],
        own_used: u64,
    ) -> Result<(), SetError> {
        let entry = BucketEntry {
            buckets: self
                .limits
                .iter()
                .map(|l| &*l.name)
                .zip(buckets.iter().copied())
                .collect(),
            quota: self
                .quota
                .map(|quota| QuotaCount::new(own_used, quota.period.start_ms)),
            others: look.others,
            owner: self.owner,
            lease: look.lease,
            slice: look.slice,
        };
        store.set(&self.entry, Some(&entry.encode()), Some(look.cas))
    }

    /// Gives back what an admitted request took, when a later ledger refused it.
    fn refund(&self, store: &impl SharedStore, terms: Option<Terms>, cost: u64, now_ms: u64) {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let look = self.look(store, terms, now_ms);
            let buckets: Vec<Bucket> = look
                .meters
                .iter()
                .zip(&look.buckets)
                .map(|(meter, b)| b.refunded(meter, cost))
                .collect();
            let own_used = look.own_used.saturating_sub(cost);
            match self.write(store, &look, &buckets, own_used) {
                Err(SetError::CasMismatch) => continue,
                // Giving up leaves the ledger over-charged: never over-admits.
                _ => return,
            }
        }
    }
}

pub(super) enum Consumed {
    Admitted {
        policies: Vec<PolicyStatus>,
        cost: u64,
    },
    Refused {
        policies: Vec<PolicyStatus>,
        violated: Vec<String>,
        wait_ms: u64,
        /// The quota refused only for want of a slice: some of it is left.
        pending: bool,
    },
    /// Every CAS attempt lost: refuse rather than risk admitting past the limit.
    Contended,
}

/// A policy that refuses a request, and the milliseconds until it would admit it.
struct Violation {
    policy: Arc<str>,
    wait_ms: u64,
    /// A quota with some left, refused for want of a slice of it.
    pending: bool,
}

/// The policies of every ledger as they stand, each refusing one's `t` set
/// to its own wait. The request waits for the longest of them (what
/// `Retry-After` says), but giving that to every refusing policy would
/// tell a per-second limit's `t` in days, past its `w`.
fn refused(ledgers: &[Ledger], looks: &[Look], violated: Vec<Violation>, now_ms: u64) -> Consumed {
    let mut policies = Vec::with_capacity(ledgers.iter().map(Ledger::policy_count).sum());
    for (ledger, look) in ledgers.iter().zip(looks) {
        ledger.policies(look, &look.buckets, look.own_used, now_ms, &mut policies);
    }
    for p in &mut policies {
        let wait = violated
            .iter()
            .filter(|v| v.policy == p.name)
            .map(|v| v.wait_ms)
            .max();
        if let Some(wait) = wait {
            p.reset_seconds = ceil_seconds(wait).max(1);
        }
    }
    let wait_ms = violated.iter().map(|v| v.wait_ms).max().unwrap_or(0);
    let pending = violated.iter().any(|v| v.pending);
    Consumed::Refused {
        policies,
        violated: violated.into_iter().map(|v| v.policy.to_string()).collect(),
        wait_ms,
        pending,
    }
}

/// Consumes `cost` from every ledger, or from none. Each ledger is one CAS;
/// when a later ledger refuses after an earlier one was charged, the earlier
/// one is refunded, so a refused request consumes nothing anywhere.
pub(super) fn consume(
    store: &impl SharedStore,
    ledgers: &[Ledger],
    terms: Option<Terms>,
    cost: u64,
    now_ms: u64,
) -> Consumed {
    if ledgers
        .iter()
        .all(|l| l.limits.is_empty() && l.quota.is_none())
    {
        return Consumed::Admitted {
            policies: Vec::new(),
            cost,
        };
    }
    'attempt: for _ in 0..MAX_CAS_ATTEMPTS {
        let looks: Vec<Look> = ledgers
            .iter()
            .map(|l| l.look(store, terms, now_ms))
            .collect();
        let mut violated = Vec::new();
        let mut judged: Vec<Vec<Bucket>> = Vec::with_capacity(ledgers.len());
        for (ledger, look) in ledgers.iter().zip(&looks) {
            match ledger.judge(look, cost, now_ms) {
                Ok(after) => judged.push(after),
                Err(refusing) => violated.extend(refusing),
            }
        }
        if !violated.is_empty() {
            // Nothing is written: a refused request consumes from no window.
            return refused(ledgers, &looks, violated, now_ms);
        }
        let mut policies = Vec::with_capacity(ledgers.iter().map(Ledger::policy_count).sum());
        // Each write is guarded by its look's CAS token, so the looks just
        // judged are used as they are, with what they were judged to leave;
        // only a lost race reads again.
        let mut first = looks.into_iter().zip(judged);
        for (i, ledger) in ledgers.iter().enumerate() {
            let (mut look, mut judged) = match first.next() {
                Some((look, after)) => (look, Some(after)),
                None => (ledger.look(store, terms, now_ms), None),
            };
            let mut tries = 0;
            loop {
                let judgement = match judged.take() {
                    Some(after) => Ok(after),
                    None => ledger.judge(&look, cost, now_ms),
                };
                let after = match judgement {
                    Ok(after) => after,
                    Err(refusing) => {
                        for earlier in ledgers.iter().take(i) {
                            earlier.refund(store, terms, cost, now_ms);
                        }
                        let looks: Vec<Look> = ledgers
                            .iter()
                            .map(|l| l.look(store, terms, now_ms))
                            .collect();
                        return refused(ledgers, &looks, refusing, now_ms);
                    }
                };
                let own_used = look.own_used.saturating_add(cost);
                match ledger.write(store, &look, &after, own_used) {
                    Ok(()) => {
                        ledger.policies(&look, &after, own_used, now_ms, &mut policies);
                        break;
                    }
                    Err(SetError::CasMismatch) if i == 0 => continue 'attempt,
                    Err(SetError::CasMismatch) if tries < MAX_CAS_ATTEMPTS => {
                        tries += 1;
                        look = ledger.look(store, terms, now_ms);
                    }
                    Err(_) => {
                        for earlier in ledgers.iter().take(i) {
                            earlier.refund(store, terms, cost, now_ms);
                        }
                        return Consumed::Contended;
                    }
                }
            }
        }
        return Consumed::Admitted { policies, cost };
    }
    Consumed::Contended
}
