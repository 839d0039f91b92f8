//! `cargo xtask bench --fleet 100,1000`: one control plane on PostgreSQL
//! against N simulated proxies, as a mesh with a sidecar per pod has.
//!
//! A simulated proxy speaks the protocol the filter's leader speaks, with
//! the same headers: it long-polls `GET /v1/sync` (from the version the
//! control plane holds, as a proxy that already has the config: N full
//! syncs of 100k keys would measure the network, not the control plane)
//! and reports `POST /v1/usage` every second with what it counted, spread
//! over the keys, acknowledging the leases of its last receipt. Not Envoys:
//! a thousand Envoys do not fit on this machine, and what is measured is
//! the control plane's side.
//!
//! Over a window it measures the control plane's CPU, the database's row
//! writes and transactions per second (from `pg_stat_database`), how long a
//! change takes to reach all N (a key toggled through the API, to the last
//! simulated proxy's poll that returns it), and whether `/v1/proxies` lists
//! every proxy live.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::load::{Conn, Rng};
use crate::{call, expect_status, ControlPlane, IssuedKey, Result, SYNC_TOKEN};

/// How long a change may take to reach every simulated proxy before the
/// size is reported as not keeping up.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(30);
/// How long a simulated proxy's poll is held.
const WAIT_MS: u64 = 20_000;

/// What one fleet size measured.
pub struct FleetResult {
    pub proxies: usize,
    pub keys: usize,
    pub window: Duration,
    /// Control-plane CPU, in cores (CPU seconds per second).
    pub cpu_cores: f64,
    pub row_writes_per_s: f64,
    pub transactions_per_s: f64,
    pub reports_per_s: f64,
    /// API call to the last proxy's poll returning the change, sorted.
    pub propagation_ms: Vec<f64>,
    /// Listed `live` by `/v1/proxies`, of `proxies`.
    pub listed_live: usize,
    /// Keys each proxy reported use of every second.
    pub keys_per_report: usize,
    /// Proxies a change had not reached within [`PROPAGATION_LIMIT`], if any.
    pub behind: Option<usize>,
    /// Requests the simulated proxies saw fail.
    pub errors: u64,
}

impl FleetResult {
    fn quantile(&self, q: f64) -> f64 {
        crate::report::quantile(&self.propagation_ms, q)
    }

    pub fn json(&self) -> Value {
        json!({
            "proxies": self.proxies,
            "keys": self.keys,
            "window_s": self.window.as_secs_f64(),
            "control_plane_cpu_cores": (self.cpu_cores * 100.0).round() / 100.0,
            "row_writes_per_s": self.row_writes_per_s.round(),
            "transactions_per_s": self.transactions_per_s.round(),
            "reports_per_s": self.reports_per_s.round(),
            "propagation_p50_ms": self.quantile(0.5),
            "propagation_p99_ms": self.quantile(0.99),
            "propagation_samples": self.propagation_ms.len(),
            "listed_live": self.listed_live,
            "keys_per_report": self.keys_per_report,
            "behind_after_30_s": self.behind,
            "errors": self.errors,
        })
    }

    pub fn markdown_row(&self) -> String {
        let reach = match self.behind {
            Some(behind) => format!("{behind} not reached in 30 s"),
            None => format!(
                "{:.0} / {:.0} ms ({})",
                self.quantile(0.5),
                self.quantile(0.99),
                self.propagation_ms.len()
            ),
        };
        format!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {reach} | {} of {} | {} |",
            self.proxies,
            self.keys,
            self.keys_per_report,
            self.cpu_cores,
            self.reports_per_s,
            self.row_writes_per_s,
            self.transactions_per_s,
            self.listed_live,
            self.proxies,
            self.errors
        )
    }
}

/// One simulated proxy's threads share these with the run.
struct Shared {
    stop: AtomicBool,
    reports: AtomicU64,
    errors: AtomicU64,
    /// The first error, to say what went wrong.
    first_error: std::sync::Mutex<Option<String>>,
}

impl Shared {
    fn failed(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(what);
    }
}

