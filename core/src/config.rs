//! Validated config: what the filter enforces and what the control plane accepts.
//!
//! Parse, then validate: the wire shapes in [`crate::wire`] become these types
//! through `TryFrom`, which rejects anything the data path could not enforce
//! exactly. The control plane runs the same checks on admin input, so a plan it
//! accepts is a plan every filter accepts.

use core::fmt;
use std::sync::Arc;

use crate::access::{Cidr, Scope};
use crate::json::write::Quoted;
use crate::key::KeyHash;
use crate::wire::{LimitScope, WireAnonymous, WireKey, WireLimit, WirePlan, WireRouteCost};

/// Longest window a limit may have: one year.
pub const MAX_WINDOW_SECONDS: u64 = 366 * 24 * 3600;
/// Largest `max` or `burst`: keeps bucket arithmetic far from overflow.
pub const MAX_TOKENS: u64 = 1_000_000_000_000;
/// Longest limit name.
pub const MAX_NAME_LEN: usize = 64;
/// The policy id of the monthly quota in headers and `violated-policies`.
pub const QUOTA_POLICY: &str = "monthly";
/// Most limits one plan may have.
pub const MAX_LIMITS: usize = 16;

/// Why a plan, limit or key record was refused. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig(pub String);

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(msg: impl Into<String>) -> InvalidConfig {
    InvalidConfig(msg.into())
}

/// A token-bucket policy: up to `max_tokens` (the burst) held, refilled at
/// `max` tokens per `window_seconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub name: Arc<str>,
    pub max: u64,
    pub window_seconds: u64,
    pub max_tokens: u64,
    pub scope: LimitScope,
    /// Metered by each Envoy whole, not as its share of a fleet-wide limit.
    pub per_envoy: bool,
}

impl Limit {
    pub fn window_ms(&self) -> u64 {
        self.window_seconds.saturating_mul(1000)
    }
}

/// Limit names become IETF structured-field strings and header values, so
/// they are restricted to a safe alphabet.
fn valid_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl TryFrom<&WireLimit> for Limit {
    type Error = InvalidConfig;

    fn try_from(wire: &WireLimit) -> Result<Self, InvalidConfig> {
        if !valid_policy_name(&wire.name) {
            return Err(invalid(format!(
                "limit name {} must be 1 to {MAX_NAME_LEN} characters of A-Z, a-z, 0-9, '-', '_' or '.'",
                Quoted(&wire.name)
            )));
        }
        if wire.name == QUOTA_POLICY {
            return Err(invalid(format!(
                "limit name {} is reserved for the monthly quota",
                Quoted(QUOTA_POLICY)
            )));
        }
        if wire.max == 0 || wire.max > MAX_TOKENS {
            return Err(invalid(format!(
                "limit {}: max must be between 1 and {MAX_TOKENS}",
                Quoted(&wire.name)
            )));
        }
        if wire.window_seconds == 0 || wire.window_seconds > MAX_WINDOW_SECONDS {
            return Err(invalid(format!(
                "limit {}: window_seconds must be between 1 and {MAX_WINDOW_SECONDS}",
                Quoted(&wire.name)
            )));
        }
        let max_tokens = wire.burst.unwrap_or(wire.max);
        if max_tokens == 0 || max_tokens > MAX_TOKENS {
            return Err(invalid(format!(
                "limit {}: burst must be between 1 and {MAX_TOKENS}",
                Quoted(&wire.name)
            )));
        }
        Ok(Self {
            name: wire.name.as_str().into(),
            max: wire.max,
            window_seconds: wire.window_seconds,
            max_tokens,
            scope: wire.scope,
            per_envoy: wire.per_envoy,
        })
    }
}

/// Most route-cost rules one plan may have.
pub const MAX_ROUTE_COSTS: usize = 32;

/// What requests matching `route` cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCost {
    pub route: Scope,
    pub cost: u64,
}

impl TryFrom<&WireRouteCost> for RouteCost {
    type Error = InvalidConfig;

    fn try_from(wire: &WireRouteCost) -> Result<Self, InvalidConfig> {
        if wire.cost > MAX_TOKENS {
            return Err(invalid(format!(
                "route cost must be between 0 and {MAX_TOKENS}"
            )));
        }
        let route = Scope::validate(
            wire.methods.as_deref().unwrap_or(&[]),
            wire.path_prefix.as_deref(),
        )
        .map_err(|e| invalid(format!("route cost: {e}")))?;
        Ok(Self {
            route,
            cost: wire.cost,
        })
    }
}

