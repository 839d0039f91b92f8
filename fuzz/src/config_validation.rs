//! `config_validation`: plans, keys and anonymous access, from wire shapes
//! into the validated config the filter enforces and the control plane
//! checks admin input with (`TryFrom` in the core's `config.rs`).
//!
//! The input is not JSON: `arbitrary` draws the wire values straight from
//! the bytes, so every input is a config and mutations explore the rules
//! rather than the syntax `sync_decode` and `json_differential` cover. Most
//! draws come from the values the rules turn on (a bound and one past it,
//! the reserved name, an id the key record packs), the rest are anything;
//! an empty input is a valid config, the leanest of each. The seeds in
//! `fuzz/corpus/config_validation/` are named for what they drew when they
//! were committed: a change to `Draw` keeps them valid inputs but changes
//! what they draw.
//!
//! Properties: nothing panics; each rule is restated here, and a value is
//! accepted exactly when it keeps every one (so nothing is let through
//! that should not be, and nothing refused that should not be); acceptance
//! is whole, every part of an accepted plan or key validating on its own
//! and none dropped; what is accepted holds what validated config promises
//! and survives the form it is stored in (a plan's JSON, a key's binary
//! record); and a request against it (costs, scopes, client addresses)
//! never panics.

use std::net::IpAddr;
use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use tollgate_core::access::{Cidr, Scope};
use tollgate_core::config::{
    Anonymous, KeyRecord, Limit, Plan, RouteCost, MAX_KEY_RULES, MAX_LIMITS, MAX_ROUTE_COSTS,
    MAX_TOKENS, MAX_WINDOW_SECONDS, QUOTA_POLICY,
};
use tollgate_core::json;
use tollgate_core::key::KeyHash;
use tollgate_core::layout::{decode_key_record, encode_key_record};
use tollgate_core::wire::{
    LimitScope, WireAnonymous, WireKey, WireLimit, WirePlan, WireRouteCost, WireScope,
};

use crate::validated::{self, is_policy_name};

pub fn check(input: &[u8]) {
    let mut draw = Draw(Unstructured::new(input));
    // `arbitrary` answers the smallest value once the bytes run out, so a
    // draw fails only on what cannot happen here; such an input is skipped.
    let Ok((plan, key, anonymous, request)) = draw.config() else {
        return;
    };
    let plan = checked_plan(&plan);
    let key = checked_key(&key);
    let anonymous = checked_anonymous(&anonymous);
    let (method, path, client) = &request;
    if let Some(plan) = &plan {
        let cost = plan.cost_of(method, path);
        let rule = plan
            .route_costs
            .iter()
            .find(|r| r.route.permits(method, path));
        assert_eq!(cost, rule.map_or(1, |r| r.cost));
    }
    if let (Some(key), Some(plan)) = (&key, &plan) {
        validated::key_on_plan(key, plan);
    }
    if let Some(key) = &key {
        for scope in key.scopes.iter().flatten() {
            scope.permits(method, path);
        }
        for cidr in key.allowed_cidrs.iter().flatten() {
            cidr.contains(*client);
        }
    }
    if let Some(anonymous) = &anonymous {
        if let Some(plan_id) = anonymous.plan_for(method, path) {
            assert_eq!(Some(plan_id), anonymous.plan_id.as_deref());
        }
    }
}

fn tokens(n: u64) -> bool {
    (1..=MAX_TOKENS).contains(&n)
}

/// A limit is enforceable exactly when it keeps these rules.
fn checked_limit(wire: &WireLimit) -> Option<Limit> {
    let enforceable = is_policy_name(&wire.name)
        && wire.name != QUOTA_POLICY
        && tokens(wire.max)
        && (1..=MAX_WINDOW_SECONDS).contains(&wire.window_seconds)
        && tokens(wire.burst.unwrap_or(wire.max));
    let result = Limit::try_from(wire);
    assert_eq!(result.is_ok(), enforceable, "{wire:?}: {result:?}");
    let limit = result.ok()?;
    validated::limit(&limit);
    let expected = Limit {
        name: wire.name.as_str().into(),
        max: wire.max,
        window_seconds: wire.window_seconds,
        max_tokens: wire.burst.unwrap_or(wire.max),
        scope: wire.scope,
        per_envoy: wire.per_envoy,
    };
    assert_eq!(limit, expected);
    Some(limit)
}

