//! Dashboard sessions as stored: the SHA-256 of the cookie's secret, never
//! the secret, and the hash of the token the session was signed in with, so
//! a session is only as alive as that token.

use crate::db::{Db, Tx};

/// A session being opened.
pub struct NewSession<'a> {
    pub id: &'a str,
    pub secret_hash: &'a str,
    pub credential_hash: &'a str,
    /// `None` for the admin.
    pub tenant_id: Option<&'a str>,
    pub created_at: &'a str,
    pub expires_at_ms: i64,
}

/// A live session as a request finds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub id: String,
    pub credential_hash: String,
    pub tenant_id: Option<String>,
    pub expires_at_ms: i64,
    /// 1 when a tenant session's token still works and its tenant exists;
    /// always 0 for the admin's, whose token is checked against the server's.
    pub tenant_token_live: i64,
}

pub async fn insert(tx: &mut Tx, session: &NewSession<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dashboard_sessions
             (id, secret_hash, credential_hash, tenant_id, created_at, expires_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(session.id)
    .bind(session.secret_hash)
    .bind(session.credential_hash)
    .bind(session.tenant_id)
    .bind(session.created_at)
    .bind(session.expires_at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The unexpired session whose secret hashes to `secret_hash`, with whether
/// its tenant token still works.
pub async fn find(
    db: &Db,
    secret_hash: &str,
    now_ms: i64,
) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as::<_, SessionRow>(
        "SELECT s.id, s.credential_hash, s.tenant_id, s.expires_at_ms,
                CASE WHEN EXISTS (
                    SELECT 1 FROM tenant_tokens k JOIN tenants t ON t.id = k.tenant_id
                    WHERE k.token_hash = s.credential_hash AND k.tenant_id = s.tenant_id
                      AND k.revoked_at IS NULL AND t.deleted_at IS NULL
                ) THEN 1 ELSE 0 END AS tenant_token_live
         FROM dashboard_sessions s
         WHERE s.secret_hash = $1 AND s.expires_at_ms > $2",
    )
    .bind(secret_hash)
    .bind(now_ms)
    .fetch_optional(db)
    .await
}

/// Ends the session (sign-out); whether there was one.
pub async fn delete(tx: &mut Tx, secret_hash: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("DELETE FROM dashboard_sessions WHERE secret_hash = $1 RETURNING id")
        .bind(secret_hash)
        .fetch_optional(&mut **tx)
        .await
}

/// Forgets sessions that expired before `now_ms`; run at each sign-in so the
/// table holds only what could still be used.
pub async fn delete_expired(tx: &mut Tx, now_ms: i64) -> Result<u64, sqlx::Error> {
    sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at_ms <= $1")
        .bind(now_ms)
        .execute(&mut **tx)
        .await
        .map(|done| done.rows_affected())
}

/// Ends every session signed in with tenant token `token_id`, as it is
/// revoked (a request would refuse them anyway; this forgets them at once).
pub async fn delete_of_token(tx: &mut Tx, token_id: &str) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "DELETE FROM dashboard_sessions WHERE credential_hash IN
             (SELECT token_hash FROM tenant_tokens WHERE id = $1)",
    )
    .bind(token_id)
    .execute(&mut **tx)
    .await
    .map(|done| done.rows_affected())
}

/// Ends every session of tenant `tenant_id`, as the tenant is deleted.
pub async fn delete_of_tenant(tx: &mut Tx, tenant_id: &str) -> Result<u64, sqlx::Error> {
    sqlx::query("DELETE FROM dashboard_sessions WHERE tenant_id = $1")
        .bind(tenant_id)
        .execute(&mut **tx)
        .await
        .map(|done| done.rows_affected())
}