/// A validated plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: String,
    /// Shared, not copied, by every decision that names it (`x-plan`).
    pub name: Arc<str>,
    pub limits: Vec<Limit>,
    pub monthly_quota: Option<u64>,
    pub route_costs: Vec<RouteCost>,
}

impl Plan {
    /// The cost of a request: the first matching rule's, else 1.
    pub fn cost_of(&self, method: &str, path: &str) -> u64 {
        self.route_costs
            .iter()
            .find(|r| r.route.permits(method, path))
            .map_or(1, |r| r.cost)
    }
}

impl TryFrom<&WirePlan> for Plan {
    type Error = InvalidConfig;

    fn try_from(wire: &WirePlan) -> Result<Self, InvalidConfig> {
        if wire.id.is_empty() {
            return Err(invalid("plan id must not be empty"));
        }
        if wire.name.trim().is_empty() || wire.name.len() > 200 {
            return Err(invalid("plan name must be 1 to 200 characters"));
        }
        if wire.limits.len() > MAX_LIMITS {
            return Err(invalid(format!(
                "a plan may have at most {MAX_LIMITS} limits"
            )));
        }
        let limits = wire
            .limits
            .iter()
            .map(Limit::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        for (i, limit) in limits.iter().enumerate() {
            if limits.iter().skip(i + 1).any(|l| l.name == limit.name) {
                return Err(invalid(format!(
                    "limit name {} is used twice",
                    Quoted(&limit.name)
                )));
            }
        }
        if wire.monthly_quota == Some(0) || wire.monthly_quota > Some(MAX_TOKENS) {
            return Err(invalid(format!(
                "monthly_quota must be between 1 and {MAX_TOKENS} (omit it for none)"
            )));
        }
        if wire.route_costs.len() > MAX_ROUTE_COSTS {
            return Err(invalid(format!(
                "a plan may have at most {MAX_ROUTE_COSTS} route_costs"
            )));
        }
        let route_costs = wire
            .route_costs
            .iter()
            .map(RouteCost::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            id: wire.id.clone(),
            name: wire.name.as_str().into(),
            limits,
            monthly_quota: wire.monthly_quota,
            route_costs,
        })
    }
}

/// Most scopes or CIDRs one key may carry.
pub const MAX_KEY_RULES: usize = 32;

/// A validated key record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub hash: KeyHash,
    /// Shared, not copied, by every decision for the key (its identity
    /// headers and its usage count).
    pub id: Arc<str>,
    pub tenant_id: Arc<str>,
    pub plan_id: String,
    pub active: bool,
    pub expires_at_ms: Option<u64>,
    /// `None`: everything is permitted.
    pub scopes: Option<Vec<Scope>>,
    /// `None`: any client address.
    pub allowed_cidrs: Option<Vec<Cidr>>,
    pub limit_overrides: Vec<Limit>,
    pub monthly_quota: Option<u64>,
    pub billing_anchor_day: Option<u8>,
}

impl KeyRecord {
    /// The key's monthly quota: its own, else its plan's.
    pub fn quota(&self, plan: &Plan) -> Option<u64> {
        self.monthly_quota.or(plan.monthly_quota)
    }

    /// The plan's limits with this key's overrides applied: an override
    /// replaces the plan's limit of the same name, other overrides are added.
    pub fn effective_limits<'a>(&'a self, plan: &'a Plan) -> Vec<&'a Limit> {
        let mut limits: Vec<&Limit> = plan
            .limits
            .iter()
            .map(|l| {
                self.limit_overrides
                    .iter()
                    .find(|o| o.name == l.name)
                    .unwrap_or(l)
            })
            .collect();
        for o in &self.limit_overrides {
            if !plan.limits.iter().any(|l| l.name == o.name) {
                limits.push(o);
            }
        }
        limits
    }
}

impl TryFrom<&WireKey> for KeyRecord {
    type Error = InvalidConfig;

    fn try_from(wire: &WireKey) -> Result<Self, InvalidConfig> {
        let hash = KeyHash::from_hex(&wire.hash)
            .ok_or_else(|| invalid(format!("key {}: hash is not 64 hex digits", wire.id)))?;
        Self::with_hash(wire, hash)
    }
}

/// A key's ids as its record holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIds {
    pub id: Arc<str>,
    pub tenant_id: Arc<str>,
    pub plan_id: String,
}

