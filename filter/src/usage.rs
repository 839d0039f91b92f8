//! Usage reporting: workers count, the sync service reports.
//!
//! Each worker tallies its decisions in VM memory (no host call per request)
//! and every [`FLUSH_EVERY`] hands the tally over through a proxy-wasm shared
//! queue owned by the singleton sync service. The service merges what
//! arrives and at most every second sends one batch to `POST /v1/usage`
//! through the control-plane cluster, the same channel as config. A batch
//! keeps its id until the control plane acknowledges it, so retries after a
//! timeout or an outage are counted once; counts that arrive meanwhile wait
//! in the next batch. Both tallies are bounded ([`tollgate_core::usage`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType};
use tollgate_core::layout::apply_standings;
use tollgate_core::usage::Tally;
use tollgate_core::wire::{UsageBatch, UsageReceipt};

use crate::call::Pacing;
use crate::host::now_ms;
use crate::sync::SyncConfig;

/// The shared queue's name; it lives under the plugin's `vm_id`.
pub const QUEUE: &str = "tollgate_usage";
/// How often a worker hands its tally to the sync service.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How often the sync service reports. It reports even with nothing to
/// count: the answer carries other Envoys' quota use.
const REPORT_EVERY_MS: u64 = 1_000;
const MAX_BACKOFF_MS: u64 = 5_000;
const TIMEOUT_MS: u64 = 5_000;

/// A worker's tally, shared by its root context and its HTTP contexts.
pub type SharedTally = Rc<RefCell<Tally>>;

/// Worker side: hands the tally to the service's queue.
pub struct Flusher {
    vm_id: String,
    queue: Option<u32>,
}

impl Flusher {
    pub fn new(vm_id: String) -> Self {
        Self { vm_id, queue: None }
    }

    pub fn flush(&mut self, tally: &SharedTally) {
        let Ok(mut tally) = tally.try_borrow_mut() else {
            return;
        };
        if tally.is_empty() {
            return;
        }
        if self.queue.is_none() {
            // The service registers the queue when it starts; until then, keep counting.
            self.queue = hostcalls::resolve_shared_queue(&self.vm_id, QUEUE)
                .ok()
                .flatten();
        }
        let Some(queue) = self.queue else { return };
        match hostcalls::enqueue_shared_queue(queue, Some(&tally.to_bytes())) {
            Ok(()) => *tally = Tally::default(),
            // The queue went away (the service restarted): resolve it again next time.
            Err(_) => self.queue = None,
        }
    }
}

/// Service side: merges what the workers hand over and reports it.
pub struct Reporter {
    config: SyncConfig,
    queue: u32,
    tally: Tally,
    pending: Option<UsageBatch>,
    pacing: Pacing,
    /// This Envoy process, as the control plane knows it: batch ids and the
    /// quota ledger are per instance, so a restarted Envoy is a new reporter.
    instance: String,
    sequence: u64,
    /// The last receipt's `cursor`: standings up to here are applied.
    standings_since: u64,
}

impl Reporter {
    pub fn new(config: SyncConfig, queue: u32, now_ms: u64) -> Self {
        Self {
            config,
            queue,
            tally: Tally::default(),
            pending: None,
            pacing: Pacing::default(),
            instance: format!("{now_ms:x}-{queue}"),
            sequence: 0,
            standings_since: 0,
        }
    }