/// Runs `sizes` one after the other against `cp`, with `keys` issued.
#[allow(clippy::too_many_arguments)]
pub fn run(
    cp: &ControlPlane,
    cp_pid: u32,
    psql: &Path,
    database_url: &str,
    keys: &[IssuedKey],
    sizes: &[usize],
    keys_per_report: usize,
    window: Duration,
) -> Result<Vec<FleetResult>> {
    let toggled = keys.first().ok_or("no keys issued")?.id.clone();
    let mut out = Vec::new();
    for (run, &n) in sizes.iter().enumerate() {
        println!("\n==> {n} simulated proxies, {} keys", keys.len());
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            reports: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: std::sync::Mutex::new(None),
        });
        let start_version = cp.version()?;
        let mut applied = Vec::with_capacity(n);
        for i in 0..n {
            let version = Arc::new(AtomicU64::new(start_version));
            applied.push(Arc::clone(&version));
            spawn_proxy(
                cp.addr,
                format!("sim-{run}-{i}"),
                version,
                keys,
                keys_per_report,
                &shared,
            )?;
        }
        // Every proxy reported and polled a few times.
        std::thread::sleep(Duration::from_secs(5));
        let (cpu0, stats0, reports0) = (
            crate::cpu_us(cp_pid)? / 1e6,
            db_stats(psql, database_url)?,
            shared.reports.load(Ordering::Relaxed),
        );
        let started = Instant::now();
        let mut propagation_ms = Vec::new();
        let mut active = false;
        let mut lagging = None;
        'window: while started.elapsed() < window {
            let called = Instant::now();
            let (status, body) = call(
                cp.addr,
                "PATCH",
                &format!("/v1/keys/{toggled}"),
                Some(&json!({"active": active})),
            )?;
            let body = expect_status("toggle a key", (status, body), 200)?;
            active = !active;
            let version = body
                .get("config_version")
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("no config_version in {body}"))?;
            loop {
                let behind = applied
                    .iter()
                    .filter(|a| a.load(Ordering::Relaxed) < version)
                    .count();
                if behind == 0 {
                    propagation_ms.push(called.elapsed().as_secs_f64() * 1e3);
                    break;
                }
                if called.elapsed() > PROPAGATION_LIMIT {
                    lagging = Some(behind);
                    break 'window;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let elapsed = started.elapsed().as_secs_f64();
        let (cpu1, stats1, reports1) = (
            crate::cpu_us(cp_pid)? / 1e6,
            db_stats(psql, database_url)?,
            shared.reports.load(Ordering::Relaxed),
        );
        let listed_live = listed_live(cp.addr, &format!("sim-{run}-"))?;
        shared.stop.store(true, Ordering::Relaxed);
        propagation_ms.sort_by(f64::total_cmp);
        let result = FleetResult {
            proxies: n,
            keys: keys.len(),
            window: started.elapsed(),
            cpu_cores: (cpu1 - cpu0) / elapsed,
            row_writes_per_s: (stats1.0 - stats0.0) as f64 / elapsed,
            transactions_per_s: (stats1.1 - stats0.1) as f64 / elapsed,
            reports_per_s: (reports1 - reports0) as f64 / elapsed,
            propagation_ms,
            listed_live,
            keys_per_report,
            behind: lagging,
            errors: shared.errors.load(Ordering::Relaxed),
        };
        println!(
            "control plane {:.2} cores, {:.0} reports/s, {:.0} row writes/s, {:.0} transactions/s, \
             change to all {n}: p50 {:.0} ms p99 {:.0} ms, {} of {n} listed live, {} errors",
            result.cpu_cores,
            result.reports_per_s,
            result.row_writes_per_s,
            result.transactions_per_s,
            result.quantile(0.5),
            result.quantile(0.99),
            result.listed_live,
            shared.errors.load(Ordering::Relaxed)
        );
        if let Some(e) = shared.first_error.lock().ok().and_then(|e| e.clone()) {
            println!("first error: {e}");
        }
        out.push(result);
        // The stopped proxies' polls end within WAIT_MS; their rows turn stale.
        std::thread::sleep(Duration::from_millis(WAIT_MS + 1_000));
    }
    Ok(out)
}

fn identity(name: &str, version: u64) -> String {
    format!(
        "tollgate-proxy-instance: {name}\r\ntollgate-proxy-node: {name}\r\n\
         tollgate-proxy-cluster: bench-fleet\r\ntollgate-proxy-build: bench\r\n\
         tollgate-proxy-applied-version: {version}\r\n"
    )
}

fn spawn_proxy(
    addr: SocketAddr,
    name: String,
    version: Arc<AtomicU64>,
    keys: &[IssuedKey],
    keys_per_report: usize,
    shared: &Arc<Shared>,
) -> Result {
    let builder = || std::thread::Builder::new().stack_size(256 * 1024);
    let (poll_name, poll_version, poll_shared) =
        (name.clone(), Arc::clone(&version), Arc::clone(shared));
    builder()
        .spawn(move || poll(addr, &poll_name, &poll_version, &poll_shared))
        .map_err(|e| format!("spawn a simulated proxy: {e}"))?;
    let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
    let shared = Arc::clone(shared);
    builder()
        .spawn(move || report(addr, &name, &version, &ids, keys_per_report, &shared))
        .map_err(|e| format!("spawn a simulated proxy: {e}"))?;
    Ok(())
}

