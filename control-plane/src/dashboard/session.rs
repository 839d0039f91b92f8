//! Signing in to the dashboard with the admin token or a tenant token, and
//! the session that follows.
//!
//! The browser never holds the token: signing in trades it for a random
//! session secret in an `HttpOnly`, `SameSite=Strict`, `Secure` cookie with
//! the `__Host-` prefix (Chromium accepts those on `http://127.0.0.1` and
//! `http://localhost`; elsewhere serve the control plane over HTTPS). The
//! database keeps only the secret's SHA-256, so every replica knows the
//! session and a stolen database row signs no one in. A session ends at
//! sign-out, after [`SESSION_LIFETIME_MS`], and as soon as the token it was
//! signed in with stops working (a revoked tenant token, a changed admin
//! token). The cookie means nothing outside `/dashboard`: `/v1` reads only
//! `Authorization`.

use askama::Template;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::auth::{principal_of, tenant_token_hash, Principal};
use crate::change::Change;
use crate::dashboard::form::FormData;
use crate::dashboard::page::{render, PageError, PageResult};
use crate::db;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::audit::Entry;
use crate::store::sessions::{self, NewSession};

/// The session cookie's name. `__Host-`: only from a secure origin, for this
/// host alone, on path `/`; no subdomain can set or shadow it.
pub const COOKIE: &str = "__Host-tollgate_session";

/// How long a session lasts from sign-in: a working day.
pub const SESSION_LIFETIME_MS: u64 = 12 * 3600 * 1000;

/// Where a request without a live session is sent.
pub const LOGIN_PATH: &str = "/dashboard/login";

/// A request made in a live session.
#[derive(Debug, Clone)]
pub struct Signed {
    /// Acting through the session: the audit log names it.
    pub principal: Principal,
}

/// The value of cookie `name` among the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim())
}

fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Back to sign-in, forgetting a cookie that no longer opens a session.
fn to_login(had_cookie: bool) -> Response {
    let mut response = Redirect::to(LOGIN_PATH).into_response();
    if had_cookie {
        response
            .headers_mut()
            .insert(header::SET_COOKIE, expired_cookie());
    }
    response
}

fn expired_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-tollgate_session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
    )
}

/// The principal a live session acts as, if the request carries one.
async fn live_session(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Principal>, ApiError> {
    let Some(secret) = cookie(headers, COOKIE) else {
        return Ok(None);
    };
    let now = state.now();
    let Some(row) = sessions::find(&state.db, &secret_hash(secret), now.db_ms()).await? else {
        return Ok(None);
    };
    let principal = match row.tenant_id {
        None if row.credential_hash == state.admin_token.hex() => Principal::admin(),
        Some(tenant) if row.tenant_token_live == 1 => Principal::tenant(tenant),
        // Signed in with a token that no longer works.
        _ => return Ok(None),
    };
    Ok(Some(principal.via_session(row.id)))
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match live_session(state, &parts.headers).await {
            Ok(Some(principal)) => Ok(Self { principal }),
            Ok(None) => Err(to_login(cookie(&parts.headers, COOKIE).is_some())),
            Err(e) => Err(PageError(e).into_response()),
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    error: Option<&'a str>,
}

/// `GET /dashboard/login`; straight on to the overview when already signed in.
pub async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    if live_session(&state, &headers).await?.is_some() {
        return Ok(Redirect::to("/dashboard").into_response());
    }
    Ok(render(StatusCode::OK, &LoginPage { error: None }))
}

/// `POST /dashboard/login`: the token for a session cookie.
pub async fn login(State(state): State<AppState>, form: FormData) -> PageResult {
    let token = form.text("token");
    let principal = if token.is_empty() {
        None
    } else {
        principal_of(&state, token).await?
    };
    let Some(principal) = principal else {
        let error = if token.is_empty() {
            "Enter the admin token or a tenant token (tgt_…)."
        } else {
            "That token is not valid: it is not the admin token, nor a tenant token that works."
        };
        return Ok(render(
            StatusCode::UNAUTHORIZED,
            &LoginPage { error: Some(error) },
        ));
    };
    let now = state.now();
    let mut secret_bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut secret_bytes);
    let secret = hex::encode(secret_bytes);
    let id = db::new_id("ses");
    let credential_hash = match principal.own_tenant() {
        None => state.admin_token.hex(),
        Some(_) => tenant_token_hash(token),
    };
    let principal = principal.via_session(&id);
    let mut change = Change::begin_unpublished(&state, principal.label(), now).await?;
    sessions::delete_expired(change.tx(), now.db_ms()).await?;
    sessions::insert(
        change.tx(),
        &NewSession {
            id: &id,
            secret_hash: &secret_hash(&secret),
            credential_hash: &credential_hash,
            tenant_id: principal.own_tenant(),
            created_at: &now.rfc3339(),
            expires_at_ms: now.plus_ms(SESSION_LIFETIME_MS).db_ms(),
        },
    )
    .await?;
    change
        .audit(Entry {
            action: "session.sign_in",
            resource_id: &id,
            tenant_id: principal.own_tenant(),
            before: None,
            after: None,
        })
        .await?;
    change.commit().await?;
    let cookie = format!(
        "{COOKIE}={secret}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_LIFETIME_MS / 1000
    );
    let mut response = Redirect::to("/dashboard").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(ApiError::internal)?,
    );
    Ok(response)
}

/// `POST /dashboard/logout`: ends the session here and at every replica.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    if let Some(secret) = cookie(&headers, COOKIE) {
        let principal = live_session(&state, &headers).await?;
        let now = state.now();
        let actor = principal
            .as_ref()
            .map_or_else(|| "anonymous".to_owned(), Principal::label);
        let mut change = Change::begin_unpublished(&state, actor, now).await?;
        if let Some(id) = sessions::delete(change.tx(), &secret_hash(secret)).await? {
            change
                .audit(Entry {
                    action: "session.sign_out",
                    resource_id: &id,
                    tenant_id: principal.as_ref().and_then(Principal::own_tenant),
                    before: None,
                    after: None,
                })
                .await?;
            change.commit().await?;
        }
    }
    let mut response = Redirect::to(LOGIN_PATH).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, expired_cookie());
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; theme=dark"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("x=y;__Host-tollgate_session=abc ; z=2"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "theme"), Some("dark"));
        assert_eq!(cookie(&headers, "tollgate_session"), None);
    }
}
