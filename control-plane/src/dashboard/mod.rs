//! The dashboard: plans, tenants, keys and usage in the browser, for the
//! admin and for each tenant, served by the control plane itself under
//! `/dashboard` (and the public tier comparison at `/pricing`).
//!
//! Pages are rendered on the server from templates (`templates/`) with plain
//! forms, so every one works without JavaScript; `assets/app.js` only adds
//! copy buttons and confirmations. Every write goes through the same
//! functions as the JSON API (`routes::*::create`, `update`, …): the same
//! rules, the same validation, the same audit log, whose actor names the
//! dashboard session. Sessions are in `session`; what every response carries
//! and every form must prove is in `guard`.

pub mod anonymous;
pub mod assets;
pub mod audit;
pub mod chart;
pub mod form;
pub mod guard;
pub mod key_list;
pub mod keys;
pub mod overview;
pub mod page;
pub mod plans;
pub mod pricing;
pub mod proxies;
pub mod session;
pub mod tenants;
pub mod tokens;
pub mod webhooks;

use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{any, get, post};
use axum::Router;

use crate::middleware;
use crate::state::AppState;

pub fn router(state: AppState) -> Router<AppState> {
    let login = Router::new()
        .route(
            session::LOGIN_PATH,
            get(session::login_page).post(session::login),
        )
        // Sign-in attempts count against the admin API's limits, per client.
        .route_layer(from_fn_with_state(state, middleware::limit_admin));
    Router::new()
        .route("/dashboard", get(overview::show))
        .route("/dashboard/logout", post(session::logout))
        .route("/dashboard/plans", get(plans::list).post(plans::create))
        .route("/dashboard/plans/new", get(plans::new_form))
        .route(
            "/dashboard/plans/{id}",
            get(plans::edit_form).post(plans::update),
        )
        .route("/dashboard/plans/{id}/delete", post(plans::delete))
        .route(
            "/dashboard/tenants",
            get(tenants::list).post(tenants::create),
        )
        .route(
            "/dashboard/tenants/{id}",
            get(tenants::show).post(tenants::update),
        )
        .route("/dashboard/tenants/{id}/delete", post(tenants::delete))
        .route("/dashboard/tenants/{id}/keys", post(keys::create))
        .route(
            "/dashboard/tenants/{id}/tokens",
            get(tokens::show).post(tokens::create),
        )
        .route(
            "/dashboard/tenants/{id}/tokens/{token_id}/revoke",
            post(tokens::revoke),
        )
        .route(
            "/dashboard/tenants/{id}/webhook",
            get(webhooks::show).post(webhooks::set),
        )
        .route(
            "/dashboard/tenants/{id}/webhook/delete",
            post(webhooks::delete),
        )
        .route(
            "/dashboard/anonymous",
            get(anonymous::show).post(anonymous::replace),
        )
        .route("/dashboard/audit", get(audit::list))
        .route("/dashboard/proxies", get(proxies::list))
        .route("/dashboard/keys/{id}", get(keys::show))
        .route("/dashboard/keys/{id}/active", post(keys::set_active))
        .route("/dashboard/keys/{id}/rotate", post(keys::rotate))
        .route("/dashboard/keys/{id}/delete", post(keys::delete))
        .route("/dashboard/pricing", get(pricing::signed_in))
        .route("/pricing", get(pricing::public))
        .route("/dashboard/assets/{file}", get(assets::serve))
        // Any other address under /dashboard: an error page a person can
        // read, not the API's problem+json.
        .route("/dashboard/{*rest}", any(no_such_page))
        .merge(login)
        .layer(from_fn(guard::refuse_cross_site))
        .layer(from_fn(guard::secure_headers))
}

async fn no_such_page() -> page::PageError {
    page::PageError::no_such_page()
}
