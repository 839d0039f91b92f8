//! Lists, one page at a time: `?limit=` and `?after=<next_cursor>` in, a
//! [`Page`] out. The SQL half, the cursor clause, is `store::cursor_clause`.

use axum::http::StatusCode;

use crate::error::ApiError;

/// Page size bounds for list endpoints.
pub(crate) const DEFAULT_PAGE: u32 = 50;
pub(crate) const MAX_PAGE: u32 = 200;

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

/// One page of a list, in creation order. `next_cursor` goes in `?after=` for the next page.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// `?after=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// `rows` was fetched with `limit + 1` rows to learn whether more follow.
    pub(crate) fn from_rows(mut rows: Vec<T>, limit: i64, id: impl Fn(&T) -> String) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if more { rows.last().map(id) } else { None };
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
        "after= must be the next_cursor of a previous page.",
    )
}
