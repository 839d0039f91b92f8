//! The first page after sign-in: what there is (plans, tenants, keys), how
//! requests went today and this quota period, by outcome, the config version
//! the Envoys are fed, and the latest changes. A tenant sees its own.

use askama::Template;
use axum::extract::State;
use tollgate_core::period::quota_period;

use crate::dashboard::page::{count, ok, when, Chrome, PageResult};
use crate::dashboard::proxies::{reach, Reach};
use crate::dashboard::session::Signed;
use crate::state::AppState;
use crate::store::usage::{self, truncated, ALLOWED};
use crate::store::{audit, feed, keys, plans, tenants};

/// Requests of one outcome in two spans.
pub struct OutcomeRow {
    pub outcome: String,
    pub today: String,
    pub period: String,
}

pub struct AuditLine {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub resource_id: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    chrome: Chrome,
    /// Admin only: how many plans and tenants there are.
    plans: Option<String>,
    tenants: Option<String>,
    active_keys: String,
    /// The tenant's plan, for a tenant.
    plan_name: Option<String>,
    quota_per_key: Option<String>,
    period_label: String,
    outcomes: Vec<OutcomeRow>,
    config_version: String,
    audit: Vec<AuditLine>,
    /// How far the current version has reached the proxies (admin only).
    reach: Option<Reach>,
}

/// `GET /dashboard`.
pub async fn show(State(state): State<AppState>, Signed { principal }: Signed) -> PageResult {
    let now = state.now();
    let tenant = principal.own_tenant();
    let tenant_view = match tenant {
        Some(id) => tenants::find(&state.db, id).await?,
        None => None,
    };
    let plan = match &tenant_view {
        Some(t) => plans::find(&state.db, &t.plan_id).await?,
        None => None,
    };
    // A tenant's period follows its billing anchor; the admin's overview
    // spans calendar months (UTC), which every anchor overlaps.
    let anchor = tenant_view.as_ref().and_then(|t| t.billing_anchor_day);
    let period = quota_period(now.unix_ms(), anchor);
    let day_start = now.unix_ms() - now.unix_ms() % 86_400_000;
    let today =
        usage::outcome_totals(&state.db, tenant, &truncated(day_start, usage::HOUR)).await?;
    let in_period =
        usage::outcome_totals(&state.db, tenant, &truncated(period.start_ms, usage::HOUR)).await?;
    let mut outcomes: Vec<OutcomeRow> = Vec::new();
    for (outcome, n) in &in_period {
        let today_n = today
            .iter()
            .find(|(o, _)| o == outcome)
            .map_or(0, |(_, n)| *n);
        outcomes.push(OutcomeRow {
            outcome: outcome.clone(),
            today: count(u64::try_from(today_n).unwrap_or(0)),
            period: count(u64::try_from(*n).unwrap_or(0)),
        });
    }
    // Allowed first, then refusals by code.
    outcomes.sort_by_key(|o| (o.outcome != ALLOWED, o.outcome.clone()));
    let filter = audit::Filter {
        tenant_id: tenant.map(str::to_owned),
        ..Default::default()
    };
    let audit = audit::list(&state.db, filter, None, 10)
        .await?
        .into_iter()
        .map(|row| AuditLine {
            at: when(&row.created_at),
            actor: row.actor,
            action: row.action,
            resource_id: row.resource_id,
        })
        .collect();
    let admin = principal.is_admin();
    let page = Overview {
        chrome: Chrome::new(&principal, "Overview", "overview"),
        plans: if admin {
            Some(count(
                u64::try_from(plans::count(&state.db).await?).unwrap_or(0),
            ))
        } else {
            None
        },
        tenants: if admin {
            Some(count(
                u64::try_from(tenants::count(&state.db).await?).unwrap_or(0),
            ))
        } else {
            None
        },
        active_keys: count(
            u64::try_from(keys::count_active(&state.db, tenant, now.db_ms()).await?).unwrap_or(0),
        ),
        plan_name: plan.as_ref().map(|p| p.name.clone()),
        quota_per_key: plan.as_ref().map(|p| {
            p.monthly_quota
                .and_then(|q| u64::try_from(q).ok())
                .map_or_else(|| "unlimited".to_owned(), count)
        }),
        period_label: format!(
            "{} to {}",
            when(&crate::clock::rfc3339_ms(period.start_ms)),
            when(&crate::clock::rfc3339_ms(period.end_ms))
        ),
        outcomes,
        config_version: count(feed::current_version(&state.db).await?),
        reach: reach(&state, &principal).await?,
        audit,
    };
    Ok(ok(&page))
}
