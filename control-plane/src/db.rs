//! The database: connection, migrations, and the config version every change bumps.
//!
//! SQLite is the embedded default. Each write transaction bumps the global
//! config version as its *first* statement: that takes SQLite's write lock up
//! front (no lock upgrade that could fail mid-transaction) and serialises
//! versions in commit order, so `since=N` never skips a change.

use std::str::FromStr;
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

pub type Db = SqlitePool;
pub type Tx = Transaction<'static, Sqlite>;

pub async fn connect(url: &str) -> Result<Db, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
}

/// A private in-memory database, for tests. One connection that never closes,
/// because each SQLite in-memory connection is its own database.
pub async fn connect_memory() -> Result<Db, sqlx::Error> {
    let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
    SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options)
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
    Ok((tx, version))
}

/// Now, as RFC 3339 UTC with seconds.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
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
