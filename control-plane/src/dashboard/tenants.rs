//! Tenants in the dashboard. The admin lists them with their plan, keys and
//! this period's use, creates them, moves them between plans, and deletes
//! them after typing the name; a tenant sees only its own page. The tenant's
//! page is also where its keys are listed and issued (`keys`).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;
use tollgate_core::period::quota_period;

use crate::auth::Principal;
use crate::dashboard::form::{parse_number, FormData};
use crate::dashboard::key_list::{self as keys, KeyLine, StatusFilter};
use crate::dashboard::page::{
    allowance, count, render, when, Chrome, Flash, PageError, PageResult, ShownOnce,
};
use crate::dashboard::proxies::{reach, Reach};
use crate::dashboard::session::Signed;
use crate::error::ApiError;
use crate::routes::tenants::{self as api, CreateTenant, TenantView, UpdateTenant};
use crate::state::AppState;
use crate::store::usage::{self, truncated};
use crate::store::{keys as key_store, plans, tenants};

pub struct TenantLine {
    pub id: String,
    pub name: String,
    pub plan: String,
    pub keys: String,
    pub used: String,
}

/// A plan to choose in a form.
pub struct PlanChoice {
    pub id: String,
    pub name: String,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "tenants.html")]
struct TenantsPage {
    chrome: Chrome,
    tenants: Vec<TenantLine>,
    plans: Vec<PlanChoice>,
    /// The create form as typed, when it was refused.
    name: String,
    anchor: String,
    flash: Option<Flash>,
}

impl TenantsPage {
    fn invalid(&self, field: &str) -> bool {
        self.flash.as_ref().is_some_and(|f| f.field == field)
    }
}

#[derive(Template)]
#[template(path = "tenant.html")]
pub struct TenantPage {
    chrome: Chrome,
    tenant: TenantView,
    plan_name: String,
    plan_quota: String,
    plans: Vec<PlanChoice>,
    period: String,
    keys: Vec<KeyLine>,
    key_count: usize,
    filter: StatusFilter,
    flash: Option<Flash>,
    /// A key just issued: its plaintext, shown in this response only.
    shown: Option<ShownOnce>,
    /// The key form as typed, when it was refused.
    key_form: keys::KeyDraft,
    reach: Option<Reach>,
}

impl TenantPage {
    fn invalid(&self, field: &str) -> bool {
        self.flash.as_ref().is_some_and(|f| f.field == field)
    }

    fn filter_is(&self, name: &str) -> bool {
        self.filter.as_str() == name
    }
}

pub async fn plan_choices(state: &AppState, selected: &str) -> Result<Vec<PlanChoice>, PageError> {
    let rows = plans::list(&state.db, None, i64::from(u16::MAX)).await?;
    Ok(rows
        .into_iter()
        .map(|p| PlanChoice {
            selected: p.id == selected,
            id: p.id,
            name: p.name,
        })
        .collect())
}

async fn list_page(
    state: &AppState,
    principal: &Principal,
    form: Option<(&FormData, Flash)>,
) -> PageResult {
    principal.require_admin()?;
    let now = state.now();
    let all = tenants::list(&state.db, None, None, i64::from(u16::MAX)).await?;
    let key_counts = key_store::count_of_tenants(&state.db).await?;
    // Calendar months here; each tenant's own period is on its page.
    let month = quota_period(now.unix_ms(), None);
    let used = usage::cost_by_tenant(&state.db, &truncated(month.start_ms, usage::HOUR)).await?;
    let plan_rows = plans::list(&state.db, None, i64::from(u16::MAX)).await?;
    let lines = all
        .into_iter()
        .map(|t| {
            let find = |rows: &[(String, i64)]| {
                rows.iter()
                    .find(|(id, _)| *id == t.id)
                    .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0))
            };
            TenantLine {
                plan: plan_rows
                    .iter()
                    .find(|p| p.id == t.plan_id)
                    .map_or_else(|| t.plan_id.clone(), |p| p.name.clone()),
                keys: count(find(&key_counts)),
                used: count(find(&used)),
                id: t.id,
                name: t.name,
            }
        })
        .collect();
    let typed = |field: &str| form.as_ref().map_or("", |(f, _)| f.text(field)).to_owned();
    let (selected, name, anchor) = (typed("plan_id"), typed("name"), typed("billing_anchor_day"));
    let (status, flash) = match form {
        Some((_, flash)) => (flash.status, Some(flash)),
        None => (StatusCode::OK, None),
    };
    let page = TenantsPage {
        chrome: Chrome::new(principal, "Tenants", "tenants"),
        tenants: lines,
        plans: plan_rows
            .into_iter()
            .map(|p| PlanChoice {
                selected: p.id == selected,
                id: p.id,
                name: p.name,
            })
            .collect(),
        name,
        anchor,
        flash,
    };
    Ok(render(status, &page))
}

/// `GET /dashboard/tenants`.
pub async fn list(State(state): State<AppState>, signed: Signed) -> PageResult {
    list_page(&state, &signed.principal, None).await
}

/// A billing day as typed: blank for calendar months.
fn anchor_of(form: &FormData) -> Result<Option<i64>, ApiError> {
    form.optional("billing_anchor_day")
        .map(|v| {
            parse_number(v, "invalid_billing_anchor_day", "The billing day")
                .map(|d| i64::try_from(d).unwrap_or(i64::MAX))
        })
        .transpose()
}

fn field_of(e: &ApiError) -> &'static str {
    match e.code {
        "invalid_name" | "tenant_name_taken" => "name",
        "plan_not_found" => "plan_id",
        "invalid_billing_anchor_day" => "billing_anchor_day",
        _ => "",
    }
}

