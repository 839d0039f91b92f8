//! What the usage store keeps, and for how long: rows that grow with every
//! second of traffic are pruned, rolled up or folded once nothing needs
//! them as they are, so a control plane that has run for a year is as fast
//! as on its first day. What is kept is a [`RetentionPolicy`].
//!
//! - **Batch ids** (`usage_batches`, one per Envoy per second of traffic)
//!   exist so that a batch sent again is counted once. An Envoy sends a
//!   batch again only until it is answered, seconds later unless the
//!   control plane is unreachable; ids older than the batch-id window are
//!   pruned. A batch counted, its answer lost, and sent again only after
//!   that long (the control plane unreachable from that Envoy all along)
//!   would be counted twice.
//! - **Quota ledger rows** (`quota_counts`) of periods that are over for
//!   every billing anchor: no standing, slice or alert reads them again.
//! - **Quota ledger rows of silent Envoys**: every Envoy process is a
//!   reporter of its own, so a fleet that is restarted daily leaves a row
//!   per key, period and restart. The rows of a reporter not heard from
//!   (`quota_reporters`, heartbeats included) for longer than the batch-id
//!   window are folded into one row per key and period under
//!   [`GONE_REPORTER`], with the largest `seq` of the rows folded: for every
//!   other reporter each key's sum and each key's newest `seq` stay what
//!   they were, which is all a receipt, a slice or an alert reads (see
//!   [`fold_chunk`]).
//! - **Hourly counts** (`usage_hourly`) of a UTC day that has been over for
//!   the policy's hourly days are rolled up into one `usage_daily` row per
//!   key, day and outcome; with a retention set, daily rows past it go.
//!
//! Each statement touches at most [`CHUNK`] rows, so a pass never holds a
//! long lock against the Envoys' reports (which write the current hour and
//! the ledger rows of live reporters: other rows than these). Several
//! replicas may prune at once: rows move with `DELETE … RETURNING`, which
//! hands each row to exactly one of them, and are added to their new row
//! in the same transaction, so none is counted twice or lost. Time is an
//! argument.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use crate::clock::{rfc3339_ms, Now};
use crate::db::{self, Db};
use crate::store::usage::{day_of, earliest_current_start, truncated, DAY};
use crate::store::{db_int, Params};

/// Rows deleted, rolled up or folded per statement.
pub const CHUNK: i64 = 1_000;

/// Rows one `INSERT` writes: six parameters each, well within SQLite's and
/// PostgreSQL's limits.
const ROWS_PER_INSERT: usize = 100;

/// Attempts at a chunk whose transaction PostgreSQL rolled back (a deadlock
/// with another replica's pass): it moves whole or not at all.
const CHUNK_ATTEMPTS: usize = 3;

/// The reporter id the ledger rows of silent Envoys are folded under. No
/// Envoy may use it: a usage batch naming it is refused.
pub const GONE_REPORTER: &str = "~gone";

/// The longest quota period, in days: usage of the current period must stay.
pub const LONGEST_PERIOD_DAYS: u64 = 31;

const DAY_MS: u64 = 86_400_000;

/// What the usage store keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    hourly_days: u64,
    retention_days: Option<u64>,
    batch_id_window_days: u64,
}

impl RetentionPolicy {
    /// Hourly counts stay hourly this long: the hour granularity spans at
    /// most 31 days, and a quota period is at most 31 days long, so both
    /// stay hourly whole, with a few days to spare.
    pub const DEFAULT_HOURLY_DAYS: u64 = 35;
    pub const DEFAULT_BATCH_ID_WINDOW_DAYS: u64 = 7;

