//! Whether the database answers, so that while it does not, a request that
//! needs it is refused at once with `503 database_unavailable` instead of
//! waiting out the pool's 10 s for a connection that cannot come.
//!
//! The pool alone cannot tell an outage from a busy database: both end in
//! its acquire timeout. So a watcher keeps one connection of its own,
//! outside the pool, and pings it every second: an error, or no answer
//! within [`PATIENCE`], marks the database down, the first answer marks it
//! up again. Requests already waiting when it goes down are answered then
//! too, rather than when the pool gives up on them. Nothing else changes
//! state: the pool reconnects by itself, so the control plane recovers
//! without a restart. Only on PostgreSQL; a SQLite file is taken to answer
//! always.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sqlx::{AnyConnection, Connection};
use tokio::sync::Notify;

use crate::error::ApiError;
use crate::state::AppState;

const EVERY: Duration = Duration::from_secs(1);
/// Longer than any ping of a database that is merely busy should take.
const PATIENCE: Duration = Duration::from_secs(3);

/// Since when the database has not answered; nothing while it answers.
#[derive(Debug, Default)]
pub struct Reachability {
    /// Milliseconds since the epoch, plus one so that 0 can mean "answers".
    down_since: AtomicU64,
    /// Wakes the requests waiting when it goes down.
    going_down: Notify,
}

impl Reachability {
    pub fn is_down(&self) -> bool {
        self.down_since.load(Ordering::Relaxed) != 0
    }

    /// Marks it down; true when it answered until now.
    fn went_down(&self, now_ms: u64) -> bool {
        let went = self
            .down_since
            .compare_exchange(0, now_ms + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if went {
            self.going_down.notify_waiters();
        }
        went
    }

    /// Marks it up; since when it was down, if it was.
    fn came_back(&self) -> Option<u64> {
        match self.down_since.swap(0, Ordering::Relaxed) {
            0 => None,
            since => Some(since - 1),
        }
    }
}

/// Watches `url` until shutdown, into `state.reachability`.
pub async fn watch(state: AppState, url: String) {
    let mut shutting_down = state.shutting_down.subscribe();
    let mut connection: Option<AnyConnection> = None;
    loop {
        let answered = match ping(&url, &mut connection).await {
            Ok(()) => None,
            Err(e) => {
                connection = None;
                Some(e)
            }
        };
        let now_ms = state.now().unix_ms();
        match answered {
            None => {
                if let Some(since) = state.reachability.came_back() {
                    tracing::warn!(
                        after_ms = now_ms.saturating_sub(since),
                        "the database answers again"
                    );
                }
            }
            Some(e) => {
                if state.reachability.went_down(now_ms) {
                    tracing::error!(
                        error = %e,
                        "the database does not answer; requests that need it get 503 database_unavailable"
                    );
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutting_down.wait_for(|down| *down) => return,
        }
    }
}

/// One ping, on the watcher's connection, opening it first if need be.
async fn ping(url: &str, connection: &mut Option<AnyConnection>) -> Result<(), String> {
    let open = match connection {
        Some(open) => open,
        None => {
            let opened = tokio::time::timeout(PATIENCE, AnyConnection::connect(url))
                .await
                .map_err(|_| format!("no connection within {PATIENCE:?}"))?
                .map_err(|e| e.to_string())?;
            connection.insert(opened)
        }
    };
    tokio::time::timeout(PATIENCE, open.ping())
        .await
        .map_err(|_| format!("no answer within {PATIENCE:?}"))?
        .map_err(|e| e.to_string())
}

/// Refuses at once while the database does not answer, and when it stops
/// answering while the request waits. A transaction cut off so is rolled
/// back, as the outage would have rolled it back anyway.
pub async fn refuse_while_down(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let going_down = state.reachability.going_down.notified();
    tokio::pin!(going_down);
    // Registered before the check, so a fall in between still wakes it.
    going_down.as_mut().enable();
    if state.reachability.is_down() {
        return ApiError::database_unavailable().into_response();
    }
    tokio::select! {
        response = next.run(request) => response,
        () = going_down => ApiError::database_unavailable().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_and_back_up_carry_when_it_went_down() {
        let reachability = Reachability::default();
        assert!(!reachability.is_down());
        assert_eq!(reachability.came_back(), None);
        // The epoch itself is a time like any other.
        assert!(reachability.went_down(0));
        assert!(!reachability.went_down(5_000), "already down since 0");
        assert!(reachability.is_down());
        assert_eq!(reachability.came_back(), Some(0));
        assert!(!reachability.is_down());
        assert!(reachability.went_down(7_000));
        assert_eq!(reachability.came_back(), Some(7_000));
    }
}