/// A method list and path prefix, as key scopes, route costs and
/// anonymous routes all have them.
fn checked_scope(methods: &Option<Vec<String>>, path_prefix: &Option<String>) -> Option<Scope> {
    let methods = methods.as_deref().unwrap_or(&[]);
    let valid = methods
        .iter()
        .all(|m| (1..=20).contains(&m.len()) && m.bytes().all(|b| b.is_ascii_alphabetic()))
        && path_prefix
            .as_deref()
            .is_none_or(|p| p.starts_with('/') && p.len() <= 1024 && !p.contains(['?', '#']));
    let result = Scope::validate(methods, path_prefix.as_deref());
    assert_eq!(
        result.is_ok(),
        valid,
        "{methods:?} {path_prefix:?}: {result:?}"
    );
    let scope = result.ok()?;
    validated::scope(&scope);
    let upper: Vec<String> = methods.iter().map(|m| m.to_ascii_uppercase()).collect();
    assert_eq!(scope.methods, upper);
    assert_eq!(&scope.path_prefix, path_prefix);
    Some(scope)
}

fn checked_route_cost(wire: &WireRouteCost) -> Option<RouteCost> {
    let route = checked_scope(&wire.methods, &wire.path_prefix);
    let result = RouteCost::try_from(wire);
    assert_eq!(result.is_ok(), route.is_some() && wire.cost <= MAX_TOKENS);
    let cost = result.ok()?;
    assert_eq!(Some(&cost.route), route.as_ref());
    assert_eq!(cost.cost, wire.cost);
    Some(cost)
}

/// Names used once each.
fn unique<'a>(names: impl Iterator<Item = &'a str>) -> bool {
    let mut names: Vec<&str> = names.collect();
    let all = names.len();
    names.sort_unstable();
    names.dedup();
    names.len() == all
}

fn quota_valid(quota: Option<u64>) -> bool {
    quota.is_none_or(tokens)
}

fn checked_plan(wire: &WirePlan) -> Option<Plan> {
    let limits: Option<Vec<Limit>> = wire.limits.iter().map(checked_limit).collect();
    let route_costs: Option<Vec<RouteCost>> =
        wire.route_costs.iter().map(checked_route_cost).collect();
    let valid = !wire.id.is_empty()
        && !wire.name.trim().is_empty()
        && wire.name.len() <= 200
        && wire.limits.len() <= MAX_LIMITS
        && limits.is_some()
        && unique(wire.limits.iter().map(|l| l.name.as_str()))
        && quota_valid(wire.monthly_quota)
        && wire.route_costs.len() <= MAX_ROUTE_COSTS
        && route_costs.is_some();
    let result = Plan::try_from(wire);
    assert_eq!(result.is_ok(), valid, "{wire:?}: {result:?}");
    let plan = result.ok()?;
    validated::plan(&plan);
    // Whole: every part as it validates alone, none dropped.
    let expected = Plan {
        id: wire.id.clone(),
        name: wire.name.as_str().into(),
        limits: limits.unwrap_or_default(),
        monthly_quota: wire.monthly_quota,
        route_costs: route_costs.unwrap_or_default(),
    };
    assert_eq!(plan, expected);
    // As the leader stores it (`tg3/p/`) and every worker reads it back.
    let stored: WirePlan = json::from_slice(&json::to_vec(wire)).expect("a stored plan reads");
    assert_eq!(&stored, wire);
    assert_eq!(Plan::try_from(&stored).as_ref(), Ok(&plan));
    Some(plan)
}

