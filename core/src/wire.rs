//! The JSON the control plane serves at `GET /v1/sync` and the filter applies.
//!
//! Defined once, here, and used by both sides. These are parse-only shapes:
//! [`crate::config`] validates them before anything is enforced. With the
//! `openapi` feature (the control plane's, never the filter's) they also derive
//! `utoipa::ToSchema` for the admin API's OpenAPI document.

use serde::{Deserialize, Serialize};

/// One named rate limit of a plan: `max` requests per `window_seconds`,
/// with bursts of up to `burst` (default `max`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WireLimit {
    /// Unique within the plan; a key's limit of the same name replaces it.
    pub name: String,
    /// Requests allowed per window.
    pub max: u64,
    pub window_seconds: u64,
    /// Requests that may be sent at once; `max` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Whose bucket this is: each key's own (default), or one shared by all
    /// keys of the tenant.
    #[serde(default, skip_serializing_if = "LimitScope::is_key")]
    pub scope: LimitScope,
    /// Enforced by each Envoy on its own, so N Envoys admit up to N times
    /// it. By default a limit holds across the whole fleet of Envoys.
    #[serde(default, skip_serializing_if = "is_false")]
    pub per_envoy: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Who shares one bucket of a limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    #[default]
    Key,
    Tenant,
}

impl LimitScope {
    pub fn is_key(&self) -> bool {
        *self == Self::Key
    }
}

/// What a request costs, in units of the plan's limits and quota, when it
/// matches: any of `methods` (all if absent or empty) on paths under
/// `path_prefix` (all if absent). The first matching rule of a plan wins;
/// a request that matches none costs 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WireRouteCost {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// 0 makes the route free: it is admitted and counted, but consumes nothing.
    pub cost: u64,
}

/// A plan as the filter needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WirePlan {
    pub id: String,
    pub name: String,
    pub limits: Vec<WireLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_quota: Option<u64>,
    /// Per-route costs, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_costs: Vec<WireRouteCost>,
}

/// What a key may be used for: any of `methods` (all if absent or empty) on
/// paths under `path_prefix` (all if absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WireScope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

/// An API key as the filter needs it: identified by the SHA-256 of the plaintext.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WireKey {
    /// Lower-case hex SHA-256 of the plaintext key.
    pub hash: String,
    pub id: String,
    pub tenant_id: String,
    pub plan_id: String,
    pub active: bool,
    /// Unix milliseconds after which the key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// The key may only do what one of these permits; absent means everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<WireScope>>,
    /// Client addresses (CIDRs) the key may be used from; absent means anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_cidrs: Option<Vec<String>>,
    /// Limits that replace the plan's limit of the same name, or add to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Vec<WireLimit>>,
    /// Replaces the plan's monthly quota for this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_quota: Option<u64>,
    /// The tenant's billing anchor: quota periods start on this day of the
    /// month (UTC midnight; the month's last day when it is shorter).
    /// Absent: calendar months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_anchor_day: Option<u8>,
}

/// Routes that admit requests without a key, under `plan_id`'s limits
/// counted per client address. No routes: every request needs a key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WireAnonymous {
    #[serde(default)]
    pub routes: Vec<WireScope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
}

/// Everything that changed after the `since` version the filter asked for
/// (all of it when `since` is 0). `version` is the version the filter has once it applied this.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SyncResponse {
    pub version: u64,
    #[serde(default)]
    pub plans: Vec<WirePlan>,
    #[serde(default)]
    pub keys: Vec<WireKey>,
    /// Hashes of keys deleted since `since`.
    #[serde(default)]
    pub deleted_keys: Vec<String>,
    /// Ids of plans deleted since `since`.
    #[serde(default)]
    pub deleted_plans: Vec<String>,
    /// Anonymous access, when it changed since `since` (always on a full
    /// sync); absent means unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<WireAnonymous>,
    /// Present means more keys follow: ask again with the same `since` and
    /// `after=<next>`, and do not record `version` as applied until a page
    /// without `next` arrives (only that last page's `version` is the one
    /// the whole walk adds up to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// What one Envoy counted since its last report, `POST /v1/usage` (sync
