//! The retention worker: prunes, rolls up and folds what the usage store
//! no longer needs as it is (see `store::retention`) a minute after start
//! and every ten minutes after, as the [`RetentionArgs`] the server started
//! with say. Several replicas may run it at once: each row is moved or
//! deleted by one pass only, so two passes at once only share the work.

use std::time::Duration;

use crate::state::AppState;
use crate::store::retention::{prune, RetentionPolicy};

const FIRST_PASS: Duration = Duration::from_secs(60);
const EVERY: Duration = Duration::from_secs(600);

/// How long usage is kept, as `control-plane serve` takes it.
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    /// Days a UTC day's usage stays hourly once the day is over; it is then
    /// rolled up into one row per key, day and outcome, and the usage API
    /// answers whole days for it, at `granularity=hour` too.
    #[arg(
        long,
        env = "CONTROL_PLANE_USAGE_HOURLY_DAYS",
        default_value_t = RetentionPolicy::DEFAULT_HOURLY_DAYS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub usage_hourly_days: u64,
    /// Days a day's usage is kept once the day is over; unset: for ever. At
    /// least the hourly days, and at least 31 (a quota period's usage stays whole).
    #[arg(
        long,
        env = "CONTROL_PLANE_USAGE_RETENTION_DAYS",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub usage_retention_days: Option<u64>,
    /// Days a usage batch id is kept, so that a batch sent again is counted
    /// once: a batch sent again after longer is counted twice. Envoys silent
    /// for longer have their quota ledger rows folded together.
    #[arg(
        long,
        env = "CONTROL_PLANE_USAGE_BATCH_ID_WINDOW_DAYS",
        default_value_t = RetentionPolicy::DEFAULT_BATCH_ID_WINDOW_DAYS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub usage_batch_id_window_days: u64,
}

impl RetentionArgs {
    /// The policy these say, or why they say none.
    pub fn policy(&self) -> Result<RetentionPolicy, String> {
        RetentionPolicy::new(
            self.usage_hourly_days,
            self.usage_retention_days,
            self.usage_batch_id_window_days,
        )
    }
}

pub async fn run(state: AppState) {
    let mut shutting_down = state.shutting_down.subscribe();
    let mut wait = FIRST_PASS;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutting_down.wait_for(|down| *down) => return,
        }
        wait = EVERY;
        match prune(&state.db, state.now(), &state.retention).await {
            Ok(pruned) => {
                state.metrics.pruned(pruned);
                if pruned != Default::default() {
                    tracing::info!(
                        batch_ids = pruned.batch_ids,
                        quota_rows = pruned.quota_rows,
                        merged_quota_rows = pruned.merged_quota_rows,
                        rolled_up_rows = pruned.rolled_up_rows,
                        usage_rows = pruned.usage_rows,
                        "pruned, rolled up and merged usage rows"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "pruning usage rows failed; retrying later"),
        }
    }
}
