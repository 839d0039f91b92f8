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
