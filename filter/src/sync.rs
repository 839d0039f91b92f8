//! The config sync loop, run by the root context that leads ([`crate::lease`]).
//!
//! It long-polls `GET /v1/sync?since=<applied version>` on the control plane
//! through an Envoy cluster. The control plane answers as soon as anything
//! changed (or after `wait_ms` with nothing), and the loop writes the change
//! into shared data with `tollgate_core::layout::apply_sync` and asks again at
//! once. When the control plane is away the last applied config stays in
//! force and the loop retries with a capped backoff.
//!
//! Everything it keeps in memory is the call in flight and the cursor of a
//! paged answer; the applied version is in shared data. So a new leader
//! simply starts polling from that version, and a loop that stopped leading
//! forgets its call ([`SyncLoop::resign`]): an answer to it is ignored, never
//! applied over what the new leader wrote.

use proxy_wasm::types::LogLevel;
use tollgate_core::decide::is_stale;
use tollgate_core::json;
use tollgate_core::layout::{applied_state, applied_version, apply_sync_at};
use tollgate_core::wire::SyncResponse;

use crate::call::Pacing;
use crate::config::{SyncConfig, WhenStale};
use crate::host::{Answer, Call, Host};
use crate::identity;
use crate::metrics::Event;

const MAX_BACKOFF_MS: u64 = 2_000;

#[derive(Debug, Default)]
pub struct SyncLoop {
    pacing: Pacing,
    /// Mid-walk through a paged answer: the cursor of the next page.
    after: Option<String>,
    /// No new poll: the lease is to be handed over once the open one ends.
    held: bool,
    /// Whether the config was past its staleness budget at the last tick.
    stale: bool,
}

impl SyncLoop {
    fn timeout_ms(config: &SyncConfig) -> u64 {
        config.wait_ms + 5_000
    }

    /// Forgets the call in flight and any walk: this root context no longer leads.
    pub fn resign(&mut self) {
        *self = Self::default();
    }

    /// Sends no new poll (a paged walk still finishes): the lease is to be
    /// handed over, and the control plane should not hold two polls of one
    /// Envoy meanwhile.
    pub fn hold(&mut self) {
        self.held = true;
    }

    /// Whether no poll is out at `now` and no walk is half done.
    pub fn idle(&self, config: &SyncConfig, now: u64) -> bool {
        !self.pacing.busy(now, Self::timeout_ms(config)) && self.after.is_none()
    }

    pub fn on_tick(&mut self, host: &impl Host, config: &SyncConfig, now: u64) {
        host.stat(Event::SyncTick { now_ms: now });
        self.watch_staleness(host, config, now);
        self.poll(host, config, now);
    }

    /// Logs entering and leaving the stale state (the leader only, so once
    /// per Envoy); the workers judge staleness on their own from the same
    /// shared entry.
    fn watch_staleness(&mut self, host: &impl Host, config: &SyncConfig, now: u64) {
        let Some(budget) = config.stale_after_ms else {
            return;
        };
        let synced_at = applied_state(host).and_then(|a| a.synced_at_ms);
        let stale = is_stale(synced_at, budget, now);
        if stale == self.stale {
            return;
        }
        self.stale = stale;
        let message = if stale {
            let age = now.saturating_sub(synced_at.unwrap_or(now)) / 1000;
            let doing = match config.when_stale {
                WhenStale::Enforce => "still enforcing the last applied config",
                WhenStale::Refuse => "refusing requests with 503 config_stale",
            };
            format!(
                "tollgate: config stale: no successful sync for {age} s (budget {} s); {doing}",
                budget / 1000
            )
        } else {
            "tollgate: config fresh again: a sync succeeded within the staleness budget".to_owned()
        };
        host.log(LogLevel::Warn, &message);
    }