impl KeyRecord {
    /// Validates `wire` as the record of `hash`, whatever `wire.hash` says:
    /// a record read from shared data is named by its hash, not holding it.
    pub fn with_hash(wire: &WireKey, hash: KeyHash) -> Result<Self, InvalidConfig> {
        let ids = KeyIds {
            id: wire.id.as_str().into(),
            tenant_id: wire.tenant_id.as_str().into(),
            plan_id: wire.plan_id.clone(),
        };
        Self::with_ids(ids, wire, hash)
    }

    /// [`KeyRecord::with_hash`] with the ids given apart: `wire`'s own are
    /// not read. A record read from shared data holds its ids apart from
    /// its rules, and each is made once, into what the record keeps (a
    /// worker that sees many keys reads a record on most requests).
    pub fn with_ids(ids: KeyIds, wire: &WireKey, hash: KeyHash) -> Result<Self, InvalidConfig> {
        for (field, value) in [
            ("id", &*ids.id),
            ("tenant_id", &*ids.tenant_id),
            ("plan_id", ids.plan_id.as_str()),
        ] {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(format!(
                    "key {}: {field} must be non-empty visible ASCII (it becomes a header)",
                    ids.id
                )));
            }
        }
        let scopes = match &wire.scopes {
            None => None,
            Some(scopes) if scopes.len() > MAX_KEY_RULES => {
                return Err(invalid(format!(
                    "a key may have at most {MAX_KEY_RULES} scopes"
                )))
            }
            Some(scopes) => Some(
                scopes
                    .iter()
                    .map(|s| {
                        Scope::validate(
                            s.methods.as_deref().unwrap_or(&[]),
                            s.path_prefix.as_deref(),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(invalid)?,
            ),
        };
        let allowed_cidrs = match &wire.allowed_cidrs {
            None => None,
            Some(cidrs) if cidrs.len() > MAX_KEY_RULES => {
                return Err(invalid(format!(
                    "a key may have at most {MAX_KEY_RULES} allowed_cidrs"
                )))
            }
            Some(cidrs) => Some(
                cidrs
                    .iter()
                    .map(|c| Cidr::parse(c))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(invalid)?,
            ),
        };
        let limit_overrides = wire
            .limits
            .iter()
            .flatten()
            .map(Limit::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        for (i, limit) in limit_overrides.iter().enumerate() {
            if limit_overrides
                .iter()
                .skip(i + 1)
                .any(|l| l.name == limit.name)
            {
                return Err(invalid(format!(
                    "limit name {} is used twice",
                    Quoted(&limit.name)
                )));
            }
        }
        if limit_overrides.len() > MAX_LIMITS {
            return Err(invalid(format!(
                "a key may override at most {MAX_LIMITS} limits"
            )));
        }
        if wire.monthly_quota == Some(0) || wire.monthly_quota > Some(MAX_TOKENS) {
            return Err(invalid(format!(
                "monthly_quota must be between 1 and {MAX_TOKENS} (omit it for the plan's)"
            )));
        }
        if let Some(day) = wire.billing_anchor_day {
            if !crate::period::valid_anchor_day(day) {
                return Err(invalid("billing_anchor_day must be between 1 and 31"));
            }
        }
        let KeyIds {
            id,
            tenant_id,
            plan_id,
        } = ids;
        Ok(Self {
            hash,
            id,
            tenant_id,
            plan_id,
            active: wire.active,
            expires_at_ms: wire.expires_at_ms,
            scopes,
            allowed_cidrs,
            limit_overrides,
            monthly_quota: wire.monthly_quota,
            billing_anchor_day: wire.billing_anchor_day,
        })
    }
}

/// Validated anonymous access: requests without a key on one of `routes`
/// are admitted under the limits of plan `plan_id`, counted per client address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Anonymous {
    pub routes: Vec<Scope>,
    pub plan_id: Option<String>,
}

impl Anonymous {
    /// The plan to admit this keyless request under, if its route is open.
    pub fn plan_for(&self, method: &str, path: &str) -> Option<&str> {
        self.routes
            .iter()
            .any(|r| r.permits(method, path))
            .then_some(self.plan_id.as_deref())
            .flatten()
    }
}

impl TryFrom<&WireAnonymous> for Anonymous {
    type Error = InvalidConfig;

    fn try_from(wire: &WireAnonymous) -> Result<Self, InvalidConfig> {
        if wire.routes.len() > MAX_KEY_RULES {
            return Err(invalid(format!(
                "anonymous access may have at most {MAX_KEY_RULES} routes"
            )));
        }
        let routes = wire
            .routes
            .iter()
            .map(|s| {
                Scope::validate(
                    s.methods.as_deref().unwrap_or(&[]),
                    s.path_prefix.as_deref(),
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("anonymous route: {e}")))?;
        match &wire.plan_id {
            Some(id) if id.is_empty() => Err(invalid("anonymous plan_id must not be empty")),
            None if !routes.is_empty() => Err(invalid(
                "anonymous routes need a plan_id whose limits apply per client address",
            )),
            _ => Ok(Self {
                routes,
                plan_id: wire.plan_id.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{limit, plan};

    #[test]
    fn burst_defaults_to_max() {
        let l = Limit::try_from(&limit("per-minute", 60, 60)).unwrap();
        assert_eq!(l.max_tokens, 60);
        let l = Limit::try_from(&limit("per-minute", 60, 60).with_burst(5)).unwrap();
        assert_eq!(l.max_tokens, 5);
    }

    #[test]
    fn bad_limits_are_rejected_with_the_field_named() {
        for (wl, needle) in [
            (limit("", 1, 1), "limit name"),
            (limit("a b", 1, 1), "limit name"),
            (limit("x\"", 1, 1), "limit name"),
            (limit("x", 0, 1), "max"),
            (limit("x", 1, 0), "window_seconds"),
            (limit("x", 1, MAX_WINDOW_SECONDS + 1), "window_seconds"),
            (limit("x", 1, 1).with_burst(0), "burst"),
            (limit("x", MAX_TOKENS + 1, 1), "max"),
        ] {
            let err = Limit::try_from(&wl).unwrap_err();
            assert!(err.0.contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn plan_rejects_duplicate_limit_names_whole() {
        let wire = plan("plan_1", "Pro", vec![limit("a", 1, 1), limit("a", 2, 2)]);
        assert!(Plan::try_from(&wire).unwrap_err().0.contains("twice"));
    }

    #[test]
    fn key_record_needs_a_real_hash() {
        let mut wire = WireKey {
            hash: "00".repeat(32),
            id: "key_1".into(),
            tenant_id: "tnt_1".into(),
            plan_id: "plan_1".into(),
            active: true,
            ..Default::default()
        };
        assert!(KeyRecord::try_from(&wire).is_ok());
        let mut scoped = wire.clone();
        scoped.scopes = Some(vec![crate::wire::WireScope {
            methods: Some(vec!["PUT GET".into()]),
            path_prefix: None,
        }]);
        assert!(KeyRecord::try_from(&scoped).is_err());
        let mut fenced = wire.clone();
        fenced.allowed_cidrs = Some(vec!["10.0.0.0/99".into()]);
        assert!(KeyRecord::try_from(&fenced).is_err());
        let mut twice = wire.clone();
        twice.limits = Some(vec![limit("a", 1, 1), limit("a", 1, 1)]);
        assert!(KeyRecord::try_from(&twice).is_err());
        wire.hash = "nothex".into();
        assert!(KeyRecord::try_from(&wire).is_err());
        wire.hash = "00".repeat(32);
        wire.tenant_id = "a\nb".into();
        assert!(KeyRecord::try_from(&wire).is_err());
    }
}

#[cfg(test)]
mod override_tests {
    use super::*;
    use crate::testing::{limit, plan};

    #[test]
    fn key_overrides_replace_by_name_and_add_the_rest() {
        let plan = Plan::try_from(&plan(
            "p",
            "P",
            vec![limit("minute", 10, 60), limit("hour", 100, 60)],
        ))
        .unwrap();
        let key = KeyRecord::try_from(&WireKey {
            hash: "00".repeat(32),
            id: "k".into(),
            tenant_id: "t".into(),
            plan_id: "p".into(),
            active: true,
            limits: Some(vec![limit("hour", 5, 60), limit("burst", 2, 60)]),
            ..Default::default()
        })
        .unwrap();
        let names: Vec<(String, u64)> = key
            .effective_limits(&plan)
            .into_iter()
            .map(|l| (l.name.to_string(), l.max))
            .collect();
        assert_eq!(
            names,
            vec![
                ("minute".into(), 10),
                ("hour".into(), 5),
                ("burst".into(), 2)
            ]
        );
    }
}
