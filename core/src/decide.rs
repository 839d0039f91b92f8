//! The per-request verdict: `decide(facts, store, now) -> Decision`.
//!
//! Pure: the filter gathers the facts and reads the clock once, this module
//! reads config and buckets through [`SharedStore`] and returns what to do.
//! Checks run cheapest first, in Unkey's order: key present → well-formed →
//! config present → key known → key active → limits.

use std::net::IpAddr;

use crate::bucket::{ceil_seconds, Bucket, Check};
use crate::cache::ConfigCache;
use crate::config::{Limit, QUOTA_POLICY};
use crate::json::write::push_decimal;
use crate::key::ApiKey;
use crate::layout::{
    anonymous_buckets_key, buckets_key, client_identity, decode_buckets, encode_buckets,
    read_for_update, tenant_buckets_key, OTHERS_ENTRY, OWNER_ENTRY, QUOTA_ENTRY,
};
use crate::period::{quota_period, Period};
use crate::store::{SetError, SharedStore};
use crate::wire::LimitScope;

/// How many times a bucket update is retried when another worker wrote first.
pub const MAX_CAS_ATTEMPTS: u32 = 32;

/// What the filter knows about the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts<'a> {
    /// The presented key, see [`presented_key`].
    pub api_key: Option<&'a str>,
    /// `:method`.
    pub method: &'a str,
    /// `:path`, query included.
    pub path: &'a str,
    /// The downstream peer's address, if the host tells us.
    pub client_ip: ClientIp,
}

/// The downstream peer's address, or how to ask for it: most requests never
/// need it, and asking the host costs a call.
#[derive(Debug, Clone, Copy, Default)]
pub enum ClientIp {
    #[default]
    Unknown,
    Known(IpAddr),
    Ask(fn() -> Option<IpAddr>),
}

impl ClientIp {
    pub fn get(self) -> Option<IpAddr> {
        match self {
            Self::Unknown => None,
            Self::Known(ip) => Some(ip),
            Self::Ask(ask) => ask(),
        }
    }
}

impl From<Option<IpAddr>> for ClientIp {
    fn from(ip: Option<IpAddr>) -> Self {
        ip.map_or(Self::Unknown, Self::Known)
    }
}

/// The key a client presented: `x-api-key`, else `Authorization: Bearer <key>`.
pub fn presented_key<'a>(
    x_api_key: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<&'a str> {
    if let Some(key) = x_api_key.map(str::trim).filter(|k| !k.is_empty()) {
        return Some(key);
    }
    authorization.and_then(crate::credential::bearer_token)
}

/// Why a request was refused. Each maps to one status and one stable `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    MissingApiKey,
    InvalidApiKey,
    DisabledApiKey,
    ExpiredApiKey,
    Forbidden,
    RateLimited,
    QuotaExceeded,
    ConfigUnavailable,
}

impl DenyReason {
    /// Every reason, for whatever must cover them all (metrics, tests).
    pub const ALL: [DenyReason; 8] = [
        Self::MissingApiKey,
        Self::InvalidApiKey,
        Self::DisabledApiKey,
        Self::ExpiredApiKey,
        Self::Forbidden,
        Self::RateLimited,
        Self::QuotaExceeded,
        Self::ConfigUnavailable,
    ];

    pub fn status(self) -> u32 {
        match self {
            Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::DisabledApiKey
            | Self::ExpiredApiKey => 401,
            Self::Forbidden => 403,
            Self::RateLimited | Self::QuotaExceeded => 429,
            Self::ConfigUnavailable => 503,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::MissingApiKey => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
            Self::DisabledApiKey => "disabled_api_key",
            Self::ExpiredApiKey => "expired_api_key",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::QuotaExceeded => "quota_exceeded",
            Self::ConfigUnavailable => "config_unavailable",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::MissingApiKey => "API key required",
            Self::InvalidApiKey => "Invalid API key",
            Self::DisabledApiKey => "API key disabled",
            Self::ExpiredApiKey => "API key expired",
            Self::Forbidden => "Not permitted for this key",
            Self::RateLimited => "Rate limit exceeded",
            Self::QuotaExceeded => "Monthly quota exceeded",
            Self::ConfigUnavailable => "Gateway not ready",
        }
    }
}

/// One rate-limit policy's state, for the response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStatus {
    pub name: String,
    /// Requests per window.
    pub quota: u64,
    pub window_seconds: u64,
    /// Whole requests left now.
    pub remaining: u64,
    /// Seconds until the policy is fully replenished (or, for a policy that
    /// denied, until the request would be admitted).
    pub reset_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// `None` for an anonymous request, as is `key_id`.
    pub tenant_id: Option<String>,
    pub key_id: Option<String>,
    pub plan_name: String,
    pub policies: Vec<PolicyStatus>,
    /// What the request cost (see [`crate::config::Plan::cost_of`]).
    pub cost: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub reason: DenyReason,
    pub detail: String,
    /// Whole seconds, at least 1; only for 429.
    pub retry_after: Option<u64>,
    pub policies: Vec<PolicyStatus>,
    /// Names of the policies that refused the request.
    pub violated: Vec<String>,
    /// The key the refusal is charged to, once the key is identified.
    pub key_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Allowed),
    Deny(Denied),
}

impl Denied {
    /// A refusal with nothing but its reason and detail.
    pub fn new(reason: DenyReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            retry_after: None,
            policies: Vec::new(),
            violated: Vec::new(),
            key_id: None,
        }
    }
}

fn deny(reason: DenyReason, detail: impl Into<String>) -> Decision {
    Decision::Deny(Denied::new(reason, detail))
}

/// [`deny`], charged to a known key.
fn deny_key(key_id: &str, reason: DenyReason, detail: impl Into<String>) -> Decision {
    match deny(reason, detail) {
        Decision::Deny(denied) => Decision::Deny(Denied {
            key_id: Some(key_id.to_owned()),
            ..denied
        }),
        allowed => allowed,
    }
}

/// Decides one request at `now_ms` (Unix milliseconds), reading all config afresh.
pub fn decide(facts: &RequestFacts<'_>, store: &impl SharedStore, now_ms: u64) -> Decision {
    decide_cached(facts, store, &mut ConfigCache::new(), now_ms)
}

