//! What handlers check in what they are sent, alike for every resource:
//! display names, RFC 3339 query times, and PATCH fields that may be `null`.

use axum::http::StatusCode;

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
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("{field} must be an RFC 3339 time like 2026-11-01T00:00:00Z."),
            )
        })
}
