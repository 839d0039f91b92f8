//! The proxy registry as stored: one row per Envoy process that identified
//! itself, and the commit time of every config version, which turns a
//! proxy's lag in versions into one in milliseconds. How often a row is
//! written is `fleet::Registry`'s choice; this module only holds the SQL.

use crate::db::{Db, Tx};

/// What a poll or a report said about the proxy that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub instance_id: String,
    pub node_id: String,
    pub cluster: String,
    pub build: String,
    pub applied_version: Option<i64>,
}

/// A proxy as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProxyRow {
    pub instance_id: String,
    pub node_id: String,
    pub cluster: String,
    pub build: String,
    pub applied_version: Option<i64>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

/// Records `seen` at `now_ms`: a new proxy, or the latest word of a known one.
pub async fn upsert(db: &Db, seen: &Sighting, now_ms: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO proxies
             (instance_id, node_id, cluster, build, applied_version, first_seen_ms, last_seen_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $6)
         ON CONFLICT (instance_id) DO UPDATE SET
             node_id = excluded.node_id,
             cluster = excluded.cluster,
             build = excluded.build,
             applied_version = excluded.applied_version,
             last_seen_ms = excluded.last_seen_ms",
    )
    .bind(&seen.instance_id)
    .bind(&seen.node_id)
    .bind(&seen.cluster)
    .bind(&seen.build)
    .bind(seen.applied_version)
    .bind(now_ms)
    .execute(db)
    .await?;
    Ok(())
}

/// The channel replicas `LISTEN` on for proxies' newly applied versions (no
/// payload: a waiting write re-reads the registry anyway).
pub const APPLIED_CHANNEL: &str = "tollgate_applied";

/// Tells the other replicas (PostgreSQL only) that a proxy's applied
/// version was just written, so that writes waiting there look again.
pub async fn notify_applied(db: &Db) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(APPLIED_CHANNEL)
        .execute(db)
        .await?;
    Ok(())
}

/// Every proxy seen at or after `since_ms`, by node id; older ones are
/// deleted first (their retention is over).
pub async fn list(db: &Db, since_ms: i64) -> Result<Vec<ProxyRow>, sqlx::Error> {
    sqlx::query("DELETE FROM proxies WHERE last_seen_ms < $1")
        .bind(since_ms)
        .execute(db)
        .await?;
    sqlx::query_as::<_, ProxyRow>(
        "SELECT instance_id, node_id, cluster, build, applied_version, first_seen_ms, last_seen_ms
         FROM proxies ORDER BY node_id, instance_id",
    )
    .fetch_all(db)
    .await
}

/// Records that the change `tx` is commits `version` at `now_ms`.
pub async fn record_version_time(
    tx: &mut Tx,
    version: i64,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO config_version_times (version, committed_ms) VALUES ($1, $2)")
        .bind(version)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// When `version` was committed; `None` for versions committed before the
/// registry existed.
pub async fn committed_ms(db: &Db, version: i64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT committed_ms FROM config_version_times WHERE version = $1")
        .bind(version)
        .fetch_optional(db)
        .await
}

/// How many proxies were seen at or after `since_ms`.
pub async fn count_seen_since(db: &Db, since_ms: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM proxies WHERE last_seen_ms >= $1")
        .bind(since_ms)
        .fetch_one(db)
        .await
}
