//! The per-request verdict: `decide(facts, store, now) -> Decision`.
//!
//! Pure: the filter gathers the facts and reads the clock once, this module
//! reads config and buckets through [`SharedStore`] and returns what to do.
//! Checks run cheapest first, in Unkey's order: key present → well-formed →
//! config present → key known → key active → limits.
//!
//! The last check, consuming from the limits' buckets and the quota, is the
//! one that writes; it is the ledger engine's, in the `ledger` submodule.

use std::net::IpAddr;
use std::sync::Arc;

use crate::bucket::ceil_seconds;
use crate::cache::ConfigCache;
use crate::config::{Limit, QUOTA_POLICY};
use crate::fleet::slicing_horizon;
use crate::json::write::push_decimal;
use crate::key::{ApiKey, KeyHash};
use crate::layout::{anonymous_buckets_key, buckets_key, client_identity, tenant_buckets_key};
use crate::period::quota_period;
use crate::store::SharedStore;
use crate::wire::LimitScope;

mod ledger;

pub use ledger::MAX_CAS_ATTEMPTS;
use ledger::{consume, Consumed, Ledger, Quota};

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
    /// Some of the quota is left, but not in this Envoy's slice of it: more
    /// comes within about a second if the other Envoys leave any.
    QuotaPending,
    ConfigUnavailable,
    /// No successful sync for longer than the configured staleness budget,
    /// and the configuration says to refuse then.
    ConfigStale,
}

impl DenyReason {
    /// Every reason, for whatever must cover them all (metrics, tests).
    pub const ALL: [DenyReason; 10] = [
        Self::MissingApiKey,
        Self::InvalidApiKey,
        Self::DisabledApiKey,
        Self::ExpiredApiKey,
        Self::Forbidden,
        Self::RateLimited,
        Self::QuotaExceeded,
        Self::QuotaPending,
        Self::ConfigUnavailable,
        Self::ConfigStale,
    ];

    pub fn status(self) -> u32 {
        match self {
            Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::DisabledApiKey
            | Self::ExpiredApiKey => 401,
            Self::Forbidden => 403,
            Self::RateLimited | Self::QuotaExceeded | Self::QuotaPending => 429,
            Self::ConfigUnavailable | Self::ConfigStale => 503,
        }
    }

    /// The gRPC status a gRPC call refused for this reason ends with: a
    /// client must not read a limit as `UNAVAILABLE`, which gRPC clients
    /// retry at once. Only a gateway that cannot decide yet is unavailable.
    pub fn grpc_status(self) -> u32 {
        const PERMISSION_DENIED: u32 = 7;
        const RESOURCE_EXHAUSTED: u32 = 8;
        const UNAVAILABLE: u32 = 14;
        const UNAUTHENTICATED: u32 = 16;
        match self {
            Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::DisabledApiKey
            | Self::ExpiredApiKey => UNAUTHENTICATED,
            Self::Forbidden => PERMISSION_DENIED,
            Self::RateLimited | Self::QuotaExceeded | Self::QuotaPending => RESOURCE_EXHAUSTED,
            Self::ConfigUnavailable | Self::ConfigStale => UNAVAILABLE,
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
            Self::QuotaPending => "quota_pending",
            Self::ConfigUnavailable => "config_unavailable",
            Self::ConfigStale => "config_stale",
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
            Self::QuotaPending => "Monthly quota nearly used up",
            Self::ConfigUnavailable => "Gateway not ready",
            Self::ConfigStale => "Gateway configuration out of date",
        }
    }
}

/// One rate-limit policy's state, for the response headers. A bucket is
/// described by [`crate::response::bucket_status`]; `remaining` never exceeds
/// `quota` and `reset_seconds` never exceeds `window_seconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStatus {
    /// The limit's own name, shared: a request copies no policy name.
    pub name: Arc<str>,
    /// `q`: the most the policy holds at once (a bucket's burst, the quota's size).
    pub quota: u64,
    /// `w`: the seconds a bucket takes to refill from empty, or the quota's period.
    pub window_seconds: u64,
    /// `r`: whole requests (cost units) left now.
    pub remaining: u64,
    /// `t`: seconds until the policy is back to `quota` (or, for a policy that
    /// refused, until it would admit the request).
    pub reset_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// `None` for an anonymous request, as is `key_id`. Shared with the
    /// key record and the plan: an admitted request copies no name.
    pub tenant_id: Option<Arc<str>>,
    pub key_id: Option<Arc<str>>,
    pub plan_name: Arc<str>,
    pub policies: Vec<PolicyStatus>,
    /// What the request cost (see [`crate::config::Plan::cost_of`]).
    pub cost: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub reason: DenyReason,
    pub detail: String,
    /// Whole seconds, at least 1: for 429, and for 503 `config_stale`.
    pub retry_after: Option<u64>,
    pub policies: Vec<PolicyStatus>,
    /// Names of the policies that refused the request.
    pub violated: Vec<String>,
    /// The key the refusal is charged to, once the key is identified.
    pub key_id: Option<Arc<str>>,
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
fn deny_key(key_id: &Arc<str>, reason: DenyReason, detail: impl Into<String>) -> Decision {
    match deny(reason, detail) {
        Decision::Deny(denied) => Decision::Deny(Denied {
            key_id: Some(Arc::clone(key_id)),
            ..denied
        }),
        allowed => allowed,
    }
}