/// token). `batch_id` is unique per batch and reused on every retry of it,
/// so the control plane counts a batch once however often it arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    pub batch_id: String,
    /// This Envoy process; quota standings exclude its own counts, which it
    /// keeps exactly itself.
    #[serde(default)]
    pub reporter_id: String,
    /// The `cursor` of the last [`UsageReceipt`] this reporter applied.
    #[serde(default)]
    pub standings_since: u64,
    /// What each key counted. A key may be named more than once (an Envoy
    /// sends its workers' counts as they were handed over); its entries are
    /// summed.
    #[serde(default)]
    pub keys: Vec<KeyUsage>,
    /// Outcomes that name no known key, by `code`: refusals (no key, a
    /// malformed or unknown one) and `anonymous`, anonymous requests admitted.
    #[serde(default)]
    pub unattributed: std::collections::BTreeMap<String, u64>,
    /// Counts this Envoy had to drop because its buffer was full.
    #[serde(default)]
    pub dropped: u64,
    /// The `seq` of the last [`FleetLeases`] this Envoy applied: leases up
    /// to it are in force here, and what they gave up may go elsewhere.
    #[serde(default)]
    pub leases_applied: u64,
}

/// One key's share of a [`UsageBatch`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct KeyUsage {
    pub key_id: String,
    /// Requests let through.
    #[serde(default)]
    pub allowed: u64,
    /// Their summed cost (see [`WireRouteCost`]): what quotas count.
    #[serde(default)]
    pub cost: u64,
    /// Refusals by `code` (`rate_limited`, `disabled_api_key`, …).
    #[serde(default)]
    pub denied: std::collections::BTreeMap<String, u64>,
    /// Unix ms of the last request let through, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<u64>,
}

impl KeyUsage {
    /// Adds `other`'s counts (of the same key) to these, saturating: one
    /// key's entries from several hand-overs summed.
    pub fn add(&mut self, other: KeyUsage) {
        self.allowed = self.allowed.saturating_add(other.allowed);
        self.cost = self.cost.saturating_add(other.cost);
        self.last_used_ms = self.last_used_ms.max(other.last_used_ms);
        for (code, n) in other.denied {
            let count = self.denied.entry(code).or_insert(0);
            *count = count.saturating_add(n);
        }
    }
}

/// The control plane's answer to a [`UsageBatch`]: how much of their quota
/// keys have used through *other* Envoys, for keys whose figure changed
/// after `standings_since`: the keys the reporter counts itself (from its
/// first use of each in a period) and those whose quota is used up. The reporter applies them and sends `cursor`
/// back as its next `standings_since`; `more` says another page is waiting.
/// With them, the reporter's shares of fleet-wide limits (`leases`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UsageReceipt {
    #[serde(default)]
    pub standings: Vec<QuotaStanding>,
    pub cursor: u64,
    #[serde(default)]
    pub more: bool,
    /// This Envoy's shares of fleet-wide limits; absent from a control
    /// plane that leases none (then the Envoy's shares lapse, see
    /// `tollgate_core::fleet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leases: Option<FleetLeases>,
}

/// The shares of fleet-wide limits one Envoy holds, in 65,536ths of a limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FleetLeases {
    /// Leases of another generation are void: the control plane counts this
    /// Envoy afresh.
    pub generation: u64,
    /// Sent back as `leases_applied` once these are applied.
    pub seq: u64,
    /// How long, from when the Envoy sent its report, these leases hold
    /// without another receipt.
    pub valid_ms: u64,
    /// The share of every key and tenant without a grant of its own.
    pub default_share: u64,
    /// Grants changed since `leases_applied`, each for one key or tenant.
    #[serde(default)]
    pub grants: Vec<ShareGrant>,
    /// Slices of quotas near exhaustion changed since `leases_applied`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slices: Vec<QuotaSlice>,
}

/// How far one Envoy may count one key's quota in one period: once a key
/// nears the end of its quota, each Envoy admits it only up to its slice
/// (see `tollgate_core::fleet`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct QuotaSlice {
    /// Lower-case hex SHA-256 of the key.
    pub key_hash: String,
    /// The quota period the slice is of.
    pub period_start_ms: u64,
    /// The most this Envoy's own count of the key may reach in that period.
    pub cap: u64,
}

/// One key's or tenant's share on one Envoy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ShareGrant {
    /// Lower-case hex SHA-256 of the key: its own limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hash: Option<String>,
    /// Or the tenant: its tenant-scoped limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    pub share: u64,
}

/// One key's quota use in one period through every Envoy but the reporter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct QuotaStanding {
    /// Lower-case hex SHA-256 of the key, as in [`WireKey::hash`].
    pub key_hash: String,
    /// Unix ms when the period began.
    pub period_start_ms: u64,
    pub others_used: u64,
}
