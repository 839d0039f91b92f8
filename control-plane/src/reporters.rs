//! When each usage reporter (an Envoy process) was last heard from, so that
//! the ledger rows of one silent for days can be folded (`store::retention`)
//! and those of one still reporting never are.
//!
//! Every Envoy reports about every second, heartbeats included; writing
//! each time would cost the database a write per Envoy per second for
//! nothing. Each replica writes a reporter's time at most every
//! [`WRITE_EVERY_MS`] instead, so the stored time is at most that much
//! behind: a reporter is taken for silent only after the batch-id window
//! (a day at least), far longer.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::clock::Now;
use crate::db::Db;
use crate::store::retention::reporter_heard;

/// How often a replica writes that a reporter is still reporting.
pub const WRITE_EVERY_MS: u64 = 3_600_000;

/// Most reporters one replica remembers writing; past it, those written
/// longer ago than [`WRITE_EVERY_MS`] are forgotten (it only costs an early write).
const MAX_REMEMBERED: usize = 100_000;

/// What this replica last wrote of each reporter, and when.
#[derive(Debug, Default)]
pub struct Reporters {
    written: Mutex<HashMap<String, u64>>,
}

impl Reporters {
    /// Records that `reporter_id` reported at `now`, if it is due. A failure
    /// is logged, never passed on: the report is served regardless, and
    /// written on the next one.
    pub async fn heard(&self, db: &Db, reporter_id: &str, now: Now) {
        let due = {
            let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            written
                .get(reporter_id)
                .is_none_or(|at| now.unix_ms().saturating_sub(*at) >= WRITE_EVERY_MS)
        };
        if !due {
            return;
        }
        if let Err(e) = reporter_heard(db, reporter_id, now.db_ms()).await {
            tracing::warn!(error = %e, "cannot record that a usage reporter reported");
            return;
        }
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if written.len() >= MAX_REMEMBERED {
            let since = now.unix_ms().saturating_sub(WRITE_EVERY_MS);
            written.retain(|_, at| *at >= since);
        }
        written.insert(reporter_id.to_owned(), now.unix_ms());
    }
}
