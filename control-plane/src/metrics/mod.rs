//! Prometheus metrics at `GET /metrics` (text exposition format 0.0.4).
//!
//! A small registry of its own rather than a metrics crate: a handful of
//! counters and gauges in atomics, and the per-route series behind one short
//! mutex held for a map update per request. `middleware::track` counts every
//! request by route template, method and status and times it;
//! the usage ingest and the sync long-poll report through one-line hooks
//! ([`Metrics::usage_ingested`], [`Metrics::poll_held`]).
//!
//! Labels never carry tenant data: routes are templates (`/v1/keys/{id}`,
//! never an id), paths that match no route are `unmatched`, methods outside
//! the standard set are `other`, so the series stay few whatever clients
//! send. `/metrics` ([`endpoint`]) is open unless `--metrics-token` is set; then it wants
//! `Authorization: Bearer <that token>` (not the admin token: a scraper
//! should hold no admin rights).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use axum::http::Method;
use tollgate_core::wire::UsageBatch;

pub mod endpoint;

/// Where the metrics are served.
pub const METRICS_PATH: &str = "/metrics";

/// The Prometheus text format's media type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Request latency buckets, in seconds: API calls take milliseconds, a held
/// `/v1/sync` long-poll up to 60 s.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Route template and method: one latency histogram each.
type SeriesKey = (String, &'static str);

#[derive(Debug, Default)]
struct Series {
    by_status: BTreeMap<u16, u64>,
    /// Non-cumulative: `buckets[i]` counts durations in `(LATENCY_BUCKETS[i-1], LATENCY_BUCKETS[i]]`;
    /// the last slot is over the largest bucket.
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum_seconds: f64,
    count: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    http: Mutex<BTreeMap<SeriesKey, Series>>,
    usage_batches: AtomicU64,
    usage_keys: AtomicU64,
    usage_requests: AtomicU64,
    usage_dropped: AtomicU64,
    pruned_batch_ids: AtomicU64,
    pruned_quota_rows: AtomicU64,
    merged_quota_rows: AtomicU64,
    rolled_up_usage_rows: AtomicU64,
    pruned_usage_rows: AtomicU64,
    polls_open: AtomicI64,
}

/// Decrements the open-polls gauge when the poll ends, however it ends
/// (answered, timed out, or dropped because the Envoy went away).
#[must_use = "the poll counts as open only while the guard lives"]
pub struct PollGuard<'a>(&'a AtomicI64);

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The standard methods by name; anything else is `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A label value, escaped for the text format.
fn escaped(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// One finished request.
    pub fn observe(&self, route: String, method: &Method, status: u16, took: Duration) {
        let seconds = took.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        let mut http = self.http.lock().unwrap_or_else(|e| e.into_inner());
        let series = http.entry((route, method_label(method))).or_default();
        *series.by_status.entry(status).or_insert(0) += 1;
        if let Some(bucket) = series.buckets.get_mut(slot) {
            *bucket += 1;
        }
        series.sum_seconds += seconds;
        series.count += 1;
    }

    /// A usage batch applied (not a duplicate).
    pub fn usage_ingested(&self, batch: &UsageBatch) {
        let requests: u64 = batch
            .keys
            .iter()
            .flat_map(|k| std::iter::once(&k.allowed).chain(k.denied.values()))
            .chain(batch.unattributed.values())
            .fold(0u64, |sum, n| sum.saturating_add(*n));
        let keys = u64::try_from(batch.keys.len()).unwrap_or(u64::MAX);
        self.usage_batches.fetch_add(1, Ordering::Relaxed);
        self.usage_keys.fetch_add(keys, Ordering::Relaxed);
        self.usage_requests.fetch_add(requests, Ordering::Relaxed);
        self.usage_dropped
            .fetch_add(batch.dropped, Ordering::Relaxed);
    }

    /// A retention pass (`store::retention`).
    pub fn pruned(&self, pruned: crate::store::retention::Pruned) {
        self.pruned_batch_ids
            .fetch_add(pruned.batch_ids, Ordering::Relaxed);
        self.pruned_quota_rows
            .fetch_add(pruned.quota_rows, Ordering::Relaxed);
        self.merged_quota_rows
            .fetch_add(pruned.merged_quota_rows, Ordering::Relaxed);
        self.rolled_up_usage_rows
            .fetch_add(pruned.rolled_up_rows, Ordering::Relaxed);
        self.pruned_usage_rows
            .fetch_add(pruned.usage_rows, Ordering::Relaxed);
    }

    /// A `/v1/sync` long-poll is held open until the guard drops.
    pub fn poll_held(&self) -> PollGuard<'_> {
        self.polls_open.fetch_add(1, Ordering::Relaxed);
        PollGuard(&self.polls_open)
    }

    /// The whole exposition, with `config_version` read by the caller.
    pub fn render(&self, config_version: u64) -> String {
        let mut out = String::with_capacity(4096);
        let http = self.http.lock().unwrap_or_else(|e| e.into_inner());

        let name = "tollgate_control_plane_http_requests_total";
        header_lines(
            &mut out,
            name,
            "counter",
            "HTTP requests answered, by route template, method and status.",
        );
        for ((route, method), series) in http.iter() {
            for (status, n) in &series.by_status {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                    escaped(route)
                );
            }
        }

        let name = "tollgate_control_plane_http_request_duration_seconds";
        header_lines(
            &mut out,
            name,
            "histogram",
            "Time to answer an HTTP request (to its response head), by route template and method.",
        );
        for ((route, method), series) in http.iter() {
            let labels = format!("route=\"{}\",method=\"{method}\"", escaped(route));
            let mut cumulative = 0u64;
            for (le, n) in LATENCY_BUCKETS.iter().zip(series.buckets.iter()) {
                cumulative += n;
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
                series.count
            );
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", series.sum_seconds);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", series.count);
        }
        drop(http);

        for (name, help, value) in [
            (
                "tollgate_control_plane_usage_batches_total",
                "Usage batches from the Envoys applied (a retried batch counts once).",
                &self.usage_batches,
            ),
            (
                "tollgate_control_plane_usage_batch_keys_total",
                "Per-key entries in the applied usage batches.",
                &self.usage_keys,
            ),
            (
                "tollgate_control_plane_usage_requests_total",
                "Requests counted in the applied usage batches (allowed and denied, keyed and not).",
                &self.usage_requests,
            ),
            (
                "tollgate_control_plane_usage_dropped_total",
                "Counts the Envoys reported dropping because their usage buffer was full.",
                &self.usage_dropped,
            ),
            (
                "tollgate_control_plane_pruned_batch_ids_total",
                "Usage batch ids pruned past the window in which a batch may be sent again.",
                &self.pruned_batch_ids,
            ),
            (
                "tollgate_control_plane_pruned_quota_rows_total",
                "Quota ledger rows pruned once their period was over.",
                &self.pruned_quota_rows,
            ),
            (
                "tollgate_control_plane_merged_quota_rows_total",
                "Quota ledger rows of Envoys silent past the batch-id window, merged into one row per key and period.",
                &self.merged_quota_rows,
            ),
            (
                "tollgate_control_plane_rolled_up_usage_rows_total",
                "Hourly usage rows rolled up into daily rows.",
                &self.rolled_up_usage_rows,
            ),
            (
                "tollgate_control_plane_pruned_usage_rows_total",
                "Daily usage rows deleted past the usage retention.",
                &self.pruned_usage_rows,
            ),
        ] {
            header_lines(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }

        let name = "tollgate_control_plane_sync_polls_open";
        header_lines(
            &mut out,
            name,
            "gauge",
            "Config long-polls (/v1/sync) held open now: one per connected Envoy.",
        );
        let _ = writeln!(
            out,
            "{name} {}",
            self.polls_open.load(Ordering::Relaxed).max(0)
        );

        let name = "tollgate_control_plane_config_version";
        header_lines(
            &mut out,
            name,
            "gauge",
            "The latest committed config version this replica knows of.",
        );
        let _ = writeln!(out, "{name} {config_version}");
        out
    }
}

fn header_lines(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.observe(
            "/v1/plans/{id}".into(),
            &Method::GET,
            200,
            Duration::from_millis(3),
        );
        m.observe(
            "/v1/plans/{id}".into(),
            &Method::GET,
            404,
            Duration::from_millis(40),
        );
        m.observe(
            "unmatched".into(),
            &Method::from_bytes(b"BREW").unwrap(),
            404,
            Duration::from_secs(100),
        );
        {
            let _held = m.poll_held();
            assert!(m
                .render(0)
                .contains("\ntollgate_control_plane_sync_polls_open 1\n"));
        }
        let text = m.render(7);
        for line in [
            "tollgate_control_plane_http_requests_total{route=\"/v1/plans/{id}\",method=\"GET\",status=\"200\"} 1",
            "tollgate_control_plane_http_requests_total{route=\"/v1/plans/{id}\",method=\"GET\",status=\"404\"} 1",
            "tollgate_control_plane_http_requests_total{route=\"unmatched\",method=\"other\",status=\"404\"} 1",
            "tollgate_control_plane_http_request_duration_seconds_bucket{route=\"/v1/plans/{id}\",method=\"GET\",le=\"0.005\"} 1",
            "tollgate_control_plane_http_request_duration_seconds_bucket{route=\"/v1/plans/{id}\",method=\"GET\",le=\"0.025\"} 1",
            "tollgate_control_plane_http_request_duration_seconds_bucket{route=\"/v1/plans/{id}\",method=\"GET\",le=\"0.05\"} 2",
            "tollgate_control_plane_http_request_duration_seconds_bucket{route=\"/v1/plans/{id}\",method=\"GET\",le=\"+Inf\"} 2",
            "tollgate_control_plane_http_request_duration_seconds_count{route=\"/v1/plans/{id}\",method=\"GET\"} 2",
            "tollgate_control_plane_http_request_duration_seconds_bucket{route=\"unmatched\",method=\"other\",le=\"60\"} 0",
            "tollgate_control_plane_http_request_duration_seconds_bucket{route=\"unmatched\",method=\"other\",le=\"+Inf\"} 1",
            "tollgate_control_plane_sync_polls_open 0",
            "tollgate_control_plane_config_version 7",
            "# TYPE tollgate_control_plane_http_request_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn usage_batches_add_up() {
        let m = Metrics::default();
        let batch: UsageBatch = serde_json::from_value(serde_json::json!({
            "batch_id": "b",
            "keys": [
                {"key_id": "k1", "allowed": 3, "denied": {"rate_limited": 2}},
                {"key_id": "k2", "allowed": 1}
            ],
            "unattributed": {"missing_api_key": 4},
            "dropped": 5
        }))
        .unwrap();
        m.usage_ingested(&batch);
        m.usage_ingested(&batch);
        let text = m.render(0);
        for line in [
            "tollgate_control_plane_usage_batches_total 2",
            "tollgate_control_plane_usage_batch_keys_total 4",
            "tollgate_control_plane_usage_requests_total 20",
            "tollgate_control_plane_usage_dropped_total 10",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn retention_passes_add_up() {
        use crate::store::retention::Pruned;
        let m = Metrics::default();
        let pass = Pruned {
            batch_ids: 1,
            quota_rows: 2,
            merged_quota_rows: 3,
            rolled_up_rows: 4,
            usage_rows: 5,
        };
        m.pruned(pass);
        m.pruned(pass);
        let text = m.render(0);
        for line in [
            "tollgate_control_plane_pruned_batch_ids_total 2",
            "tollgate_control_plane_pruned_quota_rows_total 4",
            "tollgate_control_plane_merged_quota_rows_total 6",
            "tollgate_control_plane_rolled_up_usage_rows_total 8",
            "tollgate_control_plane_pruned_usage_rows_total 10",
            "# TYPE tollgate_control_plane_rolled_up_usage_rows_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escaped("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
