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
}

/// What one Envoy counted since its last report, `POST /v1/usage` (sync
/// token). `batch_id` is unique per batch and reused on every retry of it,
/// so the control plane counts a batch once however often it arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    pub batch_id: String,
    #[serde(default)]
    pub keys: Vec<KeyUsage>,
    /// Refusals that name no known key (no key, a malformed or unknown one), by `code`.
    #[serde(default)]
    pub unattributed: std::collections::BTreeMap<String, u64>,
    /// Counts this Envoy had to drop because its buffer was full.
    #[serde(default)]
    pub dropped: u64,
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
    /// Refusals by `code` (`rate_limited`, `disabled_api_key`, …).
    #[serde(default)]
    pub denied: std::collections::BTreeMap<String, u64>,
    /// Unix ms of the last request let through, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<u64>,
}