    /// The policy, or why it cannot be one.
    pub fn new(
        hourly_days: u64,
        retention_days: Option<u64>,
        batch_id_window_days: u64,
    ) -> Result<Self, String> {
        if hourly_days == 0 {
            return Err("CONTROL_PLANE_USAGE_HOURLY_DAYS must be a positive number of days".into());
        }
        if batch_id_window_days == 0 {
            return Err(
                "CONTROL_PLANE_USAGE_BATCH_ID_WINDOW_DAYS must be a positive number of days".into(),
            );
        }
        if let Some(days) = retention_days {
            if days < hourly_days {
                return Err(format!(
                    "CONTROL_PLANE_USAGE_RETENTION_DAYS ({days}) must be at least \
                     CONTROL_PLANE_USAGE_HOURLY_DAYS ({hourly_days}): hourly counts are \
                     rolled up into days, and only days are deleted"
                ));
            }
            if days < LONGEST_PERIOD_DAYS {
                return Err(format!(
                    "CONTROL_PLANE_USAGE_RETENTION_DAYS ({days}) must be at least \
                     {LONGEST_PERIOD_DAYS}: a quota period lasts up to {LONGEST_PERIOD_DAYS} days, \
                     and the usage of the current one must stay whole"
                ));
            }
        }
        Ok(Self {
            hourly_days,
            retention_days,
            batch_id_window_days,
        })
    }

    pub fn hourly_days(&self) -> u64 {
        self.hourly_days
    }

    pub fn retention_days(&self) -> Option<u64> {
        self.retention_days
    }

    pub fn batch_id_window_days(&self) -> u64 {
        self.batch_id_window_days
    }

    /// The batch-id window in milliseconds.
    pub fn batch_id_window_ms(&self) -> u64 {
        self.batch_id_window_days.saturating_mul(DAY_MS)
    }

    /// Hours before this day (RFC 3339, midnight UTC) are rolled up at
    /// `now`: a day is rolled up once it has been over for the hourly days.
    pub fn roll_up_before(&self, now: Now) -> String {
        days_ago(now, self.hourly_days)
    }

    /// Days before this one are deleted at `now`, if there is a retention.
    pub fn delete_before(&self, now: Now) -> Option<String> {
        self.retention_days.map(|days| days_ago(now, days))
    }

    /// Batch ids received before this (RFC 3339, to the second, as they
    /// are written) are pruned at `now`.
    pub fn batch_ids_before(&self, now: Now) -> String {
        rfc3339_ms(now.unix_ms().saturating_sub(self.batch_id_window_ms()))
    }

    /// Reporters last heard from before this (Unix ms) are silent at `now`.
    pub fn silent_before_ms(&self, now: Now) -> i64 {
        db_int(now.unix_ms().saturating_sub(self.batch_id_window_ms()))
    }
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            hourly_days: Self::DEFAULT_HOURLY_DAYS,
            retention_days: None,
            batch_id_window_days: Self::DEFAULT_BATCH_ID_WINDOW_DAYS,
        }
    }
}

/// The start of the UTC day `days` before `now`.
fn days_ago(now: Now, days: u64) -> String {
    truncated(
        now.unix_ms().saturating_sub(days.saturating_mul(DAY_MS)),
        DAY,
    )
}

/// What one pass pruned.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub batch_ids: u64,
    /// Ledger rows of periods that are over.
    pub quota_rows: u64,
    /// Ledger rows of silent reporters folded into [`GONE_REPORTER`] rows.
    pub merged_quota_rows: u64,
    /// Hourly usage rows rolled up into daily rows.
    pub rolled_up_rows: u64,
    /// Daily usage rows deleted past the retention.
    pub usage_rows: u64,
}

