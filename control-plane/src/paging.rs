//! Lists, one page at a time: `?limit=` and `?after=<next_cursor>` in, a
//! [`Page`] out. The SQL half, the cursor clause, is `store::cursor_clause`.
//!
//! A cursor names a position in the list, `(created_at, id)` of the last
//! row sent, not the row itself: a walk goes on past a row deleted while it
//! was under way, and every text of the cursor's form is a position, so it
//! is checked by its form alone (the OpenAPI document's pattern is the same).

use axum::http::StatusCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::ApiError;

/// Page size bounds for list endpoints.
pub(crate) const DEFAULT_PAGE: u32 = 50;
pub(crate) const MAX_PAGE: u32 = 200;

/// The form of every `next_cursor`: `<created_at in Unix ms>.<id>`. Fourteen
/// digits reach past the year 5000, inside what RFC 3339 can write.
pub const CURSOR_PATTERN: &str = r"^[0-9]{1,14}\.[A-Za-z0-9_]{1,64}$";

/// `?limit=` checked against the bounds; the `i64` is what SQL binds.
pub(crate) fn page_limit(limit: Option<u32>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE}."),
        ));
    }
    Ok(i64::from(limit))
}

/// Where a page ended: the `created_at` and id of its last row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at_ms: u64,
    pub id: String,
}

impl Cursor {
    /// The cursor after a row created at `created_at` (RFC 3339, as stored).
    pub fn after_row(created_at: &str, id: &str) -> Self {
        let at_ms = humantime::parse_rfc3339(created_at)
            .ok()
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .unwrap_or(0);
        Self {
            at_ms,
            id: id.to_owned(),
        }
    }

    /// `?after=` as sent: 400 `invalid_cursor` unless it has the form of [`CURSOR_PATTERN`].
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let (at, id) = text.split_once('.').ok_or_else(invalid_cursor)?;
        let digits = !at.is_empty() && at.len() <= 14 && at.bytes().all(|b| b.is_ascii_digit());
        let id_ok = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !digits || !id_ok {
            return Err(invalid_cursor());
        }
        Ok(Self {
            at_ms: at.parse().map_err(|_| invalid_cursor())?,
            id: id.to_owned(),
        })
    }

    fn system_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.at_ms)
    }

    /// `created_at` as tables store it to the second (plans, tenants, keys, events).
    pub fn created_at_seconds(&self) -> String {
        humantime::format_rfc3339_seconds(self.system_time()).to_string()
    }

    /// `created_at` as the audit log stores it, to the millisecond.
    pub fn created_at_millis(&self) -> String {
        humantime::format_rfc3339_millis(self.system_time()).to_string()
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.at_ms, self.id)
    }
}

/// `?after=`, if sent, read as a cursor.
pub(crate) fn cursor(after: Option<&str>) -> Result<Option<Cursor>, ApiError> {
    after.map(Cursor::parse).transpose()
}

/// One page of a list, in creation order. `next_cursor` goes in `?after=` for the next page.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// `?after=` for the next page; `null` on the last page.
    #[schema(pattern = r"^[0-9]{1,14}\.[A-Za-z0-9_]{1,64}$")]
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// `rows` was fetched with `limit + 1` rows to learn whether more follow;
    /// `position` is each row's `(created_at, id)`.
    pub(crate) fn from_rows(
        mut rows: Vec<T>,
        limit: i64,
        position: impl Fn(&T) -> (&str, &str),
    ) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if more {
            rows.last().map(|row| {
                let (created_at, id) = position(row);
                Cursor::after_row(created_at, id).to_string()
            })
        } else {
            None
        };
        Self {
            items: rows,
            next_cursor,
        }
    }
}

pub(crate) fn invalid_cursor() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
        "after= must be the next_cursor of a previous page: <digits>.<id>.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_is_the_position_of_the_last_row_and_reads_back() {
        let cursor = Cursor::after_row("2026-12-06T02:56:24Z", "plan_4f9XkQ2mB7cR1tZ8aL0e");
        let text = cursor.to_string();
        assert_eq!(text, "1796525784000.plan_4f9XkQ2mB7cR1tZ8aL0e");
        let back = Cursor::parse(&text).unwrap();
        assert_eq!(back.created_at_seconds(), "2026-12-06T02:56:24Z");
        let audit = Cursor::after_row("2026-12-06T02:56:24.123Z", "aud_1");
        assert_eq!(audit.created_at_millis(), "2026-12-06T02:56:24.123Z");
    }

    #[test]
    fn any_text_of_the_form_is_a_cursor_and_nothing_else_is() {
        for good in ["0.a", "99999999999999.plan_x", "1.aud_0000"] {
            assert!(Cursor::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "plan_x",
            "1.",
            ".x",
            "123456789012345.x",
            "1.a-b",
            "1.a.b",
            "+1.x",
            "1.\0",
        ] {
            assert_eq!(
                Cursor::parse(bad).unwrap_err().code,
                "invalid_cursor",
                "{bad}"
            );
        }
    }
}
