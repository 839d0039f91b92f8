//! Envoy stats, through proxy-wasm metrics.
//!
//! `define_metric` is per VM: every VM (each worker's, the main thread's)
//! defines the same names once, on its first tick ([`define`]), and Envoy
//! keeps one stat per name, so counters add up across workers and a gauge
//! is one value. Envoy files user metrics under `wasmcustom.` (so `/stats`
//! shows `wasmcustom.tollgate.requests_allowed_total`), and
//! `/stats/prometheus` prints them without that namespace and without the
//! `envoy_` prefix: `tollgate_requests_allowed_total`. Refusals are one
//! counter per reason, `tollgate.requests_denied.<code>.total`; the
//! `stats_config` rule in `envoy/tollgate.yaml` extracts `<code>` into a
//! `reason` tag, so they print as
//! `tollgate_requests_denied_total{reason="<code>"}` (without that rule, as
//! `tollgate_requests_denied_<code>_total`). Both seen on Envoy 1.40.
//!
//! Cost per request: none. Each VM counts its decisions in memory
//! ([`count`]) and adds them to Envoy's counters on its tick ([`flush`],
//! every 50 ms), so the counters trail by at most that. The sync and usage
//! stats are the leader's ([`Event`], through `crate::host::Host::stat`).
//! Metric calls never fail a request: a host that refuses one is ignored.

use std::cell::Cell;

use proxy_wasm::types::LogLevel;
use tollgate_core::decide::{Decision, DenyReason};

use crate::host;

/// What the leader's loops report to Envoy's stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The sync loop's tick, for [`SYNC_AGE`].
    SyncTick { now_ms: u64 },
    /// A poll answered and applied: `version` is in force as of `now_ms`.
    Synced { version: u64, now_ms: u64 },
    /// A poll that failed: not sent, not answered, not 200, or refused.
    SyncFailed,
    /// Usage counts lost because a tally was full.
    UsageDropped(u64),
    /// A usage report that failed or was refused.
    UsageReportFailed,
}

/// Applies one [`Event`] to this VM's stats.
pub fn record(event: Event) {
    match event {
        Event::SyncTick { now_ms } => sync_tick(now_ms),
        Event::Synced { version, now_ms } => synced(version, now_ms),
        Event::SyncFailed => sync_failed(),
        Event::UsageDropped(n) => usage_dropped(n),
        Event::UsageReportFailed => usage_report_failed(),
    }
}

/// Every refusal reason, each with its own counter.
pub const REASONS: [DenyReason; 10] = DenyReason::ALL;

/// Where `reason`'s counter sits in [`REASONS`] order.
fn slot(reason: DenyReason) -> usize {
    match reason {
        DenyReason::MissingApiKey => 0,
        DenyReason::InvalidApiKey => 1,
        DenyReason::DisabledApiKey => 2,
        DenyReason::ExpiredApiKey => 3,
        DenyReason::Forbidden => 4,
        DenyReason::RateLimited => 5,
        DenyReason::QuotaExceeded => 6,
        DenyReason::QuotaPending => 7,
        DenyReason::ConfigUnavailable => 8,
        DenyReason::ConfigStale => 9,
    }
}

/// The stat name of `reason`'s counter.
pub fn denied_name(reason: DenyReason) -> String {
    format!("tollgate.requests_denied.{}.total", reason.code())
}

pub const ALLOWED: &str = "tollgate.requests_allowed_total";
pub const ANONYMOUS: &str = "tollgate.requests_anonymous_total";
pub const CONFIG_VERSION: &str = "tollgate.config_version";
pub const SYNC_AGE: &str = "tollgate.sync_age_seconds";
pub const SYNC_FAILURES: &str = "tollgate.sync_failures_total";
pub const USAGE_DROPPED: &str = "tollgate.usage_dropped_total";
pub const USAGE_REPORT_FAILURES: &str = "tollgate.usage_report_failures_total";

/// This VM's metric ids.
#[derive(Debug, Clone, Copy)]
pub struct Metrics {
    /// Requests admitted with a key.
    allowed: u32,
    /// Anonymous requests admitted (disjoint from `allowed`).
    anonymous: u32,
    /// Refusals, in [`REASONS`] order.
    denied: [u32; REASONS.len()],
    config_version: u32,
    sync_age: u32,
    sync_failures: u32,
    usage_dropped: u32,
    usage_report_failures: u32,
}

/// The leader's clock for [`SYNC_AGE`]: how long the config may have
/// been stale. While the last poll succeeded the channel is in sync: the
/// next poll is held open by the control plane, which answers it as soon as
/// anything changes, so the age is 0. After a failed poll it is the time
/// since the last successful answer (or since start-up, before the first).
#[derive(Debug, Clone, Copy, Default)]
struct SyncClock {
    /// The first tick: the age counts from here until a sync succeeds.
    started_ms: Option<u64>,
    last_success_ms: Option<u64>,
    /// Whether the last poll succeeded.
    in_sync: bool,
    /// The last value recorded, to skip host calls that change nothing.
    recorded_secs: Option<u64>,
}

