//! A submitted form as ordered name–value pairs. Repeated names (a plan's
//! limit rows) keep their order, and every value arrives as text, so a bad
//! number becomes the field's own error on the page instead of a rejection
//! the browser shows bare.

use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequest, Request};
use axum::Form;
use tollgate_core::wire::WireScope;

use crate::dashboard::page::PageError;
use crate::error::ApiError;

pub struct FormData(Vec<(String, String)>);

impl<S: Send + Sync> FromRequest<S> for FormData {
    type Rejection = PageError;

    async fn from_request(request: Request, state: &S) -> Result<Self, PageError> {
        match Form::<Vec<(String, String)>>::from_request(request, state).await {
            Ok(Form(pairs)) => Ok(Self(pairs)),
            Err(FormRejection::InvalidFormContentType(_)) => Err(PageError(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Send the form as application/x-www-form-urlencoded.",
            ))),
            Err(e) => Err(PageError(ApiError::invalid(
                "invalid_form",
                format!("The form could not be read: {e}."),
            ))),
        }
    }
}

impl FormData {
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Self(pairs)
    }

    /// The first value of `name`, trimmed; `""` when absent.
    pub fn text(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.trim())
    }

    /// The first value of `name`, trimmed, or `None` when absent or blank.
    pub fn optional(&self, name: &str) -> Option<&str> {
        Some(self.text(name)).filter(|v| !v.is_empty())
    }

    /// Every value of `name`, in the order sent, trimmed.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
            .collect()
    }

    /// Whether a checkbox named `name` was ticked.
    pub fn checked(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// A whole number in `field`, blank meaning none; `code` names the
    /// error the API gives for the same mistake.
    pub fn number(
        &self,
        name: &str,
        code: &'static str,
        label: &str,
    ) -> Result<Option<u64>, ApiError> {
        self.optional(name)
            .map(|v| parse_number(v, code, label))
            .transpose()
    }
}

/// A whole number as typed, with spaces or thin spaces between thousands allowed.
pub fn parse_number(text: &str, code: &'static str, label: &str) -> Result<u64, ApiError> {
    let digits: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '\u{202f}' | '_' | ','))
        .collect();
    digits
        .parse::<u64>()
        .map_err(|_| ApiError::invalid(code, format!("{label} must be a whole number, 0 or more.")))
}

/// `YYYY-MM-DDTHH:MM` from a date-time field is taken as UTC; a full
/// RFC 3339 time is passed on as it is, for the API to judge.
pub fn utc_of_field(text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    let bare = text.len() == 16 && text.as_bytes().get(10) == Some(&b'T');
    let with_seconds = text.len() == 19 && text.as_bytes().get(10) == Some(&b'T');
    Some(if bare {
        format!("{text}:00Z")
    } else if with_seconds {
        format!("{text}Z")
    } else {
        text.to_owned()
    })
}

/// Scopes one per line: methods and/or a path prefix, e.g. `GET,HEAD /v1/reports`.
/// Key scopes and anonymous routes are both typed this way.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> FormData {
        FormData::from_pairs(
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn repeated_fields_keep_their_order() {
        let f = form(&[("limit_name", "a"), ("x", "1"), ("limit_name", " b ")]);
        assert_eq!(f.all("limit_name"), ["a", "b"]);
        assert_eq!(f.text("x"), "1");
        assert_eq!(f.text("missing"), "");
        assert_eq!(f.optional("missing"), None);
    }

    #[test]
    fn expiry_fields_are_read_as_utc() {
        assert_eq!(utc_of_field(""), None);
        assert_eq!(
            utc_of_field("2030-01-01T10:00").as_deref(),
            Some("2030-01-01T10:00:00Z")
        );
        assert_eq!(
            utc_of_field("2030-01-01T10:00:30").as_deref(),
            Some("2030-01-01T10:00:30Z")
        );
        assert_eq!(
            utc_of_field("2030-01-01T10:00:00+02:00").as_deref(),
            Some("2030-01-01T10:00:00+02:00")
        );
    }

    #[test]
    fn scopes_are_methods_and_a_prefix_per_line() {
        let scopes = scopes_of("get,head /v1/reports\n\n/admin\nPOST").unwrap_or_default();
        assert_eq!(scopes.len(), 3);
        assert_eq!(scopes[0].methods, Some(vec!["GET".into(), "HEAD".into()]));
        assert_eq!(scopes[0].path_prefix.as_deref(), Some("/v1/reports"));
        assert_eq!(scopes[1].methods, None);
        assert_eq!(scopes[2].path_prefix, None);
        assert_eq!(scopes_of(" \n"), None);
        let lines: Vec<String> = scopes.iter().map(scope_line).collect();
        assert_eq!(lines, ["GET,HEAD /v1/reports", "/admin", "POST"]);
    }

    #[test]
    fn numbers_accept_grouping_and_refuse_the_rest() {
        assert_eq!(parse_number("10 000", "c", "Quota").ok(), Some(10_000));
        assert_eq!(parse_number("1,000", "c", "Quota").ok(), Some(1000));
        let e = parse_number("-1", "invalid_plan", "Quota").err();
        assert_eq!(e.map(|e| e.code), Some("invalid_plan"));
        assert!(parse_number("ten", "c", "Quota").is_err());
        assert_eq!(
            form(&[("q", " ")]).number("q", "c", "Quota").ok(),
            Some(None)
        );
    }
}
