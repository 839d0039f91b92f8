//! Tenant tokens as stored: only their SHA-256, never the token. Revoked
//! ones stay, with the time they were revoked.

use serde::Serialize;

use crate::db::{Db, Tx};

/// A tenant token's metadata: never the token or its hash.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TokenView {
    #[schema(example = "tok_Qm4xT9bV2nL7cZ0pR5sK")]
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// `null` while the token works.
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
}

pub async fn insert(tx: &mut Tx, view: &TokenView, token_hash: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tenant_tokens (id, tenant_id, name, token_hash, created_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&view.id)
    .bind(&view.tenant_id)
    .bind(&view.name)
    .bind(token_hash)
    .bind(&view.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// All of a tenant's tokens, revoked ones included, in creation order.
pub async fn of_tenant(db: &Db, tenant_id: &str) -> Result<Vec<TokenView>, sqlx::Error> {
    sqlx::query_as::<_, TokenView>(
        "SELECT id, tenant_id, name, created_at, revoked_at FROM tenant_tokens
         WHERE tenant_id = $1 ORDER BY created_at, id",
    )
    .bind(tenant_id)
    .fetch_all(db)
    .await
}

/// Revokes the tenant's token at `now` (RFC 3339): the token as revoked,
/// or `None` when the tenant has no such token that still works.
pub async fn revoke(
    tx: &mut Tx,
    tenant_id: &str,
    id: &str,
    now: &str,
) -> Result<Option<TokenView>, sqlx::Error> {
    sqlx::query_as::<_, TokenView>(
        "UPDATE tenant_tokens SET revoked_at = $1
         WHERE id = $2 AND tenant_id = $3 AND revoked_at IS NULL
         RETURNING id, tenant_id, name, created_at, revoked_at",
    )
    .bind(now)
    .bind(id)
    .bind(tenant_id)
    .fetch_optional(&mut **tx)
    .await
}

/// The tenant a working token of this hash belongs to, if the tenant exists.
pub async fn tenant_of(db: &Db, token_hash: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT k.tenant_id FROM tenant_tokens k JOIN tenants t ON t.id = k.tenant_id
         WHERE k.token_hash = $1 AND k.revoked_at IS NULL AND t.deleted_at IS NULL",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await
}
