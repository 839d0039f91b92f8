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

use std::fmt::Write as _;

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
/// With [`Params`], a parameter costs SQLite the same in a statement of any
/// size, so a batch of usage takes few statements, each a round trip to
/// the connection's thread. Measured 2026-12-07 (release build, a SQLite
/// file of 100,000 keys, 16 usage batches of 10,000 of them, the control
/// plane's CPU per key, runs alternated): numbered parameters at 256 a
/// statement 37.6–40.9 µs, anonymous ones at 4,096 28.4–31.6 µs; 1,024 and
/// 16,384 read the same as 4,096 within this machine's noise. SQLite's own
/// cap is 32,766. PostgreSQL caps a statement at 65,535 parameters; 500
/// rows stays far below that at any width here.
pub(crate) fn rows_per_statement(postgres: bool, per_row: usize) -> usize {
    const SQLITE_PARAMETERS: usize = 4_096;
    const POSTGRES_ROWS: usize = 500;
    if postgres {
        POSTGRES_ROWS
    } else {
        (SQLITE_PARAMETERS / per_row.max(1)).max(1)
    }
}

/// A statement's parameters, written in the order its text names them:
/// bind them in that order, once for each time the text names one.
///
/// PostgreSQL numbers them (`$1`, `$2`, …). SQLite gets anonymous `?`:
/// sqlx asks SQLite the name of every parameter it binds, and SQLite finds
/// a name by walking the list of all the statement's named ones, so
/// numbered parameters cost time quadratic in their count. At 256 of them
/// a statement that walk was still a sixth of the control plane's CPU
/// while it ingested usage of 100,000 keys (`perf`, 2026-12-07).
pub(crate) struct Params {
    postgres: bool,
    named: usize,
}

impl Params {
    pub(crate) fn new(postgres: bool) -> Self {
        Self { postgres, named: 0 }
    }

    /// The next parameter.
    pub(crate) fn next(&mut self) -> String {
        let mut out = String::new();
        self.push_next(&mut out);
        out
    }

    /// `a, b, …`: `count` parameters, for `IN (…)`.
    pub(crate) fn list(&mut self, count: usize) -> String {
        let mut out = String::with_capacity(count * 8);
        self.push_list(&mut out, count);
        out
    }

    /// `(…), (…)`: `rows` groups of `per_row` parameters, each group's
    /// parameters followed by `tail` (constants every row has, or empty).
    /// Written into one string: a batch's statements name tens of
    /// thousands of parameters, and a string for each was 3.6 % of the
    /// control plane's CPU in a profile of usage ingest (`perf`, 2026-12-07).
    pub(crate) fn rows(&mut self, rows: usize, per_row: usize, tail: &str) -> String {
        let mut out = String::with_capacity(rows * (per_row * 8 + tail.len() + 4));
        for row in 0..rows {
            if row > 0 {
                out.push_str(", ");
            }
            out.push('(');
            self.push_list(&mut out, per_row);
            out.push_str(tail);
            out.push(')');
        }
        out
    }

    fn push_list(&mut self, out: &mut String, count: usize) {
        for i in 0..count {
            if i > 0 {
                out.push_str(", ");
            }
            self.push_next(out);
        }
    }

    fn push_next(&mut self, out: &mut String) {
        if self.postgres {
            self.named += 1;
            // Writing into a `String` cannot fail.
            let _ = write!(out, "${}", self.named);
        } else {
            out.push('?');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Params;

    #[test]
    fn postgres_numbers_parameters_in_the_order_written() {
        let mut p = Params::new(true);
        assert_eq!(p.next(), "$1");
        assert_eq!(p.rows(2, 2, ", 0"), "($2, $3, 0), ($4, $5, 0)");
        assert_eq!(p.list(2), "$6, $7");
    }

    #[test]
    fn sqlite_parameters_are_anonymous() {
        let mut p = Params::new(false);
        assert_eq!(p.next(), "?");
        assert_eq!(p.rows(2, 2, ""), "(?, ?), (?, ?)");
        assert_eq!(p.list(3), "?, ?, ?");
    }
}
