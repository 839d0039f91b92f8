//! Preset plans, like the Free / Pro / Business / Enterprise tiers the systems
//! Tollgate replaces sold. Loaded by `control-plane seed`, and by
//! `cargo xtask up` only into an empty database; never forced on anyone.

use serde_json::json;
use tollgate_core::wire::WireLimit;

use crate::change::{snapshot, Change};
use crate::db;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::audit::Entry;
use crate::store::plans::{self, PlanView};

fn limits(hourly: u64, daily: u64) -> Vec<WireLimit> {
    vec![
        WireLimit {
            name: "hourly".into(),
            max: hourly,
            window_seconds: 3600,
            burst: None,
            scope: Default::default(),
            per_envoy: false,
        },
        WireLimit {
            name: "daily".into(),
            max: daily,
            window_seconds: 86_400,
            burst: None,
            scope: Default::default(),
            per_envoy: false,
        },
    ]
}

struct Preset {
    name: &'static str,
    hourly: u64,
    daily: u64,
    monthly_quota: u64,
    max_api_keys: u64,
    max_users: Option<u64>,
    price_usd_per_month: u64,
}

const fn preset(
    name: &'static str,
    (hourly, daily, monthly_quota): (u64, u64, u64),
    (max_api_keys, max_users): (u64, Option<u64>),
    price_usd_per_month: u64,
) -> Preset {
    Preset {
        name,
        hourly,
        daily,
        monthly_quota,
        max_api_keys,
        max_users,
        price_usd_per_month,
    }
}

const PRESETS: [Preset; 4] = [
    preset("Free", (60, 1_000, 10_000), (2, Some(1)), 0),
    preset("Pro", (600, 10_000, 250_000), (10, Some(10)), 29),
    preset("Business", (3_000, 50_000, 1_000_000), (50, Some(50)), 99),
    preset("Enterprise", (10_000, 200_000, 5_000_000), (200, None), 499),
];

/// What a seed run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seeded {
    pub created: Vec<String>,
    pub skipped: Vec<String>,
}

/// Creates each preset whose name is not taken, all in one change. With
/// `only_if_empty`, does nothing at all unless the database has no plans.
pub async fn seed(state: &AppState, only_if_empty: bool) -> Result<Seeded, ApiError> {
    let now = state.now();
    let mut change = Change::begin(state, "seed", now).await?;
    let version = change.version();
    let existing = plans::names(change.tx()).await?;
    let mut outcome = Seeded::default();
    if only_if_empty && !existing.is_empty() {
        outcome.skipped = existing;
        return Ok(outcome);
    }
    let now = now.rfc3339();
    for p in PRESETS {
        if existing.iter().any(|e| e == p.name) {
            outcome.skipped.push(p.name.to_owned());
            continue;
        }
        let view = PlanView {
            id: db::new_id("plan"),
            name: p.name.to_owned(),
            limits: limits(p.hourly, p.daily),
            monthly_quota: Some(p.monthly_quota),
            route_costs: Vec::new(),
            max_api_keys: Some(p.max_api_keys),
            max_users: p.max_users,
            metadata: json!({ "price_usd_per_month": p.price_usd_per_month, "preset": true }),
            public: true,
            created_at: now.clone(),
            updated_at: now.clone(),
        };
        plans::insert(change.tx(), &view, version).await?;
        change
            .audit(Entry {
                action: "plan.create",
                resource_id: &view.id,
                tenant_id: None,
                before: None,
                after: snapshot(&view)?,
            })
            .await?;
        outcome.created.push(p.name.to_owned());
    }
    if outcome.created.is_empty() {
        return Ok(outcome);
    }
    change.commit().await?;
    Ok(outcome)
}
