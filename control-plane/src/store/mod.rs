//! Every piece of state's one home: the SQL and the rows of each resource,
//! as plain `async fn`s that take a transaction or the pool, and `now` where
//! time matters. Handlers, the seed, the webhook worker and the sync feed all
//! read and write through these; none of them holds SQL of its own.
//!
//! One code path for both databases, through sqlx's `Any` driver (see
//! `db`). In-memory SQLite is the fake the tests use; the tests that run on
//! both databases are the contract that keeps the two alike.

pub mod anonymous;
pub mod audit;
pub mod feed;
pub mod keys;
pub mod plans;
pub mod proxies;
pub mod retention;
pub mod sessions;
pub mod tenants;
pub mod tokens;
pub mod usage;
pub mod webhooks;

/// The direction a list walks (created_at, id).
#[derive(Clone, Copy)]
pub(crate) enum Order {
    Ascending,
    Descending,
}

/// `AND …` keeping rows after the cursor row of `table` in (created_at, id)
/// `order`. Parameter `$n` is the cursor id, bound as `Option<&str>`: `NULL`
/// means the first page, so every list has one fixed statement.
pub(crate) fn cursor_clause(table: &str, n: usize, order: Order) -> String {
    let past = match order {
        Order::Ascending => '>',
        Order::Descending => '<',
    };
    format!(
        "AND (${n} IS NULL \
              OR created_at {past} (SELECT created_at FROM {table} WHERE id = ${n}) \
              OR (created_at = (SELECT created_at FROM {table} WHERE id = ${n}) AND id {past} ${n}))"
    )
}

/// A stored count or allowance as the API shows it; negative (never written) reads as absent.
pub(crate) fn to_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

/// A count as a `BIGINT` binds it, saturating.
pub(crate) fn db_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