thread_local! {
    static METRICS: Cell<Option<Metrics>> = const { Cell::new(None) };
    static SYNC_CLOCK: Cell<SyncClock> = const {
        Cell::new(SyncClock {
            started_ms: None,
            last_success_ms: None,
            in_sync: false,
            recorded_secs: None,
        })
    };
}

impl Metrics {
    fn define_all() -> Option<Self> {
        let counter = host::define_counter;
        let gauge = host::define_gauge;
        let mut denied = [0; REASONS.len()];
        for (id, reason) in denied.iter_mut().zip(REASONS) {
            *id = counter(&denied_name(reason))?;
        }
        Some(Self {
            allowed: counter(ALLOWED)?,
            anonymous: counter(ANONYMOUS)?,
            denied,
            config_version: gauge(CONFIG_VERSION)?,
            sync_age: gauge(SYNC_AGE)?,
            sync_failures: counter(SYNC_FAILURES)?,
            usage_dropped: counter(USAGE_DROPPED)?,
            usage_report_failures: counter(USAGE_REPORT_FAILURES)?,
        })
    }
}

/// Defines this VM's metrics, once; later calls do nothing.
pub fn define() {
    METRICS.with(|cell| {
        if cell.get().is_some() {
            return;
        }
        let metrics = Metrics::define_all();
        if metrics.is_none() {
            host::log(
                LogLevel::Error,
                "tollgate: cannot define Envoy stats; running without them",
            );
        }
        cell.set(metrics);
    });
}

fn ids() -> Option<Metrics> {
    METRICS.with(Cell::get)
}

fn add(id: u32, n: u64) {
    if n > 0 {
        host::increment_metric(id, n);
    }
}

fn set(id: u32, value: u64) {
    host::record_metric(id, value);
}

/// Request counts not yet handed to Envoy: `allowed`, `anonymous`, then
/// the refusals in [`REASONS`] order.
type Pending = [u64; 2 + REASONS.len()];

thread_local! {
    static PENDING: Cell<Pending> = const { Cell::new([0; 2 + REASONS.len()]) };
}

fn bump(slot: usize) {
    PENDING.with(|cell| {
        let mut pending = cell.get();
        if let Some(n) = pending.get_mut(slot) {
            *n += 1;
        }
        cell.set(pending);
    });
}

/// Counts one request's decision in this VM, with no host call: a host call
/// per request costs about a microsecond, and [`flush`] hands the counts to
/// Envoy on the root context's tick.
pub fn count(decision: &Decision) {
    bump(match decision {
        Decision::Allow(allowed) if allowed.key_id.is_some() => 0,
        Decision::Allow(_) => 1,
        Decision::Deny(denied) => 2 + slot(denied.reason),
    });
}

/// Counts a refusal made without a decision (the clock could not be read).
pub fn denied(reason: DenyReason) {
    bump(2 + slot(reason));
}

/// Adds this VM's pending request counts to Envoy's counters.
pub fn flush() {
    let Some(m) = ids() else { return };
    let pending = PENDING.with(|cell| cell.replace([0; 2 + REASONS.len()]));
    let ids = [m.allowed, m.anonymous].into_iter().chain(m.denied);
    for (id, n) in ids.zip(pending) {
        add(id, n);
    }
}

fn synced(version: u64, now_ms: u64) {
    SYNC_CLOCK.with(|cell| {
        let mut clock = cell.get();
        clock.last_success_ms = Some(now_ms);
        clock.in_sync = true;
        clock.recorded_secs = Some(0);
        cell.set(clock);
    });
    if let Some(m) = ids() {
        set(m.config_version, version);
        set(m.sync_age, 0);
    }
}

/// Brings [`SYNC_AGE`] up to date (a host call only when the whole seconds
/// change).
fn sync_tick(now_ms: u64) {
    let Some(m) = ids() else { return };
    let secs = SYNC_CLOCK.with(|cell| {
        let mut clock = cell.get();
        let started = *clock.started_ms.get_or_insert(now_ms);
        let since = clock.last_success_ms.unwrap_or(started);
        let secs = if clock.in_sync {
            0
        } else {
            now_ms.saturating_sub(since) / 1_000
        };
        if clock.recorded_secs == Some(secs) {
            return None;
        }
        clock.recorded_secs = Some(secs);
        cell.set(clock);
        Some(secs)
    });
    if let Some(secs) = secs {
        set(m.sync_age, secs);
    }
}

fn sync_failed() {
    SYNC_CLOCK.with(|cell| {
        let mut clock = cell.get();
        clock.in_sync = false;
        cell.set(clock);
    });
    if let Some(m) = ids() {
        add(m.sync_failures, 1);
    }
}

fn usage_dropped(n: u64) {
    if let Some(m) = ids() {
        add(m.usage_dropped, n);
    }
}

fn usage_report_failed() {
    if let Some(m) = ids() {
        add(m.usage_report_failures, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_name() {
        let slots: std::collections::BTreeSet<usize> = REASONS.iter().map(|r| slot(*r)).collect();
        assert_eq!(slots.len(), REASONS.len());
        for (i, reason) in REASONS.iter().enumerate() {
            assert_eq!(slot(*reason), i);
        }
        assert_eq!(
            denied_name(DenyReason::RateLimited),
            "tollgate.requests_denied.rate_limited.total"
        );
    }
}
