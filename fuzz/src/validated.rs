//! What validated config promises the data path, checked on every plan, key
//! record and anonymous access a target gets out of validation or back out
//! of shared data. The decision code relies on these without checking
//! again: bucket arithmetic on the token bounds, header values on the
//! alphabets, one bucket per limit name.

use tollgate_core::access::Scope;
use tollgate_core::config::{
    Anonymous, KeyRecord, Limit, Plan, RouteCost, MAX_KEY_RULES, MAX_LIMITS, MAX_NAME_LEN,
    MAX_ROUTE_COSTS, MAX_TOKENS, MAX_WINDOW_SECONDS, QUOTA_POLICY,
};

/// A limit name: a structured-field string and a header value as it is.
pub(crate) fn is_policy_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn tokens(n: u64) -> bool {
    (1..=MAX_TOKENS).contains(&n)
}

pub(crate) fn limit(limit: &Limit) {
    assert!(is_policy_name(&limit.name), "{limit:?}");
    assert_ne!(&*limit.name, QUOTA_POLICY);
    assert!(tokens(limit.max) && tokens(limit.max_tokens), "{limit:?}");
    assert!((1..=MAX_WINDOW_SECONDS).contains(&limit.window_seconds));
    assert_eq!(limit.window_ms(), limit.window_seconds * 1000);
}

/// Each name once: a request consumes from one bucket per name.
fn names_unique<'a>(names: impl Iterator<Item = &'a str>) {
    let mut names: Vec<&str> = names.collect();
    let all = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all, "a limit name is used twice");
}

pub(crate) fn scope(scope: &Scope) {
    for method in &scope.methods {
        assert!((1..=20).contains(&method.len()));
        assert!(method.bytes().all(|b| b.is_ascii_uppercase()), "{method:?}");
    }
    if let Some(prefix) = &scope.path_prefix {
        assert!(prefix.starts_with('/') && prefix.len() <= 1024);
        assert!(!prefix.contains(['?', '#']));
    }
}

fn route_cost(route: &RouteCost) {
    assert!(route.cost <= MAX_TOKENS);
    scope(&route.route);
}

fn quota(quota: Option<u64>) {
    assert!(quota.is_none_or(tokens), "{quota:?}");
}

pub(crate) fn plan(plan: &Plan) {
    assert!(!plan.id.is_empty());
    assert!(!plan.name.trim().is_empty() && plan.name.len() <= 200);
    assert!(plan.limits.len() <= MAX_LIMITS);
    plan.limits.iter().for_each(limit);
    names_unique(plan.limits.iter().map(|l| &*l.name));
    quota(plan.monthly_quota);
    assert!(plan.route_costs.len() <= MAX_ROUTE_COSTS);
    plan.route_costs.iter().for_each(route_cost);
}

/// Ids become header values (`x-tollgate-key-id` and the like).
fn header_safe(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic())
}

pub(crate) fn key(record: &KeyRecord) {
    for id in [&*record.id, &*record.tenant_id, record.plan_id.as_str()] {
        assert!(header_safe(id), "{id:?}");
    }
    if let Some(scopes) = &record.scopes {
        assert!(scopes.len() <= MAX_KEY_RULES);
        scopes.iter().for_each(scope);
    }
    if let Some(cidrs) = &record.allowed_cidrs {
        assert!(cidrs.len() <= MAX_KEY_RULES);
    }
    assert!(record.limit_overrides.len() <= MAX_LIMITS);
    record.limit_overrides.iter().for_each(limit);
    names_unique(record.limit_overrides.iter().map(|l| &*l.name));
    quota(record.monthly_quota);
    assert!(record
        .billing_anchor_day
        .is_none_or(|day| (1..=31).contains(&day)));
}

/// A key on its plan: the limits a request meets, each name once.
pub(crate) fn key_on_plan(record: &KeyRecord, plan: &Plan) {
    let limits = record.effective_limits(plan);
    assert!(limits.len() <= 2 * MAX_LIMITS);
    limits.iter().copied().for_each(limit);
    names_unique(limits.iter().map(|l| &*l.name));
    quota(record.quota(plan));
}

pub(crate) fn anonymous(anonymous: &Anonymous) {
    assert!(anonymous.routes.len() <= MAX_KEY_RULES);
    anonymous.routes.iter().for_each(scope);
    match &anonymous.plan_id {
        Some(id) => assert!(!id.is_empty()),
        None => assert!(anonymous.routes.is_empty()),
    }
}
