//! A tenant's webhook in the dashboard: where its quota alerts go, and the
//! log of every alert with every attempt to deliver it. The admin sets,
//! changes and removes the URL (the API's rule: a tenant must not point the
//! control plane at internal services); the signing secret is shown once,
//! in the answer to the form that issued it. A tenant reads its own.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;

use crate::auth::Principal;
use crate::dashboard::form::FormData;
use crate::dashboard::page::{
    count, href, pretty, render, when, Chrome, Flash, PageError, PageResult, ShownOnce,
};
use crate::dashboard::session::Signed;

use crate::error::ApiError;
use crate::routes::tenants::TenantView;
use crate::routes::webhooks::{self as api, DeliveriesQuery, SetWebhook, WebhookView};
use crate::state::AppState;
use crate::store::tenants;

/// The delivery log narrowed to one state, as the API's `status` takes it.
pub const STATUS_FILTERS: [(&str, &str); 4] = [
    ("", "All"),
    ("pending", "Being retried"),
    ("delivered", "Delivered"),
    ("failed", "Failed"),
];

pub struct AttemptLine {
    pub at: String,
    /// The HTTP status the receiver answered, or why there was none.
    pub answer: String,
    pub error: String,
    pub duration: String,
}

pub struct DeliveryLine {
    pub id: String,
    pub key_id: String,
    pub threshold: i64,
    pub status: String,
    pub attempts: String,
    pub created: String,
    pub delivered: Option<String>,
    pub payload: String,
    pub attempt_log: Vec<AttemptLine>,
}

#[derive(Debug, Default, Deserialize)]
pub struct WebhookQuery {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub after: Option<String>,
}

#[derive(Template)]
#[template(path = "webhook.html")]
struct WebhookPage {
    chrome: Chrome,
    tenant: TenantView,
    webhook: Option<WebhookView>,
    /// The URL field: as typed when refused, else the current URL.
    url: String,
    status: String,
    deliveries: Vec<DeliveryLine>,
    /// The next page of the log, and the first, when on a later one.
    older: Option<String>,
    newest: Option<String>,
    flash: Option<Flash>,
    shown: Option<ShownOnce>,
}

impl WebhookPage {
    fn invalid(&self, field: &str) -> bool {
        self.flash.as_ref().is_some_and(|f| f.field == field)
    }

    fn status_is(&self, status: &str) -> bool {
        self.status == status
    }

    fn status_link(&self, status: &str) -> String {
        href(&self.path(), &[("status", status)])
    }

    fn path(&self) -> String {
        format!("/dashboard/tenants/{}/webhook", self.tenant.id)
    }
}

fn field_of(e: &ApiError) -> &'static str {
    match e.code {
        "invalid_webhook_url" | "webhook_target_forbidden" | "invalid_body" => "url",
        _ => "",
    }
}

async fn webhook_page(
    state: &AppState,
    principal: &Principal,
    tenant_id: &str,
    query: WebhookQuery,
    typed_url: Option<String>,
    mut flash: Option<Flash>,
    shown: Option<ShownOnce>,
) -> PageResult {
    let webhook = api::find(state, principal, tenant_id).await?;
    let tenant = tenants::find(&state.db, tenant_id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", tenant_id))?;
    let status = query.status.clone().unwrap_or_default();
    let after = query.after.clone().filter(|a| !a.is_empty());
    let listed = api::deliveries(
        state,
        principal,
        tenant_id,
        DeliveriesQuery {
            limit: None,
            after: after.clone(),
            status: query.status.filter(|s| !s.is_empty()),
        },
    )
    .await;
    let (items, next_cursor) = match listed {
        Ok(page) => (page.items, page.next_cursor),
        // A bad filter or cursor in the address: say so above an empty log.
        Err(e) if flash.is_none() => {
            flash = Some(Flash::refusal(e, |_| "")?);
            (Vec::new(), None)
        }
        Err(e) => return Err(PageError(e)),
    };
    let path = format!("/dashboard/tenants/{tenant_id}/webhook");
    let deliveries = items
        .into_iter()
        .map(|d| DeliveryLine {
            attempts: count(u64::try_from(d.attempts).unwrap_or(0)),
            created: when(&d.created_at),
            delivered: d.delivered_at.as_deref().map(when),
            payload: pretty(&d.payload),
            attempt_log: d
                .attempt_log
                .into_iter()
                .map(|a| AttemptLine {
                    at: when(&a.attempted_at),
                    answer: a
                        .status_code
                        .map_or_else(|| "no answer".to_owned(), |c| c.to_string()),
                    error: a.error.unwrap_or_default(),
                    duration: format!("{} ms", count(u64::try_from(a.duration_ms).unwrap_or(0))),
                })
                .collect(),
            id: d.id,
            key_id: d.key_id,
            threshold: d.threshold,
            status: d.status,
        })
        .collect();
    let http_status = match (&flash, &shown) {
        (Some(flash), _) => flash.status,
        _ => StatusCode::OK,
    };
    let section = if principal.is_admin() {
        "tenants"
    } else {
        "webhook"
    };
    let page = WebhookPage {
        chrome: Chrome::new(principal, format!("Webhook of {}", tenant.name), section),
        url: typed_url
            .unwrap_or_else(|| webhook.as_ref().map(|w| w.url.clone()).unwrap_or_default()),
        webhook,
        tenant,
        older: next_cursor.map(|c| href(&path, &[("status", &status), ("after", &c)])),
        newest: after.map(|_| href(&path, &[("status", &status)])),
        status,
        deliveries,
        flash,
        shown,
    };
    Ok(render(http_status, &page))
}

/// `GET /dashboard/tenants/{id}/webhook`.
pub async fn show(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    Query(query): Query<WebhookQuery>,
) -> PageResult {
    webhook_page(&state, &signed.principal, &id, query, None, None, None).await
}

/// `POST /dashboard/tenants/{id}/webhook`: sets or changes the URL; the
/// signing secret, when one is issued, is shown in this answer only.
pub async fn set(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    form: FormData,
) -> PageResult {
    let url = form.text("url").to_owned();
    let input = SetWebhook {
        url: url.clone(),
        rotate_secret: form.checked("rotate_secret"),
    };
    let principal = &signed.principal;
    match api::set(&state, principal, id.clone(), input).await {
        Ok(WebhookView {
            secret: Some(secret),
            ..
        }) => {
            let shown = ShownOnce {
                link: None,
                what: "signing secret",
                heading: "The webhook's signing secret".to_owned(),
                kept: "Every alert is signed with it (Tollgate-Signature); check that signature with it.",
                value: secret,
            };
            let query = WebhookQuery::default();
            webhook_page(&state, principal, &id, query, None, None, Some(shown)).await
        }
        Ok(_) => Ok(Redirect::to(&format!("/dashboard/tenants/{id}/webhook")).into_response()),
        Err(e) => {
            let flash = Flash::refusal(e, field_of)?;
            let query = WebhookQuery::default();
            webhook_page(&state, principal, &id, query, Some(url), Some(flash), None).await
        }
    }
}

/// `POST /dashboard/tenants/{id}/webhook/delete`.
pub async fn delete(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
) -> PageResult {
    api::delete(&state, &signed.principal, &id).await?;
    Ok(Redirect::to(&format!("/dashboard/tenants/{id}/webhook")).into_response())
}
