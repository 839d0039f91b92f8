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
use tollgate_core::wire::WireScope;

use crate::auth::Principal;
use crate::clock::Now;
use crate::dashboard::chart::{stacked_bars, ChartPoint};
use crate::dashboard::form::{utc_of_field, FormData};
use crate::dashboard::page::{allowance, count, render, when, Chrome, PageError, PageResult};
use crate::dashboard::session::Signed;
use crate::dashboard::tenants::tenant_page;
use crate::dashboard::Flash;
use crate::error::ApiError;
use crate::routes::keys::{self as api, CreateKey, RotateKey, UpdateKey};
use crate::routes::tenants::TenantView;
use crate::routes::usage::{key_usage_of, tenant_series, Granularity, UsageQuery};
use crate::state::AppState;
use crate::store::usage::{self, truncated};
use crate::store::{audit, keys};

/// A key "expires soon" within this of now.
const SOON_MS: i64 = 24 * 3600 * 1000;

/// Grace periods offered when rotating: (seconds, as people say it).
pub const GRACE_CHOICES: [(u64, &str); 5] = [
    (0, "End the old key now"),
    (900, "15 minutes"),
    (3600, "1 hour"),
    (86_400, "24 hours"),
    (604_800, "7 days"),
];

/// One state a key is in, as a badge with its words (never colour alone).
pub struct Badge {
    pub class: &'static str,
    pub text: String,
}

pub struct KeyLine {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub badges: Vec<Badge>,
    pub last_used: String,
    pub expires: String,
    pub created: String,
    pub used: String,
    pub quota: String,
}

/// The key list narrowed to keys in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    All,
    Active,
    Deactivated,
    Expired,
    ExpiresSoon,
    Rotating,
    OverQuota,
}

impl StatusFilter {
    pub const ALL: [Self; 7] = [
        Self::All,
        Self::Active,
        Self::Deactivated,
        Self::Expired,
        Self::ExpiresSoon,
        Self::Rotating,
        Self::OverQuota,
    ];

    pub fn parse(text: Option<&str>) -> Self {
        Self::ALL
            .into_iter()
            .find(|f| Some(f.as_str()) == text)
            .unwrap_or(Self::All)
    }

    /// The badge class and the query value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Active => "active",
            Self::Deactivated => "deactivated",
            Self::Expired => "expired",
            Self::ExpiresSoon => "expires-soon",
            Self::Rotating => "rotating",
            Self::OverQuota => "over-quota",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::All => "All",
            Self::Active => "Active",
            Self::Deactivated => "Deactivated",
            Self::Expired => "Expired",
            Self::ExpiresSoon => "Expires soon",
            Self::Rotating => "Rotating",
            Self::OverQuota => "Over quota",
        }
    }

    pub fn admits(self, line: &KeyLine) -> bool {
        self == Self::All || line.badges.iter().any(|b| b.class == self.as_str())
    }
}

/// The key form as typed.
#[derive(Debug, Default)]
pub struct KeyDraft {
    pub name: String,
    pub expires_at: String,
    pub scopes: String,
    pub allowed_cidrs: String,
}

/// A key just issued: the only time its plaintext is on a page.
pub struct NewSecret {
    pub key_id: String,
    pub name: String,
    pub key: String,
}

/// The states a key is in at `now`.
fn badges(
    row: &keys::KeyRow,
    successor: bool,
    used: u64,
    quota: Option<u64>,
    now: Now,
) -> Vec<Badge> {
    let now_ms = now.db_ms();
    let mut out = Vec::new();
    let expired = row.expires_at_ms.is_some_and(|e| e <= now_ms);
    let ends = row.expires_at.as_deref().map(when).unwrap_or_default();
    if row.active == 0 {
        out.push(Badge {
            class: "deactivated",
            text: "Deactivated".into(),
        });
    }
    if expired {
        out.push(Badge {
            class: "expired",
            text: "Expired".into(),
        });
    } else if successor && row.expires_at_ms.is_some() {
        out.push(Badge {
            class: "rotating",
            text: format!("Rotating until {ends}"),
        });
    } else if row.expires_at_ms.is_some_and(|e| e - now_ms <= SOON_MS) {
        out.push(Badge {
            class: "expires-soon",
            text: format!("Expires soon ({ends})"),
        });
    }
    if quota.is_some_and(|q| used >= q) {
        out.push(Badge {
            class: "over-quota",
            text: "Over quota".into(),
        });
    }
    if row.active != 0 && !expired {
        out.insert(
            0,
            Badge {
                class: "active",
                text: "Active".into(),
            },
        );
    }
    out
}

