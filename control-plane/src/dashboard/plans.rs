//! Plans in the dashboard (admin only): the list with what each enforces and
//! who is on it, a form to create or edit one, and deletion, where
//! `plan_in_use` is shown as the reason it cannot go, not as an error page.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use serde_json::Value;
use tollgate_core::wire::{LimitScope, WireLimit, WireRouteCost};

use crate::dashboard::form::{parse_number, FormData};
use crate::dashboard::page::{
    allowance, count, ok, render, window, Chrome, Flash, PageError, PageResult,
};
use crate::dashboard::proxies::{reach, Reach};
use crate::dashboard::session::Signed;
use crate::error::ApiError;
use crate::routes::plans::{self as api, CreatePlan, PlanView, UpdatePlan};
use crate::state::AppState;
use crate::store::plans;

/// Blank limit and route-cost rows offered beyond the plan's own.
const BLANK_ROWS: usize = 2;

pub struct PlanLine {
    pub id: String,
    pub name: String,
    pub limits: Vec<String>,
    pub quota: String,
    pub route_costs: Vec<String>,
    pub max_api_keys: String,
    pub public: bool,
    pub price: Option<String>,
    pub tenants: String,
    pub keys: String,
}

#[derive(Template)]
#[template(path = "plans.html")]
struct PlansPage {
    chrome: Chrome,
    plans: Vec<PlanLine>,
    flash: Option<Flash>,
    reach: Option<Reach>,
}

/// One limit row of the form, as typed.
#[derive(Default, Clone)]
pub struct LimitRow {
    pub name: String,
    pub max: String,
    pub window: String,
    pub burst: String,
    pub tenant_scope: bool,
    pub per_envoy: bool,
}

/// One route-cost row of the form, as typed.
#[derive(Default, Clone)]
pub struct CostRow {
    pub methods: String,
    pub prefix: String,
    pub cost: String,
}

/// The plan form's fields as typed, so a refused form comes back as it was sent.
#[derive(Default)]
pub struct PlanDraft {
    pub name: String,
    pub limits: Vec<LimitRow>,
    pub monthly_quota: String,
    pub route_costs: Vec<CostRow>,
    pub max_api_keys: String,
    pub max_users: String,
    pub metadata: String,
    pub public: bool,
}

#[derive(Template)]
#[template(path = "plan_form.html")]
struct PlanForm {
    chrome: Chrome,
    /// `None` when creating.
    plan_id: Option<String>,
    draft: PlanDraft,
    flash: Option<Flash>,
}

impl PlanForm {
    fn invalid(&self, field: &str) -> bool {
        self.flash.as_ref().is_some_and(|f| f.field == field)
    }
}

fn describe_limit(limit: &WireLimit) -> String {
    let mut text = format!("{} per {}", count(limit.max), window(limit.window_seconds));
    if let Some(burst) = limit.burst {
        text.push_str(&format!(", burst {}", count(burst)));
    }
    if limit.scope == LimitScope::Tenant {
        text.push_str(", shared by the tenant's keys");
    }
    if limit.per_envoy {
        text.push_str(", on each Envoy");
    }
    format!("{}: {text}", limit.name)
}

fn describe_cost(cost: &WireRouteCost) -> String {
    let methods = cost
        .methods
        .as_ref()
        .filter(|m| !m.is_empty())
        .map_or_else(|| "any method".to_owned(), |m| m.join(", "));
    let prefix = cost.path_prefix.as_deref().unwrap_or("/");
    format!("{methods} {prefix}…: {}", count(cost.cost))
}

