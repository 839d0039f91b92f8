//! What the usage store keeps, and for how long: rows that grow with every
//! second of traffic are pruned once nothing can need them, so a control
//! plane that has run for a year is as fast as on its first day.
//!
//! - **Batch ids** (`usage_batches`, one per Envoy per second of traffic)
//!   exist so that a batch sent again is counted once. An Envoy sends a
//!   batch again only until it is answered, seconds later unless the
//!   control plane is unreachable; ids older than [`BATCH_ID_WINDOW`] are
//!   pruned. A batch counted, its answer lost, and sent again only after
//!   that long (the control plane unreachable from that Envoy all along)
//!   would be counted twice.
//! - **Quota ledger rows** (`quota_counts`) of periods that are over for
//!   every billing anchor: no standing, slice or alert reads them again.
//!   (Usage read back through the API comes from the hourly counts, which
//!   stay.)
//!
//! Each pass deletes at most [`CHUNK`] rows per statement, so it never
//! holds a long lock against the Envoys' reports. Time is an argument.

use std::time::Duration;

use crate::clock::{rfc3339_ms, Now};
use crate::db::Db;
use crate::store::db_int;
use crate::store::usage::earliest_current_start;

/// How long a batch id is kept.
pub const BATCH_ID_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// Rows deleted per statement.
pub const CHUNK: i64 = 1_000;

/// What one pass pruned.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub batch_ids: u64,
    pub quota_rows: u64,
}

/// Prunes what nothing can need any more at `now`.
pub async fn prune(db: &Db, now: Now) -> Result<Pruned, sqlx::Error> {
    let window_ms = u64::try_from(BATCH_ID_WINDOW.as_millis()).unwrap_or(u64::MAX);
    let cutoff = rfc3339_ms(now.unix_ms().saturating_sub(window_ms));
    let mut pruned = Pruned::default();
    loop {
        // Batch ids are written to the second: text order is time order.
        let done = sqlx::query(
            "DELETE FROM usage_batches WHERE id IN
               (SELECT id FROM usage_batches WHERE received_at < $1 LIMIT $2)",
        )
        .bind(&cutoff)
        .bind(CHUNK)
        .execute(db)
        .await?
        .rows_affected();
        pruned.batch_ids += done;
        if done < CHUNK as u64 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let over = db_int(earliest_current_start(now.unix_ms()));
    loop {
        let done = sqlx::query(
            "DELETE FROM quota_counts WHERE period_start_ms < $1 AND key_id IN
               (SELECT key_id FROM quota_counts WHERE period_start_ms < $1 LIMIT $2)",
        )
        .bind(over)
        .bind(CHUNK)
        .execute(db)
        .await?
        .rows_affected();
        pruned.quota_rows += done;
        if done == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok(pruned)
}