/// Every live key of `tenant`, with its state and this period's use.
pub async fn lines(
    state: &AppState,
    tenant: &TenantView,
    period_start_ms: u64,
    now: Now,
) -> Result<Vec<KeyLine>, PageError> {
    let rows = keys::list(&state.db, &tenant.id, None, None, i64::from(u16::MAX)).await?;
    let used = usage::cost_by_key(
        &state.db,
        &tenant.id,
        &truncated(period_start_ms, usage::HOUR),
    )
    .await?;
    let plan_quota = crate::store::plans::find(&state.db, &tenant.plan_id)
        .await?
        .and_then(|p| p.monthly_quota)
        .and_then(|q| u64::try_from(q).ok());
    let mut lines = Vec::with_capacity(rows.len());
    for row in &rows {
        let successor = rows
            .iter()
            .any(|other| other.rotated_from.as_deref() == Some(row.id.as_str()));
        let used = used
            .iter()
            .find(|(id, _)| *id == row.id)
            .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0));
        let quota = row
            .monthly_quota
            .and_then(|q| u64::try_from(q).ok())
            .or(plan_quota);
        lines.push(KeyLine {
            badges: badges(row, successor, used, quota, now),
            id: row.id.clone(),
            name: row.name.clone(),
            prefix: row.prefix.clone(),
            last_used: row
                .last_used_at
                .as_deref()
                .map_or_else(|| "never used".to_owned(), when),
            expires: row
                .expires_at
                .as_deref()
                .map_or_else(|| "never".to_owned(), when),
            created: when(&row.created_at),
            used: count(used),
            quota: allowance(quota),
        });
    }
    Ok(lines)
}

/// Scopes one per line: methods and/or a path prefix, e.g. `GET,HEAD /v1/reports`.
pub fn scopes_of(text: &str) -> Option<Vec<WireScope>> {
    let scopes: Vec<WireScope> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut methods = Vec::new();
            let mut path_prefix = None;
            for word in line.split_whitespace() {
                if word.starts_with('/') {
                    path_prefix = Some(word.to_owned());
                } else {
                    methods.extend(
                        word.split(',')
                            .filter(|m| !m.is_empty())
                            .map(str::to_ascii_uppercase),
                    );
                }
            }
            WireScope {
                methods: (!methods.is_empty()).then_some(methods),
                path_prefix,
            }
        })
        .collect();
    (!scopes.is_empty()).then_some(scopes)
}

/// A scope as `scopes_of` reads it back: methods, then the path prefix.
pub fn scope_line(scope: &WireScope) -> String {
    let methods = scope.methods.as_ref().map(|m| m.join(","));
    [methods.as_deref(), scope.path_prefix.as_deref()]
        .into_iter()
        .flatten()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

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
            let secret = NewSecret {
                key_id: issued.view.id.clone(),
                name: issued.view.name.clone(),
                key: issued.key,
            };
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
        Err(e) if e.status.is_client_error() && e.status != StatusCode::NOT_FOUND => {
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
    usage: Vec<UsageRow>,
    audit: Vec<AuditLine>,
    grace: Vec<(u64, &'static str)>,
    secret: Option<NewSecret>,
    flash: Option<Flash>,
}

async fn key_page(
    state: &AppState,
    principal: &Principal,
    id: &str,
    daily: bool,
    secret: Option<NewSecret>,
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
    let chart_points: Vec<ChartPoint> = points
        .iter()
        .map(|p| ChartPoint {
            label: label(&p.start),
            allowed: p.allowed,
            denied: p.denied.values().sum(),
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
        chart: stacked_bars(&chart_points, "chart-caption"),
        usage,
        audit: trail,
        grace: GRACE_CHOICES.to_vec(),
        secret,
        flash,
        key: view,
    };
    Ok(render(status, &page))
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
    let secret = NewSecret {
        key_id: issued.view.id.clone(),
        name: issued.view.name.clone(),
        key: issued.key,
    };
    let new_id = secret.key_id.clone();
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
