//! API keys in the dashboard: the tenant's keys with what state each is in,
//! issuing one (its plaintext shown once, in the answer to that form and
//! nowhere else), and a key's own page: its settings, its usage over time,
//! its quota this period, and activate, deactivate, rotate and delete.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;

use crate::auth::Principal;
use crate::clock::Now;
use crate::dashboard::chart::{self, stacked_bars, ChartPoint};
use crate::dashboard::form::{scopes_of, utc_of_field, FormData};
use crate::dashboard::key_list::{badges, shown_key, Badge, KeyDraft, StatusFilter};
use crate::dashboard::page::{
    count, render, when, Chrome, Flash, PageError, PageResult, ShownOnce,
};
use crate::dashboard::proxies::{reach, Reach};
use crate::dashboard::session::Signed;
use crate::dashboard::tenants::tenant_page;
use crate::error::ApiError;
use crate::routes::keys::{self as api, CreateKey, RotateKey, UpdateKey};
use crate::routes::usage::{key_usage_of, tenant_series, Granularity, UsageQuery};
use crate::state::AppState;
use crate::store::usage::{self, truncated};
use crate::store::{audit, keys};

/// Grace periods offered when rotating: (seconds, as people say it).
pub const GRACE_CHOICES: [(u64, &str); 5] = [
    (0, "End the old key now"),
    (900, "15 minutes"),
    (3600, "1 hour"),
    (86_400, "24 hours"),
    (604_800, "7 days"),
];

fn cidrs_of(text: &str) -> Option<Vec<String>> {
    let cidrs: Vec<String> = text
        .split([',', ' ', '\n', '\r'])
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    (!cidrs.is_empty()).then_some(cidrs)
}

fn field_of(e: &ApiError) -> &'static str {
    match e.code {
        "invalid_name" => "name",
        "invalid_expiry" => "expires_at",
        "invalid_key" if e.detail.contains("CIDR") || e.detail.contains("cidr") => "allowed_cidrs",
        "invalid_key" => "scopes",
        _ => "",
    }
}

/// `POST /dashboard/tenants/{id}/keys`: issues a key and shows it once.
pub async fn create(
    State(state): State<AppState>,
    signed: Signed,
    Path(tenant_id): Path<String>,
    form: FormData,
) -> PageResult {
    let draft = KeyDraft {
        name: form.text("name").to_owned(),
        expires_at: form.text("expires_at").to_owned(),
        scopes: form.text("scopes").to_owned(),
        allowed_cidrs: form.text("allowed_cidrs").to_owned(),
    };
    let input = CreateKey {
        name: draft.name.clone(),
        expires_at: utc_of_field(&draft.expires_at),
        scopes: scopes_of(&draft.scopes),
        allowed_cidrs: cidrs_of(&draft.allowed_cidrs),
        limits: None,
        monthly_quota: None,
    };
    let filter = StatusFilter::All;
    match api::create(&state, &signed.principal, &tenant_id, input).await {
        Ok(issued) => {
            let secret = shown_key(issued);
            let mut page = tenant_page(
                &state,
                &signed.principal,
                &tenant_id,
                filter,
                None,
                Some(secret),
                KeyDraft::default(),
            )
            .await?;
            *page.status_mut() = StatusCode::CREATED;
            Ok(page)
        }
        Err(e) if Flash::belongs_on_form(&e) => {
            let flash = Flash::field(field_of(&e), e);
            tenant_page(
                &state,
                &signed.principal,
                &tenant_id,
                filter,
                Some(flash),
                None,
                draft,
            )
            .await
        }
        Err(e) => Err(PageError(e)),
    }
}

#[derive(Debug, Deserialize)]
pub struct KeyQuery {
    #[serde(default)]
    pub granularity: Option<String>,
}

/// One row of the usage table.
/// A series of the chart as its legend names it.
pub struct LegendEntry {
    pub name: String,
    pub colour: &'static str,
}

pub struct UsageRow {
    pub start: String,
    pub allowed: String,
    pub denied: String,
    /// Refusals by code, e.g. `rate_limited 3, quota_exceeded 1`.
    pub reasons: String,
}

pub struct AuditLine {
    pub at: String,
    pub actor: String,
    pub action: String,
}

