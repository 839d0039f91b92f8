//! The proxy registry: which Envoys are running what, and how far behind
//! each is. Each Envoy's leader names itself on every sync poll and usage
//! report ([`ProxyHeaders`]); the registry keeps one row per Envoy process in
//! the database (`store::proxies`), so that with several replicas on
//! PostgreSQL every replica sees every proxy, whichever one it polls.
//!
//! A leader polls and reports about every second: writing a row each time
//! would cost the database a write per proxy per second for nothing new.
//! So each replica remembers in memory what it last wrote for each proxy
//! ([`Registry::saw`]) and writes again only when something changed (the
//! applied version above all: receipts wait for it) or when
//! [`FleetConfig::write_every_ms`] has passed. The stored `last_seen` is
//! therefore up to that much behind, which is why [`FleetConfig::stale_after_ms`]
//! is well above it.
//!
//! A status is read from `last_seen` at the moment of asking, never stored:
//! `live`, then `stale` after `stale_after_ms` without a word, then `gone`
//! after `gone_after_ms`; rows not seen for `retention_ms` are deleted when
//! the registry is next listed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::clock::{rfc3339_ms, Now};
use crate::db::{self, Db};
use crate::store::proxies::{self, ProxyRow, Sighting};

pub const INSTANCE_HEADER: &str = "tollgate-proxy-instance";
pub const NODE_HEADER: &str = "tollgate-proxy-node";
pub const CLUSTER_HEADER: &str = "tollgate-proxy-cluster";
pub const BUILD_HEADER: &str = "tollgate-proxy-build";
pub const APPLIED_HEADER: &str = "tollgate-proxy-applied-version";

/// Longest value kept of any identity header: node ids are names, not documents.
const MAX_FIELD: usize = 256;
/// Most proxies one replica remembers writing; past it, those not written
/// within the retention period are forgotten (it only costs an early write).
const MAX_REMEMBERED: usize = 100_000;

/// The thresholds of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetConfig {
    /// A proxy unheard of for longer is `stale`, and no longer waited for.
    pub stale_after_ms: u64,
    /// A proxy unheard of for longer is `gone`.
    pub gone_after_ms: u64,
    /// A proxy unheard of for longer is dropped from the registry.
    pub retention_ms: u64,
    /// While nothing changes, a replica writes a proxy's row at most this often.
    pub write_every_ms: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            stale_after_ms: 10_000,
            gone_after_ms: 5 * 60_000,
            retention_ms: 24 * 3_600_000,
            write_every_ms: 5_000,
        }
    }
}

/// The identity headers a filter sends, as the OpenAPI document describes
/// them. All optional: a filter older than the registry sends none, and is
/// served as before, only not listed.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct ProxyHeaders {
    /// Random, drawn once per Envoy process and kept across changes of
    /// leader: the registry's key. Without it the other headers are ignored.
    #[serde(rename = "Tollgate-Proxy-Instance")]
    #[param(value_type = String, required = false)]
    pub instance: Option<String>,
    /// Envoy's node id (`node.id`).
    #[serde(rename = "Tollgate-Proxy-Node")]
    #[param(value_type = String, required = false)]
    pub node: Option<String>,
    /// Envoy's cluster (`node.cluster`).
    #[serde(rename = "Tollgate-Proxy-Cluster")]
    #[param(value_type = String, required = false)]
    pub cluster: Option<String>,
    /// The filter's build: `<crate version>+<git commit>`, or `unknown`.
    #[serde(rename = "Tollgate-Proxy-Build")]
    #[param(value_type = String, required = false)]
    pub build: Option<String>,
    /// The config version the proxy has applied, a whole number; absent
    /// before its first. Anything else is read as absent: the poll or report
    /// is served all the same, so a filter's bad header never stops its config.
    #[serde(rename = "Tollgate-Proxy-Applied-Version")]
    #[param(value_type = String, required = false, example = "42")]
    pub applied_version: Option<String>,
}

