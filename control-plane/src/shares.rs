//! The share allocator: how much of each key's and tenant's fleet-wide
//! limits each Envoy may use, so that all of them together never admit
//! more than the limit (the Envoy's side is `tollgate_core::fleet`).
//!
//! Every Envoy's leader reports about once a second. Each report says what
//! each key was asked for through that Envoy (admitted plus refused for a
//! rate limit) and acknowledges the last leases it applied; the answer
//! carries its new leases. Shares follow demand: a key's share on an Envoy
//! is its part of the key's recent demand across the fleet.
//!
//! What keeps the sum within the whole, like Google's Doorman:
//! - Each grant has a `committed` value: the most the Envoy may be using
//!   right now. Raising a grant commits the new value at once; lowering it
//!   commits only when the Envoy acknowledges the receipt that carried it.
//! - A grant is raised only into room: the whole minus what every other
//!   Envoy has committed for that entry.
//! - An entry with no grant of its own uses the Envoy's default share, a
//!   grant like the others: every Envoy's default is `FULL / N`, raised
//!   only into room among the defaults. Every active entry has a grant of
//!   its own on every Envoy, which a new default cannot touch: a receipt
//!   carries every grant not yet acknowledged, and the Envoy applies them
//!   before the default that comes with them. So a joining Envoy starts at
//!   0 and gets its default once the others have acknowledged theirs.
//! - An Envoy silent for a lease length has let its leases lapse (each
//!   share falls to at most its default, see `tollgate_core::fleet`), so its
//!   grants are cut to that. It keeps its default until it is silent for
//!   `forget_after_ms`; only then is it forgotten and its default freed.
//!   Unless it was replaced: an Envoy silent for [`REPLACED_AFTER_MS`]
//!   while another with the same node (Envoy's cluster and node id, unique
//!   per Envoy in Istio and Envoy Gateway) reports after it is the same
//!   Envoy restarted, and the one that stopped admits nothing any more. A
//!   restarted Envoy is otherwise a new one, which would wait for its own
//!   old default (the whole, if it was alone) to be forgotten.
//!
//! Pure: time is an argument and nothing here touches the database; the
//! usage route gathers the demand and applies the answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use tollgate_core::fleet::FULL_SHARE;
use tollgate_core::wire::{FleetLeases, ShareGrant, UsageBatch};

mod slices;

pub use slices::{QuotaFacts, SliceDemand};

/// A whole limit, in the allocator's arithmetic.
pub const FULL: u64 = FULL_SHARE as u64;

/// Demand below a tenth of a request a report is none: one request fades
/// to nothing in four quiet reports, so an Envoy that a key left holds
/// nothing of it (not even the one request any share holds).
const FADED: u64 = 100;

/// Bounds on the time a report's demand is taken over: a first report, or
/// one after a gap, counts as a second's.
const MIN_INTERVAL_MS: u64 = 200;
const MAX_INTERVAL_MS: u64 = 5_000;

/// How long an Envoy is silent, while another on its node reports, before it
/// is taken for replaced: several reports missed, so not a slow one.
pub const REPLACED_AFTER_MS: u64 = 3_000;

/// The least a share is lowered by (1/256 of the whole): see [`Allocator::regrant`].
const NUDGE: u64 = FULL / 256;

/// The allocator's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharesConfig {
    /// How long leases hold without another receipt.
    pub valid_ms: u64,
    /// How long an Envoy may be silent before its default share is freed:
    /// one cut off for longer may admit its default on top of the others.
    pub forget_after_ms: u64,
}

impl Default for SharesConfig {
    fn default() -> Self {
        Self {
            valid_ms: 10_000,
            forget_after_ms: 5 * 60_000,
        }
    }
}

/// What one share is of: a key's own limits or a tenant's shared ones.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub enum Entry {
    /// Lower-case hex SHA-256 of the key.
    Key(String),
    Tenant(String),
}

/// One Envoy's lease of one entry (or its default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Grant {
    /// What the Envoy was last told.
    granted: u64,
    /// The most the Envoy may be using: `granted`, or more while a lower
    /// grant is on its way.
    committed: u64,
    /// The receipt sequence that last changed it.
    seq: u64,
}

