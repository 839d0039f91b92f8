//! The database: connection, migrations, and the config version every change bumps.
//!
//! One code path for both stores, through sqlx's `Any` driver: SQLite is the
//! embedded default, PostgreSQL (`postgres://…`) serves several replicas.
//! The SQL is written once for both: `$n` placeholders (SQLite reads them as
//! numbered parameters), text timestamps, and booleans read back through
//! `CAST(… AS INTEGER)` because the `Any` driver cannot decode SQLite's
//! `BOOLEAN` columns.
//!
//! Each write transaction bumps the global config version as its *first*
//! statement. That takes SQLite's write lock, or PostgreSQL's row lock, up
//! front and serialises versions in commit order, so `since=N` never skips a
//! change. On PostgreSQL the same transaction queues a `NOTIFY`, delivered on
//! commit, which wakes the long-polls held by every other replica.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use sqlx::any::AnyPoolOptions;
use sqlx::AnyConnection;
use sqlx::{Any, AnyPool, Executor, Transaction};

pub type Db = AnyPool;
pub type Tx = Transaction<'static, Any>;

/// The channel replicas `LISTEN` on; the payload is the committed version.
pub const CHANGES_CHANNEL: &str = "tollgate_config";

/// Whether `url` names a PostgreSQL database (otherwise it is SQLite).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

pub fn is_postgres(db: &Db) -> bool {
    matches!(
        db.connect_options().database_url.scheme(),
        "postgres" | "postgresql"
    )
}

/// SQLite's durability and integrity settings, applied to every new connection.
fn sqlite_pragmas(
    conn: &mut AnyConnection,
) -> Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        if conn.backend_name() == "SQLite" {
            conn.execute(
                "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; \
                 PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;",
            )
            .await?;
        }
        Ok(())
    })
}

pub async fn connect(url: &str) -> Result<Db, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let url = if is_postgres_url(url) || url.contains("mode=") {
        url.to_owned()
    } else {
        // Create the SQLite file on first start.
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}mode=rwc")
    };
    AnyPoolOptions::new()
        .max_connections(if is_postgres_url(&url) { 16 } else { 8 })
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _| sqlite_pragmas(conn))
        .connect(&url)
        .await
}

/// A private in-memory SQLite database, for tests. One connection that never
/// closes, because each SQLite in-memory connection is its own database.
pub async fn connect_memory() -> Result<Db, sqlx::Error> {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .after_connect(|conn, _| sqlite_pragmas(conn))
        .connect("sqlite::memory:")
        .await
}

pub async fn migrate(db: &Db) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(db).await
}

pub async fn current_version(db: &Db) -> Result<u64, sqlx::Error> {
    let v: i64 = sqlx::query_scalar("SELECT version FROM config_version WHERE id = 1")
        .fetch_one(db)
        .await?;
    Ok(u64::try_from(v).unwrap_or(0))
}

/// Starts a write transaction and claims the next config version for it.
pub async fn begin_change(db: &Db) -> Result<(Tx, i64), sqlx::Error> {
    let mut tx = db.begin().await?;
    let version: i64 = sqlx::query_scalar(
        "UPDATE config_version SET version = version + 1 WHERE id = 1 RETURNING version",
    )
    .fetch_one(&mut *tx)
    .await?;
    if is_postgres(db) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGES_CHANNEL)
            .bind(version.to_string())
            .execute(&mut *tx)
            .await?;
    }
    Ok((tx, version))
}

/// Now, as RFC 3339 UTC with seconds.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Now, as Unix milliseconds: the form of every `_ms` column.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Unix milliseconds as RFC 3339 UTC with seconds, the form of [`now`].
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// A new resource id: `<kind>_` and 20 random alphanumerics.
pub fn new_id(kind: &str) -> String {
    format!(
        "{kind}_{}",
        Alphanumeric.sample_string(&mut rand::rng(), 20)
    )
}

/// Whether a sqlx error is a UNIQUE constraint violation.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}
