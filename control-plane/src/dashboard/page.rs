//! What every page shares: the frame around it (who is signed in, the
//! navigation), rendering a template, and errors as pages. An error keeps
//! the API's status and stable `code`, so a person sees the same reason a
//! program would, never a bare 500.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::auth::Principal;
use crate::error::ApiError;

/// The frame of a signed-in page.
#[derive(Debug, Clone)]
pub struct Chrome {
    pub title: String,
    /// Who is signed in, as the header shows it.
    pub who: String,
    pub admin: bool,
    /// The signed-in tenant's own id.
    pub tenant_id: Option<String>,
    /// Which navigation entry is this page's, for `aria-current`.
    pub section: &'static str,
}

impl Chrome {
    pub fn new(principal: &Principal, title: impl Into<String>, section: &'static str) -> Self {
        Self {
            title: title.into(),
            who: match principal.own_tenant() {
                None => "Admin".to_owned(),
                Some(id) => format!("Tenant {id}"),
            },
            admin: principal.is_admin(),
            tenant_id: principal.own_tenant().map(str::to_owned),
            section,
        }
    }

    /// `aria-current="page"` on the entry of this page's section.
    pub fn current(&self, section: &str) -> &'static str {
        if self.section == section {
            "page"
        } else {
            "false"
        }
    }
}

/// A secret in the one response that carries it (a tenant token, a webhook's
/// signing secret), shown in a dialog with a copy button: `shown_once.html`.
pub struct ShownOnce {
    /// What it is, in the dialog's words: `token`, `signing secret`.
    pub what: &'static str,
    pub heading: String,
    /// What Tollgate keeps of it, so the warning is true for each kind.
    pub kept: &'static str,
    /// Where to go on to once it is copied (a new key's page), if anywhere.
    pub link: Option<String>,
    pub value: String,
}

/// `path` with `pairs` as its query, blank values left out: a link that keeps
/// a page's filters (and a paging cursor) exactly as they were sent.
pub fn href(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://dashboard.invalid/").expect("a fixed, valid URL");
    url.set_path(path);
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
            query.append_pair(name, value);
        }
    }
    match url.query().filter(|q| !q.is_empty()) {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    }
}

/// JSON indented for a `<pre>`, as people read a snapshot.
pub fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// Renders `page` with `status`.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => PageError::from(ApiError::internal(e)).into_response(),
    }
}

/// Renders `page` with 200.
pub fn ok(page: &impl Template) -> Response {
    render(StatusCode::OK, page)
}

/// A page that could not be shown: the API's status, code and detail.
#[derive(Debug)]
pub struct PageError(pub ApiError);

impl PageError {
    /// A dashboard address that leads nowhere: a page, not the API's JSON.
    pub fn no_such_page() -> Self {
        Self(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "There is no such page in the dashboard.",
        ))
    }

    pub fn cross_site() -> Self {
        Self(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site_request",
            "This form was sent from another site; nothing was changed.",
        ))
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> Self {
        Self(e.into())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    code: &'a str,
    detail: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let page = ErrorPage {
            status: self.0.status.as_u16(),
            reason: self.0.status.canonical_reason().unwrap_or("Error"),
            code: self.0.code,
            detail: &self.0.detail,
        };
        match page.render() {
            Ok(html) => (self.0.status, Html(html)).into_response(),
            // The page is ours and has no failing part; should it fail, the
            // API's problem body still says what happened.
            Err(_) => self.0.into_response(),
        }
    }
}

pub type PageResult = Result<Response, PageError>;

/// Why a form was refused, shown above it: the API's status, `code` and
/// detail, and the field it is about (`""`: the form as a whole).
#[derive(Debug)]
pub struct Flash {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub field: &'static str,
}

impl Flash {
    /// Whether an API refusal belongs on the form that caused it: a mistake
    /// in what was typed (4xx), not "you may not" (403) or "no such thing"
    /// (404), which are error pages of their own.
    pub fn belongs_on_form(e: &ApiError) -> bool {
        let status = on_form(e);
        status.is_client_error()
            && status != StatusCode::FORBIDDEN
            && status != StatusCode::NOT_FOUND
    }

    pub fn field(field: &'static str, mut e: ApiError) -> Self {
        e.status = on_form(&e);
        Self {
            status: e.status,
            code: e.code,
            detail: e.detail,
            field,
        }
    }

    /// A refusal the form shows beside its fields (bad input, a conflict),
    /// with `field_of` naming the field; anything else (forbidden, not found,
    /// a failure) is the error page, so a forged form learns nothing more.
    pub fn refusal(
        e: ApiError,
        field_of: impl Fn(&ApiError) -> &'static str,
    ) -> Result<Self, PageError> {
        let status = on_form(&e);
        let shown = status.is_client_error()
            && !matches!(
                status,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
            );
        if shown {
            Ok(Self::field(field_of(&e), e))
        } else {
            Err(PageError(e))
        }
    }
}

/// The status a refusal has on a form: the API's, but for a plan the form
/// chose that does not exist (deleted meanwhile), which the API answers 404
/// `plan_not_found` and a form shows beside its field as a mistake (422).
fn on_form(e: &ApiError) -> StatusCode {
    if e.code == "plan_not_found" {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        e.status
    }
}

/// `1234567` as `1 234 567`: the thin grouping people read at a glance.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

/// An optional allowance: the count, or "unlimited".
pub fn allowance(n: Option<u64>) -> String {
    n.map_or_else(|| "unlimited".to_owned(), count)
}

/// RFC 3339 as people read it in a table: `2026-12-05 17:22 UTC`.
pub fn when(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(day), Some(time)) => format!("{day} {time} UTC"),
        _ => rfc3339.to_owned(),
    }
}

/// A window in seconds as people say it.
pub fn window(seconds: u64) -> String {
    match seconds {
        1 => "second".to_owned(),
        60 => "minute".to_owned(),
        3600 => "hour".to_owned(),
        86_400 => "day".to_owned(),
        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s % 3600 == 0 => format!("{} hours", s / 3600),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1\u{202f}000");
        assert_eq!(count(7_412_000), "7\u{202f}412\u{202f}000");
    }

    #[test]
    fn links_keep_the_filters_and_drop_blanks() {
        assert_eq!(
            href("/dashboard/audit", &[("actor", ""), ("after", "")]),
            "/dashboard/audit"
        );
        assert_eq!(
            href(
                "/dashboard/audit",
                &[("actor", "admin via x"), ("action", ""), ("after", "aud_1")]
            ),
            "/dashboard/audit?actor=admin+via+x&after=aud_1"
        );
        assert_eq!(href("/a", &[("q", "a&b=c")]), "/a?q=a%26b%3Dc");
    }

    #[test]
    fn windows_read_as_words() {
        assert_eq!(window(1), "second");
        assert_eq!(window(60), "minute");
        assert_eq!(window(120), "2 minutes");
        assert_eq!(window(90), "90 seconds");
        assert_eq!(window(172_800), "2 days");
    }
}
