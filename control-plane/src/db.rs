//! The database: connection, migrations, and what every store module shares.
//!
//! One code path for both stores, through sqlx's `Any` driver: SQLite is the
//! embedded default, PostgreSQL (`postgres://…`) serves several replicas.
//! The SQL is written once for both: `$n` placeholders (SQLite reads them as
//! numbered parameters; statements of many parameters write theirs with
//! `store::Params`, anonymous for SQLite), text timestamps, and booleans
//! read back through `CAST(… AS INTEGER)` because the `Any` driver cannot
//! decode SQLite's `BOOLEAN` columns.
//!
//! The SQL itself lives in `store`, one module per resource.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use sqlx::any::AnyPoolOptions;
use sqlx::AnyConnection;
use sqlx::{Any, AnyPool, Executor, Transaction};

pub type Db = AnyPool;
pub type Tx = Transaction<'static, Any>;

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

/// A new resource id: `<kind>_` and 20 random alphanumerics.
pub fn new_id(kind: &str) -> String {
    format!(
        "{kind}_{}",
        Alphanumeric.sample_string(&mut rand::rng(), 20)
    )
}

/// Whether PostgreSQL rolled a transaction back whole to resolve a conflict
/// (a deadlock or a serialization failure): trying it again is safe.
pub fn is_rolled_back(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// Whether a sqlx error is a UNIQUE constraint violation.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}