/// The sync loop: long-polls from the version it holds, as the leader does.
fn poll(addr: SocketAddr, name: &str, version: &AtomicU64, shared: &Shared) {
    let mut conn = match Conn::open(addr) {
        Ok(conn) => conn,
        Err(e) => return shared.failed(e),
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let since = version.load(Ordering::Relaxed);
        let request = format!(
            "GET /v1/sync?since={since}&wait_ms={WAIT_MS} HTTP/1.1\r\nhost: bench\r\n\
             authorization: Bearer {SYNC_TOKEN}\r\n{}\r\n",
            identity(name, since)
        );
        match conn.exchange(request.as_bytes()) {
            Ok(answer) if answer.status == 200 => {
                let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
                if let Some(v) = body.get("version").and_then(Value::as_u64) {
                    version.fetch_max(v, Ordering::Relaxed);
                }
            }
            other => {
                shared.failed(match other {
                    Ok(answer) => format!(
                        "sync: {} {}",
                        answer.status,
                        String::from_utf8_lossy(&answer.body)
                    ),
                    Err(e) => format!("sync: {e}"),
                });
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// The usage reporter: a batch a second, acknowledging its leases.
fn report(
    addr: SocketAddr,
    name: &str,
    version: &AtomicU64,
    ids: &[String],
    keys_per_report: usize,
    shared: &Shared,
) {
    let mut rng = Rng::new(name.bytes().fold(7, |h, b| h * 31 + u64::from(b)));
    let mut conn = match Conn::open(addr) {
        Ok(conn) => conn,
        Err(e) => return shared.failed(e),
    };
    let mut leases_applied = 0u64;
    let mut standings_since = 0u64;
    let mut batch = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let next = Instant::now() + Duration::from_secs(1);
        batch += 1;
        // Used now, as the filter reports it: in the quota period the
        // control plane's standings are of, so receipts carry what they would.
        let used_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let keys: Vec<Value> = (0..keys_per_report)
            .filter_map(|_| ids.get(rng.below(ids.len())))
            .map(|id| json!({"key_id": id, "allowed": 3, "cost": 3, "last_used_ms": used_at}))
            .collect();
        let body = json!({
            "batch_id": format!("{name}-{batch}"),
            "reporter_id": name,
            "standings_since": standings_since,
            "leases_applied": leases_applied,
            "keys": keys,
        })
        .to_string();
        let request = format!(
            "POST /v1/usage HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {SYNC_TOKEN}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            identity(name, version.load(Ordering::Relaxed))
        );
        match conn.exchange(request.as_bytes()) {
            Ok(answer) if answer.status == 200 => {
                shared.reports.fetch_add(1, Ordering::Relaxed);
                let receipt: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
                if let Some(seq) = receipt.pointer("/leases/seq").and_then(Value::as_u64) {
                    leases_applied = seq;
                }
                if let Some(cursor) = receipt.get("cursor").and_then(Value::as_u64) {
                    standings_since = cursor;
                }
            }
            other => shared.failed(match other {
                Ok(answer) => format!(
                    "usage: {} {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                ),
                Err(e) => format!("usage: {e}"),
            }),
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

fn listed_live(addr: SocketAddr, prefix: &str) -> Result<usize> {
    let (status, body) = call(addr, "GET", "/v1/proxies", None)?;
    let body = expect_status("list the proxies", (status, body), 200)?;
    Ok(body
        .get("items")
        .and_then(Value::as_array)
        .map_or(0, |items| {
            items
                .iter()
                .filter(|p| {
                    p.get("node_id")
                        .and_then(Value::as_str)
                        .is_some_and(|n| n.starts_with(prefix))
                        && p.get("status").and_then(Value::as_str) == Some("live")
                })
                .count()
        }))
}

/// (row writes, committed transactions) of the database so far.
fn db_stats(psql: &Path, database_url: &str) -> Result<(u64, u64)> {
    let output = Command::new(psql)
        .args([
            database_url,
            "-At",
            "-c",
            "SELECT tup_inserted + tup_updated + tup_deleted, xact_commit \
             FROM pg_stat_database WHERE datname = current_database()",
        ])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut parts = text.trim().split('|').map(|p| p.trim().parse::<u64>());
    match (parts.next(), parts.next()) {
        (Some(Ok(writes)), Some(Ok(commits))) => Ok((writes, commits)),
        _ => Err(format!(
            "psql said {text:?} {}",
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}