fn checked_key(wire: &WireKey) -> Option<KeyRecord> {
    let hash = KeyHash::from_hex(&wire.hash);
    let ids = [&wire.id, &wire.tenant_id, &wire.plan_id];
    let scopes: Option<Option<Vec<Scope>>> = wire
        .scopes
        .as_ref()
        .map(|scopes| {
            scopes
                .iter()
                .map(|s| checked_scope(&s.methods, &s.path_prefix))
                .collect()
        })
        .map_or(Some(None), |scopes: Option<Vec<Scope>>| scopes.map(Some));
    let cidrs: Option<Option<Vec<Cidr>>> = wire
        .allowed_cidrs
        .as_ref()
        .map(|cidrs| cidrs.iter().map(|c| checked_cidr(c)).collect())
        .map_or(Some(None), |cidrs: Option<Vec<Cidr>>| cidrs.map(Some));
    let overrides: Option<Vec<Limit>> = wire.limits.iter().flatten().map(checked_limit).collect();
    let overrides_listed = wire.limits.as_deref().unwrap_or(&[]);
    let valid = hash.is_some()
        && ids
            .iter()
            .all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic()))
        && wire
            .scopes
            .as_ref()
            .is_none_or(|s| s.len() <= MAX_KEY_RULES)
        && scopes.is_some()
        && wire
            .allowed_cidrs
            .as_ref()
            .is_none_or(|c| c.len() <= MAX_KEY_RULES)
        && cidrs.is_some()
        && overrides.is_some()
        && unique(overrides_listed.iter().map(|l| l.name.as_str()))
        && overrides_listed.len() <= MAX_LIMITS
        && quota_valid(wire.monthly_quota)
        && wire
            .billing_anchor_day
            .is_none_or(|d| (1..=31).contains(&d));
    let result = KeyRecord::try_from(wire);
    assert_eq!(result.is_ok(), valid, "{wire:?}: {result:?}");
    let record = result.ok()?;
    validated::key(&record);
    let expected = KeyRecord {
        hash: hash.expect("checked above"),
        id: wire.id.as_str().into(),
        tenant_id: wire.tenant_id.as_str().into(),
        plan_id: wire.plan_id.clone(),
        active: wire.active,
        expires_at_ms: wire.expires_at_ms,
        scopes: scopes.flatten(),
        allowed_cidrs: cidrs.flatten(),
        limit_overrides: overrides.unwrap_or_default(),
        monthly_quota: wire.monthly_quota,
        billing_anchor_day: wire.billing_anchor_day,
    };
    assert_eq!(record, expected);
    // As the leader stores it (`tg3/k/`): ids have a length byte there, so
    // a longer one is refused at the store and with it the whole answer
    // (the control plane's ids are 20 to 25 bytes).
    let fits = ids.iter().all(|id| id.len() <= 255);
    match encode_key_record(wire) {
        Ok(bytes) => {
            assert!(fits);
            assert_eq!(
                decode_key_record(&bytes, &record.hash).as_ref(),
                Some(&record)
            );
        }
        Err(why) => assert!(!fits, "{why}"),
    }
    Some(record)
}

/// A client address allow-list entry: one that parses is written back as
/// itself.
fn checked_cidr(text: &str) -> Option<Cidr> {
    let cidr = Cidr::parse(text).ok()?;
    assert_eq!(Cidr::parse(&cidr.to_string()), Ok(cidr), "{text}");
    Some(cidr)
}

fn checked_anonymous(wire: &WireAnonymous) -> Option<Anonymous> {
    let routes: Option<Vec<Scope>> = wire
        .routes
        .iter()
        .map(|s| checked_scope(&s.methods, &s.path_prefix))
        .collect();
    let valid = wire.routes.len() <= MAX_KEY_RULES
        && routes.is_some()
        && match &wire.plan_id {
            Some(id) => !id.is_empty(),
            None => wire.routes.is_empty(),
        };
    let result = Anonymous::try_from(wire);
    assert_eq!(result.is_ok(), valid, "{wire:?}: {result:?}");
    let anonymous = result.ok()?;
    validated::anonymous(&anonymous);
    assert_eq!(anonymous.routes, routes.unwrap_or_default());
    assert_eq!(anonymous.plan_id, wire.plan_id);
    Some(anonymous)
}

