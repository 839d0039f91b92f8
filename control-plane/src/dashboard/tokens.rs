//! A tenant's tokens in the dashboard, for the admin only as in the API: the
//! tokens it may sign in and call the API with, issuing one (shown once, in
//! the answer to that form) and revoking one, which also ends the dashboard
//! sessions signed in with it.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};

use crate::auth::Principal;
use crate::dashboard::form::FormData;
use crate::dashboard::page::{render, when, Chrome, Flash, PageResult, ShownOnce};
use crate::dashboard::session::Signed;

use crate::error::ApiError;
use crate::routes::tenants::TenantView;
use crate::routes::tokens::{self as api, CreateToken};
use crate::state::AppState;
use crate::store::tenants;

pub struct TokenLine {
    pub id: String,
    pub name: String,
    pub created: String,
    /// When it stopped working; `None` while it works.
    pub revoked: Option<String>,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    chrome: Chrome,
    tenant: TenantView,
    tokens: Vec<TokenLine>,
    /// The issue form's name as typed, when it was refused.
    name: String,
    flash: Option<Flash>,
    shown: Option<ShownOnce>,
}

impl TokensPage {
    fn invalid(&self, field: &str) -> bool {
        self.flash.as_ref().is_some_and(|f| f.field == field)
    }
}

async fn tokens_page(
    state: &AppState,
    principal: &Principal,
    tenant_id: &str,
    name: String,
    flash: Option<Flash>,
    shown: Option<ShownOnce>,
) -> PageResult {
    // The API's own reading: admin only, 404 for no such tenant.
    let list = api::list(state, principal, tenant_id).await?;
    let tenant = tenants::find(&state.db, tenant_id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", tenant_id))?;
    let status = match (&flash, &shown) {
        (Some(flash), _) => flash.status,
        (None, Some(_)) => StatusCode::CREATED,
        (None, None) => StatusCode::OK,
    };
    let page = TokensPage {
        chrome: Chrome::new(principal, format!("Tokens of {}", tenant.name), "tenants"),
        tokens: list
            .items
            .into_iter()
            .map(|t| TokenLine {
                created: when(&t.created_at),
                revoked: t.revoked_at.as_deref().map(when),
                id: t.id,
                name: t.name,
            })
            .collect(),
        tenant,
        name,
        flash,
        shown,
    };
    Ok(render(status, &page))
}

/// `GET /dashboard/tenants/{id}/tokens`.
pub async fn show(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
) -> PageResult {
    tokens_page(&state, &signed.principal, &id, String::new(), None, None).await
}

/// `POST /dashboard/tenants/{id}/tokens`: issues a token and shows it once.
pub async fn create(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    form: FormData,
) -> PageResult {
    let name = form.text("name").to_owned();
    let input = CreateToken { name: name.clone() };
    match api::create(&state, &signed.principal, id.clone(), input).await {
        Ok(issued) => {
            let shown = ShownOnce {
                link: None,
                what: "token",
                heading: format!("The new token “{}”", issued.view.name),
                kept: "Tollgate keeps only its hash.",
                value: issued.token,
            };
            tokens_page(
                &state,
                &signed.principal,
                &id,
                String::new(),
                None,
                Some(shown),
            )
            .await
        }
        Err(e) => {
            // The only field: every refusal (`invalid_name`, `invalid_body`) is about it.
            let flash = Flash::refusal(e, |_| "name")?;
            tokens_page(&state, &signed.principal, &id, name, Some(flash), None).await
        }
    }
}

/// `POST /dashboard/tenants/{id}/tokens/{token_id}/revoke`.
pub async fn revoke(
    State(state): State<AppState>,
    signed: Signed,
    Path((id, token_id)): Path<(String, String)>,
) -> PageResult {
    api::revoke(&state, &signed.principal, &id, &token_id).await?;
    Ok(Redirect::to(&format!("/dashboard/tenants/{id}/tokens")).into_response())
}