/// `POST /dashboard/tenants`.
pub async fn create(State(state): State<AppState>, signed: Signed, form: FormData) -> PageResult {
    signed.principal.require_admin()?;
    let refuse = |e: ApiError| {
        let flash = Flash::field(field_of(&e), e);
        (flash.status, flash)
    };
    let input = match anchor_of(&form) {
        Ok(day) => CreateTenant {
            name: form.text("name").to_owned(),
            plan_id: form.text("plan_id").to_owned(),
            billing_anchor_day: day,
        },
        Err(e) => {
            let (_, flash) = refuse(e);
            return refused_list(&state, &signed.principal, &form, flash).await;
        }
    };
    match api::create(&state, &signed.principal, input).await {
        Ok(view) => Ok(Redirect::to(&format!("/dashboard/tenants/{}", view.id)).into_response()),
        Err(e) if Flash::belongs_on_form(&e) => {
            let (_, flash) = refuse(e);
            refused_list(&state, &signed.principal, &form, flash).await
        }
        Err(e) => Err(PageError(e)),
    }
}

async fn refused_list(
    state: &AppState,
    principal: &Principal,
    form: &FormData,
    flash: Flash,
) -> PageResult {
    let status = flash.status;
    let mut response = list_page(state, principal, Some((form, flash))).await?;
    *response.status_mut() = status;
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct TenantQuery {
    #[serde(default)]
    pub status: Option<String>,
}

/// The tenant's page as `principal` sees it.
pub async fn tenant_page(
    state: &AppState,
    principal: &Principal,
    id: &str,
    filter: StatusFilter,
    flash: Option<Flash>,
    shown: Option<ShownOnce>,
    key_form: keys::KeyDraft,
) -> PageResult {
    if !principal.sees(id) {
        return Err(ApiError::not_found("tenant", id).into());
    }
    let tenant = tenants::find(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", id))?;
    let plan = plans::find(&state.db, &tenant.plan_id).await?;
    let now = state.now();
    let period = quota_period(now.unix_ms(), tenant.billing_anchor_day);
    let all_keys = keys::lines(state, &tenant, period.start_ms, now).await?;
    let key_count = all_keys.len();
    let keys = all_keys.into_iter().filter(|k| filter.admits(k)).collect();
    let plans = if principal.is_admin() {
        plan_choices(state, &tenant.plan_id).await?
    } else {
        Vec::new()
    };
    let status = flash.as_ref().map_or(StatusCode::OK, |f| f.status);
    let page = TenantPage {
        chrome: Chrome::new(principal, format!("Tenant {}", tenant.name), "tenants"),
        plan_name: plan
            .as_ref()
            .map_or_else(|| tenant.plan_id.clone(), |p| p.name.clone()),
        plan_quota: allowance(
            plan.as_ref()
                .and_then(|p| p.monthly_quota)
                .and_then(|q| u64::try_from(q).ok()),
        ),
        plans,
        period: format!(
            "{} to {}",
            when(&crate::clock::rfc3339_ms(period.start_ms)),
            when(&crate::clock::rfc3339_ms(period.end_ms))
        ),
        keys,
        key_count,
        filter,
        flash,
        shown,
        key_form,
        tenant,
        reach: reach(state, principal).await?,
    };
    Ok(render(status, &page))
}

/// The tenant's page with why its form was refused.
async fn refused_tenant(
    state: &AppState,
    principal: &Principal,
    id: &str,
    flash: Flash,
) -> PageResult {
    let draft = keys::KeyDraft::default();
    tenant_page(
        state,
        principal,
        id,
        StatusFilter::All,
        Some(flash),
        None,
        draft,
    )
    .await
}

/// `GET /dashboard/tenants/{id}`.
pub async fn show(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    Query(query): Query<TenantQuery>,
) -> PageResult {
    let filter = StatusFilter::parse(query.status.as_deref());
    tenant_page(
        &state,
        &signed.principal,
        &id,
        filter,
        None,
        None,
        keys::KeyDraft::default(),
    )
    .await
}

/// `POST /dashboard/tenants/{id}`: rename, change plan or billing day.
pub async fn update(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    form: FormData,
) -> PageResult {
    let admin = signed.principal.is_admin();
    let input = match anchor_of(&form) {
        Ok(day) => UpdateTenant {
            name: form.optional("name").map(str::to_owned),
            // Only the admin's form has these; a tenant's forged ones are refused below.
            plan_id: form.optional("plan_id").map(str::to_owned),
            billing_anchor_day: if admin || form.optional("billing_anchor_day").is_some() {
                Some(day)
            } else {
                None
            },
        },
        Err(e) => {
            let flash = Flash::field(field_of(&e), e);
            return refused_tenant(&state, &signed.principal, &id, flash).await;
        }
    };
    match api::update(&state, &signed.principal, &id, input).await {
        Ok(_) => Ok(Redirect::to(&format!("/dashboard/tenants/{id}")).into_response()),
        Err(e) if Flash::belongs_on_form(&e) => {
            let flash = Flash::field(field_of(&e), e);
            refused_tenant(&state, &signed.principal, &id, flash).await
        }
        Err(e) => Err(PageError(e)),
    }
}

/// `POST /dashboard/tenants/{id}/delete`: only with the tenant's name typed.
pub async fn delete(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    form: FormData,
) -> PageResult {
    signed.principal.require_admin()?;
    let tenant = tenants::find(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", &id))?;
    if form.text("confirm_name") != tenant.name {
        let e = ApiError::invalid(
            "confirmation_mismatch",
            format!("Type the tenant's name, {:?}, to delete it.", tenant.name),
        );
        let flash = Flash::field("confirm_name", e);
        return refused_tenant(&state, &signed.principal, &id, flash).await;
    }
    api::delete(&state, &signed.principal, &id).await?;
    Ok(Redirect::to("/dashboard/tenants").into_response())
}
