//! The audit log in the dashboard: every change newest first, narrowed by a
//! GET form with the API's own filters and paged with its cursor, each entry
//! with the resource before and after. It reads through the API's function,
//! so a tenant sees only its own tenant's trail, exactly as with its token.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use crate::dashboard::form::utc_of_field;
use crate::dashboard::page::{href, pretty, render, when, Chrome, Flash, PageResult};
use crate::dashboard::session::Signed;

use crate::error::ApiError;
use crate::routes::audit::{self as api, ListAudit};
use crate::state::AppState;

/// What `resource_type` can be: the first word of every action.
pub const RESOURCE_TYPES: [&str; 7] = [
    "plan",
    "tenant",
    "key",
    "token",
    "webhook",
    "anonymous_access",
    "session",
];

/// The filter form as sent: text, so a bad time comes back as typed.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub actor: String,
    #[serde(default)]
    pub resource_type: String,
    #[serde(default)]
    pub resource_id: String,
    #[serde(default)]
    pub tenant_id: String,
    #[serde(default)]
    pub since: String,
    #[serde(default)]
    pub until: String,
    #[serde(default)]
    pub after: String,
    #[serde(default)]
    pub limit: String,
}

impl AuditQuery {
    /// The filters (not the cursor) as link parameters.
    fn filters(&self) -> [(&'static str, &str); 8] {
        [
            ("action", self.action.trim()),
            ("actor", self.actor.trim()),
            ("resource_type", self.resource_type.trim()),
            ("resource_id", self.resource_id.trim()),
            ("tenant_id", self.tenant_id.trim()),
            ("since", self.since.trim()),
            ("until", self.until.trim()),
            ("limit", self.limit.trim()),
        ]
    }

    fn to_api(&self) -> Result<ListAudit, ApiError> {
        let text = |v: &str| Some(v.trim().to_owned()).filter(|v| !v.is_empty());
        let limit = match text(&self.limit) {
            None => None,
            Some(l) => Some(l.parse::<u32>().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    "limit must be a whole number.",
                )
            })?),
        };
        Ok(ListAudit {
            limit,
            after: text(&self.after),
            action: text(&self.action),
            actor: text(&self.actor),
            resource_type: text(&self.resource_type),
            resource_id: text(&self.resource_id),
            tenant_id: text(&self.tenant_id),
            since: utc_of_field(self.since.trim()),
            until: utc_of_field(self.until.trim()),
        })
    }
}

pub struct AuditLine {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub tenant_id: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    query: AuditQuery,
    entries: Vec<AuditLine>,
    filtered: bool,
    older: Option<String>,
    newest: Option<String>,
    flash: Option<Flash>,
}

impl AuditPage {
    fn invalid(&self, field: &str) -> bool {
        self.flash.as_ref().is_some_and(|f| f.field == field)
    }

    fn type_is(&self, kind: &str) -> bool {
        self.query.resource_type.trim() == kind
    }
}

fn field_of(e: &ApiError) -> &'static str {
    ["since", "until", "limit"]
        .into_iter()
        .find(|field| e.detail.starts_with(field))
        .unwrap_or("")
}

/// `GET /dashboard/audit`.
pub async fn list(
    State(state): State<AppState>,
    signed: Signed,
    Query(query): Query<AuditQuery>,
) -> PageResult {
    let principal = &signed.principal;
    let listed = match query.to_api() {
        Ok(input) => api::list(&state, principal, input).await,
        Err(e) => Err(e),
    };
    // A tenant asking for another tenant is the API's 404, not a form error.
    let (page, flash) = match listed {
        Ok(page) => (Some(page), None),
        Err(e) => (None, Some(Flash::refusal(e, field_of)?)),
    };
    let (items, next_cursor) = page.map_or((Vec::new(), None), |p| (p.items, p.next_cursor));
    let path = "/dashboard/audit";
    let filters = query.filters();
    let older = next_cursor.map(|cursor| {
        let mut pairs = filters.to_vec();
        pairs.push(("after", &cursor));
        href(path, &pairs)
    });
    let newest = (!query.after.trim().is_empty()).then(|| href(path, &filters));
    let entries = items
        .into_iter()
        .map(|e| AuditLine {
            at: when(&e.created_at),
            before: e.before.as_ref().map(pretty),
            after: e.after.as_ref().map(pretty),
            actor: e.actor,
            action: e.action,
            resource_type: e.resource_type,
            resource_id: e.resource_id,
            tenant_id: e.tenant_id,
        })
        .collect();
    let status = flash.as_ref().map_or(StatusCode::OK, |f| f.status);
    let page = AuditPage {
        chrome: Chrome::new(principal, "Audit log", "audit"),
        filtered: filters
            .iter()
            .any(|(name, v)| *name != "limit" && !v.is_empty()),
        query,
        entries,
        older,
        newest,
        flash,
    };
    Ok(render(status, &page))
}
