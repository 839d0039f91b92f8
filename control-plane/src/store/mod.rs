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

/// `AND …` keeping rows past the cursor's position in (created_at, id)
/// `order`. Parameter `$n` is the position's `created_at` (as the table
/// stores it) and `$n+1` its id, both bound as `Option<&str>`: `NULL` means
/// the first page, so every list has one fixed statement. The position need
/// not be a row's: the walk goes on past a row deleted since.
pub(crate) fn cursor_clause(n: usize, order: Order) -> String {
    let past = match order {
        Order::Ascending => '>',
        Order::Descending => '<',
    };
    let id = n + 1;
    format!(
        "AND (${n} IS NULL \
              OR created_at {past} ${n} \
              OR (created_at = ${n} AND id {past} ${id}))"
    )
}

/// The binds of [`cursor_clause`] for `after`: its `created_at` as `stored`, and its id.
pub(crate) fn cursor_binds(
    after: Option<&crate::paging::Cursor>,
    stored: fn(&crate::paging::Cursor) -> String,
) -> (Option<String>, Option<String>) {
    after.map_or((None, None), |c| (Some(stored(c)), Some(c.id.clone())))
}

/// A stored count or allowance as the API shows it; negative (never written) reads as absent.
pub(crate) fn to_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

/// A count as a `BIGINT` binds it, saturating.
pub(crate) fn db_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Rows one multi-row statement carries, at `per_row` parameters a row.
///
/// SQLite's cost is quadratic in a statement's parameters: sqlx looks up
/// the name of each one, and SQLite finds a name by walking the list of
/// all of them. Measured 2026-12-06 (release build, a SQLite file of
/// 100,000 keys, usage batches of 15,000 of them): at 500 rows a statement
/// (up to 3,000 parameters) a batch took 1.1–1.4 s, over half of it in that
/// walk; at 200 to 600 parameters, 0.66–0.84 s; at 60, more again
/// (0.72–0.95 s). PostgreSQL has no such cost, so fewer round trips win there.
pub(crate) fn rows_per_statement(postgres: bool, per_row: usize) -> usize {
    const SQLITE_PARAMETERS: usize = 256;
    const POSTGRES_ROWS: usize = 500;
    if postgres {
        POSTGRES_ROWS
    } else {
        (SQLITE_PARAMETERS / per_row.max(1)).max(1)
    }
}

/// `(…), (…)`: `rows` groups of `per_row` numbered parameters from `$first`,
/// for the multi-row statements that write many rows in one round trip.
pub(crate) fn placeholders(rows: usize, per_row: usize, first: usize) -> String {
    (0..rows)
        .map(|row| {
            let params: Vec<String> = (0..per_row)
                .map(|i| format!("${}", first + row * per_row + i))
                .collect();
            format!("({})", params.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::placeholders;

    #[test]
    fn placeholders_number_every_row() {
        assert_eq!(placeholders(2, 3, 1), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(1, 2, 4), "($4, $5)");
    }
}
