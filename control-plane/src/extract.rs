//! Extractors whose rejections are problem+json like every other error.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `axum::Json`, with malformed JSON, wrong types, unknown or missing fields,
/// oversized bodies and wrong content types answered as problem+json.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let too_large = || format!("The body is larger than {} bytes.", crate::MAX_BODY_BYTES);
        let value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(value)) => value,
            Err(rejection) => return Err(json_rejection(rejection, too_large)),
        };
        // serde reads a struct from an array too (`[]` would be an empty
        // PATCH); every body of this API is an object.
        if !value.is_object() {
            return Err(ApiError::invalid(
                "invalid_body",
                "The body must be a JSON object.",
            ));
        }
        match serde_json::from_value(value.clone()) {
            Ok(body) => Ok(Self(body)),
            // JSON has one kind of number: `2.0` is the integer 2 to the
            // sender (JSON Schema says so too), only serde tells them apart.
            Err(_) => serde_json::from_value(with_whole_numbers(value))
                .map(Self)
                .map_err(|e| ApiError::invalid("invalid_body", format!("Invalid body: {e}"))),
        }
    }
}

/// `value` with every number that is a whole one written as an integer,
/// up to 2^53, past which a float no longer spells every integer.
fn with_whole_numbers(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() <= EXACT => {
                // In range and whole, so the cast is exact.
                #[allow(clippy::cast_possible_truncation)]
                let whole = f as i64;
                Value::from(whole)
            }
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(with_whole_numbers).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, with_whole_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

/// A JSON array body of at most `MAX` elements, each read as `T`: for the
/// one body of this API that is a list, a leak report, whose shape secret
/// scanners fix. More elements: 422 `too_many_items`, before any is read; an
/// element that is not a `T`: 422 `invalid_body` naming its index but never
/// quoting it.
pub struct ApiJsonArray<T, const MAX: usize>(pub Vec<T>);

impl<S, T, const MAX: usize> FromRequest<S> for ApiJsonArray<T, MAX>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // The route sets its own body limit, so no number is promised here.
        let too_large = || "The body is larger than this endpoint accepts.".to_owned();
        let value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(value)) => value,
            Err(rejection) => return Err(json_rejection(rejection, too_large)),
        };
        let serde_json::Value::Array(items) = value else {
            return Err(ApiError::invalid(
                "invalid_body",
                "The body must be a JSON array.",
            ));
        };
        if items.len() > MAX {
            return Err(ApiError::invalid(
                "too_many_items",
                format!(
                    "The body holds {} items; at most {MAX} are taken at once.",
                    items.len()
                ),
            ));
        }
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                serde_json::from_value(item).map_err(|e| {
                    // serde quotes the value it refused (`invalid type: string
                    // "tg_…"`), and in a leak report that is a secret: only
                    // what names no value is passed on.
                    let why = e.to_string();
                    let detail = if why.starts_with("missing field") {
                        format!("Invalid item {i}: {why}.")
                    } else {
                        format!(
                            "Invalid item {i}: not an object of the documented fields and types."
                        )
                    };
                    ApiError::invalid("invalid_body", detail)
                })
            })
            .collect::<Result<Vec<T>, ApiError>>()
            .map(Self)
    }
}

fn json_rejection(rejection: JsonRejection, too_large: impl FnOnce() -> String) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::invalid("invalid_body", e.body_text()),
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.body_text())
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send the body as JSON with Content-Type: application/json.",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            too_large(),
        ),
        other => ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", other.body_text()),
    }
}

/// `axum::extract::Query` with problem+json rejections.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                e.body_text(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_floats_read_as_integers() {
        #[derive(serde::Deserialize, Debug)]
        struct Limit {
            max: u64,
        }
        let value = serde_json::json!({"max": 355.0});
        let limit: Limit = serde_json::from_value(with_whole_numbers(value)).unwrap();
        assert_eq!(limit.max, 355);
    }
}