/// [`decide`], reusing the config `cache` holds for the applied version.
pub fn decide_cached(
    facts: &RequestFacts<'_>,
    store: &impl SharedStore,
    cache: &mut ConfigCache,
    now_ms: u64,
) -> Decision {
    let Some(presented) = facts.api_key else {
        return decide_anonymous(facts, store, cache, now_ms);
    };
    let key = match ApiKey::parse(presented) {
        Ok(key) => key,
        Err(why) => {
            return deny(
                DenyReason::InvalidApiKey,
                format!("The API key is malformed: {why}."),
            )
        }
    };
    if cache.version(store, now_ms).is_none() {
        return deny(
            DenyReason::ConfigUnavailable,
            "The gateway has not received its configuration yet; retry shortly.",
        );
    }
    let hash = key.hash();
    let Some(record) = cache.key(store, &hash) else {
        return deny(DenyReason::InvalidApiKey, "The API key is not known.");
    };
    if !record.active {
        return deny_key(
            &record.id,
            DenyReason::DisabledApiKey,
            "The API key has been deactivated.",
        );
    }
    if record.expires_at_ms.is_some_and(|expiry| now_ms >= expiry) {
        return deny_key(
            &record.id,
            DenyReason::ExpiredApiKey,
            "The API key has expired.",
        );
    }
    if let Some(cidrs) = &record.allowed_cidrs {
        let from_allowed = facts
            .client_ip
            .get()
            .is_some_and(|ip| cidrs.iter().any(|c| c.contains(ip)));
        if !from_allowed {
            return deny_key(
                &record.id,
                DenyReason::Forbidden,
                "The API key may not be used from this client address.",
            );
        }
    }
    if let Some(scopes) = &record.scopes {
        if !scopes.iter().any(|s| s.permits(facts.method, facts.path)) {
            return deny_key(
                &record.id,
                DenyReason::Forbidden,
                "The API key's scopes do not permit this method and path.",
            );
        }
    }
    let Some(plan) = cache.plan(store, &record.plan_id) else {
        return deny_key(
            &record.id,
            DenyReason::ConfigUnavailable,
            "The key's plan is not configured on this gateway yet; retry shortly.",
        );
    };

    let limits = record.effective_limits(&plan);
    let cost = plan.cost_of(facts.method, facts.path);
    let (tenant_limits, key_limits): (Vec<&Limit>, Vec<&Limit>) = limits
        .into_iter()
        .partition(|l| l.scope == LimitScope::Tenant);
    let quota = record.quota(&plan).map(|max| Quota {
        max,
        period: quota_period(now_ms, record.billing_anchor_day),
    });
    let mut ledgers = vec![Ledger {
        entry: buckets_key(&hash),
        limits: key_limits,
        quota,
        owner: None,
    }];
    if !tenant_limits.is_empty() {
        ledgers.push(Ledger {
            entry: tenant_buckets_key(&record.tenant_id),
            limits: tenant_limits,
            quota: None,
            owner: None,
        });
    }
    verdict(
        consume(store, &ledgers, cost, now_ms),
        Some(record.tenant_id.clone()),
        Some(record.id.clone()),
        plan.name.clone(),
    )
}

/// A keyless request: admitted under the anonymous plan if its route is
/// open, with buckets per client address; refused as `missing_api_key` otherwise.
fn decide_anonymous(
    facts: &RequestFacts<'_>,
    store: &impl SharedStore,
    cache: &mut ConfigCache,
    now_ms: u64,
) -> Decision {
    let missing = || {
        deny(
            DenyReason::MissingApiKey,
            "Send your API key in the x-api-key header or as Authorization: Bearer <key>.",
        )
    };
    cache.version(store, now_ms);
    let Some(anonymous) = cache.anonymous(store) else {
        return missing();
    };
    let Some(plan_id) = anonymous.plan_for(facts.method, facts.path) else {
        return missing();
    };
    let Some(plan) = cache.plan(store, plan_id) else {
        return deny(
            DenyReason::ConfigUnavailable,
            "The anonymous plan is not configured on this gateway yet; retry shortly.",
        );
    };
    let Some(ip) = facts.client_ip.get() else {
        return missing();
    };
    let identity = client_identity(ip);
    let cost = plan.cost_of(facts.method, facts.path);
    let ledger = Ledger {
        entry: anonymous_buckets_key(identity),
        limits: plan.limits.iter().collect(),
        quota: None,
        owner: Some(identity),
    };
    verdict(
        consume(store, &[ledger], cost, now_ms),
        None,
        None,
        plan.name.clone(),
    )
}

fn verdict(
    consumed: Consumed,
    tenant_id: Option<String>,
    key_id: Option<String>,
    plan_name: String,
) -> Decision {
    match consumed {
        Consumed::Admitted { policies, cost } => Decision::Allow(Allowed {
            tenant_id,
            key_id,
            plan_name,
            policies,
            cost,
        }),
        Consumed::Refused {
            policies,
            violated,
            wait_ms,
        } => {
            let retry_after = ceil_seconds(wait_ms).max(1);
            // Written without `core::fmt`, which costs several times as much
            // on wasm32: a denial must cost no more than an admission.
            let mut detail = String::with_capacity(96);
            let names = violated.join(", ");
            let reason = if violated.iter().any(|v| v == QUOTA_POLICY) {
                detail.push_str("Monthly quota used up; it resets in ");
                push_decimal(&mut detail, retry_after);
                detail.push_str(" s (policies ");
                detail.push_str(&names);
                detail.push_str(").");
                DenyReason::QuotaExceeded
            } else {
                detail.push_str("Rate limit ");
                detail.push_str(&names);
                detail.push_str(" exceeded; retry in ");
                push_decimal(&mut detail, retry_after);
                detail.push_str(" s.");
                DenyReason::RateLimited
            };
            Decision::Deny(Denied {
                reason,
                detail,
                retry_after: Some(retry_after),
                policies,
                violated,
                key_id,
            })
        }
        Consumed::Contended => Decision::Deny(Denied {
            reason: DenyReason::RateLimited,
            detail: "Too many concurrent requests for this key; retry in 1 s.".into(),
            retry_after: Some(1),
            policies: Vec::new(),
            violated: Vec::new(),
            key_id,
        }),
    }
}

/// A monthly quota as it applies to this request.
#[derive(Debug, Clone, Copy)]
struct Quota {
    max: u64,
    period: Period,
}

/// One shared-data entry that a request consumes from: its limits' buckets
/// and, for a key, the key's own quota count.
struct Ledger<'a> {
    entry: String,
    /// Borrowed from the key record and plan: a request copies no limit.
    limits: Vec<&'a Limit>,
    quota: Option<Quota>,
    /// For an anonymous slot: the client address consuming from it.
    owner: Option<u128>,
}