    pub fn reconfigure(&mut self, config: SyncConfig) {
        self.config = config;
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Drains the queue into the service's tally.
    pub fn on_queue_ready(&mut self) {
        while let Ok(Some(bytes)) = hostcalls::dequeue_shared_queue(self.queue) {
            match Tally::from_bytes(&bytes) {
                Some(worker) => self.tally.merge(worker),
                None => log(LogLevel::Error, "tollgate: unreadable usage tally dropped"),
            }
        }
    }

    /// Worker counts also count: the service's own tally, e.g. when it serves requests itself.
    pub fn absorb(&mut self, tally: &SharedTally) {
        if let Ok(mut shared) = tally.try_borrow_mut() {
            self.tally.merge(std::mem::take(&mut *shared));
        }
    }

    pub fn on_tick(&mut self) {
        let Some(now) = now_ms() else { return };
        if !self.pacing.due(now, TIMEOUT_MS) {
            return;
        }
        if self.pending.is_none() {
            self.sequence = self.sequence.saturating_add(1);
            let id = format!("{}-{}", self.instance, self.sequence);
            let mut batch = self.tally.seal(id);
            crate::metrics::usage_dropped(batch.dropped);
            batch.reporter_id.clone_from(&self.instance);
            self.pending = Some(batch);
        }
        let Some(batch) = self.pending.as_mut() else {
            return;
        };
        // A retried batch asks for the newest standings; its counts stay the same.
        batch.standings_since = self.standings_since;
        let body = tollgate_core::json::to_vec(batch);
        let auth = format!("Bearer {}", self.config.token);
        let headers = vec![
            (":method", "POST"),
            (":path", "/v1/usage"),
            (":authority", self.config.authority.as_str()),
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        match hostcalls::dispatch_http_call(
            &self.config.cluster,
            headers,
            Some(&body),
            vec![],
            Duration::from_millis(TIMEOUT_MS),
        ) {
            Ok(token) => self.pacing.sent(token, now),
            Err(status) => {
                log(
                    LogLevel::Warn,
                    &format!("tollgate: usage dispatch failed: {status:?}"),
                );
                self.back_off(now);
            }
        }
    }

    fn back_off(&mut self, now: u64) {
        crate::metrics::usage_report_failed();
        self.pacing
            .failed(now, self.config.retry_ms, MAX_BACKOFF_MS);
    }

    /// Whether `token` was ours; the sync loop gets the others.
    pub fn on_response(&mut self, token: u32, body_size: usize) -> bool {
        if !self.pacing.answered(token) {
            return false;
        }
        let now = now_ms().unwrap_or(0);
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        match status.as_deref() {
            Some("200") => {
                if self.pacing.failures() > 0 {
                    log(LogLevel::Info, "tollgate: usage reports delivered again");
                }
                self.pending = None;
                let more = self.apply_receipt(body_size);
                // Another page of standings is waiting: ask again at once.
                self.pacing
                    .succeeded(now, if more { 0 } else { REPORT_EVERY_MS });
            }
            // The control plane refused the batch itself: retrying cannot help.
            Some("400") | Some("413") | Some("422") => {
                log(
                    LogLevel::Error,
                    "tollgate: the control plane refused a usage batch; dropped",
                );
                self.pending = None;
                crate::metrics::usage_report_failed();
                self.pacing.succeeded(now, REPORT_EVERY_MS);
            }
            other => {
                if self.pacing.failures() == 0 {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "tollgate: usage report failed (status {}); keeping the counts",
                            other.unwrap_or("none: control plane unreachable")
                        ),
                    );
                }
                self.back_off(now);
            }
        }
        true
    }
}

impl Reporter {
    /// Applies the quota standings of a 200 answer; whether more are waiting.
    fn apply_receipt(&mut self, body_size: usize) -> bool {
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let receipt: UsageReceipt = match tollgate_core::json::from_slice(&body) {
            Ok(receipt) => receipt,
            Err(e) => {
                log(
                    LogLevel::Warn,
                    &format!("tollgate: unreadable usage receipt, standings not updated: {e}"),
                );
                return false;
            }
        };
        match apply_standings(&crate::host::HostStore, &receipt.standings) {
            Ok(_) => {
                // The control plane's cursor, even a lower one: after its
                // database was restored, a higher one would skip standings.
                self.standings_since = receipt.cursor;
                receipt.more
            }
            Err(e) => {
                log(
                    LogLevel::Warn,
                    &format!("tollgate: cannot store quota standings: {e}"),
                );
                false
            }
        }
    }
}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}