    /// Sends the next poll if one is due.
    fn poll(&mut self, host: &impl Host, config: &SyncConfig, now: u64) {
        if self.held && self.after.is_none() {
            return;
        }
        if !self.pacing.due(now, Self::timeout_ms(config)) {
            return;
        }
        let applied = applied_version(host);
        let since = applied.unwrap_or(0);
        // Until the first config is applied, ask for everything without
        // waiting; after a failure too, so that being back in sync is known
        // at once (and `tollgate_sync_age_seconds` falls back to 0); and
        // for the next page of a walk.
        let wait = if applied.is_none() || self.pacing.failures() > 0 || self.after.is_some() {
            0
        } else {
            config.wait_ms
        };
        let mut path = format!("/v1/sync?since={since}&wait_ms={wait}");
        if let Some(after) = &self.after {
            path.push_str("&after=");
            path.push_str(after);
        }
        let identity = identity::headers(host, now);
        let call = Call {
            cluster: &config.cluster,
            method: "GET",
            path: &path,
            authority: &config.authority,
            token: &config.token,
            body: None,
            timeout_ms: Self::timeout_ms(config),
            headers: &identity,
        };
        match host.dispatch(&call) {
            Ok(token) => self.pacing.sent(token, now),
            Err(status) => {
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "tollgate: sync dispatch to cluster {} failed: {status}",
                        config.cluster
                    ),
                );
                self.back_off(host, config, now);
            }
        }
    }

    fn back_off(&mut self, host: &impl Host, config: &SyncConfig, now: u64) {
        host.stat(Event::SyncFailed);
        self.pacing.failed(now, config.retry_ms, MAX_BACKOFF_MS);
    }

    /// Whether `token` answers this loop's call; if so the answer is applied.
    pub fn on_answer(
        &mut self,
        host: &impl Host,
        config: &SyncConfig,
        token: u32,
        answer: &Answer,
        now: u64,
    ) -> bool {
        if !self.pacing.answered(token) {
            return false;
        }
        if answer.status != Some(200) {
            if self.pacing.failures() == 0 {
                let status = answer.status.map_or_else(
                    || "none: control plane unreachable".to_owned(),
                    |s| s.to_string(),
                );
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "tollgate: sync poll failed (status {status}); enforcing the last applied config"
                    ),
                );
            }
            self.back_off(host, config, now);
            return true;
        }
        let sync: SyncResponse = match json::from_slice(&answer.body) {
            Ok(sync) => sync,
            Err(e) => {
                host.log(
                    LogLevel::Error,
                    &format!("tollgate: sync response is not valid JSON: {e}"),
                );
                self.back_off(host, config, now);
                return true;
            }
        };
        let before = applied_version(host);
        match apply_sync_at(host, &sync, Some(now)) {
            Ok(_) if sync.next.is_some() => {
                // A page of a longer walk: its keys are written, the version
                // waits for the last page. Ask for the next one at once.
                self.after = sync.next;
                self.pacing.succeeded(now, 0);
                self.poll(host, config, now);
            }
            Ok(version) => {
                self.after = None;
                if self.pacing.failures() > 0 {
                    host.log(LogLevel::Info, "tollgate: control plane reachable again");
                }
                self.pacing.succeeded(now, 0);
                host.stat(Event::Synced {
                    version,
                    now_ms: now,
                });
                // Straight back into the long poll: a change committed
                // before the next tick must not wait for it.
                self.poll(host, config, now);
                if before != Some(version) {
                    host.log(
                        LogLevel::Info,
                        &format!(
                            "tollgate: applied config version {version} ({} plans, {} keys, {} deletions)",
                            sync.plans.len(),
                            sync.keys.len(),
                            sync.deleted_keys.len()
                        ),
                    );
                }
            }
            Err(e) => {
                host.log(
                    LogLevel::Error,
                    &format!("tollgate: sync response refused: {e}"),
                );
                self.back_off(host, config, now);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{config, FakeHost};
    use tollgate_core::wire::{SyncResponse, WireKey};

    const T0: u64 = 1_700_000_000_000;

    fn answer(sync: &SyncResponse) -> Answer {
        Answer {
            status: Some(200),
            body: serde_json::to_vec(sync).unwrap(),
        }
    }

    fn key(n: u8, active: bool) -> WireKey {
        WireKey {
            hash: tollgate_core::key::KeyHash::of(&[n]).to_hex(),
            id: format!("key_{n:020}"),
            tenant_id: "tnt_00000000000000000001".into(),
            plan_id: "plan_0000000000000000001".into(),
            active,
            ..WireKey::default()
        }
    }

    #[test]
    fn the_first_poll_asks_for_everything_at_once_then_long_polls() {
        let host = FakeHost::new();
        let c = config();
        let mut sync = SyncLoop::default();
        sync.on_tick(&host, &c, T0);
        let sent = host.take_sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].path, "/v1/sync?since=0&wait_ms=0");
        assert_eq!(sent[0].token_header, "sync-token");
        // One call at a time.
        sync.on_tick(&host, &c, T0 + 50);
        assert!(host.take_sent().is_empty());
        let first = SyncResponse {
            version: 3,
            keys: vec![key(1, true)],
            ..SyncResponse::default()
        };
        assert!(sync.on_answer(&host, &c, sent[0].token, &answer(&first), T0 + 60));
        assert_eq!(applied_version(&host), Some(3));
        let next = host.take_sent();
        assert_eq!(next[0].path, "/v1/sync?since=3&wait_ms=20000");
    }

    #[test]
    fn each_sync_records_its_time_and_the_leader_logs_going_stale_and_back() {
        let host = FakeHost::new();
        let c = SyncConfig {
            stale_after_ms: Some(30_000),
            when_stale: WhenStale::Refuse,
            ..config()
        };
        let stale_logs = || {
            host.logs
                .borrow()
                .iter()
                .filter(|(_, m)| m.contains("config stale") || m.contains("fresh again"))
                .map(|(_, m)| m.clone())
                .collect::<Vec<_>>()
        };
        let mut sync = SyncLoop::default();
        sync.on_tick(&host, &c, T0);
        let t = host.take_sent()[0].token;
        let first = SyncResponse {
            version: 3,
            ..SyncResponse::default()
        };
        sync.on_answer(&host, &c, t, &answer(&first), T0);
        let state = applied_state(&host).unwrap();
        assert_eq!((state.version, state.synced_at_ms), (3, Some(T0)));
        // The long poll is out and never answers (nor its retry): stale at
        // 30 000 ms, not before.
        sync.on_tick(&host, &c, T0 + 29_999);
        assert!(stale_logs().is_empty());
        sync.on_tick(&host, &c, T0 + 30_000);
        assert_eq!(stale_logs().len(), 1);
        assert!(
            stale_logs()[0].contains("503 config_stale"),
            "{:?}",
            stale_logs()
        );
        sync.on_tick(&host, &c, T0 + 30_050);
        assert_eq!(stale_logs().len(), 1, "logged once");
        let poll = host.take_sent().last().unwrap().token;
        // An answer, even with nothing new, is a successful sync.
        sync.on_answer(&host, &c, poll, &answer(&first), T0 + 31_000);
        assert_eq!(
            applied_state(&host).unwrap().synced_at_ms,
            Some(T0 + 31_000)
        );
        sync.on_tick(&host, &c, T0 + 31_050);
        assert_eq!(stale_logs().len(), 2);
        assert!(stale_logs()[1].contains("fresh again"));
    }

    #[test]
    fn a_paged_walk_records_the_version_only_after_its_last_page() {
        let host = FakeHost::new();
        let c = config();
        let mut sync = SyncLoop::default();
        sync.on_tick(&host, &c, T0);
        let t = host.take_sent()[0].token;
        let page = SyncResponse {
            version: 9,
            keys: vec![key(1, true)],
            next: Some("k1".into()),
            ..SyncResponse::default()
        };
        sync.on_answer(&host, &c, t, &answer(&page), T0);
        assert_eq!(applied_version(&host), None);
        let sent = host.take_sent();
        assert_eq!(sent[0].path, "/v1/sync?since=0&wait_ms=0&after=k1");
        let last = SyncResponse {
            version: 9,
            keys: vec![key(2, true)],
            ..SyncResponse::default()
        };
        sync.on_answer(&host, &c, sent[0].token, &answer(&last), T0);
        assert_eq!(applied_version(&host), Some(9));
    }

    #[test]
    fn failures_back_off_and_the_config_stays() {
        let host = FakeHost::new();
        let c = config();
        let mut sync = SyncLoop::default();
        sync.on_tick(&host, &c, T0);
        let t = host.take_sent()[0].token;
        let v1 = SyncResponse {
            version: 1,
            ..SyncResponse::default()
        };
        sync.on_answer(&host, &c, t, &answer(&v1), T0);
        let t = host.take_sent()[0].token;
        // No upstream: back off retry_ms, then ask without waiting.
        sync.on_answer(&host, &c, t, &Answer::default(), T0 + 10);
        assert_eq!(applied_version(&host), Some(1));
        sync.on_tick(&host, &c, T0 + 10 + 249);
        assert!(host.take_sent().is_empty());
        sync.on_tick(&host, &c, T0 + 10 + 250);
        let sent = host.take_sent();
        assert_eq!(sent[0].path, "/v1/sync?since=1&wait_ms=0");
        // A body that is not a sync answer is refused whole.
        let bad = Answer {
            status: Some(200),
            body: b"{\"version\":\"x\"}".to_vec(),
        };
        sync.on_answer(&host, &c, sent[0].token, &bad, T0 + 300);
        assert_eq!(applied_version(&host), Some(1));
        assert!(host.stats.borrow().contains(&Event::SyncFailed));
        // A refused dispatch (no such cluster) backs off too.
        host.refuse_dispatch.set(true);
        sync.on_tick(&host, &c, T0 + 10_000);
        assert!(host
            .logs
            .borrow()
            .iter()
            .any(|(_, m)| m.contains("cluster cp")));
    }

    #[test]
    fn a_held_loop_finishes_its_poll_and_sends_no_other() {
        let host = FakeHost::new();
        let c = config();
        let mut sync = SyncLoop::default();
        sync.on_tick(&host, &c, T0);
        let t = host.take_sent()[0].token;
        sync.hold();
        assert!(!sync.idle(&c, T0 + 1));
        let v1 = SyncResponse {
            version: 1,
            ..SyncResponse::default()
        };
        assert!(sync.on_answer(&host, &c, t, &answer(&v1), T0 + 2));
        assert_eq!(applied_version(&host), Some(1));
        assert!(host.take_sent().is_empty());
        sync.on_tick(&host, &c, T0 + 3);
        assert!(host.take_sent().is_empty() && sync.idle(&c, T0 + 3));
    }

    #[test]
    fn a_loop_that_resigned_ignores_the_answer_to_its_old_call() {
        let host = FakeHost::new();
        let c = config();
        let mut sync = SyncLoop::default();
        sync.on_tick(&host, &c, T0);
        let t = host.take_sent()[0].token;
        sync.resign();
        let v5 = SyncResponse {
            version: 5,
            keys: vec![key(1, true)],
            ..SyncResponse::default()
        };
        assert!(!sync.on_answer(&host, &c, t, &answer(&v5), T0 + 10));
        assert_eq!(applied_version(&host), None);
    }
}