/// A ledger as read at one instant: refilled buckets, this Envoy's quota
/// count and the other Envoys' use as last reported.
struct Look {
    /// The CAS token to write the entry with ([`read_for_update`]).
    cas: u32,
    buckets: Vec<Bucket>,
    own_used: u64,
    others_used: u64,
    /// The stored [`OTHERS_ENTRY`] as read, written back unchanged.
    others: Option<Bucket>,
}

impl Ledger<'_> {
    fn look(&self, store: &impl SharedStore, now_ms: u64) -> Look {
        let (bytes, cas) = read_for_update(store, &self.entry);
        let stored = decode_buckets(&bytes);
        let stored_bucket = |name: &str| {
            stored
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, bucket)| *bucket)
        };
        let mut buckets: Vec<Bucket> = self
            .limits
            .iter()
            .map(|limit| {
                stored_bucket(&limit.name)
                    .map(|b| b.refilled(limit, now_ms))
                    .unwrap_or_else(|| Bucket::full(limit, now_ms))
            })
            .collect();
        if let Some(owner) = self.owner {
            // A slot another client left idle (all its buckets full again) is
            // taken over; a busy one is shared, which only ever admits less.
            let previous = stored_bucket(OWNER_ENTRY).map(|b| b.level);
            let idle = self
                .limits
                .iter()
                .zip(&buckets)
                .all(|(limit, b)| b.ms_until_full(limit) == 0);
            if previous.is_some_and(|p| p != owner) && idle {
                buckets = self
                    .limits
                    .iter()
                    .map(|limit| Bucket::full(limit, now_ms))
                    .collect();
            }
        }
        // A count of another period says nothing about this one.
        let this_period = |entry: &str| match (self.quota, stored_bucket(entry)) {
            (Some(quota), Some(count)) if count.last_fill_ms == quota.period.start_ms => {
                u64::try_from(count.level).unwrap_or(u64::MAX)
            }
            _ => 0,
        };
        Look {
            cas,
            buckets,
            own_used: this_period(QUOTA_ENTRY),
            others_used: this_period(OTHERS_ENTRY),
            others: stored_bucket(OTHERS_ENTRY),
        }
    }

    /// The buckets after consuming `cost`, or which policies refuse and how long until they would not.
    fn judge(
        &self,
        look: &Look,
        cost: u64,
        now_ms: u64,
    ) -> Result<Vec<Bucket>, (Vec<String>, u64)> {
        let mut after = Vec::with_capacity(look.buckets.len());
        let mut violated = Vec::new();
        let mut wait_ms = 0u64;
        for (limit, bucket) in self.limits.iter().zip(&look.buckets) {
            match bucket.check(limit, cost) {
                Check::Admit { level_after } => after.push(Bucket {
                    level: level_after,
                    last_fill_ms: bucket.last_fill_ms,
                }),
                Check::Deny { wait_ms: w } => {
                    violated.push(limit.name.clone());
                    wait_ms = wait_ms.max(w);
                }
            }
        }
        if let Some(quota) = &self.quota {
            let used = look.own_used.saturating_add(look.others_used);
            if cost > 0 && used.saturating_add(cost) > quota.max {
                violated.push(QUOTA_POLICY.to_owned());
                wait_ms = wait_ms.max(quota.period.ms_left(now_ms));
            }
        }
        if violated.is_empty() {
            Ok(after)
        } else {
            Err((violated, wait_ms))
        }
    }

    fn policies(
        &self,
        buckets: &[Bucket],
        own_used: u64,
        others_used: u64,
        now_ms: u64,
    ) -> Vec<PolicyStatus> {
        let mut out: Vec<PolicyStatus> = self
            .limits
            .iter()
            .zip(buckets)
            .map(|(l, b)| status(l, b))
            .collect();
        if let Some(quota) = &self.quota {
            let used = own_used.saturating_add(others_used);
            out.push(PolicyStatus {
                name: QUOTA_POLICY.to_owned(),
                quota: quota.max,
                window_seconds: quota.period.seconds(),
                remaining: quota.max.saturating_sub(used),
                reset_seconds: ceil_seconds(quota.period.ms_left(now_ms)),
            });
        }
        out
    }

    /// Writes `buckets` and the quota count `own_used`, guarded by the look's CAS token.
    fn write(
        &self,
        store: &impl SharedStore,
        look: &Look,
        buckets: &[Bucket],
        own_used: u64,
    ) -> Result<(), SetError> {
        let mut entries: Vec<(&str, Bucket)> = self
            .limits
            .iter()
            .map(|l| l.name.as_str())
            .zip(buckets.iter().copied())
            .collect();
        if let Some(quota) = &self.quota {
            entries.push((
                QUOTA_ENTRY,
                Bucket {
                    level: u128::from(own_used),
                    last_fill_ms: quota.period.start_ms,
                },
            ));
        }
        if let Some(others) = look.others {
            entries.push((OTHERS_ENTRY, others));
        }
        if let Some(owner) = self.owner {
            entries.push((
                OWNER_ENTRY,
                Bucket {
                    level: owner,
                    last_fill_ms: 0,
                },
            ));
        }
        store.set(&self.entry, Some(&encode_buckets(entries)), Some(look.cas))
    }

    /// Gives back what an admitted request took, when a later ledger refused it.
    fn refund(&self, store: &impl SharedStore, cost: u64, now_ms: u64) {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let look = self.look(store, now_ms);
            let buckets: Vec<Bucket> = self
                .limits
                .iter()
                .zip(&look.buckets)
                .map(|(limit, b)| b.refunded(limit, cost))
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

enum Consumed {
    Admitted {
        policies: Vec<PolicyStatus>,
        cost: u64,
    },
    Refused {
        policies: Vec<PolicyStatus>,
        violated: Vec<String>,
        wait_ms: u64,
    },
    /// Every CAS attempt lost: refuse rather than risk admitting past the limit.
    Contended,
}

fn status(limit: &Limit, bucket: &Bucket) -> PolicyStatus {
    PolicyStatus {
        name: limit.name.clone(),
        quota: limit.max,
        window_seconds: limit.window_seconds,
        remaining: bucket.remaining(limit),
        reset_seconds: ceil_seconds(bucket.ms_until_full(limit)),
    }
}

/// The policies of every ledger as they stand, with the refusing ones'
/// reset set to the wait.
fn refused(
    ledgers: &[Ledger],
    looks: &[Look],
    violated: Vec<String>,
    wait_ms: u64,
    now_ms: u64,
) -> Consumed {
    let mut policies: Vec<PolicyStatus> = ledgers
        .iter()
        .zip(looks)
        .flat_map(|(ledger, look)| {
            ledger.policies(&look.buckets, look.own_used, look.others_used, now_ms)
        })
        .collect();
    for p in &mut policies {
        if violated.contains(&p.name) {
            p.reset_seconds = ceil_seconds(wait_ms).max(1);
        }
    }
    Consumed::Refused {
        policies,
        violated,
        wait_ms,
    }
}

/// Consumes `cost` from every ledger, or from none. Each ledger is one CAS;
/// when a later ledger refuses after an earlier one was charged, the earlier
/// one is refunded, so a refused request consumes nothing anywhere.
fn consume(store: &impl SharedStore, ledgers: &[Ledger], cost: u64, now_ms: u64) -> Consumed {
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
        let looks: Vec<Look> = ledgers.iter().map(|l| l.look(store, now_ms)).collect();
        let mut violated = Vec::new();
        let mut wait_ms = 0;
        for (ledger, look) in ledgers.iter().zip(&looks) {
            if let Err((names, wait)) = ledger.judge(look, cost, now_ms) {
                violated.extend(names);
                wait_ms = u64::max(wait_ms, wait);
            }
        }
        if !violated.is_empty() {
            // Nothing is written: a refused request consumes from no window.
            return refused(ledgers, &looks, violated, wait_ms, now_ms);
        }
        let mut policies = Vec::new();
        // Each write is guarded by its look's CAS token, so the looks just
        // judged are used as they are; only a lost race reads again.
        let mut looks = looks.into_iter();
        for (i, ledger) in ledgers.iter().enumerate() {
            let mut look = match looks.next() {
                Some(look) => look,
                None => ledger.look(store, now_ms),
            };
            let mut tries = 0;
            loop {
                let after = match ledger.judge(&look, cost, now_ms) {
                    Ok(after) => after,
                    Err((names, wait)) => {
                        for earlier in ledgers.iter().take(i) {
                            earlier.refund(store, cost, now_ms);
                        }
                        let looks: Vec<Look> =
                            ledgers.iter().map(|l| l.look(store, now_ms)).collect();
                        return refused(ledgers, &looks, names, wait, now_ms);
                    }
                };
                let own_used = look.own_used.saturating_add(cost);
                match ledger.write(store, &look, &after, own_used) {
                    Ok(()) => {
                        policies.extend(ledger.policies(
                            &after,
                            own_used,
                            look.others_used,
                            now_ms,
                        ));
                        break;
                    }
                    Err(SetError::CasMismatch) if i == 0 => continue 'attempt,
                    Err(SetError::CasMismatch) if tries < MAX_CAS_ATTEMPTS => {
                        tries += 1;
                        look = ledger.look(store, now_ms);
                    }
                    Err(_) => {
                        for earlier in ledgers.iter().take(i) {
                            earlier.refund(store, cost, now_ms);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::ApiKey;
    use crate::layout::apply_sync;
    use crate::store::MemoryStore;
    use crate::wire::{SyncResponse, WireKey, WireLimit, WirePlan};

    const T0: u64 = 1_800_000_000_000;

    fn key(n: u8) -> ApiKey {
        let body: String = core::iter::repeat_n((b'a' + n) as char, 32).collect();
        ApiKey::from_body(&body).unwrap()
    }

    fn store_with(limits: Vec<WireLimit>, active: bool) -> (MemoryStore, ApiKey) {
        store_with_key(limits, |k| k.active = active)
    }

    fn store_with_key(
        limits: Vec<WireLimit>,
        edit: impl FnOnce(&mut WireKey),
    ) -> (MemoryStore, ApiKey) {
        let store = MemoryStore::new();
        let k = key(0);
        let mut wire_key = WireKey {
            hash: k.hash().to_hex(),
            id: "key_1".into(),
            tenant_id: "tnt_1".into(),
            plan_id: "plan_1".into(),
            active: true,
            ..Default::default()
        };
        edit(&mut wire_key);
        apply_sync(
            &store,
            &SyncResponse {
                version: 1,
                plans: vec![WirePlan {
                    id: "plan_1".into(),
                    name: "Pro".into(),
                    limits,
                    monthly_quota: None,
                    route_costs: vec![],
                }],
                keys: vec![wire_key],
                deleted_keys: vec![],
                deleted_plans: vec![],
                anonymous: None,
                next: None,
            },
        )
        .unwrap();
        (store, k)
    }

    fn limit(name: &str, max: u64, window_seconds: u64, burst: Option<u64>) -> WireLimit {
        WireLimit {
            name: name.into(),
            max,
            window_seconds,
            burst,
            scope: Default::default(),
        }
    }

    fn run(store: &MemoryStore, key: &str, now: u64) -> Decision {
        run_as(store, key, "GET", "/", None, now)
    }

    fn run_as(
        store: &MemoryStore,
        key: &str,
        method: &str,
        path: &str,
        ip: Option<&str>,
        now: u64,
    ) -> Decision {
        let facts = RequestFacts {
            api_key: Some(key),
            method,
            path,
            client_ip: ip.map(|ip| ip.parse().unwrap()).into(),
        };
        decide(&facts, store, now)
    }

    fn reason(d: &Decision) -> Option<DenyReason> {
        match d {
            Decision::Allow(_) => None,
            Decision::Deny(d) => Some(d.reason),
        }
    }

    #[crate::testing::test]
    fn key_comes_from_x_api_key_then_bearer() {
        assert_eq!(presented_key(Some("a"), Some("Bearer b")), Some("a"));
        assert_eq!(presented_key(None, Some("Bearer b")), Some("b"));
        assert_eq!(presented_key(None, Some("bearer  b ")), Some("b"));
        assert_eq!(presented_key(Some(""), Some("Basic b")), None);
        assert_eq!(presented_key(None, Some("Bearer")), None);
        assert_eq!(presented_key(None, None), None);
    }

    #[crate::testing::test]
    fn missing_malformed_and_unconfigured() {
        let empty = MemoryStore::new();
        assert_eq!(
            reason(&decide(&RequestFacts::default(), &empty, T0)),
            Some(DenyReason::MissingApiKey)
        );
        assert_eq!(
            reason(&run(&empty, "tg_nope", T0)),
            Some(DenyReason::InvalidApiKey)
        );
        // Malformed keys are refused before the config check.
        assert_eq!(
            reason(&run(&empty, key(1).expose(), T0)),
            Some(DenyReason::ConfigUnavailable)
        );
        let (store, _) = store_with(vec![], true);
        assert_eq!(
            reason(&run(&store, key(1).expose(), T0)),
            Some(DenyReason::InvalidApiKey)
        );
    }

    #[crate::testing::test]
    fn disabled_key_is_refused() {
        let (store, k) = store_with(vec![limit("s", 1, 1, None)], false);
        assert_eq!(
            reason(&run(&store, k.expose(), T0)),
            Some(DenyReason::DisabledApiKey)
        );
    }

    #[crate::testing::test]
    fn allowed_carries_identity_and_policies() {
        let (store, k) = store_with(vec![limit("per-minute", 60, 60, Some(3))], true);
        let Decision::Allow(a) = run(&store, k.expose(), T0) else {
            panic!("expected allow")
        };
        assert_eq!(
            (
                a.tenant_id.as_deref(),
                a.key_id.as_deref(),
                Some(a.plan_name.as_str())
            ),
            (Some("tnt_1"), Some("key_1"), Some("Pro"))
        );
        assert_eq!(
            a.policies,
            vec![PolicyStatus {
                name: "per-minute".into(),
                quota: 60,
                window_seconds: 60,
                remaining: 2,
                reset_seconds: 1,
            }]
        );
    }

    #[crate::testing::test]
    fn burst_then_429_with_retry_after_then_refill() {
        let (store, k) = store_with(vec![limit("per-second", 2, 1, Some(2))], true);
        assert!(reason(&run(&store, k.expose(), T0)).is_none());
        assert!(reason(&run(&store, k.expose(), T0)).is_none());
        let Decision::Deny(d) = run(&store, k.expose(), T0) else {
            panic!("expected deny")
        };
        assert_eq!(d.reason, DenyReason::RateLimited);
        assert_eq!(d.retry_after, Some(1));
        assert_eq!(d.violated, vec!["per-second".to_owned()]);
        assert_eq!(d.detail, "Rate limit per-second exceeded; retry in 1 s.");
        assert_eq!(d.policies[0].remaining, 0);
        assert_eq!(
            reason(&run(&store, k.expose(), T0 + 499)),
            Some(DenyReason::RateLimited)
        );
        assert!(reason(&run(&store, k.expose(), T0 + 500)).is_none());
    }

    #[crate::testing::test]
    fn a_refused_request_consumes_from_no_window() {
        let (store, k) = store_with(
            vec![
                limit("per-second", 1, 1, None),
                limit("per-hour", 100, 3600, None),
            ],
            true,
        );
        let Decision::Allow(first) = run(&store, k.expose(), T0) else {
            panic!()
        };
        assert_eq!(first.policies[1].remaining, 99);
        for _ in 0..5 {
            assert_eq!(
                reason(&run(&store, k.expose(), T0)),
                Some(DenyReason::RateLimited)
            );
        }
        let Decision::Allow(next) = run(&store, k.expose(), T0 + 1000) else {
            panic!()
        };
        assert_eq!(next.policies[1].remaining, 98);
    }

    #[crate::testing::test]
    fn retry_after_comes_from_the_denying_policy() {
        let (store, k) = store_with(
            vec![
                limit("per-second", 10, 1, None),
                limit("per-minute", 1, 60, None),
            ],
            true,
        );
        assert!(reason(&run(&store, k.expose(), T0)).is_none());
        let Decision::Deny(d) = run(&store, k.expose(), T0) else {
            panic!()
        };
        assert_eq!(d.violated, vec!["per-minute".to_owned()]);
        assert_eq!(d.retry_after, Some(60));
    }

    #[crate::testing::test]
    fn cas_conflicts_are_retried_and_never_double_count() {
        let (store, k) = store_with(vec![limit("s", 1, 3600, Some(3))], true);
        store.inject_cas_conflicts(MAX_CAS_ATTEMPTS - 1);
        let Decision::Allow(a) = run(&store, k.expose(), T0) else {
            panic!()
        };
        assert_eq!(a.policies[0].remaining, 2);
        store.inject_cas_conflicts(MAX_CAS_ATTEMPTS);
        let Decision::Deny(d) = run(&store, k.expose(), T0) else {
            panic!()
        };
        assert_eq!(d.retry_after, Some(1));
        let Decision::Allow(a) = run(&store, k.expose(), T0) else {
            panic!()
        };
        assert_eq!(a.policies[0].remaining, 1);
    }

    #[crate::testing::test]
    fn expiry_is_enforced_at_the_exact_millisecond() {
        let (store, k) = store_with_key(vec![], |w| w.expires_at_ms = Some(T0 + 1000));
        assert!(reason(&run(&store, k.expose(), T0 + 999)).is_none());
        assert_eq!(
            reason(&run(&store, k.expose(), T0 + 1000)),
            Some(DenyReason::ExpiredApiKey)
        );
        let Decision::Deny(d) = run(&store, k.expose(), T0 + 1000) else {
            panic!()
        };
        assert_eq!(d.reason.status(), 401);
        assert_eq!(d.reason.code(), "expired_api_key");
    }

    #[crate::testing::test]
    fn scopes_and_cidrs_answer_403() {
        let (store, k) = store_with_key(vec![limit("s", 100, 1, None)], |w| {
            w.scopes = Some(vec![crate::wire::WireScope {
                methods: Some(vec!["GET".into()]),
                path_prefix: Some("/read".into()),
            }]);
            w.allowed_cidrs = Some(vec!["10.0.0.0/8".into(), "2001:db8::/32".into()]);
        });
        let k = k.expose();
        let ok = |m, p, ip| reason(&run_as(&store, k, m, p, ip, T0));
        assert_eq!(ok("GET", "/read/x", Some("10.1.2.3")), None);
        assert_eq!(ok("GET", "/read", Some("2001:db8::7")), None);
        assert_eq!(
            ok("POST", "/read", Some("10.1.2.3")),
            Some(DenyReason::Forbidden)
        );
        assert_eq!(
            ok("GET", "/write", Some("10.1.2.3")),
            Some(DenyReason::Forbidden)
        );
        assert_eq!(
            ok("GET", "/read", Some("192.168.0.1")),
            Some(DenyReason::Forbidden)
        );
        assert_eq!(ok("GET", "/read", None), Some(DenyReason::Forbidden));
        assert_eq!(DenyReason::Forbidden.status(), 403);
    }

    #[crate::testing::test]
    fn key_overrides_change_the_enforced_limits() {
        let (store, k) = store_with_key(vec![limit("per-hour", 1, 3600, Some(1))], |w| {
            w.limits = Some(vec![limit("per-hour", 1, 3600, Some(2))]);
        });
        assert!(reason(&run(&store, k.expose(), T0)).is_none());
        assert!(reason(&run(&store, k.expose(), T0)).is_none());
        assert_eq!(
            reason(&run(&store, k.expose(), T0)),
            Some(DenyReason::RateLimited)
        );
    }

    #[crate::testing::test]
    fn a_plan_without_limits_admits_without_headers() {
        let (store, k) = store_with(vec![], true);
        let Decision::Allow(a) = run(&store, k.expose(), T0) else {
            panic!()
        };
        assert!(a.policies.is_empty());
    }
}

#[cfg(test)]
mod metering_tests {
    use super::*;
    use crate::key::ApiKey;
    use crate::layout::{applied_version, apply_standings, apply_sync};
    use crate::period::quota_period;
    use crate::store::MemoryStore;
    use crate::wire::{
        QuotaStanding, SyncResponse, WireAnonymous, WireKey, WireLimit, WirePlan, WireRouteCost,
        WireScope,
    };

    /// 2026-11-23T00:00:00Z.
    const T0: u64 = 1_795_392_000_000;

    fn key(n: u8) -> ApiKey {
        let body: String = core::iter::repeat_n((b'a' + n) as char, 32).collect();
        ApiKey::from_body(&body).unwrap()
    }

    fn limit(name: &str, max: u64, window_seconds: u64, scope: LimitScope) -> WireLimit {
        WireLimit {
            name: name.into(),
            max,
            window_seconds,
            burst: None,
            scope,
        }
    }

    fn plan(id: &str, limits: Vec<WireLimit>, quota: Option<u64>) -> WirePlan {
        WirePlan {
            id: id.into(),
            name: id.to_uppercase(),
            limits,
            monthly_quota: quota,
            route_costs: vec![],
        }
    }

    fn wire_key(n: u8, tenant: &str, plan: &str) -> WireKey {
        WireKey {
            hash: key(n).hash().to_hex(),
            id: format!("key_{n}"),
            tenant_id: tenant.into(),
            plan_id: plan.into(),
            active: true,
            ..Default::default()
        }
    }

    fn sync(version: u64, plans: Vec<WirePlan>, keys: Vec<WireKey>) -> SyncResponse {
        SyncResponse {
            version,
            plans,
            keys,
            ..Default::default()
        }
    }

    fn store(plans: Vec<WirePlan>, keys: Vec<WireKey>) -> MemoryStore {
        let store = MemoryStore::new();
        apply_sync(&store, &sync(1, plans, keys)).unwrap();
        store
    }

    fn req(store: &MemoryStore, n: u8, method: &str, path: &str, now: u64) -> Decision {
        let k = key(n);
        let facts = RequestFacts {
            api_key: Some(k.expose()),
            method,
            path,
            client_ip: ClientIp::Unknown,
        };
        decide(&facts, store, now)
    }

    fn get(store: &MemoryStore, n: u8, now: u64) -> Decision {
        req(store, n, "GET", "/", now)
    }

    fn anon(store: &MemoryStore, ip: &str, path: &str, now: u64) -> Decision {
        let facts = RequestFacts {
            api_key: None,
            method: "GET",
            path,
            client_ip: ClientIp::Known(ip.parse().unwrap()),
        };
        decide(&facts, store, now)
    }

    fn allowed(d: &Decision) -> &Allowed {
        match d {
            Decision::Allow(a) => a,
            Decision::Deny(d) => panic!("expected allow, got {d:?}"),
        }
    }

    fn denied(d: &Decision) -> &Denied {
        match d {
            Decision::Deny(d) => d,
            Decision::Allow(a) => panic!("expected deny, got {a:?}"),
        }
    }

    fn policy<'a>(policies: &'a [PolicyStatus], name: &str) -> &'a PolicyStatus {
        policies.iter().find(|p| p.name == name).unwrap()
    }

    #[crate::testing::test]
    fn quota_admits_exactly_the_quota_then_429_until_the_period_ends() {
        let s = store(
            vec![plan("p", vec![], Some(3))],
            vec![wire_key(0, "t", "p")],
        );
        for left in [2, 1, 0] {
            let a = get(&s, 0, T0 + 5);
            assert_eq!(policy(&allowed(&a).policies, "monthly").remaining, left);
        }
        let d = get(&s, 0, T0 + 5);
        let d = denied(&d);
        assert_eq!(d.reason, DenyReason::QuotaExceeded);
        assert_eq!(d.reason.code(), "quota_exceeded");
        assert_eq!(d.reason.status(), 429);
        assert_eq!(d.violated, vec!["monthly".to_owned()]);
        let period = quota_period(T0, None);
        let until_reset = ceil_seconds(period.end_ms - (T0 + 5));
        assert_eq!(d.retry_after, Some(until_reset));
        assert_eq!(
            d.detail,
            format!("Monthly quota used up; it resets in {until_reset} s (policies monthly).")
        );
        let monthly = policy(&d.policies, "monthly");
        assert_eq!((monthly.quota, monthly.remaining), (3, 0));
        assert_eq!(monthly.window_seconds, 30 * 86_400);
        // The last millisecond of the period still refuses; the first of the next admits.
        assert!(matches!(get(&s, 0, period.end_ms - 1), Decision::Deny(_)));
        let next = get(&s, 0, period.end_ms);
        assert_eq!(policy(&allowed(&next).policies, "monthly").remaining, 2);
    }

    #[crate::testing::test]
    fn a_request_refused_by_one_window_consumes_from_no_window_and_not_the_quota() {
        let s = store(
            vec![plan(
                "p",
                vec![
                    limit("per-second", 1, 1, LimitScope::Key),
                    limit("per-hour", 100, 3600, LimitScope::Key),
                ],
                Some(50),
            )],
            vec![wire_key(0, "t", "p")],
        );
        allowed(&get(&s, 0, T0));
        for _ in 0..10 {
            let d = get(&s, 0, T0 + 10);
            assert_eq!(denied(&d).reason, DenyReason::RateLimited);
            assert_eq!(denied(&d).violated, vec!["per-second".to_owned()]);
        }
        let a = get(&s, 0, T0 + 1000);
        let p = &allowed(&a).policies;
        assert_eq!(policy(p, "per-hour").remaining, 98);
        assert_eq!(policy(p, "monthly").remaining, 48);
    }

    #[crate::testing::test]
    fn route_costs_are_consumed_from_buckets_and_quota_and_free_routes_pass_when_used_up() {
        let mut p = plan(
            "p",
            vec![limit("per-minute", 10, 60, LimitScope::Key)],
            Some(6),
        );
        p.route_costs = vec![
            WireRouteCost {
                methods: Some(vec!["POST".into()]),
                path_prefix: Some("/v1/parse".into()),
                cost: 3,
            },
            WireRouteCost {
                methods: Some(vec!["GET".into()]),
                path_prefix: None,
                cost: 0,
            },
        ];
        let s = store(vec![p], vec![wire_key(0, "t", "p")]);
        let a = req(&s, 0, "POST", "/v1/parse", T0);
        let a = allowed(&a);
        assert_eq!(a.cost, 3);
        assert_eq!(policy(&a.policies, "per-minute").remaining, 7);
        assert_eq!(policy(&a.policies, "monthly").remaining, 3);
        // Unmatched routes cost 1.
        let a = req(&s, 0, "DELETE", "/v1/x", T0);
        assert_eq!(allowed(&a).cost, 1);
        // 2 left: a cost-3 request does not fit, and takes nothing.
        let d = req(&s, 0, "POST", "/v1/parse/doc", T0);
        assert_eq!(denied(&d).reason, DenyReason::QuotaExceeded);
        let a = req(&s, 0, "PUT", "/", T0);
        assert_eq!(policy(&allowed(&a).policies, "monthly").remaining, 1);
        let a = req(&s, 0, "PUT", "/", T0);
        assert_eq!(policy(&allowed(&a).policies, "monthly").remaining, 0);
        // Free routes stay open with the quota used up.
        let a = req(&s, 0, "GET", "/v1/parse", T0);
        assert_eq!(allowed(&a).cost, 0);
    }

    #[crate::testing::test]
    fn other_envoys_use_counts_only_in_its_own_period() {
        let s = store(
            vec![plan("p", vec![], Some(10))],
            vec![wire_key(0, "t", "p")],
        );
        let period = quota_period(T0, None);
        let standing = |start, used| QuotaStanding {
            key_hash: key(0).hash().to_hex(),
            period_start_ms: start,
            others_used: used,
        };
        apply_standings(&s, &[standing(period.start_ms, 8)]).unwrap();
        let a = get(&s, 0, T0);
        assert_eq!(policy(&allowed(&a).policies, "monthly").remaining, 1);
        allowed(&get(&s, 0, T0));
        assert_eq!(denied(&get(&s, 0, T0)).reason, DenyReason::QuotaExceeded);
        // A standing of last period says nothing about this one.
        apply_standings(&s, &[standing(period.start_ms - 1, 100)]).unwrap();
        let a = get(&s, 0, T0);
        assert_eq!(policy(&allowed(&a).policies, "monthly").remaining, 7);
        // A standing shares the key's bucket entry: it races requests by CAS
        // and keeps the key's own count.
        s.inject_cas_conflicts(3);
        assert_eq!(apply_standings(&s, &[standing(period.start_ms, 5)]), Ok(1));
        let a = get(&s, 0, T0);
        assert_eq!(policy(&allowed(&a).policies, "monthly").remaining, 1);
        s.inject_cas_conflicts(u32::MAX);
        assert!(apply_standings(&s, &[standing(period.start_ms, 0)]).is_err());
        s.inject_cas_conflicts(0);
        // Unreadable hashes are skipped.
        let mut bad = standing(period.start_ms, 1);
        bad.key_hash = "zz".into();
        assert_eq!(apply_standings(&s, &[bad]), Ok(0));
    }

    #[crate::testing::test]
    fn a_plan_upgrade_mid_period_keeps_the_use_and_applies_the_new_quota_at_once() {
        let s = store(
            vec![plan("free", vec![], Some(2)), plan("pro", vec![], Some(5))],
            vec![wire_key(0, "t", "free")],
        );
        allowed(&get(&s, 0, T0));
        allowed(&get(&s, 0, T0));
        assert_eq!(denied(&get(&s, 0, T0)).reason, DenyReason::QuotaExceeded);
        apply_sync(&s, &sync(2, vec![], vec![wire_key(0, "t", "pro")])).unwrap();
        let a = get(&s, 0, T0);
        let m = policy(&allowed(&a).policies, "monthly").clone();
        assert_eq!((m.quota, m.remaining), (5, 2));
        // A key override raises it further, again at once.
        let mut raised = wire_key(0, "t", "pro");
        raised.monthly_quota = Some(100);
        apply_sync(&s, &sync(3, vec![], vec![raised])).unwrap();
        let a = get(&s, 0, T0);
        assert_eq!(policy(&allowed(&a).policies, "monthly").remaining, 96);
    }

    #[crate::testing::test]
    fn a_billing_anchor_moves_the_period_boundary() {
        let mut k = wire_key(0, "t", "p");
        k.billing_anchor_day = Some(25);
        let s = store(vec![plan("p", vec![], Some(1))], vec![k]);
        // T0 is 23 Nov: the period runs 25 Oct .. 25 Nov.
        allowed(&get(&s, 0, T0));
        let d = get(&s, 0, T0);
        assert_eq!(denied(&d).retry_after, Some(2 * 86_400));
        allowed(&get(&s, 0, T0 + 2 * 86_400_000));
    }

    #[crate::testing::test]
    fn tenant_scoped_limits_are_shared_by_the_tenants_keys_only() {
        let s = store(
            vec![plan(
                "p",
                vec![
                    limit("per-key", 10, 3600, LimitScope::Key),
                    limit("per-tenant", 3, 60, LimitScope::Tenant),
                ],
                None,
            )],
            vec![
                wire_key(0, "t1", "p"),
                wire_key(1, "t1", "p"),
                wire_key(2, "t2", "p"),
            ],
        );
        allowed(&get(&s, 0, T0));
        allowed(&get(&s, 1, T0));
        let a = get(&s, 0, T0);
        let p = &allowed(&a).policies;
        assert_eq!(policy(p, "per-tenant").remaining, 0);
        assert_eq!(policy(p, "per-key").remaining, 8);
        let d = get(&s, 1, T0);
        assert_eq!(denied(&d).violated, vec!["per-tenant".to_owned()]);
        // The refusal took nothing from key 1's own bucket.
        let a = get(&s, 1, T0 + 20_000);
        assert_eq!(policy(&allowed(&a).policies, "per-key").remaining, 8);
        // Another tenant has its own bucket.
        allowed(&get(&s, 2, T0));
    }

    #[crate::testing::test]
    fn a_lost_race_on_the_tenant_bucket_refunds_the_key_bucket() {
        let s = store(
            vec![plan(
                "p",
                vec![
                    limit("per-key", 5, 3600, LimitScope::Key),
                    limit("per-tenant", 1, 3600, LimitScope::Tenant),
                ],
                Some(9),
            )],
            vec![wire_key(0, "t1", "p"), wire_key(1, "t1", "p")],
        );
        // Key 0's request is judged, its key ledger written; then key 1 takes
        // the last tenant token before key 0 writes the tenant ledger. That
        // ledger is absent until then, so key 0's write is a create that loses.
        let k1 = key(1);
        let ledgers_for_k1 = || {
            assert!(s.get(&crate::layout::tenant_buckets_key("t1")).is_none());
            let facts = RequestFacts {
                api_key: Some(k1.expose()),
                method: "GET",
                path: "/",
                client_ip: ClientIp::Unknown,
            };
            decide(&facts, &s, T0)
        };
        let racing = RacingStore {
            inner: &s,
            before_tenant_write: core::cell::Cell::new(Some(Box::new(move || {
                allowed(&ledgers_for_k1());
            }))),
        };
        let k0 = key(0);
        let facts = RequestFacts {
            api_key: Some(k0.expose()),
            method: "GET",
            path: "/",
            client_ip: ClientIp::Unknown,
        };
        let d = decide(&facts, &racing, T0);
        assert_eq!(denied(&d).violated, vec!["per-tenant".to_owned()]);
        // Key 0 got its token and its quota unit back.
        let d = get(&s, 0, T0);
        let p = &denied(&d).policies;
        assert_eq!(policy(p, "per-key").remaining, 5);
        assert_eq!(policy(p, "monthly").remaining, 9);
    }

    /// Runs a hook just before the first write to a tenant ledger.
    struct RacingStore<'a> {
        inner: &'a MemoryStore,
        #[allow(clippy::type_complexity)]
        before_tenant_write: core::cell::Cell<Option<Box<dyn FnOnce() + 'a>>>,
    }

    impl crate::store::SharedStore for RacingStore<'_> {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.get(key)
        }

        fn set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), SetError> {
            if key.starts_with("tg2/bt/") {
                if let Some(hook) = self.before_tenant_write.take() {
                    hook();
                }
            }
            self.inner.set(key, value, cas)
        }
    }

    fn with_anonymous(store: &MemoryStore, routes: Vec<WireScope>) {
        let mut s = sync(
            2,
            vec![plan(
                "demo",
                vec![limit("per-minute", 2, 60, LimitScope::Key)],
                None,
            )],
            vec![],
        );
        s.anonymous = Some(WireAnonymous {
            routes,
            plan_id: Some("demo".into()),
        });
        apply_sync(store, &s).unwrap();
    }

    #[crate::testing::test]
    fn anonymous_routes_admit_without_a_key_with_limits_per_client_address() {
        let s = store(vec![], vec![]);
        assert_eq!(
            denied(&anon(&s, "10.0.0.1", "/demo", T0)).reason,
            DenyReason::MissingApiKey
        );
        with_anonymous(
            &s,
            vec![WireScope {
                methods: Some(vec!["GET".into()]),
                path_prefix: Some("/demo".into()),
            }],
        );
        let a = anon(&s, "10.0.0.1", "/demo/x", T0);
        let a = allowed(&a);
        assert_eq!((a.tenant_id.as_deref(), a.key_id.as_deref()), (None, None));
        assert_eq!(a.plan_name, "DEMO");
        allowed(&anon(&s, "10.0.0.1", "/demo", T0));
        let d = anon(&s, "10.0.0.1", "/demo", T0);
        assert_eq!(denied(&d).reason, DenyReason::RateLimited);
        assert_eq!(denied(&d).key_id, None);
        // Another client has its own budget; other routes still need a key.
        allowed(&anon(&s, "10.0.0.2", "/demo", T0));
        assert_eq!(
            denied(&anon(&s, "10.0.0.2", "/private", T0)).reason,
            DenyReason::MissingApiKey
        );
        // One IPv6 /64 is one client.
        allowed(&anon(&s, "2001:db8::1", "/demo", T0));
        allowed(&anon(&s, "2001:db8::2", "/demo", T0));
        assert!(matches!(
            anon(&s, "2001:db8::3", "/demo", T0),
            Decision::Deny(_)
        ));
        // Turning it off closes the routes.
        let mut off = sync(3, vec![], vec![]);
        off.anonymous = Some(WireAnonymous::default());
        apply_sync(&s, &off).unwrap();
        assert_eq!(
            denied(&anon(&s, "10.0.0.9", "/demo", T0)).reason,
            DenyReason::MissingApiKey
        );
    }

    #[crate::testing::test]
    fn an_anonymous_slot_left_idle_is_taken_over_and_a_busy_one_is_shared() {
        let s = store(vec![], vec![]);
        with_anonymous(&s, vec![WireScope::default()]);
        // Find two addresses that hash to the same slot.
        let slot = |ip: &str| anonymous_buckets_key(client_identity(ip.parse().unwrap()));
        let first = "10.0.0.1";
        let other = (2..u32::MAX)
            .map(|n| std::net::Ipv4Addr::from(0x0a00_0000 + n).to_string())
            .find(|ip| slot(ip) == slot(first))
            .unwrap();
        allowed(&anon(&s, first, "/", T0));
        allowed(&anon(&s, first, "/", T0));
        // Busy: the colliding client shares the exhausted bucket.
        assert!(matches!(anon(&s, &other, "/", T0), Decision::Deny(_)));
        // Idle (refilled): it starts afresh as the new owner.
        allowed(&anon(&s, &other, "/", T0 + 60_000));
        allowed(&anon(&s, &other, "/", T0 + 60_000));
        assert!(matches!(
            anon(&s, &other, "/", T0 + 60_000),
            Decision::Deny(_)
        ));
    }

    #[crate::testing::test]
    fn bad_metering_config_is_refused_whole() {
        let s = store(vec![], vec![]);
        let mut bad = sync(2, vec![], vec![]);
        bad.anonymous = Some(WireAnonymous {
            routes: vec![WireScope::default()],
            plan_id: None,
        });
        assert!(apply_sync(&s, &bad).is_err());
        let mut p = plan("p", vec![limit("monthly", 1, 1, LimitScope::Key)], None);
        assert!(apply_sync(&s, &sync(2, vec![p.clone()], vec![])).is_err());
        p.limits.clear();
        p.route_costs = vec![WireRouteCost {
            methods: Some(vec!["G ET".into()]),
            path_prefix: None,
            cost: 1,
        }];
        assert!(apply_sync(&s, &sync(2, vec![p], vec![])).is_err());
        let mut k = wire_key(0, "t", "p");
        k.billing_anchor_day = Some(32);
        assert!(apply_sync(&s, &sync(2, vec![], vec![k])).is_err());
        assert_eq!(applied_version(&s), Some(1));
    }
}