fn field(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get(name)?.to_str().ok()?.trim();
    let value: String = value.chars().take(MAX_FIELD).collect();
    (!value.is_empty()).then_some(value)
}

/// What the identity headers of a request say; `None` without an instance id.
pub fn sighting(headers: &HeaderMap) -> Option<Sighting> {
    let instance_id = field(headers, INSTANCE_HEADER)?;
    Some(Sighting {
        instance_id,
        node_id: field(headers, NODE_HEADER).unwrap_or_default(),
        cluster: field(headers, CLUSTER_HEADER).unwrap_or_default(),
        build: field(headers, BUILD_HEADER).unwrap_or_else(|| "unknown".to_owned()),
        applied_version: field(headers, APPLIED_HEADER)
            .and_then(|v| v.parse::<u64>().ok())
            .and_then(|v| i64::try_from(v).ok()),
    })
}

/// What this replica last wrote of a proxy, and when.
#[derive(Debug)]
struct Written {
    sighting: Sighting,
    at_ms: u64,
}

/// The registry's side in the state: the thresholds, what this replica
/// last wrote, and the signal that wakes writes waiting for propagation.
#[derive(Debug)]
pub struct Registry {
    pub config: FleetConfig,
    written: Mutex<HashMap<String, Written>>,
    /// Moves each time a replica records a proxy's new applied version.
    acks: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(FleetConfig::default())
    }
}

impl Registry {
    pub fn new(config: FleetConfig) -> Self {
        Self {
            config,
            written: Mutex::new(HashMap::new()),
            acks: watch::Sender::new(0),
        }
    }

    /// Records the proxy a poll or report named in its `headers`, if any. A
    /// failure is logged, never passed on: the poll is served regardless.
    pub async fn record(&self, db: &Db, headers: &HeaderMap, now: Now) {
        let Some(seen) = sighting(headers) else {
            return;
        };
        if let Err(e) = self.saw(db, seen, now).await {
            tracing::warn!(error = %e, "cannot record a proxy in the registry");
        }
    }

    /// Records that `seen` polled or reported at `now`: written through when
    /// it says something new, otherwise at most every `write_every_ms`.
    pub async fn saw(&self, db: &Db, seen: Sighting, now: Now) -> Result<(), sqlx::Error> {
        let (due, moved) = {
            let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            match written.get(&seen.instance_id) {
                None => (true, seen.applied_version.is_some()),
                Some(w) => {
                    let moved = w.sighting.applied_version != seen.applied_version;
                    let aged = now.unix_ms().saturating_sub(w.at_ms) >= self.config.write_every_ms;
                    (moved || aged || w.sighting != seen, moved)
                }
            }
        };
        if !due {
            return Ok(());
        }
        proxies::upsert(db, &seen, now.db_ms()).await?;
        {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            if written.len() >= MAX_REMEMBERED {
                let since = now.unix_ms().saturating_sub(self.config.retention_ms);
                written.retain(|_, w| w.at_ms >= since);
            }
            written.insert(
                seen.instance_id.clone(),
                Written {
                    sighting: seen,
                    at_ms: now.unix_ms(),
                },
            );
        }
        if moved {
            self.acknowledged();
            // Writes waiting on other replicas only read the database when
            // woken or every `receipt::RECHECK_MS`: wake them now.
            if db::is_postgres(db) {
                if let Err(e) = proxies::notify_applied(db).await {
                    tracing::warn!(error = %e, "cannot tell other replicas of an applied version");
                }
            }
        }
        Ok(())
    }

