//! Anonymous access in the dashboard (admin only, as in the API): the routes
//! every Envoy admits without a key and the plan whose limits apply to them
//! per client address, shown and replaced as a whole through one form.

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect};

use crate::auth::Principal;
use crate::dashboard::form::{scope_line, scopes_of, FormData};
use crate::dashboard::page::{render, when, Chrome, Flash, PageResult};
use crate::dashboard::session::Signed;
use crate::dashboard::tenants::{plan_choices, PlanChoice};

use crate::error::ApiError;
use crate::routes::anonymous::{self as api, PutAnonymousAccess};
use crate::state::AppState;
use crate::store::{anonymous, plans};

/// One admitted route as a row: its methods and the paths under it.
pub struct RouteLine {
    pub methods: String,
    pub prefix: String,
}

#[derive(Template)]
#[template(path = "anonymous.html")]
struct AnonymousPage {
    chrome: Chrome,
    routes: Vec<RouteLine>,
    plan_name: Option<String>,
    updated: Option<String>,
    /// The form: as typed when refused, else the setting as it is.
    routes_text: String,
    plans: Vec<PlanChoice>,
    flash: Option<Flash>,
}

impl AnonymousPage {
    fn invalid(&self, field: &str) -> bool {
        self.flash.as_ref().is_some_and(|f| f.field == field)
    }
}

fn field_of(e: &ApiError) -> &'static str {
    match e.code {
        "plan_not_found" => "plan_id",
        "invalid_anonymous_access" if e.detail.contains("plan_id") => "plan_id",
        _ => "routes",
    }
}

async fn anonymous_page(
    state: &AppState,
    principal: &Principal,
    typed: Option<(&FormData, Flash)>,
) -> PageResult {
    principal.require_admin()?;
    let (view, _) = anonymous::fetch(&state.db).await?;
    let plan_name = match &view.plan_id {
        Some(id) => Some(
            plans::find(&state.db, id)
                .await?
                .map_or_else(|| id.clone(), |p| p.name),
        ),
        None => None,
    };
    let (routes_text, selected, flash) = match typed {
        Some((form, flash)) => (
            form.text("routes").to_owned(),
            form.text("plan_id").to_owned(),
            Some(flash),
        ),
        None => (
            view.routes
                .iter()
                .map(scope_line)
                .collect::<Vec<_>>()
                .join("\n"),
            view.plan_id.clone().unwrap_or_default(),
            None,
        ),
    };
    let status = flash
        .as_ref()
        .map_or(axum::http::StatusCode::OK, |f| f.status);
    let page = AnonymousPage {
        chrome: Chrome::new(principal, "Anonymous access", "anonymous"),
        routes: view
            .routes
            .iter()
            .map(|r| RouteLine {
                methods: r
                    .methods
                    .as_ref()
                    .filter(|m| !m.is_empty())
                    .map_or_else(|| "any".to_owned(), |m| m.join(", ")),
                prefix: r.path_prefix.clone().unwrap_or_else(|| "/".to_owned()),
            })
            .collect(),
        plan_name,
        updated: view.updated_at.as_deref().map(when),
        routes_text,
        plans: plan_choices(state, &selected).await?,
        flash,
    };
    Ok(render(status, &page))
}

/// `GET /dashboard/anonymous`.
pub async fn show(State(state): State<AppState>, signed: Signed) -> PageResult {
    anonymous_page(&state, &signed.principal, None).await
}

/// `POST /dashboard/anonymous`: the whole setting replaced by the form's.
pub async fn replace(State(state): State<AppState>, signed: Signed, form: FormData) -> PageResult {
    let input = PutAnonymousAccess {
        routes: scopes_of(form.text("routes")).unwrap_or_default(),
        plan_id: form.optional("plan_id").map(str::to_owned),
    };
    match api::replace(&state, &signed.principal, input).await {
        Ok(_) => Ok(Redirect::to("/dashboard/anonymous").into_response()),
        Err(e) => {
            let flash = Flash::refusal(e, field_of)?;
            anonymous_page(&state, &signed.principal, Some((&form, flash))).await
        }
    }
}