/// Prunes, rolls up and folds what `policy` says at `now`.
pub async fn prune(db: &Db, now: Now, policy: &RetentionPolicy) -> Result<Pruned, sqlx::Error> {
    let mut pruned = Pruned::default();
    let before = policy.batch_ids_before(now);
    // Batch ids are written to the second: text order is time order.
    pruned.batch_ids = in_chunks(db, || {
        delete(
            db,
            "DELETE FROM usage_batches WHERE id IN
               (SELECT id FROM usage_batches WHERE received_at < $1 LIMIT $2)",
            &before,
        )
    })
    .await?;
    let over = db_int(earliest_current_start(now.unix_ms()));
    pruned.quota_rows = in_chunks(db, || async move {
        let done = sqlx::query(
            "DELETE FROM quota_counts WHERE period_start_ms < $1 AND key_id IN
               (SELECT key_id FROM quota_counts WHERE period_start_ms < $1 LIMIT $2)",
        )
        .bind(over)
        .bind(CHUNK)
        .execute(db)
        .await?;
        Ok(done.rows_affected())
    })
    .await?;
    let silent_before = policy.silent_before_ms(now);
    pruned.merged_quota_rows = in_chunks(db, || fold_chunk(db, silent_before)).await?;
    forget_reporters(db, silent_before).await?;
    let before = policy.roll_up_before(now);
    pruned.rolled_up_rows = in_chunks(db, || roll_up_chunk(db, &before)).await?;
    if let Some(before) = policy.delete_before(now) {
        pruned.usage_rows = in_chunks(db, || {
            delete(
                db,
                "DELETE FROM usage_daily WHERE (key_id, day, outcome) IN
                   (SELECT key_id, day, outcome FROM usage_daily WHERE day < $1 LIMIT $2)",
                &before,
            )
        })
        .await?;
    }
    Ok(pruned)
}

/// How long a pass waits between chunks on SQLite. SQLite has one writer:
/// a usage report that finds it busy sleeps in SQLite's busy handler and
/// looks again up to 100 ms later, so chunks back to back would keep it
/// out until the pass ends (seconds, measured: see the README). A pause
/// longer than that sleep lets every waiting writer in. PostgreSQL locks
/// rows, none of which a report writes, so its passes do not pause.
const SQLITE_PAUSE: Duration = Duration::from_millis(110);

