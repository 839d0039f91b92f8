//! Who is calling: the admin, or a tenant through one of its own tokens.
//!
//! The admin token may do everything. A tenant token may act only on its own
//! tenant: another tenant's resources answer 404 (their existence is not
//! revealed), admin-only operations and plan changes answer 403.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::{AppState, TokenDigest};
use crate::store::tokens;

/// Every tenant token starts with this.
pub const TENANT_TOKEN_PREFIX: &str = "tgt_";

/// The bearer token as presented, if the header has that form.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub fn check(headers: &HeaderMap, expected: &TokenDigest) -> Result<(), ApiError> {
    match bearer(headers) {
        None => Err(missing()),
        Some(token) if expected.matches(token) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("The token is not valid.")),
    }
}

/// Proof that the request carries the sync token, the Envoys' credential.
/// An extractor so that it runs before the query or body is even read: a
/// caller without the token learns nothing about what a valid request is.
pub struct SyncCaller;

impl axum::extract::FromRequestParts<AppState> for SyncCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        check(&parts.headers, &state.sync_token).map(|()| Self)
    }
}

fn missing() -> ApiError {
    ApiError::unauthorized("Send the token as Authorization: Bearer <token>.")
}

/// Hex SHA-256 of a tenant token: the only form stored.
pub fn tenant_token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Tenant(String),
}

impl Principal {
    /// For operations only the admin may perform.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Self::Admin => Ok(()),
            Self::Tenant(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "This operation needs the admin token.",
            )),
        }
    }

    /// Whether this caller may see the tenant's resources; callers answer 404 when not.
    pub fn sees(&self, tenant_id: &str) -> bool {
        match self {
            Self::Admin => true,
            Self::Tenant(own) => own == tenant_id,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Self::Admin)
    }

    /// Who did it, for logs.
    pub fn label(&self) -> String {
        match self {
            Self::Admin => "admin".into(),
            Self::Tenant(id) => format!("tenant:{id}"),
        }
    }
}

/// Resolves the bearer token into a [`Principal`] or answers 401.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer(request.headers()).ok_or_else(missing)?;
    let principal = if state.admin_token.matches(token) {
        Principal::Admin
    } else if token.starts_with(TENANT_TOKEN_PREFIX) {
        let tenant = tokens::tenant_of(&state.db, &tenant_token_hash(token)).await?;
        Principal::Tenant(tenant.ok_or_else(|| ApiError::unauthorized("The token is not valid."))?)
    } else {
        return Err(ApiError::unauthorized("The token is not valid."));
    };
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::internal("route without authentication"))
    }
}