#[derive(Template)]
#[template(path = "key.html")]
struct KeyPage {
    chrome: Chrome,
    key: crate::store::keys::KeyView,
    badges: Vec<Badge>,
    tenant_name: String,
    scopes: Vec<String>,
    cidrs: Vec<String>,
    used: String,
    quota: Option<String>,
    remaining: Option<String>,
    used_raw: u64,
    quota_raw: u64,
    resets: String,
    daily: bool,
    chart: String,
    legend: Vec<LegendEntry>,
    usage: Vec<UsageRow>,
    audit: Vec<AuditLine>,
    grace: Vec<(u64, &'static str)>,
    shown: Option<ShownOnce>,
    flash: Option<Flash>,
    reach: Option<Reach>,
}

async fn key_page(
    state: &AppState,
    principal: &Principal,
    id: &str,
    daily: bool,
    shown: Option<ShownOnce>,
    flash: Option<Flash>,
) -> PageResult {
    let row = keys::find(&state.db, id)
        .await?
        .filter(|row| principal.sees(&row.tenant_id))
        .ok_or_else(|| ApiError::not_found("API key", id))?;
    let now = state.now();
    let tenant = crate::store::tenants::find(&state.db, &row.tenant_id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key", id))?;
    let quota = key_usage_of(state, principal, id.to_owned()).await?;
    let successor = keys::has_successor(&state.db, id).await?;
    let badges = badges(&row, successor, quota.used, quota.quota, now);
    let series = tenant_series(
        state,
        principal,
        row.tenant_id.clone(),
        UsageQuery {
            from: None,
            to: None,
            granularity: Some(if daily {
                Granularity::Day
            } else {
                Granularity::Hour
            }),
        },
    )
    .await?;
    let points = series
        .keys
        .into_iter()
        .find(|k| k.key_id.as_deref() == Some(id))
        .map(|k| k.series)
        .unwrap_or_default();
    let label = |start: &str| {
        if daily {
            start.get(..10).unwrap_or(start).to_owned()
        } else {
            start.get(11..16).unwrap_or(start).to_owned()
        }
    };
    // The series: what was allowed, then each reason requests were refused
    // for in this span; each with its colour in the legend.
    let mut reasons: Vec<String> = points
        .iter()
        .flat_map(|p| p.denied.keys().cloned())
        .collect();
    reasons.sort();
    reasons.dedup();
    let series: Vec<String> = std::iter::once("allowed".to_owned())
        .chain(reasons.iter().cloned())
        .collect();
    // Every hour (day) of the span gets its slot, so a quiet one shows as
    // a gap rather than disappearing.
    let chart_points: Vec<ChartPoint> = slots(now, daily)
        .into_iter()
        .map(|start| {
            let point = points.iter().find(|p| p.start == start);
            let denied =
                |reason: &String| point.map_or(0, |p| p.denied.get(reason).copied().unwrap_or(0));
            ChartPoint {
                label: label(&start),
                counts: std::iter::once(point.map_or(0, |p| p.allowed))
                    .chain(reasons.iter().map(denied))
                    .collect(),
            }
        })
        .collect();
    let legend = series
        .iter()
        .enumerate()
        .map(|(i, name)| LegendEntry {
            name: name.clone(),
            colour: chart::colour(i),
        })
        .collect();
    let usage = points
        .iter()
        .map(|p| {
            let by_code: BTreeMap<&String, &u64> = p.denied.iter().collect();
            UsageRow {
                start: when(&p.start),
                allowed: count(p.allowed),
                denied: count(p.denied.values().sum()),
                reasons: by_code
                    .iter()
                    .map(|(code, n)| format!("{code} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })
        .collect();
    let trail = audit::list(
        &state.db,
        audit::Filter {
            resource_id: Some(id.to_owned()),
            tenant_id: principal.own_tenant().map(str::to_owned),
            ..Default::default()
        },
        None,
        10,
    )
    .await?
    .into_iter()
    .map(|a| AuditLine {
        at: when(&a.created_at),
        actor: a.actor,
        action: a.action,
    })
    .collect();
    let view = row.view()?;
    let status = flash.as_ref().map_or(StatusCode::OK, |f| f.status);
    let page = KeyPage {
        chrome: Chrome::new(principal, format!("Key {}", view.name), "tenants"),
        badges,
        tenant_name: tenant.name,
        scopes: view
            .scopes
            .iter()
            .flatten()
            .map(|s| {
                format!(
                    "{} {}",
                    s.methods
                        .as_ref()
                        .map_or_else(|| "any method".to_owned(), |m| m.join(",")),
                    s.path_prefix.as_deref().unwrap_or("/")
                )
            })
            .collect(),
        cidrs: view.allowed_cidrs.clone().unwrap_or_default(),
        used: count(quota.used),
        quota: quota.quota.map(count),
        remaining: quota.remaining.map(count),
        used_raw: quota.used,
        quota_raw: quota.quota.unwrap_or(0),
        resets: when(&quota.period_end),
        daily,
        chart: stacked_bars(&series, &chart_points, "chart-caption"),
        legend,
        usage,
        audit: trail,
        grace: GRACE_CHOICES.to_vec(),
        shown,
        flash,
        key: view,
        reach: reach(state, principal).await?,
    };
    Ok(render(status, &page))
}

/// The starts of the hours (or days) the API's default span covers at
/// `now`: the last 24 hours, or the last 30 days, oldest first, in the form
/// the series names them.
fn slots(now: Now, daily: bool) -> Vec<String> {
    const HOUR_MS: u64 = 3600 * 1000;
    const DAY_MS: u64 = 24 * HOUR_MS;
    let (step, count) = if daily { (DAY_MS, 31) } else { (HOUR_MS, 25) };
    let last = now.unix_ms() - now.unix_ms() % step;
    (0..count)
        .rev()
        .filter_map(|i| last.checked_sub(i * step))
        .map(|start| truncated(start, usage::HOUR))
        .collect()
}

/// `GET /dashboard/keys/{id}`.
pub async fn show(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    Query(query): Query<KeyQuery>,
) -> PageResult {
    let daily = query.granularity.as_deref() == Some("day");
    key_page(&state, &signed.principal, &id, daily, None, None).await
}

/// `POST /dashboard/keys/{id}/active`: `active=true` or `false`.
pub async fn set_active(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    form: FormData,
) -> PageResult {
    let active = match form.text("active") {
        "true" => true,
        "false" => false,
        _ => return Err(ApiError::invalid("invalid_form", "active must be true or false.").into()),
    };
    let input = UpdateKey {
        active: Some(active),
        name: None,
        expires_at: None,
        scopes: None,
        allowed_cidrs: None,
        limits: None,
        monthly_quota: None,
    };
    api::update(&state, &signed.principal, &id, input).await?;
    Ok(Redirect::to(&format!("/dashboard/keys/{id}")).into_response())
}

/// `POST /dashboard/keys/{id}/rotate`: the successor's page, with its
/// plaintext shown once.
pub async fn rotate(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    form: FormData,
) -> PageResult {
    let grace_seconds = form
        .text("grace_seconds")
        .parse::<u64>()
        .ok()
        .filter(|g| GRACE_CHOICES.iter().any(|(s, _)| s == g))
        .ok_or_else(|| {
            ApiError::invalid("invalid_form", "Choose how long the old key keeps working.")
        })?;
    let issued = api::rotate(&state, &signed.principal, &id, RotateKey { grace_seconds }).await?;
    let new_id = issued.view.id.clone();
    let secret = shown_key(issued);
    let mut page = key_page(
        &state,
        &signed.principal,
        &new_id,
        false,
        Some(secret),
        None,
    )
    .await?;
    *page.status_mut() = StatusCode::CREATED;
    Ok(page)
}

/// `POST /dashboard/keys/{id}/delete`.
pub async fn delete(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
) -> PageResult {
    let tenant_id = keys::find(&state.db, &id)
        .await?
        .filter(|row| signed.principal.sees(&row.tenant_id))
        .map(|row| row.tenant_id)
        .ok_or_else(|| ApiError::not_found("API key", &id))?;
    api::delete(&state, &signed.principal, &id).await?;
    Ok(Redirect::to(&format!("/dashboard/tenants/{tenant_id}")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_has_a_slot_for_every_hour_and_day_of_the_span() {
        let now = Now::from_unix_ms(1_795_000_000_000 + 1234);
        let hours = slots(now, false);
        assert_eq!(hours.len(), 25, "the 24 hours before and the current one");
        assert!(hours.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(hours.last(), Some(&truncated(now.unix_ms(), usage::HOUR)));
        let days = slots(now, true);
        assert_eq!(days.len(), 31);
        assert!(days.iter().all(|d| d.ends_with("T00:00:00Z")), "{days:?}");
    }

    #[test]
    fn cidrs_are_split_on_commas_spaces_and_lines() {
        assert_eq!(
            cidrs_of("10.0.0.0/8, ::1/128\n"),
            Some(vec!["10.0.0.0/8".into(), "::1/128".into()])
        );
    }
}