/// Whether the applied config is past its staleness budget at `now_ms`:
/// its last successful sync (`synced_at_ms`) was `budget_ms` or more ago.
/// A config whose sync time is unknown is not stale (there is no config
/// at all before the first sync: that is `config_unavailable`), and a
/// clock that went back makes the age 0.
pub fn is_stale(synced_at_ms: Option<u64>, budget_ms: u64, now_ms: u64) -> bool {
    synced_at_ms.is_some_and(|synced| now_ms.saturating_sub(synced) >= budget_ms)
}

/// Seconds a `config_stale` refusal asks the client to wait.
pub const STALE_RETRY_AFTER_SECS: u64 = 5;

/// The `config_stale` refusal, `age_ms` after the last successful sync.
pub fn stale_refusal(age_ms: u64) -> Denied {
    let mut denied = Denied::new(
        DenyReason::ConfigStale,
        format!(
            "The gateway has not been able to refresh its configuration for {} s; retry shortly.",
            age_ms / 1000
        ),
    );
    denied.retry_after = Some(STALE_RETRY_AFTER_SECS);
    denied
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
    if let Err(why) = ApiKey::check(presented) {
        return deny(
            DenyReason::InvalidApiKey,
            format!("The API key is malformed: {why}."),
        );
    }
    if cache.version(store, now_ms).is_none() {
        return deny(
            DenyReason::ConfigUnavailable,
            "The gateway has not received its configuration yet; retry shortly.",
        );
    }
    let hash = KeyHash::of(presented.as_bytes());
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
    let tenant_wide = |l: &&Limit| l.scope == LimitScope::Tenant;
    // Most plans have no tenant limits: then the list is the key's as it is.
    let (tenant_limits, key_limits): (Vec<&Limit>, Vec<&Limit>) = if limits.iter().any(tenant_wide)
    {
        limits.into_iter().partition(tenant_wide)
    } else {
        (Vec::new(), limits)
    };
    let quota = record.quota(&plan).map(|max| Quota {
        max,
        period: quota_period(now_ms, record.billing_anchor_day),
        horizon: slicing_horizon(key_limits.iter().copied()),
    });
    let mut ledgers = vec![Ledger {
        entry: buckets_key(&hash),
        limits: key_limits,
        quota,
        owner: None,
        fleet_wide: true,
    }];
    if !tenant_limits.is_empty() {
        ledgers.push(Ledger {
            entry: tenant_buckets_key(&record.tenant_id),
            limits: tenant_limits,
            quota: None,
            owner: None,
            fleet_wide: true,
        });
    }
    verdict(
        consume(store, &ledgers, cache.fleet(), cost, now_ms),
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
        // Per client address, where addresses are seen: per Envoy.
        fleet_wide: false,
    };
    verdict(
        consume(store, &[ledger], cache.fleet(), cost, now_ms),
        None,
        None,
        plan.name.clone(),
    )
}

fn verdict(
    consumed: Consumed,
    tenant_id: Option<Arc<str>>,
    key_id: Option<Arc<str>>,
    plan_name: Arc<str>,
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
            pending,
        } => {
            let retry_after = ceil_seconds(wait_ms).max(1);
            // Written without `core::fmt`, which costs several times as much
            // on wasm32: a denial must cost no more than an admission.
            let mut detail = String::with_capacity(96);
            let names = violated.join(", ");
            let reason = if pending {
                detail.push_str(
                    "The last of the monthly quota is being shared out among gateways; retry in ",
                );
                push_decimal(&mut detail, retry_after);
                detail.push_str(" s (policies ");
                detail.push_str(&names);
                detail.push_str(").");
                DenyReason::QuotaPending
            } else if violated.iter().any(|v| v == QUOTA_POLICY) {
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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod metering_tests;

#[cfg(test)]
mod fleet_tests;

#[cfg(all(test, not(target_arch = "wasm32")))]
mod property_tests;
