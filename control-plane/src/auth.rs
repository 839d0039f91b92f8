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

/// Who may report leaked keys: the admin, or a secret scanner holding the
/// leak-report token, which opens nothing else (every other route resolves
/// tokens through [`principal_of`], which does not know it). An extractor,
/// like [`SyncCaller`], so that the body is read only for a caller who may
/// send one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    Admin,
    Scanner,
    /// A report signed by a configured key (see `leak_signatures`); never
    /// from this extractor, which reads tokens.
    SignedScanner,
}

impl Reporter {
    /// The audit log's actor.
    pub fn label(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Scanner => "leak_reporter",
            Self::SignedScanner => "signed_leak_reporter",
        }
    }
}

impl FromRequestParts<AppState> for Reporter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or_else(missing)?;
        if state.admin_token.matches(token) {
            return Ok(Self::Admin);
        }
        if state
            .leak_report_token
            .as_ref()
            .is_some_and(|expected| expected.matches(token))
        {
            return Ok(Self::Scanner);
        }
        match principal_of(state, token).await? {
            // A live tenant token: known, but not allowed here.
            Some(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Reporting leaked keys needs the admin token or the leak-report token.",
            )),
            None => Err(ApiError::unauthorized("The token is not valid.")),
        }
    }
}

fn missing() -> ApiError {
    ApiError::unauthorized("Send the token as Authorization: Bearer <token>.")
}

/// Hex SHA-256 of a tenant token: the only form stored.
pub fn tenant_token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whom a caller acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Admin,
    Tenant(String),
}

/// Who is calling, and through what: the API with a bearer token, or the
/// dashboard with a session signed in by one. Both go through the same rules;
/// only the audit log's actor tells them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub role: Role,
    /// The dashboard session's public id, when the call came through it.
    pub session: Option<String>,
}

impl Principal {
    pub fn admin() -> Self {
        Self {
            role: Role::Admin,
            session: None,
        }
    }

    pub fn tenant(id: impl Into<String>) -> Self {
        Self {
            role: Role::Tenant(id.into()),
            session: None,
        }
    }

    /// The same caller, acting through dashboard session `session_id`.
    pub fn via_session(mut self, session_id: impl Into<String>) -> Self {
        self.session = Some(session_id.into());
        self
    }

    /// For operations only the admin may perform.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Tenant(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "This operation needs the admin token.",
            )),
        }
    }

    /// Whether this caller may see the tenant's resources; callers answer 404 when not.
    pub fn sees(&self, tenant_id: &str) -> bool {
        match &self.role {
            Role::Admin => true,
            Role::Tenant(own) => own == tenant_id,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self.role, Role::Admin)
    }

    /// The caller's own tenant, when it is a tenant.
    pub fn own_tenant(&self) -> Option<&str> {
        match &self.role {
            Role::Admin => None,
            Role::Tenant(id) => Some(id),
        }
    }

    /// Who did it, for the audit log and logs: `admin` or `tenant:<id>`, and
    /// ` via dashboard session <id>` when it came through the dashboard.
    pub fn label(&self) -> String {
        let who = match &self.role {
            Role::Admin => "admin".to_owned(),
            Role::Tenant(id) => format!("tenant:{id}"),
        };
        match &self.session {
            None => who,
            Some(session) => format!("{who} via dashboard session {session}"),
        }
    }
}

/// The principal a bearer token stands for, if it is the admin token or a
/// live tenant token; the dashboard signs in with the same tokens.
pub async fn principal_of(state: &AppState, token: &str) -> Result<Option<Principal>, ApiError> {
    if state.admin_token.matches(token) {
        return Ok(Some(Principal::admin()));
    }
    if !token.starts_with(TENANT_TOKEN_PREFIX) {
        return Ok(None);
    }
    let tenant = tokens::tenant_of(&state.db, &tenant_token_hash(token)).await?;
    Ok(tenant.map(Principal::tenant))
}

/// Resolves the bearer token into a [`Principal`] or answers 401.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer(request.headers()).ok_or_else(missing)?;
    let principal = principal_of(&state, token)
        .await?
        .ok_or_else(|| ApiError::unauthorized("The token is not valid."))?;
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
