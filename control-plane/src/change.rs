//! The one way a change is written: begin it, claim the config version the
//! Envoys will learn it by, record who did what, commit, and wake the
//! long-polls. Written out by hand in each handler, a step was one line away
//! from being forgotten; here each is part of the type.
//!
//! A [`Change`] is a transaction. Dropped without [`Change::commit`] (an early
//! `return Err(…)`, a `?`), it rolls back and leaves nothing behind. `commit`
//! refuses a change that recorded no audit entry, so no write goes
//! unrecorded. Changes the Envoys never see (tenant tokens, webhooks) are
//! [`Change<Unpublished>`]: audited like the rest, with no config version.

use std::cell::Cell;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::clock::Now;
use crate::db::{self, Tx};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::audit::{self, Entry};
use crate::store::{feed, proxies};

tokio::task_local! {
    /// The config version the request being served committed, for
    /// `receipt::receipts` to answer with: set by [`Change::commit`], so
    /// every write that publishes carries it without its handler saying so.
    pub static COMMITTED: Cell<Option<i64>>;
}

/// A change every Envoy learns of, under the config version it claimed.
pub struct Published {
    version: i64,
    versions: Arc<watch::Sender<u64>>,
}

/// A change only the control plane keeps: no config version, no wake-up.
pub struct Unpublished;

/// What a committed change tells the Envoys' long-polls.
pub trait Feed {
    fn published(&self);
}

impl Feed for Published {
    fn published(&self) {
        AppState::publish_to(&self.versions, self.version);
        // Outside a request (the seed, a test calling a handler's function)
        // there is no receipt to write.
        let _ = COMMITTED.try_with(|c| c.set(c.get().max(Some(self.version))));
    }
}

impl Feed for Unpublished {
    fn published(&self) {}
}

/// One write transaction, from its start to its audit entry and commit.
pub struct Change<F: Feed = Published> {
    tx: Tx,
    actor: String,
    now: Now,
    audited: usize,
    feed: F,
}

impl Change<Published> {
    /// Begins a change the Envoys must learn of, and claims its config version.
    pub async fn begin(state: &AppState, actor: impl Into<String>, now: Now) -> ApiResult<Self> {
        let mut tx = state.db.begin().await?;
        let version = feed::claim_version(&mut tx, db::is_postgres(&state.db)).await?;
        proxies::record_version_time(&mut tx, version, now.db_ms()).await?;
        Ok(Self {
            tx,
            actor: actor.into(),
            now,
            audited: 0,
            feed: Published {
                version,
                versions: state.versions.clone(),
            },
        })
    }

    /// The config version this change's rows are written under.
    pub fn version(&self) -> i64 {
        self.feed.version
    }
}

impl Change<Unpublished> {
    /// Begins a change the Envoys never see: audited, without a config version.
    pub async fn begin_unpublished(
        state: &AppState,
        actor: impl Into<String>,
        now: Now,
    ) -> ApiResult<Self> {
        Ok(Self {
            tx: state.db.begin().await?,
            actor: actor.into(),
            now,
            audited: 0,
            feed: Unpublished,
        })
    }
}

impl<F: Feed> Change<F> {
    /// The transaction, for the store's functions.
    pub fn tx(&mut self) -> &mut Tx {
        &mut self.tx
    }

    /// The instant the change is made at: every timestamp it writes.
    pub fn now(&self) -> Now {
        self.now
    }

    /// Records `entry` in this change's transaction, and logs it.
    pub async fn audit(&mut self, entry: Entry<'_>) -> ApiResult<()> {
        audit::insert(&mut self.tx, &self.actor, &entry, self.now).await?;
        tracing::info!(
            actor = self.actor,
            action = entry.action,
            resource_id = entry.resource_id,
            tenant_id = entry.tenant_id,
            "admin action"
        );
        self.audited += 1;
        Ok(())
    }

    /// Commits the change and wakes the long-polls; a change without an
    /// audit entry is rolled back instead.
    pub async fn commit(self) -> ApiResult<()> {
        if self.audited == 0 {
            return Err(ApiError::internal("a change without an audit entry"));
        }
        self.tx.commit().await?;
        self.feed.published();
        Ok(())
    }
}

/// A resource's public view, for an entry's `before` / `after`.
pub fn snapshot(view: &impl Serialize) -> ApiResult<Option<Value>> {
    serde_json::to_value(view)
        .map(Some)
        .map_err(ApiError::internal)
}