    /// Wakes the writes waiting here for propagation: a proxy applied a
    /// new version, recorded by this replica or (`replicas`) another one.
    pub fn acknowledged(&self) {
        self.acks.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes whenever a replica records a proxy's new applied version.
    pub fn acks(&self) -> watch::Receiver<u64> {
        self.acks.subscribe()
    }

    /// A proxy's status, last heard of at `last_seen_ms`.
    pub fn status(&self, last_seen_ms: i64, now: Now) -> ProxyStatus {
        let age = now
            .unix_ms()
            .saturating_sub(u64::try_from(last_seen_ms).unwrap_or(0));
        if age <= self.config.stale_after_ms {
            ProxyStatus::Live
        } else if age <= self.config.gone_after_ms {
            ProxyStatus::Stale
        } else {
            ProxyStatus::Gone
        }
    }

    /// Every proxy within the retention period, with its status and lag
    /// behind `current` (rows past retention are dropped on the way).
    pub async fn list(
        &self,
        db: &Db,
        current: u64,
        now: Now,
    ) -> Result<Vec<ProxyView>, sqlx::Error> {
        let since = now.unix_ms().saturating_sub(self.config.retention_ms);
        let rows = proxies::list(db, i64::try_from(since).unwrap_or(0)).await?;
        let mut first_missing: HashMap<i64, Option<i64>> = HashMap::new();
        let mut views = Vec::with_capacity(rows.len());
        for row in rows {
            let applied = row.applied_version.unwrap_or(0);
            let behind = current.saturating_sub(u64::try_from(applied).unwrap_or(0));
            // How long ago the first version it lacks was committed.
            let lag_ms = if behind == 0 {
                Some(0)
            } else {
                let next = applied.saturating_add(1);
                let committed = match first_missing.get(&next) {
                    Some(at) => *at,
                    None => {
                        let at = proxies::committed_ms(db, next).await?;
                        first_missing.insert(next, at);
                        at
                    }
                };
                committed.map(|at| now.unix_ms().saturating_sub(u64::try_from(at).unwrap_or(0)))
            };
            views.push(ProxyView::new(self, row, behind, lag_ms, now));
        }
        Ok(views)
    }
}

/// Whether a proxy is still heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProxyStatus {
    /// Polled or reported within the stale threshold.
    Live,
    /// Silent past the stale threshold: listed, not waited for.
    Stale,
    /// Silent past the gone threshold; dropped after the retention period.
    Gone,
}

impl ProxyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Stale => "stale",
            Self::Gone => "gone",
        }
    }
}

/// One proxy of `GET /v1/proxies`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProxyView {
    /// Drawn by the filter once per Envoy process.
    pub instance_id: String,
    /// Envoy's `node.id`.
    pub node_id: String,
    /// Envoy's `node.cluster`.
    pub cluster: String,
    /// The filter's build, `<version>+<commit>` or `unknown`.
    pub build: String,
    /// The config version it has applied; `null` before its first.
    pub applied_version: Option<u64>,
    #[schema(format = DateTime)]
    pub first_seen: String,
    /// Its last poll or report, as stored (written at most every few seconds
    /// while nothing changes).
    #[schema(format = DateTime)]
    pub last_seen: String,
    /// Config versions committed that it has not applied.
    pub lag_versions: u64,
    /// How long ago the first version it lacks was committed; 0 when up to
    /// date, `null` when that version predates the registry.
    pub lag_ms: Option<u64>,
    pub status: ProxyStatus,
}

impl ProxyView {
    fn new(
        registry: &Registry,
        row: ProxyRow,
        lag_versions: u64,
        lag_ms: Option<u64>,
        now: Now,
    ) -> Self {
        let ms = |v: i64| rfc3339_ms(u64::try_from(v).unwrap_or(0));
        Self {
            status: registry.status(row.last_seen_ms, now),
            first_seen: ms(row.first_seen_ms),
            last_seen: ms(row.last_seen_ms),
            applied_version: row.applied_version.and_then(|v| u64::try_from(v).ok()),
            instance_id: row.instance_id,
            node_id: row.node_id,
            cluster: row.cluster,
            build: row.build,
            lag_versions,
            lag_ms,
        }
    }

    fn has_applied(&self, version: u64) -> bool {
        self.applied_version.is_some_and(|v| v >= version)
    }
}

/// A proxy that has not applied a version yet.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MissingProxy {
    pub instance_id: String,
    pub node_id: String,
    pub applied_version: Option<u64>,
    /// `live` ones are waited for; `stale` ones only listed.
    pub status: ProxyStatus,
}

