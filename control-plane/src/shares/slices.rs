//! Quota slices: how the allocator makes a monthly quota stop exactly at
//! its end across the fleet (the Envoy's rule is `tollgate_core::fleet::quota_cap`).
//!
//! Far from its end a quota is shared by standings. Near it, an Envoy that
//! shares the key stops admitting it beyond its own count and reports the
//! refusals (`quota_pending`); from then on the key is sliced here:
//! - Every other Envoy is sent a slice of 0 (nothing beyond what it has
//!   counted). An Envoy is *engaged* once it applied a slice (acknowledged
//!   it) or itself reported waiting for one.
//! - Nothing is granted until every Envoy that is not lapsed is engaged: an
//!   engaged Envoy admits the key only within its slice, so from then on
//!   what it may still admit is `max(slice, what it reported)`, and the
//!   room is the quota less that over every Envoy and less what Envoys no
//!   longer counted here reported.
//! - A slice is raised only into room, and committed at once; it is
//!   lowered (to what the Envoy reported) when the Envoy stopped asking,
//!   and that is committed only once the Envoy acknowledges it, like a
//!   share (`super::Grant`).
//!
//! The figures (the quota, what each Envoy reported) come from the usage
//! store with each report; the allocator keeps only the grants.

use std::collections::HashMap;

use tollgate_core::wire::QuotaSlice;

use super::{Allocator, Grant, FADED};

/// What the usage store knows of one key's quota in its current period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaFacts {
    pub key_id: String,
    pub key_hash: String,
    pub period_start_ms: u64,
    pub period_end_ms: u64,
    pub quota: u64,
    /// Everything counted this period, through every Envoy.
    pub used: u64,
    /// What each Envoy (by reporter id) counted of it this period.
    pub used_by: HashMap<String, u64>,
}

impl QuotaFacts {
    fn used_by(&self, proxy: &str) -> u64 {
        self.used_by.get(proxy).copied().unwrap_or(0)
    }
}

/// What one Envoy asked of one key's quota since its last report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SliceDemand {
    pub key_id: String,
    pub key_hash: String,
    /// The cost it admitted plus the requests it refused for want of a slice.
    pub asked: u64,
    /// Whether it refused any for want of a slice (it is engaged).
    pub pending: bool,
}

#[derive(Debug, Clone, Default)]
pub(super) struct SliceHolding {
    grant: Grant,
    engaged: bool,
    /// Cost asked a second, smoothed over reports (in thousandths).
    demand: u64,
}

impl SliceHolding {
    /// A slice of 0 (nothing beyond what the Envoy counted), told under `seq`.
    fn nothing(seq: u64) -> Self {
        Self {
            grant: Grant {
                granted: 0,
                committed: 0,
                seq,
            },
            engaged: false,
            demand: 0,
        }
    }
}

/// One key being sliced in one period.
#[derive(Debug, Clone)]
pub(super) struct Sliced {
    key_id: String,
    period_start_ms: u64,
    period_end_ms: u64,
    quota: u64,
    holdings: HashMap<String, SliceHolding>,
}

impl Allocator {
    /// Keys being sliced that `proxy` holds a slice of beyond nothing: the
    /// ones whose figures a report needs besides those it asks of.
    pub fn sliced_keys_held(&self, proxy: &str) -> Vec<String> {
        self.slices
            .values()
            .filter(|s| s.holdings.get(proxy).is_some_and(|h| h.grant.granted > 0))
            .map(|s| s.key_id.clone())
            .collect()
    }

    /// Whether `key_hash` is being sliced.
    pub fn is_sliced(&self, key_hash: &str) -> bool {
        self.slices.contains_key(key_hash)
    }

    /// How many keys are being sliced.
    pub fn sliced(&self) -> usize {
        self.slices.len()
    }

    /// The hashes of the keys being sliced.
    pub fn sliced_keys(&self) -> Vec<String> {
        self.slices.keys().cloned().collect()
    }

    /// A new Envoy holds a slice of 0 of every key being sliced, which it
    /// must acknowledge before anything of those is granted.
    pub(super) fn join_slices(&mut self, id: &str, seq: u64) {
        for sliced in self.slices.values_mut() {
            sliced
                .holdings
                .insert(id.to_owned(), SliceHolding::nothing(seq));
        }
    }

    pub(super) fn forget_slices(&mut self, id: &str) {
        for sliced in self.slices.values_mut() {
            sliced.holdings.remove(id);
        }
    }

    /// Drops the keys whose period is over: a new period starts unsliced.
    pub(super) fn end_periods(&mut self, now_ms: u64) {
        self.slices.retain(|_, s| s.period_end_ms > now_ms);
    }