impl Grant {
    /// Tells `value` under `seq`; false if that is what was told already.
    fn set(&mut self, value: u64, seq: u64) -> bool {
        if value == self.granted {
            return false;
        }
        self.granted = value;
        self.committed = self.committed.max(value);
        self.seq = seq;
        true
    }

    fn acknowledged(&mut self, acked: u64) {
        if self.seq <= acked {
            self.committed = self.granted;
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Holding {
    grant: Grant,
    /// Requests asked for a second, smoothed over reports (in thousandths).
    demand: u64,
}

#[derive(Debug)]
struct Proxy {
    /// Its [`Report::node`]: empty when unknown.
    node: String,
    generation: u64,
    /// The first sequence of this generation: older acknowledgements are
    /// of leases this Envoy no longer holds.
    first_seq: u64,
    last_seq: u64,
    acked: u64,
    last_report_ms: u64,
    /// Its leases lapsed and its grants were cut to its default.
    lapsed: bool,
    default: Grant,
}

/// One Envoy's report, as the allocator needs it (and as a replica
/// forwards it to the one that allocates, `crate::allocation`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Report {
    /// The Envoy (its usage `reporter_id`).
    pub proxy: String,
    /// `<cluster>/<node id>` of the Envoy, from its identity headers; empty
    /// without a node id. An Envoy restarted keeps it (see [`Allocator`]).
    #[serde(default)]
    pub node: String,
    /// Its `leases_applied`.
    pub acked: u64,
    /// What was asked of each entry since its last report.
    pub demand: Vec<Demand>,
    /// What was asked of each key's quota that is, or may start being,
    /// sliced (see `slices`).
    pub slices: Vec<SliceDemand>,
    /// The figures of those keys and of every other sliced key the Envoy
    /// holds a slice of, read by the replica that allocates.
    #[serde(skip)]
    #[schema(ignore)]
    pub quota_facts: Vec<QuotaFacts>,
}

/// What one Envoy asked of one key or tenant since its last report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Demand {
    pub entry: Entry,
    /// Admitted plus refused for a rate limit.
    pub asked: u64,
    /// Whether any of it was refused for a rate limit.
    pub refused: bool,
}

/// The allocator of one control-plane replica.
#[derive(Debug)]
pub struct Allocator {
    config: SharesConfig,
    proxies: HashMap<String, Proxy>,
    entries: BTreeMap<Entry, HashMap<String, Holding>>,
    /// Keys whose quota is sliced, by key hash.
    slices: BTreeMap<String, slices::Sliced>,
    /// The next receipt sequence, unique across every Envoy and generation.
    next_seq: u64,
    /// Until then (a replica just started while Envoys were live), answer
    /// without leases: Envoys still hold what an earlier allocator leased,
    /// and let it lapse to their defaults first.
    learning_until_ms: u64,
}

impl Allocator {
    /// An allocator starting at `now_ms`; `learning` when Envoys may still
    /// hold leases from before (see [`Allocator::learning_until_ms`]).
    pub fn new(config: SharesConfig, now_ms: u64, learning: bool) -> Self {
        Self {
            config,
            proxies: HashMap::new(),
            entries: BTreeMap::new(),
            slices: BTreeMap::new(),
            // Above any sequence of an earlier allocator: 1,024 a millisecond.
            next_seq: now_ms.saturating_mul(1_024),
            learning_until_ms: if learning {
                now_ms.saturating_add(config.valid_ms + 2_000)
            } else {
                0
            },
        }
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// How many Envoys hold shares.
    pub fn proxies(&self) -> usize {
        self.proxies.len()
    }

    /// How many keys and tenants have grants of their own.
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// Takes `report` at `now_ms` and answers with the reporter's leases;
    /// `None` while learning. `generation` is drawn for a new Envoy.
    pub fn report(&mut self, report: &Report, now_ms: u64, generation: u64) -> Option<FleetLeases> {
        self.lapse(now_ms);
        let learning = now_ms < self.learning_until_ms;
        // Acknowledging less than it did before, an Envoy has lost its
        // leases (its shared data is gone): it is counted afresh.
        let lost = self
            .proxies
            .get(&report.proxy)
            .is_some_and(|p| report.acked < p.acked);
        if lost {
            self.forget(&report.proxy);
        }
        if !self.proxies.contains_key(&report.proxy) {
            self.join(&report.proxy, &report.node, generation, now_ms, learning);
        }
        let id = report.proxy.as_str();
        let (acked, interval_ms) = {
            let proxy = self.proxies.get_mut(id)?;
            // What was asked is made a rate: reports are about a second
            // apart, but not exactly, and that noise would move shares.
            let interval_ms = now_ms
                .saturating_sub(proxy.last_report_ms)
                .clamp(MIN_INTERVAL_MS, MAX_INTERVAL_MS);
            proxy.last_report_ms = now_ms;
            proxy.lapsed = false;
            if (proxy.first_seq..=proxy.last_seq).contains(&report.acked) {
                proxy.acked = proxy.acked.max(report.acked);
            }
            proxy.default.acknowledged(proxy.acked);
            (proxy.acked, interval_ms)
        };
        for holdings in self.entries.values_mut() {
            if let Some(h) = holdings.get_mut(id) {
                h.grant.acknowledged(acked);
                h.demand /= 2;
                if h.demand < FADED {
                    h.demand = 0;
                }
            }
        }
        for Demand {
            entry,
            asked,
            refused,
        } in &report.demand
        {
            // A key or tenant gets grants of its own only once a share was
            // too small for it somewhere: until then every Envoy's default
            // serves it, and a fleet of a million keys each asked well
            // within its limit costs the allocator nothing per key.
            if !self.entries.contains_key(entry) {
                if !refused {
                    continue;
                }
                self.activate(entry.clone());
            }
            if let Some(h) = self.entries.get_mut(entry).and_then(|e| e.get_mut(id)) {
                let per_second = asked.saturating_mul(1_000_000) / interval_ms;
                h.demand = h.demand.saturating_add(per_second / 2);
            }
        }
        if learning {
            return None;
        }
        self.report_slices(id, acked, interval_ms, &report.slices, &report.quota_facts);
        self.regrant(id);
        self.leases(id)
    }

    /// A new Envoy: a new generation, a default of 0, and a grant of 0 for
    /// every active entry, so that its default never reaches one.
    fn join(&mut self, id: &str, node: &str, generation: u64, now_ms: u64, learning: bool) {
        let seq = self.seq();
        // Learning: it may hold up to an earlier allocator's default still.
        let presumed = if learning {
            FULL / (self.proxies.len() as u64 + 1)
        } else {
            0
        };
        self.proxies.insert(
            id.to_owned(),
            Proxy {
                node: node.to_owned(),
                generation,
                first_seq: seq,
                last_seq: seq,
                acked: 0,
                // Its first report counts as a second's demand.
                last_report_ms: now_ms.saturating_sub(1_000),
                lapsed: false,
                default: Grant {
                    granted: 0,
                    committed: presumed,
                    seq,
                },
            },
        );
        self.join_slices(id, seq);
        for holdings in self.entries.values_mut() {
            holdings.insert(
                id.to_owned(),
                Holding {
                    grant: Grant {
                        granted: 0,
                        committed: presumed,
                        seq,
                    },
                    demand: 0,
                },
            );
        }
    }

    /// A key or tenant seen for the first time: every Envoy gets a grant of
    /// its own at its default, which it may be using already.
    fn activate(&mut self, entry: Entry) {
        let seq = self.seq();
        let holdings = self
            .proxies
            .iter_mut()
            .map(|(id, proxy)| {
                proxy.last_seq = seq;
                let grant = Grant {
                    granted: proxy.default.granted,
                    committed: proxy.default.committed,
                    seq,
                };
                (id.clone(), Holding { grant, demand: 0 })
            })
            .collect();
        self.entries.insert(entry, holdings);
    }

    /// Cuts the grants of Envoys silent for a lease length to their
    /// defaults (their leases have lapsed to that), and forgets those
    /// silent for `forget_after_ms`.
    fn lapse(&mut self, now_ms: u64) {
        let valid = self.config.valid_ms;
        let forget = self.config.forget_after_ms;
        self.end_periods(now_ms);
        let gone: Vec<String> = self
            .proxies
            .iter()
            .filter(|(_, p)| now_ms.saturating_sub(p.last_report_ms) > forget)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone.iter().chain(&self.replaced(now_ms)) {
            self.forget(id);
        }
        let lapsing: Vec<(String, u64)> = self
            .proxies
            .iter()
            .filter(|(_, p)| !p.lapsed && now_ms.saturating_sub(p.last_report_ms) > valid)
            .map(|(id, p)| (id.clone(), p.default.committed))
            .collect();
        for (id, default) in lapsing {
            let seq = self.seq();
            let mut cut = false;
            for holdings in self.entries.values_mut() {
                if let Some(h) = holdings.get_mut(&id) {
                    if h.grant.committed > default {
                        // Told again when it is back, before its terms are
                        // valid again: a receipt's grants go in first.
                        h.grant = Grant {
                            granted: default.min(h.grant.granted),
                            committed: default,
                            seq,
                        };
                        cut = true;
                    }
                }
            }
            if let Some(p) = self.proxies.get_mut(&id) {
                p.lapsed = true;
                if cut {
                    p.last_seq = seq;
                }
            }
        }
    }

    /// Envoys silent for [`REPLACED_AFTER_MS`] since another on their node
    /// reported after them: restarted as that one.
    fn replaced(&self, now_ms: u64) -> Vec<String> {
        let mut latest: HashMap<&str, u64> = HashMap::new();
        for p in self.proxies.values().filter(|p| !p.node.is_empty()) {
            let at = latest.entry(&p.node).or_default();
            *at = (*at).max(p.last_report_ms);
        }
        self.proxies
            .iter()
            .filter(|(_, p)| {
                latest.get(p.node.as_str()).is_some_and(|&last| {
                    last > p.last_report_ms
                        && now_ms.saturating_sub(p.last_report_ms) > REPLACED_AFTER_MS
                })
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Frees everything `id` held.
    fn forget(&mut self, id: &str) {
        self.proxies.remove(id);
        for holdings in self.entries.values_mut() {
            holdings.remove(id);
        }
        self.forget_slices(id);
    }

    /// Moves `id`'s default and grants toward their targets, as far as the
    /// others' commitments leave room.
    fn regrant(&mut self, id: &str) {
        let n = self.proxies.len() as u64;
        let others_default: u64 = self
            .proxies
            .iter()
            .filter(|(other, _)| other.as_str() != id)
            .map(|(_, p)| p.default.committed)
            .sum();
        let seq = self.next_seq + 1;
        let mut changed = false;
        if let Some(proxy) = self.proxies.get_mut(id) {
            let target = FULL / n.max(1);
            let room = FULL.saturating_sub(others_default);
            let value = if target <= proxy.default.granted {
                target
            } else {
                target.min(room).max(proxy.default.granted)
            };
            changed |= proxy.default.set(value, seq);
        }
        for holdings in self.entries.values_mut() {
            let asked: u64 = holdings.values().map(|h| h.demand).sum();
            let others: u64 = holdings
                .iter()
                .filter(|(other, _)| other.as_str() != id)
                .map(|(_, h)| h.grant.committed)
                .sum();
            let Some(mine) = holdings.get_mut(id) else {
                continue;
            };
            if asked == 0 {
                // Nobody asks: leave the shares where demand left them.
                continue;
            }
            let target =
                u64::try_from(u128::from(FULL) * u128::from(mine.demand) / u128::from(asked))
                    .unwrap_or(FULL);
            // A share is lowered only for more than a nudge: each lowering
            // leaves its part unused until acknowledged, and report-to-report
            // noise in demand would otherwise keep some of every key idle.
            let granted = mine.grant.granted;
            let nudge = target > 0 && target < granted && granted - target <= NUDGE;
            let target = if nudge { granted } else { target };
            let value = target.min(FULL.saturating_sub(others));
            changed |= mine.grant.set(value, seq);
        }
        if changed {
            self.next_seq = seq;
            if let Some(proxy) = self.proxies.get_mut(id) {
                proxy.last_seq = seq;
            }
        }
    }

    /// The answer for `id`: its terms and every grant it has not acknowledged.
    fn leases(&self, id: &str) -> Option<FleetLeases> {
        let proxy = self.proxies.get(id)?;
        let grants = self
            .entries
            .iter()
            .filter_map(|(entry, holdings)| {
                let h = holdings.get(id)?;
                (h.grant.seq > proxy.acked).then(|| {
                    let (key_hash, tenant_id) = match entry {
                        Entry::Key(hash) => (Some(hash.clone()), None),
                        Entry::Tenant(tenant) => (None, Some(tenant.clone())),
                    };
                    ShareGrant {
                        key_hash,
                        tenant_id,
                        share: h.grant.granted,
                    }
                })
            })
            .collect();
        Some(FleetLeases {
            generation: proxy.generation,
            seq: proxy.last_seq,
            valid_ms: self.config.valid_ms,
            default_share: proxy.default.granted,
            grants,
            slices: self.slice_leases(id, proxy.acked),
        })
    }

    /// The most all Envoys together may be using of `entry` (tests check it
    /// never exceeds [`FULL`]).
    pub fn committed(&self, entry: &Entry) -> u64 {
        match self.entries.get(entry) {
            Some(holdings) => holdings.values().map(|h| h.grant.committed).sum(),
            None => self.proxies.values().map(|p| p.default.committed).sum(),
        }
    }
}

/// The allocator as a replica shares it between requests, with what it
/// learned of keys: a key's hash and tenant never change.
#[derive(Debug)]
pub struct Leasing {
    allocator: Mutex<Allocator>,
    /// Whether this replica allocates (see `crate::allocation`).
    role: std::sync::RwLock<Role>,
    /// The sync token, presented to the replica that allocates.
    forwarding_token: std::sync::RwLock<Option<String>>,
    /// The keys the replica that allocates slices, as it last said: which
    /// keys' use a report forwarded there must name.
    sliced_elsewhere: std::sync::RwLock<std::collections::HashSet<String>>,
    client: std::sync::RwLock<reqwest::Client>,
    identities: Mutex<HashMap<String, (String, String)>>,
    /// Held from reading a report's quota figures to answering it: figures
    /// read before another Envoy's batch was counted must not meet that
    /// Envoy's engagement, which the allocator took after counting it.
    reports: tokio::sync::Mutex<()>,
}

/// Whether this replica allocates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The only replica (SQLite): it allocates.
    Alone,
    /// It holds the allocator's lock: every replica's reports come here.
    Leader,
    /// Another allocates, reached at this URL (empty: none known yet).
    Follower(String),
}

/// Most key identities remembered; past it the memo starts over (it only
/// costs a lookup per key).
const MAX_IDENTITIES: usize = 1_000_000;

impl Leasing {
    pub fn new(allocator: Allocator) -> Self {
        Self {
            allocator: Mutex::new(allocator),
            role: std::sync::RwLock::new(Role::Alone),
            forwarding_token: std::sync::RwLock::new(None),
            sliced_elsewhere: std::sync::RwLock::new(Default::default()),
            client: std::sync::RwLock::new(reqwest::Client::new()),
            identities: Mutex::new(HashMap::new()),
            reports: tokio::sync::Mutex::new(()),
        }
    }

    pub fn role(&self) -> Role {
        self.role.read().map(|r| r.clone()).unwrap_or(Role::Alone)
    }

    pub fn set_role(&self, role: Role) {
        if let Ok(mut r) = self.role.write() {
            *r = role;
        }
    }

    /// Forwards to the replica that allocates with `token` (the sync token),
    /// through `client` (which trusts the replicas' certificates).
    pub fn forward_with(&self, token: &str, client: reqwest::Client) {
        if let Ok(mut t) = self.forwarding_token.write() {
            *t = Some(token.to_owned());
        }
        if let Ok(mut c) = self.client.write() {
            *c = client;
        }
    }

    pub fn forwarding_token(&self) -> Option<String> {
        self.forwarding_token.read().ok()?.clone()
    }

    pub fn client(&self) -> reqwest::Client {
        match self.client.read() {
            Ok(client) => client.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// One report at a time, from reading its quota figures to its answer.
    pub async fn one_report(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reports.lock().await
    }

    fn allocator(&self) -> std::sync::MutexGuard<'_, Allocator> {
        self.allocator.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the key with this hash has its quota sliced: as this
    /// replica's allocator has it, or, where another allocates, as its last
    /// answer said.
    pub fn is_sliced(&self, key_hash: &str) -> bool {
        match self.role() {
            Role::Alone | Role::Leader => self.allocator().is_sliced(key_hash),
            Role::Follower(_) => self
                .sliced_elsewhere
                .read()
                .is_ok_and(|keys| keys.contains(key_hash)),
        }
    }

    /// Whether any key is being sliced (see [`Leasing::is_sliced`]).
    pub fn anything_sliced(&self) -> bool {
        match self.role() {
            Role::Alone | Role::Leader => self.allocator().sliced() > 0,
            Role::Follower(_) => self
                .sliced_elsewhere
                .read()
                .is_ok_and(|keys| !keys.is_empty()),
        }
    }

    /// The hashes of the keys this replica's allocator slices.
    pub fn sliced_keys(&self) -> Vec<String> {
        self.allocator().sliced_keys()
    }

    /// What the replica that allocates said it slices.
    pub fn sliced_elsewhere(&self, keys: Vec<String>) {
        if let Ok(mut known) = self.sliced_elsewhere.write() {
            *known = keys.into_iter().collect();
        }
    }

    /// Ids of the sliced keys `proxy` holds slices of.
    pub fn sliced_keys_held(&self, proxy: &str) -> Vec<String> {
        self.allocator().sliced_keys_held(proxy)
    }

    /// A key's hash and tenant, if remembered.
    pub fn identity(&self, key_id: &str) -> Option<(String, String)> {
        let known = self.identities.lock().unwrap_or_else(|e| e.into_inner());
        known.get(key_id).cloned()
    }

    pub fn remember(&self, key_id: &str, hash: String, tenant: String) {
        let mut known = self.identities.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= MAX_IDENTITIES {
            known.clear();
        }
        known.insert(key_id.to_owned(), (hash, tenant));
    }

    /// Answers a report; `None` while learning.
    pub fn report(&self, report: &Report, now_ms: u64) -> Option<FleetLeases> {
        self.allocator()
            .report(report, now_ms, rand::random::<u64>() | 1)
    }

    /// Starts over as `allocator` (a replica that finds live Envoys at start).
    pub fn replace(&self, allocator: Allocator) {
        *self.allocator() = allocator;
    }

    /// This replica's allocator for Prometheus: Envoys holding shares, and
    /// keys and tenants with grants of their own (its memory grows with both).
    pub fn render_metrics(&self, out: &mut String) {
        let (proxies, entries, sliced) = {
            let allocator = self.allocator();
            (allocator.proxies(), allocator.entries(), allocator.sliced())
        };
        out.push_str(&format!(
            "# HELP tollgate_control_plane_share_proxies Envoys this replica leases shares of fleet-wide limits to.\n\
             # TYPE tollgate_control_plane_share_proxies gauge\n\
             tollgate_control_plane_share_proxies {proxies}\n\
             # HELP tollgate_control_plane_share_entries Keys and tenants with shares of their own on this replica.\n\
             # TYPE tollgate_control_plane_share_entries gauge\n\
             tollgate_control_plane_share_entries {entries}\n\
             # HELP tollgate_control_plane_sliced_quotas Keys whose quota this replica shares out in slices near its end.\n\
             # TYPE tollgate_control_plane_sliced_quotas gauge\n\
             tollgate_control_plane_sliced_quotas {sliced}\n"
        ));
    }
}

/// What a batch asked of each key: admitted, and refused by a rate limit
/// (what a larger share would have let through), and how many were
/// refused. Keys that asked nothing of a limit are left out.
pub fn asked(batch: &UsageBatch) -> Vec<(&str, u64, u64)> {
    batch
        .keys
        .iter()
        .map(|k| {
            let refused = k.denied.get("rate_limited").copied().unwrap_or(0);
            (
                k.key_id.as_str(),
                k.allowed.saturating_add(refused),
                refused,
            )
        })
        .filter(|(_, n, _)| *n > 0)
        .collect()
}

#[cfg(test)]
mod tests;
