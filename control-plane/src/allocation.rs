//! One share allocator across control-plane replicas.
//!
//! Shares of fleet-wide limits and slices of quotas hold only if one
//! allocator grants them all (`shares`). With several replicas on one
//! PostgreSQL, the replica holding a PostgreSQL advisory lock leads: it
//! writes its address (`--advertise-url`) to `allocator_leader`, and every
//! other replica, after counting a usage batch itself, forwards what the
//! batch asks of the allocator (`shares::Report`) to it
//! (`POST /v1/internal/leases`, with the sync token) and answers the Envoy
//! with the leader's leases. The lock is held by a session: when the
//! leader dies its connection does, the lock is free, and another replica
//! takes it within [`RETRY`]. A new leader learns for a lease's length
//! before it leases anything, as a restarted one does, since the Envoys
//! still hold the last leader's leases. While no leader answers, a
//! replica answers without leases: Envoys keep theirs until they lapse
//! (see `tollgate_core::fleet`). On SQLite there is one replica: it leads.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tollgate_core::wire::FleetLeases;

use crate::shares::{Allocator, Report, Role, SharesConfig};
use crate::state::AppState;
use crate::store::proxies;

/// The advisory lock's key: "tollgate allocator".
const LOCK: i64 = 0x746f_6c6c_6761_7465;
/// How often a replica tries for the lock, and the leader checks it still
/// holds it.
pub const RETRY: Duration = Duration::from_secs(2);
/// How long a forwarded report may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Contends for the lead until the server shuts down.
pub async fn contend(state: AppState, database_url: String, advertise_url: String) {
    let mut shutting_down = state.shutting_down.subscribe();
    tokio::select! {
        _ = contend_forever(&state, &database_url, &advertise_url) => {}
        _ = shutting_down.wait_for(|down| *down) => {}
    }
}

async fn contend_forever(state: &AppState, database_url: &str, advertise_url: &str) {
    loop {
        match PgConnection::connect(database_url).await {
            Ok(mut session) => contend_on(state, &mut session, advertise_url).await,
            Err(e) => tracing::warn!(error = %e, "cannot connect to contend for the allocator"),
        }
        // The session is gone, and with it any lock it held.
        if state.leasing.role() == Role::Leader {
            state.leasing.set_role(Role::Follower(String::new()));
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Tries for the lock on `session` until the session fails.
async fn contend_on(state: &AppState, session: &mut PgConnection, advertise_url: &str) {
    loop {
        let held = state.leasing.role() == Role::Leader;
        let got: Result<bool, sqlx::Error> = if held {
            sqlx::query_scalar("SELECT TRUE")
                .fetch_one(&mut *session)
                .await
        } else {
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LOCK)
                .fetch_one(&mut *session)
                .await
        };
        match got {
            Err(e) => {
                tracing::warn!(error = %e, "lost the session the allocator's lock is held on");
                return;
            }
            Ok(true) if !held => {
                if let Err(e) = lead(state, advertise_url).await {
                    tracing::warn!(error = %e, "cannot announce this replica as the allocator");
                    return;
                }
            }
            Ok(true) => {}
            Ok(false) => match leader_url(state).await {
                Ok(url) => state.leasing.set_role(Role::Follower(url)),
                Err(e) => tracing::warn!(error = %e, "cannot read where the allocator is"),
            },
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Takes the lead: says where to reach it, and starts an allocator that
/// learns first if Envoys were live.
async fn lead(state: &AppState, advertise_url: &str) -> Result<(), sqlx::Error> {
    let now = state.now();
    sqlx::query(
        "INSERT INTO allocator_leader (id, url, since_ms) VALUES (1, $1, $2)
         ON CONFLICT (id) DO UPDATE SET url = excluded.url, since_ms = excluded.since_ms",
    )
    .bind(advertise_url)
    .bind(now.db_ms())
    .execute(&state.db)
    .await?;
    state.leasing.replace(fresh_allocator(state).await?);
    state.leasing.set_role(Role::Leader);
    tracing::info!(
        url = advertise_url,
        "this replica allocates shares for the fleet"
    );
    Ok(())
}

async fn leader_url(state: &AppState) -> Result<String, sqlx::Error> {
    let url: Option<String> = sqlx::query_scalar("SELECT url FROM allocator_leader WHERE id = 1")
        .fetch_optional(&state.db)
        .await?;
    Ok(url.unwrap_or_default())
}

/// An allocator for this replica, from now: one that learns for a lease's
/// length if Envoys were live lately, since they may hold shares an earlier
/// allocator leased (this replica's last run, or another replica's).
pub async fn fresh_allocator(state: &AppState) -> Result<Allocator, sqlx::Error> {
    let config = SharesConfig::default();
    let now = state.now();
    let window = config.valid_ms + state.fleet.config.write_every_ms;
    let since = now
        .db_ms()
        .saturating_sub(i64::try_from(window).unwrap_or(i64::MAX));
    let live = proxies::count_seen_since(&state.db, since).await? > 0;
    if live {
        tracing::info!(
            "Envoys were live: leasing shares of fleet-wide limits after a lease length"
        );
    }
    Ok(Allocator::new(config, now.unix_ms(), live))
}

/// The allocating replica's answer to a forwarded report: the leases, and
/// the keys it slices (so that the forwarding replica names their use in
/// the reports it forwards next).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Allocated {
    pub leases: Option<FleetLeases>,
    /// Hashes of the keys whose quota is sliced.
    pub sliced: Vec<String>,
}

/// The leader's answer to `report`; `None` if it could not be had.
pub async fn forward(state: &AppState, url: &str, report: &Report) -> Option<FleetLeases> {
    if url.is_empty() {
        return None;
    }
    let token = state.leasing.forwarding_token()?;
    let sent = state
        .leasing
        .client()
        .post(format!("{}/v1/internal/leases", url.trim_end_matches('/')))
        .bearer_auth(token)
        .timeout(FORWARD_TIMEOUT)
        .json(report)
        .send()
        .await;
    let answer = match sent {
        Ok(response) if response.status().is_success() => response.json::<Allocated>().await,
        Ok(response) => {
            tracing::warn!(status = %response.status(), url, "the allocator refused a forwarded report");
            return None;
        }
        Err(e) => Err(e),
    };
    let allocated = answer
        .inspect_err(|e| tracing::warn!(error = %e, url, "cannot reach the allocator"))
        .ok()?;
    state.leasing.sliced_elsewhere(allocated.sliced);
    allocated.leases
}
