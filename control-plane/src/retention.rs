//! The retention worker: prunes what the usage store no longer needs (see
//! `store::retention`) a minute after start and every ten minutes after.
//! Several replicas may run it at once: each pass deletes only rows no one
//! needs, so two passes at once only share the work.

use std::time::Duration;

use crate::state::AppState;
use crate::store::retention::prune;

const FIRST_PASS: Duration = Duration::from_secs(60);
const EVERY: Duration = Duration::from_secs(600);

pub async fn run(state: AppState) {
    let mut shutting_down = state.shutting_down.subscribe();
    let mut wait = FIRST_PASS;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutting_down.wait_for(|down| *down) => return,
        }
        wait = EVERY;
        match prune(&state.db, state.now()).await {
            Ok(pruned) => {
                state.metrics.pruned(pruned);
                if pruned.batch_ids + pruned.quota_rows > 0 {
                    tracing::info!(
                        batch_ids = pruned.batch_ids,
                        quota_rows = pruned.quota_rows,
                        "pruned usage rows no longer needed"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "pruning usage rows failed; retrying later"),
        }
    }
}