/// The price a plan's metadata states, if it states one (`price` or `price_usd`).
pub fn price(metadata: &Value) -> Option<String> {
    ["price", "price_usd", "price_per_month"]
        .iter()
        .find_map(|field| match metadata.get(field)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
}

fn draft_of(view: &PlanView) -> PlanDraft {
    let mut limits: Vec<LimitRow> = view
        .limits
        .iter()
        .map(|l| LimitRow {
            name: l.name.clone(),
            max: l.max.to_string(),
            window: l.window_seconds.to_string(),
            burst: l.burst.map(|b| b.to_string()).unwrap_or_default(),
            tenant_scope: l.scope == LimitScope::Tenant,
            per_envoy: l.per_envoy,
        })
        .collect();
    limits.extend(std::iter::repeat_n(LimitRow::default(), BLANK_ROWS));
    let mut route_costs: Vec<CostRow> = view
        .route_costs
        .iter()
        .map(|c| CostRow {
            methods: c.methods.as_ref().map(|m| m.join(", ")).unwrap_or_default(),
            prefix: c.path_prefix.clone().unwrap_or_default(),
            cost: c.cost.to_string(),
        })
        .collect();
    route_costs.extend(std::iter::repeat_n(CostRow::default(), BLANK_ROWS));
    PlanDraft {
        name: view.name.clone(),
        limits,
        monthly_quota: view
            .monthly_quota
            .map(|q| q.to_string())
            .unwrap_or_default(),
        route_costs,
        max_api_keys: view.max_api_keys.map(|q| q.to_string()).unwrap_or_default(),
        max_users: view.max_users.map(|q| q.to_string()).unwrap_or_default(),
        metadata: serde_json::to_string_pretty(&view.metadata).unwrap_or_else(|_| "{}".into()),
        public: view.public,
    }
}

fn blank_draft() -> PlanDraft {
    PlanDraft {
        limits: vec![
            LimitRow {
                name: "per_minute".into(),
                window: "60".into(),
                ..LimitRow::default()
            },
            LimitRow::default(),
        ],
        route_costs: vec![CostRow::default(); BLANK_ROWS],
        metadata: "{}".into(),
        ..PlanDraft::default()
    }
}

/// The form as typed.
fn draft_from(form: &FormData) -> PlanDraft {
    let names = form.all("limit_name");
    let maxes = form.all("limit_max");
    let windows = form.all("limit_window");
    let bursts = form.all("limit_burst");
    let scopes = form.all("limit_scope");
    let reaches = form.all("limit_reach");
    let limits = (0..names.len())
        .map(|i| LimitRow {
            name: names.get(i).copied().unwrap_or("").to_owned(),
            max: maxes.get(i).copied().unwrap_or("").to_owned(),
            window: windows.get(i).copied().unwrap_or("").to_owned(),
            burst: bursts.get(i).copied().unwrap_or("").to_owned(),
            tenant_scope: scopes.get(i).copied() == Some("tenant"),
            per_envoy: reaches.get(i).copied() == Some("envoy"),
        })
        .collect();
    let methods = form.all("cost_methods");
    let prefixes = form.all("cost_prefix");
    let costs = form.all("cost_value");
    let route_costs = (0..prefixes.len().max(costs.len()))
        .map(|i| CostRow {
            methods: methods.get(i).copied().unwrap_or("").to_owned(),
            prefix: prefixes.get(i).copied().unwrap_or("").to_owned(),
            cost: costs.get(i).copied().unwrap_or("").to_owned(),
        })
        .collect();
    PlanDraft {
        name: form.text("name").to_owned(),
        limits,
        monthly_quota: form.text("monthly_quota").to_owned(),
        route_costs,
        max_api_keys: form.text("max_api_keys").to_owned(),
        max_users: form.text("max_users").to_owned(),
        metadata: form.text("metadata").to_owned(),
        public: form.checked("public"),
    }
}

fn optional_number(text: &str, label: &str, field: &'static str) -> Result<Option<u64>, Flash> {
    if text.is_empty() {
        return Ok(None);
    }
    parse_number(text, "invalid_plan", label)
        .map(Some)
        .map_err(|e| Flash::field(field, e))
}

/// The typed plan, or the first field that is wrong.
struct Parsed {
    name: String,
    limits: Vec<WireLimit>,
    monthly_quota: Option<u64>,
    route_costs: Vec<WireRouteCost>,
    max_api_keys: Option<u64>,
    max_users: Option<u64>,
    metadata: Value,
    public: bool,
}

fn parse(draft: &PlanDraft) -> Result<Parsed, Flash> {
    let mut limits = Vec::new();
    for row in draft.limits.iter().filter(|r| !r.name.is_empty()) {
        let label = format!("Limit {:?}", row.name);
        let max = parse_number(&row.max, "invalid_plan", &format!("{label}: requests"))
            .map_err(|e| Flash::field("limits", e))?;
        let window_seconds = parse_number(&row.window, "invalid_plan", &format!("{label}: window"))
            .map_err(|e| Flash::field("limits", e))?;
        let burst = optional_number(&row.burst, &format!("{label}: burst"), "limits")?;
        limits.push(WireLimit {
            name: row.name.clone(),
            max,
            window_seconds,
            burst,
            scope: if row.tenant_scope {
                LimitScope::Tenant
            } else {
                LimitScope::Key
            },
            per_envoy: row.per_envoy,
        });
    }
    let mut route_costs = Vec::new();
    for row in draft
        .route_costs
        .iter()
        .filter(|r| !r.prefix.is_empty() || !r.cost.is_empty() || !r.methods.is_empty())
    {
        let cost = parse_number(&row.cost, "invalid_plan", "A route's cost")
            .map_err(|e| Flash::field("route_costs", e))?;
        let methods: Vec<String> = row
            .methods
            .split([',', ' '])
            .filter(|m| !m.is_empty())
            .map(str::to_ascii_uppercase)
            .collect();
        route_costs.push(WireRouteCost {
            methods: (!methods.is_empty()).then_some(methods),
            path_prefix: (!row.prefix.is_empty()).then(|| row.prefix.clone()),
            cost,
        });
    }
    let metadata = if draft.metadata.is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_str(&draft.metadata).map_err(|e| {
            Flash::field(
                "metadata",
                ApiError::invalid("invalid_plan", format!("metadata is not JSON: {e}.")),
            )
        })?
    };
    Ok(Parsed {
        name: draft.name.clone(),
        limits,
        monthly_quota: optional_number(&draft.monthly_quota, "The monthly quota", "monthly_quota")?,
        route_costs,
        max_api_keys: optional_number(&draft.max_api_keys, "Most keys", "max_api_keys")?,
        max_users: optional_number(&draft.max_users, "Most users", "max_users")?,
        metadata,
        public: draft.public,
    })
}