/// The values the rules turn on, drawn most of the time. The first of each
/// is valid, so an input that runs out draws a valid config.
struct Pools {
    limit_names: Vec<String>,
    plan_ids: Vec<String>,
    plan_names: Vec<String>,
    methods: Vec<String>,
    paths: Vec<String>,
    hashes: Vec<String>,
    key_ids: Vec<String>,
    tenant_ids: Vec<String>,
    cidrs: Vec<String>,
}

fn pools() -> &'static Pools {
    static POOLS: OnceLock<Pools> = OnceLock::new();
    POOLS.get_or_init(|| {
        let owned = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let with = |list: &[&str], more: Vec<String>| {
            let mut all = owned(list);
            all.extend(more);
            all
        };
        let hash = KeyHash::of(b"k").to_hex();
        Pools {
            limit_names: with(
                &[
                    "per-second",
                    "per-minute",
                    "a.b_c-9",
                    QUOTA_POLICY,
                    "",
                    "a b",
                    "x\"",
                    "é",
                ],
                vec!["n".repeat(64), "n".repeat(65)],
            ),
            plan_ids: owned(&["plan_1", "plan_0aZ9bY8cX7dW6eV5fU4g", "", "p!"]),
            plan_names: with(
                &["Free", "", " \t", "Pro \u{7f}"],
                vec!["é".repeat(100), "a".repeat(200), "a".repeat(201)],
            ),
            methods: with(
                &["GET", "post", "Delete", "", "PUT GET", "G3T", "GÉT"],
                vec!["A".repeat(20), "A".repeat(21)],
            ),
            paths: with(
                &[
                    "/v1/", "/", "/read", "/read/x", "/readme", "v1", "/a?b", "/a#b", "",
                ],
                vec![
                    format!("/{}", "a".repeat(1023)),
                    format!("/{}", "a".repeat(1024)),
                ],
            ),
            hashes: vec![
                hash.clone(),
                hash.to_ascii_uppercase(),
                hash[1..].to_owned(),
                String::new(),
                "nothex".to_owned(),
            ],
            key_ids: with(
                &[
                    "key_0aZ9bY8cX7dW6eV5fU4g",
                    "key_1",
                    "key_0aZ9bY8cX7dW6eV5fU4!",
                    "",
                    "a b",
                    "é",
                    "a\nb",
                ],
                vec!["k".repeat(255), "k".repeat(256)],
            ),
            tenant_ids: with(
                &[
                    "tnt_zzzzzzzzzzzzzzzzzzzz",
                    "tnt_1",
                    "acme",
                    "plan_00000000000000000000",
                    "",
                ],
                vec!["t".repeat(256)],
            ),
            cidrs: owned(&[
                "10.0.0.0/8",
                "::1/128",
                "192.168.1.1",
                "0.0.0.0/0",
                "::ffff:10.0.0.0/104",
                "fe80::/10",
                "10.0.0.0/33",
                "::/129",
                "10.0.0.0/",
                "/8",
                "10.0.0.0/08",
                "x",
            ]),
        }
    })
}

/// A request to try the config on: method, `:path`, client address.
type Request = (String, String, IpAddr);

/// Wire values from bytes.
struct Draw<'a>(Unstructured<'a>);