/// Runs `chunk` until it finds nothing more to do; the rows it handled.
/// Another replica's pass may take rows this one was about to, so "less
/// than a chunk" is no sign of the end: only nothing is.
async fn in_chunks<F, Fut>(db: &Db, mut chunk: F) -> Result<u64, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, sqlx::Error>>,
{
    let pause = (!db::is_postgres(db)).then_some(SQLITE_PAUSE);
    let mut total = 0u64;
    let mut attempt = 1;
    loop {
        match chunk().await {
            Ok(0) => return Ok(total),
            Ok(done) => {
                total = total.saturating_add(done);
                attempt = 1;
                match pause {
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => tokio::task::yield_now().await,
                }
            }
            Err(e) if db::is_rolled_back(&e) && attempt < CHUNK_ATTEMPTS => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// One chunk of a `DELETE` whose `$1` is a cutoff and `$2` the chunk size.
async fn delete(db: &Db, sql: &'static str, before: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(sql)
        .bind(before)
        .bind(CHUNK)
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}

/// One rolled-up row: (key_id, day, outcome) → (tenant_id, count, cost).
type DayRows = BTreeMap<(String, String, String), (Option<String>, i64, i64)>;

/// Moves up to a chunk of hours before `before` into their days.
async fn roll_up_chunk(db: &Db, before: &str) -> Result<u64, sqlx::Error> {
    let mut tx = db.begin().await?;
    let hours: Vec<(String, Option<String>, String, String, i64, i64)> = sqlx::query_as(
        "DELETE FROM usage_hourly WHERE (key_id, hour, outcome) IN
           (SELECT key_id, hour, outcome FROM usage_hourly WHERE hour < $1 LIMIT $2)
         RETURNING key_id, tenant_id, hour, outcome, count, cost",
    )
    .bind(before)
    .bind(CHUNK)
    .fetch_all(&mut *tx)
    .await?;
    let mut days = DayRows::new();
    for (key_id, tenant_id, hour, outcome, count, cost) in &hours {
        let day = days
            .entry((key_id.clone(), day_of(hour), outcome.clone()))
            .or_insert((None, 0, 0));
        if day.0.is_none() {
            day.0.clone_from(tenant_id);
        }
        day.1 = day.1.saturating_add(*count);
        day.2 = day.2.saturating_add(*cost);
    }
    // In key order, as every pass writes them: two passes at once never
    // wait for each other's rows in opposite orders.
    let days: Vec<_> = days.into_iter().collect();
    for part in days.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO usage_daily (key_id, tenant_id, day, outcome, count, cost) VALUES {}
             ON CONFLICT (key_id, day, outcome) DO UPDATE
             SET count = usage_daily.count + excluded.count,
                 cost = usage_daily.cost + excluded.cost,
                 tenant_id = COALESCE(usage_daily.tenant_id, excluded.tenant_id)",
            Params::new(db::is_postgres(db)).rows(part.len(), 6, "")
        );
        let mut insert = sqlx::query(&sql);
        for ((key_id, day, outcome), (tenant_id, count, cost)) in part {
            insert = insert
                .bind(key_id)
                .bind(tenant_id.as_deref())
                .bind(day)
                .bind(outcome)
                .bind(*count)
                .bind(*cost);
        }
        insert.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(u64::try_from(hours.len()).unwrap_or(u64::MAX))
}

/// One folded row: (key_id, period_start_ms) → (key_hash, used, seq).
type FoldedRows = BTreeMap<(String, i64), (String, i64, i64)>;

/// Folds up to a chunk of the ledger rows of reporters silent since before
/// `silent_before_ms` into one [`GONE_REPORTER`] row per key and period.
///
/// Why a receipt to any other reporter `L` stays what it was: it names a
/// key when one of the key's rows not `L`'s has a `seq` in its window (and
/// `L` counts the key too, or its quota is used up, or `L`'s own row was
/// first written in the window: the fold changes none of these), and
/// tells the sum of those rows in the current period. The rows folded and
/// the `GONE_REPORTER` row become one row holding their sum and their
/// largest `seq`: the sums are the same, and so is each key's newest `seq`
/// in any window that reaches the head, which every receipt's does. No new
/// `seq` is needed, so the fold never takes the sequence's row that every
/// usage report holds until it commits. Slices read what each Envoy the
/// allocator still tracks counted, and the rest as one figure: a reporter
/// silent for days was forgotten by the allocator long before (after 5
/// minutes, `shares::SharesConfig`), so its rows were already in that rest.
async fn fold_chunk(db: &Db, silent_before_ms: i64) -> Result<u64, sqlx::Error> {
    let mut tx = db.begin().await?;
    let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
        "DELETE FROM quota_counts WHERE (key_id, period_start_ms, reporter_id) IN
           (SELECT c.key_id, c.period_start_ms, c.reporter_id
            FROM quota_counts c JOIN quota_reporters r ON r.reporter_id = c.reporter_id
            WHERE r.last_seen_ms < $1 AND c.reporter_id <> $2 LIMIT $3)
         RETURNING key_id, key_hash, period_start_ms, used, seq",
    )
    .bind(silent_before_ms)
    .bind(GONE_REPORTER)
    .bind(CHUNK)
    .fetch_all(&mut *tx)
    .await?;
    let mut folded = FoldedRows::new();
    for (key_id, key_hash, period_start_ms, used, seq) in &rows {
        let row = folded
            .entry((key_id.clone(), *period_start_ms))
            .or_insert_with(|| (key_hash.clone(), 0, *seq));
        row.1 = row.1.saturating_add(*used);
        row.2 = row.2.max(*seq);
    }
    let folded: Vec<_> = folded.into_iter().collect();
    for part in folded.chunks(ROWS_PER_INSERT) {
        let values = Params::new(db::is_postgres(db)).rows(part.len(), 6, "");
        let sql = format!(
            "INSERT INTO quota_counts (key_id, key_hash, period_start_ms, reporter_id, used, seq)
             VALUES {values}
             ON CONFLICT (key_id, period_start_ms, reporter_id) DO UPDATE
             SET used = quota_counts.used + excluded.used,
                 seq = CASE WHEN excluded.seq > quota_counts.seq
                            THEN excluded.seq ELSE quota_counts.seq END"
        );
        let mut insert = sqlx::query(&sql);
        for ((key_id, period_start_ms), (key_hash, used, seq)) in part {
            insert = insert
                .bind(key_id)
                .bind(key_hash)
                .bind(*period_start_ms)
                .bind(GONE_REPORTER)
                .bind(*used)
                .bind(*seq);
        }
        insert.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(u64::try_from(rows.len()).unwrap_or(u64::MAX))
}

/// Forgets silent reporters that have no ledger rows left (folded, or all
/// in periods that are over): one that reports again is written anew.
async fn forget_reporters(db: &Db, silent_before_ms: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM quota_reporters WHERE last_seen_ms < $1 AND NOT EXISTS
           (SELECT 1 FROM quota_counts c WHERE c.reporter_id = quota_reporters.reporter_id)",
    )
    .bind(silent_before_ms)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Records that `reporter_id` reported at `now_ms` (never moving it back:
/// replicas write in no particular order).
pub async fn reporter_heard(db: &Db, reporter_id: &str, now_ms: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO quota_reporters (reporter_id, last_seen_ms) VALUES ($1, $2)
         ON CONFLICT (reporter_id) DO UPDATE
         SET last_seen_ms = CASE WHEN excluded.last_seen_ms > quota_reporters.last_seen_ms
                                 THEN excluded.last_seen_ms ELSE quota_reporters.last_seen_ms END",
    )
    .bind(reporter_id)
    .bind(now_ms)
    .execute(db)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Now {
        let ms = humantime::parse_rfc3339(text)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        Now::from_unix_ms(u64::try_from(ms).unwrap())
    }

    #[test]
    fn a_day_rolls_up_once_it_has_been_over_for_the_hourly_days() {
        let policy = RetentionPolicy::new(35, Some(400), 7).unwrap();
        // 2026-11-17 ended at 2026-11-18T00:00Z; 35 days after that is 2026-12-23T00:00Z.
        assert_eq!(
            policy.roll_up_before(at("2026-12-22T23:59:59.999Z")),
            "2026-11-17T00:00:00Z"
        );
        assert_eq!(
            policy.roll_up_before(at("2026-12-23T00:00:00Z")),
            "2026-11-18T00:00:00Z"
        );
        assert_eq!(
            policy.delete_before(at("2026-12-23T00:00:00Z")).as_deref(),
            Some("2025-11-18T00:00:00Z")
        );
        assert_eq!(
            RetentionPolicy::default().delete_before(at("2026-12-23T00:00:00Z")),
            None
        );
        assert_eq!(
            policy.batch_ids_before(at("2026-12-23T00:00:00.999Z")),
            "2026-12-16T00:00:00Z"
        );
    }

    #[test]
    fn a_policy_that_would_lose_counts_is_refused() {
        assert_eq!(
            RetentionPolicy::new(35, None, 7),
            Ok(RetentionPolicy::default())
        );
        for (hourly, retention, window, says) in [
            (
                0,
                None,
                7,
                "CONTROL_PLANE_USAGE_HOURLY_DAYS must be a positive",
            ),
            (
                35,
                None,
                0,
                "CONTROL_PLANE_USAGE_BATCH_ID_WINDOW_DAYS must be a positive",
            ),
            (
                35,
                Some(34),
                7,
                "(34) must be at least CONTROL_PLANE_USAGE_HOURLY_DAYS (35)",
            ),
            (7, Some(30), 7, "(30) must be at least 31"),
        ] {
            let refused = RetentionPolicy::new(hourly, retention, window).unwrap_err();
            assert!(refused.contains(says), "{refused}");
        }
        assert!(RetentionPolicy::new(35, Some(35), 7).is_ok());
        assert!(RetentionPolicy::new(1, Some(31), 1).is_ok());
    }
}
