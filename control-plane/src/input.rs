//! What handlers check in what they are sent, alike for every resource:
//! display names, free text and ids in queries and paths, the routes of
//! scopes and route costs, RFC 3339 query times, and PATCH fields that may
//! be `null`. Each rule's pattern is the one the OpenAPI document states
//! (`constraints`), so the two say the same.

use axum::http::StatusCode;
use serde::Deserialize as _;

use crate::error::ApiError;

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// A display name: no control character, and at least one that is neither
/// a control character nor white space (Unicode `White_Space`, as Rust's
/// `trim` reads it), spelled out so every regex dialect reads it alike.
pub const NAME_PATTERN: &str = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$";

/// Free text that is matched, not shown (query filters, a usage batch's
/// ids): anything but control characters, which PostgreSQL cannot store
/// (NUL) and no id holds.
pub const TEXT_PATTERN: &str = r"^[^\x00-\x1F\x7F]*$";

/// A route's path prefix: `/` and visible ASCII but `?` and `#`. A request
/// path is ASCII (anything else arrives percent-encoded), so a prefix
/// outside it could never match.
pub const PATH_PREFIX_PATTERN: &str = r"^/[\x21\x22\x24-\x3E\x40-\x7E]*$";

/// Longest path prefix, in bytes (ASCII, so characters too).
pub const MAX_PATH_PREFIX: usize = 1024;

/// Display names: 1 to 200 characters, not blank.
pub(crate) fn validate_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS {
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

/// Whether `text` fits [`TEXT_PATTERN`].
pub(crate) fn is_plain_text(text: &str) -> bool {
    !text.chars().any(|c| c.is_ascii_control())
}

/// A query parameter of free text: 400 `invalid_query` unless it fits [`TEXT_PATTERN`].
pub(crate) fn query_text<'a>(
    field: &str,
    text: Option<&'a str>,
) -> Result<Option<&'a str>, ApiError> {
    match text {
        Some(text) if !is_plain_text(text) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("{field} must not contain control characters."),
        )),
        other => Ok(other),
    }
}

/// Whether `text` could be an id or a version: ASCII letters, digits, `_`
/// and `-`. Nothing else names anything, so it is answered 404 unread.
pub(crate) fn is_id_shaped(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The path prefixes of scopes, route costs or anonymous routes, beyond
/// what every filter checks: [`PATH_PREFIX_PATTERN`].
pub(crate) fn check_path_prefixes<'a>(
    prefixes: impl IntoIterator<Item = Option<&'a str>>,
) -> Result<(), String> {
    for prefix in prefixes.into_iter().flatten() {
        let visible = |b: u8| b.is_ascii_graphic() && b != b'?' && b != b'#';
        if !prefix.starts_with('/')
            || prefix.len() > MAX_PATH_PREFIX
            || !prefix.bytes().all(visible)
        {
            return Err(format!(
                "path_prefix {prefix:?} must start with '/' and be at most {MAX_PATH_PREFIX} \
                 visible ASCII characters, without '?' or '#'"
            ));
        }
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

/// A PATCH field that may be left out but not cleared: `null` is refused
/// rather than read as "absent", which would change nothing silently.
pub(crate) fn not_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    match Option::<T>::deserialize(deserializer)? {
        Some(value) => Ok(Some(value)),
        None => Err(serde::de::Error::custom(
            "null: leave the field out to keep it as it is",
        )),
    }
}

/// 9999-12-31T23:59:59Z, the last second RFC 3339 can write.
const LATEST_UNIX_S: i64 = 253_402_300_799;

/// An RFC 3339 query parameter, in UTC. Nothing is older than 1970 or
/// younger than the year 9999, so times outside read as those bounds: the
/// same answer, in a range every store can write.
pub(crate) fn query_time(
    field: &str,
    text: Option<&str>,
) -> Result<Option<time::OffsetDateTime>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("{field} must be an RFC 3339 time like 2026-11-01T00:00:00Z."),
            )
        })?;
    in_utc(at).map(Some)
}

/// `at` in UTC, within 1970 to 9999 (see [`query_time`]). Through the Unix
/// time, which has no offset: moving a time of the year 9999 with a negative
/// offset to UTC would leave the years RFC 3339 writes (and panic).
pub(crate) fn in_utc(at: time::OffsetDateTime) -> Result<time::OffsetDateTime, ApiError> {
    let latest = i128::from(LATEST_UNIX_S) * 1_000_000_000;
    let nanos = at.unix_timestamp_nanos().clamp(0, latest);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_outside_what_is_stored_read_as_its_bounds() {
        let early = query_time("since", Some("1900-01-01T00:00:00Z"))
            .unwrap()
            .unwrap();
        assert_eq!(early, time::OffsetDateTime::UNIX_EPOCH);
        let late = query_time("to", Some("9999-12-31T23:59:59-23:59"))
            .unwrap()
            .unwrap();
        assert_eq!(late.year(), 9999);
        assert!(query_time("since", Some("yesterday")).is_err());
    }

    #[test]
    fn prefixes_are_visible_ascii_paths() {
        assert!(check_path_prefixes([Some("/v1/x-y_z.~!$&'()*+,;=:@%20")]).is_ok());
        for bad in ["v1", "/a b", "/a?b", "/a#b", "/é", "/\0"] {
            assert!(check_path_prefixes([Some(bad)]).is_err(), "{bad}");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_PREFIX));
        assert!(check_path_prefixes([Some(long.as_str())]).is_err());
    }
}