    /// Takes `id`'s acknowledgement, its demand and the figures of the keys
    /// it asked of or holds, and moves its slices.
    pub(super) fn report_slices(
        &mut self,
        id: &str,
        acked: u64,
        interval_ms: u64,
        demand: &[SliceDemand],
        facts: &[QuotaFacts],
    ) {
        for sliced in self.slices.values_mut() {
            if let Some(h) = sliced.holdings.get_mut(id) {
                h.grant.acknowledged(acked);
                h.engaged |= h.grant.seq <= acked;
                h.demand /= 2;
                if h.demand < FADED {
                    h.demand = 0;
                }
            }
        }
        for d in demand {
            let Some(f) = facts.iter().find(|f| f.key_hash == d.key_hash) else {
                continue;
            };
            let current = self
                .slices
                .get(&f.key_hash)
                .is_some_and(|s| s.period_start_ms == f.period_start_ms && s.quota == f.quota);
            if !current {
                // A key only an Envoy that waits for a slice starts being
                // sliced; a new period, or a new quota, starts it afresh.
                if !d.pending {
                    continue;
                }
                self.start_slicing(f);
            }
            if let Some(h) = self
                .slices
                .get_mut(&f.key_hash)
                .and_then(|s| s.holdings.get_mut(id))
            {
                h.engaged |= d.pending;
                let per_second = d.asked.saturating_mul(1_000_000) / interval_ms.max(1);
                h.demand = h.demand.saturating_add(per_second / 2);
            }
        }
        for f in facts {
            self.reslice(id, f);
        }
    }

    /// Every Envoy gets a slice of 0 of `facts`' key.
    fn start_slicing(&mut self, facts: &QuotaFacts) {
        let seq = self.seq();
        let mut holdings = HashMap::new();
        for (id, proxy) in &mut self.proxies {
            proxy.last_seq = seq;
            holdings.insert(id.clone(), SliceHolding::nothing(seq));
        }
        self.slices.insert(
            facts.key_hash.clone(),
            Sliced {
                key_id: facts.key_id.clone(),
                period_start_ms: facts.period_start_ms,
                period_end_ms: facts.period_end_ms,
                quota: facts.quota,
                holdings,
            },
        );
    }

    /// Moves `id`'s slice of `facts`' key toward its part of the room, once
    /// every Envoy that counts is engaged.
    fn reslice(&mut self, id: &str, facts: &QuotaFacts) {
        let seq = self.next_seq + 1;
        let proxies = &self.proxies;
        let Some(sliced) = self.slices.get_mut(&facts.key_hash) else {
            return;
        };
        if sliced.period_start_ms != facts.period_start_ms || sliced.quota != facts.quota {
            return;
        }
        let engaged = sliced
            .holdings
            .iter()
            .all(|(p, h)| h.engaged || proxies.get(p).is_none_or(|p| p.lapsed));
        if !engaged {
            return;
        }
        // What an engaged Envoy may still reach: its slice, or what it
        // counted already if that is more.
        let held = |p: &str, h: &SliceHolding| h.grant.committed.max(facts.used_by(p));
        let tracked: u64 = sliced.holdings.keys().map(|p| facts.used_by(p)).sum();
        let untracked = facts.used.saturating_sub(tracked);
        let others: u64 = sliced
            .holdings
            .iter()
            .filter(|(p, _)| p.as_str() != id)
            .map(|(p, h)| held(p, h))
            .sum();
        let asked: u64 = sliced.holdings.values().map(|h| h.demand).sum();
        let envoys = sliced.holdings.len() as u64;
        let Some(mine) = sliced.holdings.get_mut(id) else {
            return;
        };
        let used = facts.used_by(id);
        let most = facts.quota.saturating_sub(untracked.saturating_add(others));
        let target = if mine.demand == 0 {
            // It stopped asking: what it was granted beyond what it counted
            // goes back, once it says it applied that.
            used.min(mine.grant.granted)
        } else {
            let holds = mine.grant.granted.max(used);
            let free = most.saturating_sub(holds);
            // Its part of the demand, but never more than an equal split: an
            // Envoy that asks first must not take what the others are about
            // to ask for (each can use its slice only at its share of the
            // key's rate).
            let by_demand = u64::try_from(
                u128::from(free) * u128::from(mine.demand) / u128::from(asked.max(1)),
            )
            .unwrap_or(free);
            let part = by_demand.min(free.div_ceil(envoys.max(1)));
            // The last few requests go whole, to whoever asks first.
            let part = if part == 0 { free.min(1) } else { part };
            holds.saturating_add(part).min(most.max(mine.grant.granted))
        };
        if mine.grant.set(target, seq) {
            self.next_seq = seq;
            if let Some(proxy) = self.proxies.get_mut(id) {
                proxy.last_seq = seq;
            }
        }
    }

    /// `id`'s slices it has not acknowledged.
    pub(super) fn slice_leases(&self, id: &str, acked: u64) -> Vec<QuotaSlice> {
        self.slices
            .iter()
            .filter_map(|(hash, s)| {
                let h = s.holdings.get(id)?;
                (h.grant.seq > acked).then(|| QuotaSlice {
                    key_hash: hash.clone(),
                    period_start_ms: s.period_start_ms,
                    cap: h.grant.granted,
                })
            })
            .collect()
    }

    /// The most all Envoys together may still reach of `facts`' key, with
    /// what Envoys no longer counted here reported (tests check it never
    /// exceeds the quota once every Envoy is engaged).
    pub fn slice_reach(&self, facts: &QuotaFacts) -> Option<u64> {
        let sliced = self.slices.get(&facts.key_hash)?;
        let tracked: u64 = sliced.holdings.keys().map(|p| facts.used_by(p)).sum();
        let held: u64 = sliced
            .holdings
            .iter()
            .map(|(p, h)| h.grant.committed.max(facts.used_by(p)))
            .sum();
        Some(facts.used.saturating_sub(tracked).saturating_add(held))
    }
}

#[cfg(test)]
mod tests;
