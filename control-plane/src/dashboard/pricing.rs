//! The tier comparison: the public plans side by side, from the same
//! catalog as `GET /v1/catalog`. At `/pricing` without sign-in, for a
//! pricing page to link to or frame from its own origin's proxy; in the
//! dashboard with the signed-in tenant's plan marked.

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::Value;

use crate::dashboard::page::{allowance, count, ok, window, Chrome, PageResult};
use crate::dashboard::plans::price;
use crate::dashboard::session::Signed;
use crate::routes::catalog::catalog;
use crate::state::AppState;
use crate::store::{plans, tenants};

pub struct Tier {
    pub name: String,
    pub current: bool,
    pub price: String,
    pub quota: String,
    pub limits: Vec<String>,
    pub max_api_keys: String,
    pub features: Vec<String>,
}

#[derive(Template)]
#[template(path = "pricing.html")]
struct PricingPage {
    /// `None` on the public page.
    chrome: Option<Chrome>,
    tiers: Vec<Tier>,
}

async fn tiers(
    state: &AppState,
    current: Option<&str>,
) -> Result<Vec<Tier>, crate::dashboard::page::PageError> {
    let catalog = catalog(state).await?;
    Ok(catalog
        .plans
        .into_iter()
        .map(|p| Tier {
            current: current == Some(p.name.as_str()),
            price: price(&p.metadata).unwrap_or_else(|| "—".into()),
            quota: allowance(p.monthly_quota),
            limits: p
                .limits
                .iter()
                .map(|l| format!("{} per {}", count(l.max), window(l.window_seconds)))
                .collect(),
            max_api_keys: allowance(p.max_api_keys),
            features: match p.metadata.get("features") {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(|f| f.as_str().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            },
            name: p.name,
        })
        .collect())
}

/// `GET /pricing`: no sign-in.
pub async fn public(State(state): State<AppState>) -> PageResult {
    Ok(ok(&PricingPage {
        chrome: None,
        tiers: tiers(&state, None).await?,
    }))
}

/// `GET /dashboard/pricing`: the same, with the tenant's own plan marked.
pub async fn signed_in(
    State(state): State<AppState>,
    signed: Signed,
    _headers: HeaderMap,
) -> PageResult {
    let mut current = None;
    if let Some(tenant_id) = signed.principal.own_tenant() {
        if let Some(tenant) = tenants::find(&state.db, tenant_id).await? {
            current = plans::find(&state.db, &tenant.plan_id)
                .await?
                .map(|p| p.name);
        }
    }
    Ok(ok(&PricingPage {
        chrome: Some(Chrome::new(&signed.principal, "Tiers", "pricing")),
        tiers: tiers(&state, current.as_deref()).await?,
    }))
}