/// Which field an API refusal of a plan is about.
fn field_of(e: &ApiError) -> &'static str {
    match e.code {
        "invalid_name" | "plan_name_taken" => "name",
        "invalid_plan" if e.detail.contains("metadata") => "metadata",
        "invalid_plan" if e.detail.contains("monthly_quota") => "monthly_quota",
        "invalid_plan" if e.detail.contains("route") => "route_costs",
        "invalid_plan" => "limits",
        _ => "",
    }
}

async fn list_page(state: &AppState, signed: &Signed, flash: Option<Flash>) -> PageResult {
    signed.principal.require_admin()?;
    let rows = plans::list(&state.db, None, i64::from(u16::MAX)).await?;
    let subscribers = plans::subscribers(&state.db).await?;
    let mut lines = Vec::new();
    for row in rows {
        let view = row.view()?;
        let (tenants, keys) = subscribers
            .iter()
            .find(|(id, _, _)| *id == view.id)
            .map_or((0, 0), |(_, t, k)| (*t, *k));
        lines.push(PlanLine {
            limits: view.limits.iter().map(describe_limit).collect(),
            quota: allowance(view.monthly_quota),
            route_costs: view.route_costs.iter().map(describe_cost).collect(),
            max_api_keys: allowance(view.max_api_keys),
            public: view.public,
            price: price(&view.metadata),
            tenants: count(u64::try_from(tenants).unwrap_or(0)),
            keys: count(u64::try_from(keys).unwrap_or(0)),
            id: view.id,
            name: view.name,
        });
    }
    let status = flash.as_ref().map_or(StatusCode::OK, |f| f.status);
    Ok(render(
        status,
        &PlansPage {
            chrome: Chrome::new(&signed.principal, "Plans", "plans"),
            plans: lines,
            flash,
            reach: reach(state, &signed.principal).await?,
        },
    ))
}

