//! The config sync loop, run once per Envoy process by the singleton Wasm service.
//!
//! It long-polls `GET /v1/sync?since=<applied version>` on the control plane
//! through an Envoy cluster. The control plane answers as soon as anything
//! changed (or after `wait_ms` with nothing), and the loop writes the change
//! into shared data with `tollgate_core::layout::apply_sync` and asks again at
//! once. When the control plane is away the last applied config stays in
//! force and the loop retries with a capped backoff.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType};
use tollgate_core::json::{self, Field, Fields, FromJson, Reader};
use tollgate_core::layout::{applied_version, apply_sync};
use tollgate_core::wire::SyncResponse;

use crate::call::Pacing;
use crate::host::{now_ms, HostStore};

/// How often the loop looks whether a poll is due.
pub const TICK: Duration = Duration::from_millis(50);
const MAX_BACKOFF_MS: u64 = 2_000;

/// The `sync` object of the plugin configuration. Unknown fields are errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// The Envoy cluster that reaches the control plane.
    pub cluster: String,
    /// `:authority` sent to the control plane; `tollgate-control-plane`
    /// when absent.
    pub authority: String,
    /// The control plane's sync token (`CONTROL_PLANE_SYNC_TOKEN`).
    pub token: String,
    /// How long the control plane may hold a poll open when nothing
    /// changed; 20 s when absent.
    pub wait_ms: u64,
    /// First retry delay after a failed poll, doubling up to 2 s; 250 ms
    /// when absent.
    pub retry_ms: u64,
}

const SYNC_CONFIG: Fields = Fields::closed(&[
    Field::required("cluster"),
    Field::optional("authority"),
    Field::required("token"),
    Field::optional("wait_ms"),
    Field::optional("retry_ms"),
]);

impl FromJson for SyncConfig {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, json::Error> {
        let mut v = SyncConfig {
            cluster: String::new(),
            authority: "tollgate-control-plane".into(),
            token: String::new(),
            wait_ms: 20_000,
            retry_ms: 250,
        };
        reader.object(&SYNC_CONFIG, &mut |r, field| match field {
            0 => r.set(&mut v.cluster),
            1 => r.set(&mut v.authority),
            2 => r.set(&mut v.token),
            3 => r.set(&mut v.wait_ms),
            4 => r.set(&mut v.retry_ms),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

impl SyncConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.cluster.is_empty() {
            return Err("sync.cluster must name an Envoy cluster".into());
        }
        if self.token.is_empty() {
            return Err("sync.token must not be empty".into());
        }
        if !(1..=60_000).contains(&self.wait_ms) {
            return Err("sync.wait_ms must be between 1 and 60000".into());
        }
        if !(1..=60_000).contains(&self.retry_ms) {
            return Err("sync.retry_ms must be between 1 and 60000".into());
        }
        Ok(())
    }
}

pub struct SyncLoop {
    config: SyncConfig,
    pacing: Pacing,
    /// Mid-walk through a paged answer: the cursor of the next page.
    after: Option<String>,
}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

impl SyncLoop {
    pub fn new(config: SyncConfig) -> Self {
        Self {
            config,
            pacing: Pacing::default(),
            after: None,
        }
    }

    pub fn reconfigure(&mut self, config: SyncConfig) {
        self.config = config;
    }

    fn timeout_ms(&self) -> u64 {
        self.config.wait_ms + 5_000
    }

    pub fn on_tick(&mut self) {
        let Some(now) = now_ms() else { return };
        crate::metrics::sync_tick(now);
        self.poll(now);
    }

    /// Sends the next poll if one is due.
    fn poll(&mut self, now: u64) {
        if !self.pacing.due(now, self.timeout_ms()) {
            return;
        }
        let applied = applied_version(&HostStore);
        let since = applied.unwrap_or(0);
        // Until the first config is applied, ask for everything without
        // waiting; after a failure too, so that being back in sync is known
        // at once (and `tollgate_sync_age_seconds` falls back to 0); and
        // for the next page of a walk.
        let wait = if applied.is_none() || self.pacing.failures() > 0 || self.after.is_some() {
            0
        } else {
            self.config.wait_ms
        };
        let mut path = format!("/v1/sync?since={since}&wait_ms={wait}");
        if let Some(after) = &self.after {
            path.push_str("&after=");
            path.push_str(after);
        }
        let auth = format!("Bearer {}", self.config.token);
        let headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", self.config.authority.as_str()),
            ("authorization", auth.as_str()),
        ];
        match hostcalls::dispatch_http_call(
            &self.config.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(self.timeout_ms()),
        ) {
            Ok(token) => self.pacing.sent(token, now),
            Err(status) => {
                log(
                    LogLevel::Warn,
                    &format!(
                        "tollgate: sync dispatch to cluster {} failed: {status:?}",
                        self.config.cluster
                    ),
                );
                self.back_off(now);
            }
        }
    }

    fn back_off(&mut self, now: u64) {
        crate::metrics::sync_failed();
        self.pacing
            .failed(now, self.config.retry_ms, MAX_BACKOFF_MS);
    }

    pub fn on_response(&mut self, token: u32, body_size: usize) {
        if !self.pacing.answered(token) {
            return;
        }
        let now = now_ms().unwrap_or(0);
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        if status.as_deref() != Some("200") {
            if self.pacing.failures() == 0 {
                log(
                    LogLevel::Warn,
                    &format!(
                        "tollgate: sync poll failed (status {}); enforcing the last applied config",
                        status
                            .as_deref()
                            .unwrap_or("none: control plane unreachable")
                    ),
                );
            }
            self.back_off(now);
            return;
        }
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let sync: SyncResponse = match json::from_slice(&body) {
            Ok(sync) => sync,
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("tollgate: sync response is not valid JSON: {e}"),
                );
                self.back_off(now);
                return;
            }
        };
        let before = applied_version(&HostStore);
        match apply_sync(&HostStore, &sync) {
            Ok(_) if sync.next.is_some() => {
                // A page of a longer walk: its keys are written, the version
                // waits for the last page. Ask for the next one at once.
                self.after = sync.next;
                self.pacing.succeeded(now, 0);
                self.poll(now);
            }
            Ok(version) => {
                self.after = None;
                if self.pacing.failures() > 0 {
                    log(LogLevel::Info, "tollgate: control plane reachable again");
                }
                self.pacing.succeeded(now, 0);
                crate::metrics::synced(version, now);
                // Straight back into the long poll: a change committed
                // before the next tick must not wait for it.
                self.poll(now);
                if before != Some(version) {
                    log(LogLevel::Info, &format!(
                        "tollgate: applied config version {version} ({} plans, {} keys, {} deletions)",
                        sync.plans.len(),
                        sync.keys.len(),
                        sync.deleted_keys.len()
                    ));
                }
            }
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("tollgate: sync response refused: {e}"),
                );
                self.back_off(now);
            }
        }
    }
}
