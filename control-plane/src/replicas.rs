//! Replicas on one PostgreSQL: each follows the others' commits.
//!
//! A replica learns of its own commits directly; commits made through another
//! replica arrive as `NOTIFY tollgate_config, '<version>'` (queued by
//! `store::feed::claim_version`, delivered on commit). Each one wakes the long-polls
//! held here, so an Envoy syncing from this replica sees the change at once.
//! Proxies' newly applied versions arrive the same way (`NOTIFY
//! tollgate_applied`, sent by `fleet::Registry::saw`): each wakes the writes
//! waiting here for propagation (`receipt`), since the proxy that applied
//! the change may poll another replica.
//! Notifications sent while the listening connection was down are lost, so
//! every (re)connection re-reads the committed version, and wakes the
//! waiting writes to re-read the registry, instead of trusting the channel
//! alone.

use std::time::Duration;

use sqlx::postgres::PgListener;

use crate::state::AppState;
use crate::store::{feed, proxies};

/// Follows other replicas' commits until the server shuts down.
pub async fn follow(state: AppState, url: String) {
    let mut shutting_down = state.shutting_down.subscribe();
    tokio::select! {
        _ = listen(&state, &url) => {}
        _ = shutting_down.wait_for(|down| *down) => {}
    }
}

async fn listen(state: &AppState, url: &str) {
    loop {
        match PgListener::connect(url).await {
            Ok(mut listener) => {
                let channels = [feed::CHANGES_CHANNEL, proxies::APPLIED_CHANNEL];
                if let Err(e) = listener.listen_all(channels).await {
                    tracing::warn!(error = %e, "cannot LISTEN for other replicas' changes");
                } else {
                    catch_up(state).await;
                    relay(state, &mut listener).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to LISTEN for changes"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Passes notifications on until the connection fails.
async fn relay(state: &AppState, listener: &mut PgListener) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) if notification.channel() == proxies::APPLIED_CHANNEL => {
                state.fleet.acknowledged();
            }
            Ok(Some(notification)) => match notification.payload().parse::<i64>() {
                Ok(version) => state.published(version),
                Err(_) => catch_up(state).await,
            },
            // The connection dropped; notifications may have been missed.
            Ok(None) => catch_up(state).await,
            Err(e) => {
                tracing::warn!(error = %e, "lost the LISTEN connection");
                return;
            }
        }
    }
}

async fn catch_up(state: &AppState) {
    state.fleet.acknowledged();
    match feed::current_version(&state.db).await {
        Ok(version) => state.published(i64::try_from(version).unwrap_or(i64::MAX)),
        Err(e) => tracing::warn!(error = %e, "cannot read the config version"),
    }
}