/// How far one config version has reached.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Propagation {
    pub version: u64,
    /// Live proxies that have applied it (or a later one).
    pub applied: usize,
    /// Live proxies.
    pub live: usize,
    /// Whether every live proxy has applied it.
    pub complete: bool,
    /// How long the write waited for it (0 when nothing was waited for).
    pub waited_ms: u64,
    /// Live and stale proxies that have not applied it (gone ones are not listed).
    pub missing: Vec<MissingProxy>,
}

impl Propagation {
    /// How far `version` has reached among `proxies`.
    pub fn of(version: u64, proxies: &[ProxyView]) -> Self {
        let live = proxies.iter().filter(|p| p.status == ProxyStatus::Live);
        let applied = live.clone().filter(|p| p.has_applied(version)).count();
        let live = live.count();
        let missing: Vec<MissingProxy> = proxies
            .iter()
            .filter(|p| p.status != ProxyStatus::Gone && !p.has_applied(version))
            .map(|p| MissingProxy {
                instance_id: p.instance_id.clone(),
                node_id: p.node_id.clone(),
                applied_version: p.applied_version,
                status: p.status,
            })
            .collect();
        Self {
            version,
            applied,
            live,
            complete: applied == live,
            waited_ms: 0,
            missing,
        }
    }
}

/// The registry's Prometheus series: proxies by status, and the worst lag
/// of a live proxy in versions and in seconds.
pub fn render_metrics(out: &mut String, proxies: &[ProxyView]) {
    let _ = writeln!(
        out,
        "# HELP tollgate_control_plane_proxies Proxies in the registry, by status.\n\
         # TYPE tollgate_control_plane_proxies gauge"
    );
    for status in [ProxyStatus::Live, ProxyStatus::Stale, ProxyStatus::Gone] {
        let n = proxies.iter().filter(|p| p.status == status).count();
        let _ = writeln!(
            out,
            "tollgate_control_plane_proxies{{status=\"{}\"}} {n}",
            status.as_str()
        );
    }
    let live = || proxies.iter().filter(|p| p.status == ProxyStatus::Live);
    let versions = live().map(|p| p.lag_versions).max().unwrap_or(0);
    let ms = live().filter_map(|p| p.lag_ms).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "# HELP tollgate_control_plane_proxy_max_lag_versions The most config versions a live proxy is behind.\n\
         # TYPE tollgate_control_plane_proxy_max_lag_versions gauge\n\
         tollgate_control_plane_proxy_max_lag_versions {versions}\n\
         # HELP tollgate_control_plane_proxy_max_lag_seconds How long ago the oldest change a live proxy lacks was committed.\n\
         # TYPE tollgate_control_plane_proxy_max_lag_seconds gauge\n\
         tollgate_control_plane_proxy_max_lag_seconds {}",
        ms as f64 / 1000.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_identity_headers_make_a_sighting_only_with_an_instance_id() {
        let mut headers = HeaderMap::new();
        headers.insert(NODE_HEADER, HeaderValue::from_static("node-a"));
        assert_eq!(sighting(&headers), None);
        headers.insert(INSTANCE_HEADER, HeaderValue::from_static("abc"));
        headers.insert(APPLIED_HEADER, HeaderValue::from_static("7"));
        let seen = sighting(&headers).unwrap();
        assert_eq!(seen.node_id, "node-a");
        assert_eq!(seen.build, "unknown");
        assert_eq!(seen.applied_version, Some(7));
        headers.insert(APPLIED_HEADER, HeaderValue::from_static("x"));
        assert_eq!(sighting(&headers).unwrap().applied_version, None);
    }

    #[test]
    fn a_status_follows_the_thresholds() {
        let registry = Registry::default();
        let now = Now::from_unix_ms(1_000_000);
        assert_eq!(registry.status(1_000_000 - 10_000, now), ProxyStatus::Live);
        assert_eq!(registry.status(1_000_000 - 10_001, now), ProxyStatus::Stale);
        assert_eq!(registry.status(1_000_000 - 300_001, now), ProxyStatus::Gone);
    }
}