impl Draw<'_> {
    fn config(&mut self) -> Result<(WirePlan, WireKey, WireAnonymous, Request)> {
        let plan = self.plan()?;
        let key = self.key()?;
        let anonymous = WireAnonymous {
            routes: self.list(MAX_KEY_RULES, Self::scope)?,
            plan_id: self.maybe(|d| d.pick(&pools().plan_ids))?,
        };
        let client = if self.0.arbitrary()? {
            IpAddr::from(self.0.arbitrary::<[u8; 16]>()?)
        } else {
            IpAddr::from(self.0.arbitrary::<[u8; 4]>()?)
        };
        let request = (
            self.pick(&pools().methods)?,
            self.pick(&pools().paths)?,
            client,
        );
        Ok((plan, key, anonymous, request))
    }

    /// Mostly one of `pool`; otherwise any text.
    fn pick(&mut self, pool: &[String]) -> Result<String> {
        if self.0.ratio(3u8, 4)? {
            Ok(self.0.choose(pool)?.clone())
        } else {
            self.0.arbitrary()
        }
    }

    /// Mostly one of `edges`; otherwise any number.
    fn number(&mut self, edges: &[u64]) -> Result<u64> {
        if self.0.ratio(3u8, 4)? {
            Ok(*self.0.choose(edges)?)
        } else {
            self.0.arbitrary()
        }
    }

    fn tokens(&mut self) -> Result<u64> {
        self.number(&[1, 60, 0, MAX_TOKENS, MAX_TOKENS + 1, u64::MAX])
    }

    fn maybe<T>(&mut self, draw: impl FnOnce(&mut Self) -> Result<T>) -> Result<Option<T>> {
        Ok(if self.0.arbitrary()? {
            Some(draw(self)?)
        } else {
            None
        })
    }

    /// Up to two more than `most`, so each bound is crossed.
    fn list<T>(&mut self, most: usize, draw: fn(&mut Self) -> Result<T>) -> Result<Vec<T>> {
        let len = self.0.int_in_range(0..=most + 2)?;
        (0..len).map(|_| draw(self)).collect()
    }

    fn limit(&mut self) -> Result<WireLimit> {
        Ok(WireLimit {
            name: self.pick(&pools().limit_names)?,
            max: self.tokens()?,
            window_seconds: self.number(&[
                1,
                60,
                0,
                MAX_WINDOW_SECONDS,
                MAX_WINDOW_SECONDS + 1,
                u64::MAX,
            ])?,
            burst: self.maybe(Self::tokens)?,
            scope: if self.0.arbitrary()? {
                LimitScope::Tenant
            } else {
                LimitScope::Key
            },
            per_envoy: self.0.arbitrary()?,
        })
    }

    fn scope(&mut self) -> Result<WireScope> {
        Ok(WireScope {
            methods: self.maybe(|d| d.list(3, |d| d.pick(&pools().methods)))?,
            path_prefix: self.maybe(|d| d.pick(&pools().paths))?,
        })
    }

    fn plan(&mut self) -> Result<WirePlan> {
        Ok(WirePlan {
            id: self.pick(&pools().plan_ids)?,
            name: self.pick(&pools().plan_names)?,
            limits: self.list(MAX_LIMITS, Self::limit)?,
            monthly_quota: self.maybe(Self::tokens)?,
            route_costs: self.list(MAX_ROUTE_COSTS, |d| {
                let scope = d.scope()?;
                Ok(WireRouteCost {
                    methods: scope.methods,
                    path_prefix: scope.path_prefix,
                    cost: d.number(&[1, 0, 10, MAX_TOKENS, MAX_TOKENS + 1])?,
                })
            })?,
        })
    }

    fn key(&mut self) -> Result<WireKey> {
        Ok(WireKey {
            hash: self.pick(&pools().hashes)?,
            id: self.pick(&pools().key_ids)?,
            tenant_id: self.pick(&pools().tenant_ids)?,
            plan_id: self.pick(&pools().plan_ids)?,
            active: self.0.arbitrary()?,
            expires_at_ms: self.maybe(|d| d.0.arbitrary())?,
            scopes: self.maybe(|d| d.list(MAX_KEY_RULES, Self::scope))?,
            allowed_cidrs: self.maybe(|d| d.list(MAX_KEY_RULES, |d| d.pick(&pools().cidrs)))?,
            limits: self.maybe(|d| d.list(MAX_LIMITS, Self::limit))?,
            monthly_quota: self.maybe(Self::tokens)?,
            billing_anchor_day: self.maybe(|d| {
                let day = d.number(&[1, 31, 0, 32, 255])?;
                Ok(u8::try_from(day % 256).unwrap_or(0))
            })?,
        })
    }
}