/// `GET /dashboard/plans`.
pub async fn list(State(state): State<AppState>, signed: Signed) -> PageResult {
    list_page(&state, &signed, None).await
}

/// `GET /dashboard/plans/new`.
pub async fn new_form(signed: Signed) -> PageResult {
    signed.principal.require_admin()?;
    Ok(ok(&PlanForm {
        chrome: Chrome::new(&signed.principal, "New plan", "plans"),
        plan_id: None,
        draft: blank_draft(),
        flash: None,
    }))
}

/// `GET /dashboard/plans/{id}`: the plan in its form.
pub async fn edit_form(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
) -> PageResult {
    signed.principal.require_admin()?;
    let view = plans::find(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("plan", &id))?
        .view()?;
    Ok(ok(&PlanForm {
        chrome: Chrome::new(&signed.principal, format!("Plan {}", view.name), "plans"),
        plan_id: Some(id),
        draft: draft_of(&view),
        flash: None,
    }))
}

/// The form again, as sent, with what is wrong with it; nothing was written.
fn refused(
    signed: &Signed,
    plan_id: Option<String>,
    mut draft: PlanDraft,
    flash: Flash,
) -> PageResult {
    draft
        .limits
        .extend(std::iter::repeat_n(LimitRow::default(), 1));
    Ok(render(
        flash.status,
        &PlanForm {
            chrome: Chrome::new(&signed.principal, "Plan", "plans"),
            plan_id,
            draft,
            flash: Some(flash),
        },
    ))
}

/// `POST /dashboard/plans`.
pub async fn create(State(state): State<AppState>, signed: Signed, form: FormData) -> PageResult {
    signed.principal.require_admin()?;
    let draft = draft_from(&form);
    let parsed = match parse(&draft) {
        Ok(parsed) => parsed,
        Err(flash) => return refused(&signed, None, draft, flash),
    };
    let input = CreatePlan {
        name: parsed.name,
        limits: parsed.limits,
        monthly_quota: parsed.monthly_quota,
        route_costs: parsed.route_costs,
        max_api_keys: parsed.max_api_keys,
        max_users: parsed.max_users,
        metadata: Some(parsed.metadata),
        public: parsed.public,
    };
    match api::create(&state, &signed.principal, input).await {
        Ok(_) => Ok(Redirect::to("/dashboard/plans").into_response()),
        Err(e) if Flash::belongs_on_form(&e) => {
            let field = field_of(&e);
            refused(&signed, None, draft, Flash::field(field, e))
        }
        Err(e) => Err(PageError(e)),
    }
}

/// `POST /dashboard/plans/{id}`: every field replaced by the form's.
pub async fn update(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    form: FormData,
) -> PageResult {
    signed.principal.require_admin()?;
    let draft = draft_from(&form);
    let parsed = match parse(&draft) {
        Ok(parsed) => parsed,
        Err(flash) => return refused(&signed, Some(id), draft, flash),
    };
    let input = UpdatePlan {
        name: Some(parsed.name),
        limits: Some(parsed.limits),
        monthly_quota: Some(parsed.monthly_quota),
        route_costs: Some(parsed.route_costs),
        max_api_keys: Some(parsed.max_api_keys),
        max_users: Some(parsed.max_users),
        metadata: Some(Some(parsed.metadata)),
        public: Some(parsed.public),
    };
    match api::update(&state, &signed.principal, &id, input).await {
        Ok(_) => Ok(Redirect::to("/dashboard/plans").into_response()),
        Err(e) if Flash::belongs_on_form(&e) => {
            let field = field_of(&e);
            refused(&signed, Some(id), draft, Flash::field(field, e))
        }
        Err(e) => Err(PageError(e)),
    }
}

/// `POST /dashboard/plans/{id}/delete`; a plan in use stays, and the list says why.
pub async fn delete(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
) -> PageResult {
    match api::delete(&state, &signed.principal, &id).await {
        Ok(()) => Ok(Redirect::to("/dashboard/plans").into_response()),
        Err(e) if e.status == StatusCode::CONFLICT => {
            list_page(&state, &signed, Some(Flash::field("", e))).await
        }
        Err(e) => Err(PageError(e)),
    }
}
