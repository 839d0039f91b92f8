//! One module per resource, each with its own `router()`.

pub mod anonymous;
pub mod audit;
pub mod catalog;
pub mod health;
pub mod keys;
pub mod plans;
pub mod sync;
pub mod tenants;
pub mod tokens;
pub mod usage;
pub mod webhooks;

use crate::error::ApiError;

/// Display names: 1 to 200 characters, not blank.
pub(crate) fn validate_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid(
            "invalid_name",
            format!("{field} must be 1 to 200 characters and not blank."),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "invalid_name",
            format!("{field} must not contain control characters."),
        ));
    }
    Ok(())
}

/// Page size bounds for list endpoints.
pub(crate) const DEFAULT_PAGE: u32 = 50;
pub(crate) const MAX_PAGE: u32 = 200;

/// `?limit=` checked against the bounds; the `i64` is what SQL binds.
pub(crate) fn page_limit(limit: Option<u32>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
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

/// The direction a list walks (created_at, id).
#[derive(Clone, Copy)]
pub(crate) enum Order {
    Ascending,
    Descending,
}

/// `AND …` keeping rows after the cursor row of `table` in (created_at, id)
/// `order`. Parameter `$n` is the cursor id, bound as `Option<&str>`: `NULL`
/// means the first page, so every list has one fixed statement.
pub(crate) fn cursor_clause(table: &str, n: usize, order: Order) -> String {
    let past = match order {
        Order::Ascending => '>',
        Order::Descending => '<',
    };
    format!(
        "AND (${n} IS NULL \
              OR created_at {past} (SELECT created_at FROM {table} WHERE id = ${n}) \
              OR (created_at = (SELECT created_at FROM {table} WHERE id = ${n}) AND id {past} ${n}))"
    )
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`) in PATCH bodies.
pub(crate) fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde::Deserialize::deserialize(deserializer).map(Some)
}

/// An RFC 3339 query parameter, in UTC; times before 1970 are refused too.
pub(crate) fn query_time(
    field: &str,
    text: Option<&str>,
) -> Result<Option<time::OffsetDateTime>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .filter(|at| at.unix_timestamp() >= 0)
        .map(|at| Some(at.to_offset(time::UtcOffset::UTC)))
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("{field} must be an RFC 3339 time like 2026-11-01T00:00:00Z."),
            )
        })
}

pub(crate) fn invalid_cursor() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::BAD_REQUEST,
        "invalid_cursor",
        "after= must be the next_cursor of a previous page.",
    )
}
