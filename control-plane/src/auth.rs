//! Bearer-token checks for the admin API and the sync feed.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;
use crate::state::{AppState, TokenDigest};

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub fn check(headers: &HeaderMap, expected: &TokenDigest) -> Result<(), ApiError> {
    match bearer(headers) {
        None => Err(ApiError::unauthorized(
            "Send the token as Authorization: Bearer <token>.",
        )),
        Some(token) if expected.matches(token) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("The token is not valid.")),
    }
}

pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check(request.headers(), &state.admin_token)?;
    Ok(next.run(request).await)
}
