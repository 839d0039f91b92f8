//! `--soak <minutes>` (`cargo xtask soak`): Tollgate under steady, mixed
//! traffic for minutes, to show what a short benchmark cannot: that memory
//! stays flat, that no answer goes wrong after the first minute, that usage
//! stays exact while it flows, and how the tail moves minute by minute.
//!
//! One Envoy (one worker, pinned to CPU 0, as in the benchmark) in front of
//! the control plane on SQLite, with 100,000 keys. The offered load is half
//! of what a closed loop of valid keys reaches first. `--smoke` (in `cargo
//! xtask test`) has 2,000 keys and at most 1,000 requests a second: its
//! control plane is a debug build, which shares a CPU with the load. After
//! a first pass naming every valid key once, each request is drawn at
//! random: a valid key (80 %), a key never issued or deleted, a deactivated
//! key, a key over its limit (1 an hour), or no key. Every second the admin issues a key and deactivates the one
//! it issued the second before, so config keeps flowing to Envoy. Memory of
//! both processes is read every 10 s. At the end the control plane's count
//! of a sample of keys must equal what the load generator saw admitted.
//!
//! Writes `soak.json` and `soak.md` under `--out`; fails on any answer that
//! is not the one its request must get, on any usage that differs, and on
//! any admin change that failed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::arms::{Arm, Inputs};
use crate::load::{self, request_bytes, Conn, Requests, Rng};
use crate::route_times::{self, RouteTime};
use crate::store_size::{self, StoreSample};
use crate::{
    call, env_path, expect_status, path_str, pin_self_to_cpu, remove_work, report, tempdir,
    ControlPlane, Envoy, Options, Result,
};

/// Keys in each of the small sets that are refused.
const REFUSED_KEYS: usize = 20;
/// Valid keys whose count is compared with the control plane's.
const SAMPLE: usize = 200;
const CONNECTIONS: usize = 8;
/// Memory is read this often, and "after warm-up" is the first reading
/// past this share of the run.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const WARM_UP_SHARE: f64 = 0.1;
/// The database's size and rows are read this often.
const STORE_EVERY: Duration = Duration::from_secs(60);

/// What a request is, and so which answers are right for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Valid,
    Unknown,
    Revoked,
    Limited,
    Anonymous,
}

impl Kind {
    /// Out of 100.
    fn draw(roll: usize) -> Self {
        match roll {
            0..80 => Self::Valid,
            80..85 => Self::Unknown,
            85..90 => Self::Revoked,
            90..95 => Self::Limited,
            _ => Self::Anonymous,
        }
    }

    fn right(self, status: u16) -> bool {
        match self {
            Self::Valid => status == 200,
            Self::Unknown | Self::Revoked | Self::Anonymous => status == 401,
            // Its one request an hour, then refusals.
            Self::Limited => status == 200 || status == 429,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Unknown => "unknown",
            Self::Revoked => "deactivated",
            Self::Limited => "over its limit",
            Self::Anonymous => "no key",
        }
    }
}

/// The requests of each kind, built once: (kind, key index, bytes).
struct Mix {
    valid: Vec<Vec<u8>>,
    unknown: Vec<Vec<u8>>,
    revoked: Vec<Vec<u8>>,
    limited: Vec<Vec<u8>>,
    anonymous: Vec<u8>,
}

impl Mix {
    fn pick(&self, rng: &mut Rng) -> (Kind, usize, &[u8]) {
        let kind = Kind::draw(rng.below(100));
        let set = match kind {
            Kind::Valid => &self.valid,
            Kind::Unknown => &self.unknown,
            Kind::Revoked => &self.revoked,
            Kind::Limited => &self.limited,
            Kind::Anonymous => return (kind, 0, &self.anonymous),
        };
        let i = rng.below(set.len());
        (kind, i, set.get(i).map_or(&[][..], Vec::as_slice))
    }
}

/// What one load thread saw.
#[derive(Default)]
struct Seen {
    /// Per kind: answers, and the wrong ones by status.
    answers: BTreeMap<Kind, u64>,
    wrong: BTreeMap<(Kind, u16), u64>,
    /// 200s per valid key and per limited key, by index.
    admitted: Vec<u32>,
    admitted_limited: Vec<u32>,
    /// Latencies (µs) by minute of the run.
    minutes: Vec<Vec<u64>>,
}

impl Seen {
    fn merge(&mut self, other: Seen) {
        for (k, n) in other.answers {
            *self.answers.entry(k).or_default() += n;
        }
        for (k, n) in other.wrong {
            *self.wrong.entry(k).or_default() += n;
        }
        add(&mut self.admitted, &other.admitted);
        add(&mut self.admitted_limited, &other.admitted_limited);
        for (minute, latencies) in other.minutes.into_iter().enumerate() {
            if self.minutes.len() <= minute {
                self.minutes.resize_with(minute + 1, Vec::new);
            }
            if let Some(all) = self.minutes.get_mut(minute) {
                all.extend(latencies);
            }
        }
    }
}

fn add(into: &mut Vec<u32>, from: &[u32]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

/// Memory of both processes at one moment of the run.
#[derive(Clone, Copy)]
struct Memory {
    at: Duration,
    envoy_kib: u64,
    control_plane_kib: u64,
}

pub fn run(options: &Options, lasting: Duration) -> Result {
    let envoy_binary = env_path("TOLLGATE_ENVOY")?;
    let control_plane = match &options.control_plane {
        Some(binary) => binary.clone(),
        None => env_path("TOLLGATE_CONTROL_PLANE")?,
    };
    let filter_wasm = env_path("TOLLGATE_FILTER_WASM")?;
    let key_count = if options.smoke { 2_000 } else { 100_000 };
    let work = tempdir()?;
    pin_self_to_cpu(1);

    println!("\n==> control plane, {key_count} keys, and the keys refused");
    // Not niced as in the benchmark: the soak is about usage flowing, and
    // a control plane given only what the load generator leaves of its
    // CPU would be measured instead.
    let cp = ControlPlane::start_niced(&control_plane, &work, None, false)?;
    let generous = json!({
        "limits": [{"name": "per-second", "max": 1_000_000_000u64, "window_seconds": 1}],
        "monthly_quota": 1_000_000_000_000u64
    });
    let plan = |name: &str, mut body: Value| {
        body["name"] = json!(name);
        body
    };
    let tenant = cp.tenant("soak", plan("Soak", generous.clone()))?;
    let started = Instant::now();
    let valid = cp.issue_keys(&tenant, key_count)?;
    println!("issued in {:.1} s", started.elapsed().as_secs_f64());
    let revoked = cp.issue_keys(&tenant, REFUSED_KEYS)?;
    for key in &revoked {
        patch(
            cp.addr,
            &format!("/v1/keys/{}", key.id),
            json!({"active": false}),
        )?;
    }
    let unknown = cp.issue_keys(&tenant, REFUSED_KEYS)?;
    for key in &unknown {
        expect_status(
            "delete a key",
            call(cp.addr, "DELETE", &format!("/v1/keys/{}", key.id), None)?,
            204,
        )?;
    }
    let tight = cp.tenant(
        "soak-limited",
        json!({"name": "Soak limited", "limits": [{"name": "per-hour", "max": 1, "window_seconds": 3600}]}),
    )?;
    let limited = cp.issue_keys(&tight, REFUSED_KEYS)?;
    let churn = cp.tenant("soak-churn", plan("Soak churn", generous))?;
    // For finding saturation: keys of their own, so that the count of each
    // key the soak uses is the soak's alone.
    let saturating = cp.issue_keys(&tenant, 1_000)?;

    let inputs = Inputs {
        native_key: "",
        empty_wasm: "",
        minimal_limiter_wasm: "",
        filter_wasm: &path_str(&filter_wasm)?,
        control_plane_port: cp.addr.port(),
        sync_token: crate::SYNC_TOKEN,
        rls_port: 0,
    };
    let envoy = Envoy::start(&envoy_binary, Arm::Tollgate, &inputs, &work, "soak")?;
    envoy.wait_for_version(cp.version()?, Duration::from_secs(120))?;

    let bytes = |keys: &[crate::IssuedKey]| -> Vec<Vec<u8>> {
        keys.iter()
            .map(|k| request_bytes("/", Some(&k.key)))
            .collect()
    };
    let mix = Arc::new(Mix {
        valid: bytes(&valid),
        unknown: bytes(&unknown),
        revoked: bytes(&revoked),
        limited: bytes(&limited),
        anonymous: request_bytes("/", None),
    });

    let saturating = Requests::new(
        envoy.listener,
        "/",
        &saturating.into_iter().map(|k| k.key).collect::<Vec<_>>(),
        200,
    );
    let requests = if options.smoke { 5_000 } else { 30_000 };
    let closed = load::closed_loop(&saturating, requests, CONNECTIONS)?;
    let rate = (closed.per_second() / 2.0).max(50.0);
    let rate = if options.smoke {
        rate.min(1_000.0)
    } else {
        rate
    };
    println!(
        "saturation {:.0} requests/s; soaking at {rate:.0}/s for {:.1} min",
        closed.per_second(),
        lasting.as_secs_f64() / 60.0
    );

    let stop = Arc::new(AtomicBool::new(false));
    let admin = {
        let (stop, addr) = (stop.clone(), cp.addr);
        std::thread::spawn(move || churn_keys(addr, &churn, &stop))
    };
    let memory: Arc<Mutex<Vec<Memory>>> = Arc::default();
    let saturation = closed.per_second();
    let began = Instant::now();
    let sampler = {
        let (stop, memory) = (stop.clone(), memory.clone());
        let (envoy_pid, cp_pid) = (envoy.pid, cp.pid);
        std::thread::spawn(move || -> Result {
            while !stop.load(Ordering::Relaxed) {
                let reading = Memory {
                    at: began.elapsed(),
                    envoy_kib: rss_kib(envoy_pid)?,
                    control_plane_kib: rss_kib(cp_pid)?,
                };
                memory
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(reading);
                sleep_unless(&stop, SAMPLE_EVERY);
            }
            Ok(())
        })
    };
    let database = store_size::database(&work.join("data"));
    let store: Arc<Mutex<Vec<StoreSample>>> = Arc::default();
    let store_sampler = {
        let (stop, store, database) = (stop.clone(), store.clone(), database.clone());
        std::thread::spawn(move || -> Result {
            while !stop.load(Ordering::Relaxed) {
                let reading = store_size::sample(&database, began.elapsed())?;
                store
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(reading);
                sleep_unless(&stop, STORE_EVERY);
            }
            Ok(())
        })
    };
    let seen = offer(&mix, envoy.listener, rate, lasting, valid.len())?;
    let lasted = began.elapsed();
    stop.store(true, Ordering::Relaxed);
    store_sampler
        .join()
        .map_err(|_| "the store sampler panicked")??;
    let changes = admin.join().map_err(|_| "the admin thread panicked")??;
    sampler
        .join()
        .map_err(|_| "the memory sampler panicked")??;
    let mut memory = memory
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    memory.push(Memory {
        at: began.elapsed(),
        envoy_kib: envoy.rss_kib()?,
        control_plane_kib: rss_kib(cp.pid)?,
    });

    println!("==> usage of {SAMPLE} keys and the limited ones, against the control plane");
    let exact = usage_matches(cp.addr, &valid, &limited, &seen)?;
    println!("==> the store: rows, bytes, and the usage queries' time");
    let mut store = store.lock().unwrap_or_else(PoisonError::into_inner).clone();
    store.push(store_size::sample(&database, began.elapsed())?);
    let tables = store_size::bytes_by_table(&database)?;
    let queries = usage_query_times(cp.addr, &valid, &tenant)?;
    let routes = route_times::read(cp.addr)?;
    let report = Report {
        routes,
        lasting: lasted,
        keys: key_count,
        saturation,
        rate,
        seen: &seen,
        memory: &memory,
        changes,
        exact,
        store: &store,
        tables,
        queries,
    };
    report.write(options, &filter_wasm)?;
    drop(envoy);
    drop(cp);
    remove_work(&work);
    report.verdict()
}

/// Sleeps `span`, waking early when `stop` is set.
fn sleep_unless(stop: &AtomicBool, span: Duration) {
    let until = Instant::now() + span;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn patch(addr: SocketAddr, path: &str, body: Value) -> Result<Value> {
    expect_status(path, call(addr, "PATCH", path, Some(&body))?, 200)
}

/// Admin changes made, and the ones answered `503 busy` first (then made
/// again, as a client told to retry would).
#[derive(Default)]
struct Changes {
    made: u64,
    busy: u64,
}

/// Every second: a key issued on `tenant`, and the previous one
/// deactivated.
fn churn_keys(addr: SocketAddr, tenant: &str, stop: &AtomicBool) -> Result<Changes> {
    let mut changes = Changes::default();
    let mut previous: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let issued = change(
            addr,
            "POST",
            &format!("/v1/tenants/{tenant}/keys"),
            json!({"name": "churn"}),
            201,
            &mut changes,
        )?;
        if let Some(id) = previous.take() {
            let path = format!("/v1/keys/{id}");
            change(
                addr,
                "PATCH",
                &path,
                json!({"active": false}),
                200,
                &mut changes,
            )?;
        }
        previous = issued.get("id").and_then(Value::as_str).map(str::to_owned);
        sleep_unless(stop, Duration::from_secs(1));
    }
    Ok(changes)
}

/// One admin change, made again after a second while the answer is
/// `503 busy` (SQLite's one writer taken by usage), up to ten times.
fn change(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Value,
    want: u16,
    changes: &mut Changes,
) -> Result<Value> {
    for _ in 0..10 {
        let (status, answer) = call(addr, method, path, Some(&body))?;
        if status == 503 && answer.get("code").and_then(Value::as_str) == Some("busy") {
            changes.busy += 1;
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        changes.made += 1;
        return expect_status(path, (status, answer), want);
    }
    Err(format!("{method} {path}: 503 busy ten times"))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS for {pid}"))
}

/// The mixed load at `rate` for `lasting`, request *i* due at `i / rate`
/// and timed from then (as `load::fixed_rate`); the first requests name
/// each valid key once.
fn offer(
    mix: &Arc<Mix>,
    addr: SocketAddr,
    rate: f64,
    lasting: Duration,
    valid: usize,
) -> Result<Seen> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (lasting.as_secs_f64() * rate) as usize;
    let start = Instant::now() + Duration::from_millis(20);
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let mix = mix.clone();
            std::thread::spawn(move || -> Result<Seen> {
                let mut conn = Conn::open(addr)?;
                let mut rng = Rng::new(c as u64 + 7_001);
                let mut seen = Seen {
                    admitted: vec![0; valid],
                    admitted_limited: vec![0; REFUSED_KEYS],
                    ..Seen::default()
                };
                let mut i = c;
                while i < total {
                    let due = start + interval.mul_f64(i as f64);
                    load::wait_until(due);
                    // First every valid key once, in order: from then on
                    // Envoy holds every key's state, so memory after the
                    // warm-up is that of the whole key set, and growth past
                    // it is not keys seen for the first time.
                    let (kind, key, request) = match mix.valid.get(i) {
                        Some(first) => (Kind::Valid, i, first.as_slice()),
                        None => mix.pick(&mut rng),
                    };
                    let answer = conn.exchange(request)?;
                    let took = Instant::now().saturating_duration_since(due);
                    *seen.answers.entry(kind).or_default() += 1;
                    if !kind.right(answer.status) {
                        *seen.wrong.entry((kind, answer.status)).or_default() += 1;
                    }
                    if answer.status == 200 {
                        let counts = match kind {
                            Kind::Limited => &mut seen.admitted_limited,
                            _ => &mut seen.admitted,
                        };
                        if let Some(n) = counts.get_mut(key) {
                            *n += 1;
                        }
                    }
                    let minute = due.saturating_duration_since(start).as_secs() as usize / 60;
                    if seen.minutes.len() <= minute {
                        seen.minutes.resize_with(minute + 1, Vec::new);
                    }
                    if let Some(latencies) = seen.minutes.get_mut(minute) {
                        latencies.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
                    }
                    i += CONNECTIONS;
                }
                Ok(seen)
            })
        })
        .collect();
    let mut all = Seen::default();
    for handle in handles {
        all.merge(handle.join().map_err(|_| "a load thread panicked")??);
    }
    Ok(all)
}

/// Keys whose count was compared: how many, and those that differed as
/// (key id, the control plane's count, the load generator's).
struct Exactness {
    checked: usize,
    differing: Vec<(String, u64, u64)>,
}

/// The control plane's `used` of a sample of valid keys and of every
/// limited key against the 200s the load generator saw, given up to a
/// minute for the last reports to arrive.
fn usage_matches(
    addr: SocketAddr,
    valid: &[crate::IssuedKey],
    limited: &[crate::IssuedKey],
    seen: &Seen,
) -> Result<Exactness> {
    let step = (valid.len() / SAMPLE).max(1);
    let sample: Vec<(&str, u64)> = valid
        .iter()
        .zip(&seen.admitted)
        .step_by(step)
        .chain(limited.iter().zip(&seen.admitted_limited))
        .map(|(key, n)| (key.id.as_str(), u64::from(*n)))
        .collect();
    let checked = sample.len();
    // The last report, a second after the load.
    std::thread::sleep(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending = sample;
    loop {
        let mut differing = Vec::new();
        for (id, expected) in pending {
            let body = expect_status(
                "a key's usage",
                call(addr, "GET", &format!("/v1/keys/{id}/usage"), None)?,
                200,
            )?;
            let used = body.get("used").and_then(Value::as_u64).unwrap_or(u64::MAX);
            if used != expected {
                differing.push((id, used, expected));
            }
        }
        if differing.is_empty() || Instant::now() > deadline {
            return Ok(Exactness {
                checked,
                differing: differing
                    .into_iter()
                    .map(|(id, used, expected)| (id.to_owned(), used, expected))
                    .collect(),
            });
        }
        std::thread::sleep(Duration::from_secs(1));
        pending = differing
            .into_iter()
            .map(|(id, _, expected)| (id, expected))
            .collect();
    }
}

/// How long the usage API takes at the end of the run: a key's current
/// period, for each key of the sample, and the tenant of every valid key's
/// daily series over 30 days.
struct QueryTimes {
    key_usage: Vec<Duration>,
    tenant_usage: Duration,
    tenant_usage_bytes: usize,
}

fn usage_query_times(
    addr: SocketAddr,
    valid: &[crate::IssuedKey],
    tenant: &str,
) -> Result<QueryTimes> {
    let step = (valid.len() / SAMPLE).max(1);
    let mut key_usage = Vec::new();
    for key in valid.iter().step_by(step) {
        let started = Instant::now();
        expect_status(
            "a key's usage",
            call(addr, "GET", &format!("/v1/keys/{}/usage", key.id), None)?,
            200,
        )?;
        key_usage.push(started.elapsed());
    }
    key_usage.sort_unstable();
    let started = Instant::now();
    let body = expect_status(
        "the tenant's usage",
        call(
            addr,
            "GET",
            &format!("/v1/tenants/{tenant}/usage?granularity=day"),
            None,
        )?,
        200,
    )?;
    Ok(QueryTimes {
        key_usage,
        tenant_usage: started.elapsed(),
        tenant_usage_bytes: body.to_string().len(),
    })
}

struct Report<'a> {
    routes: Vec<RouteTime>,
    store: &'a [StoreSample],
    tables: BTreeMap<String, u64>,
    queries: QueryTimes,
    lasting: Duration,
    keys: usize,
    saturation: f64,
    rate: f64,
    seen: &'a Seen,
    memory: &'a [Memory],
    changes: Changes,
    exact: Exactness,
}

impl Report<'_> {
    /// The first reading past the warm-up, and the last.
    fn memory_span(&self) -> Option<(Memory, Memory)> {
        Some((self.memory_from(WARM_UP_SHARE)?, *self.memory.last()?))
    }

    /// The first reading past `share` of the run. Growth over the second
    /// half tells a leak (it goes on) from caches filling (they level off).
    fn memory_from(&self, share: f64) -> Option<Memory> {
        let at = self.lasting.mul_f64(share);
        self.memory.iter().find(|m| m.at >= at).copied()
    }

    fn wrong(&self) -> u64 {
        self.seen.wrong.values().sum()
    }

    fn write(&self, options: &Options, filter_wasm: &Path) -> Result {
        let quantile = |latencies: &[u64], q: f64| {
            let mut sorted = latencies.to_vec();
            sorted.sort_unstable();
            load::Latencies(sorted).quantile(q)
        };
        let minutes: Vec<Value> = self
            .seen
            .minutes
            .iter()
            .enumerate()
            .map(|(i, l)| {
                json!({"minute": i + 1, "requests": l.len(), "p50_us": quantile(l, 0.5), "p99_us": quantile(l, 0.99)})
            })
            .collect();
        let growth = |a: u64, b: u64| (b as f64 - a as f64) * 100.0 / (a.max(1) as f64);
        let memory = self.memory_span().map(|(warm, end)| {
            json!({
                "warm_at_s": warm.at.as_secs(),
                "envoy_kib": [warm.envoy_kib, end.envoy_kib],
                "envoy_growth_percent": growth(warm.envoy_kib, end.envoy_kib),
                "control_plane_kib": [warm.control_plane_kib, end.control_plane_kib],
                "control_plane_growth_percent": growth(warm.control_plane_kib, end.control_plane_kib),
                "second_half": self.memory_from(0.5).map(|half| json!({
                    "from_s": half.at.as_secs(),
                    "envoy_growth_percent": growth(half.envoy_kib, end.envoy_kib),
                    "control_plane_growth_percent": growth(half.control_plane_kib, end.control_plane_kib),
                })),
            })
        });
        let answers: BTreeMap<&str, u64> = self
            .seen
            .answers
            .iter()
            .map(|(k, n)| (k.name(), *n))
            .collect();
        let wrong: Vec<Value> = self
            .seen
            .wrong
            .iter()
            .map(|((k, status), n)| json!({"kind": k.name(), "status": status, "count": n}))
            .collect();
        let json = json!({
            "date": report::command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            "commit": report::command_line("git", &["rev-parse", "--short", "HEAD"]),
            "machine": report::machine(),
            "filter_wasm_bytes": std::fs::metadata(filter_wasm).map(|m| m.len()).unwrap_or(0),
            "minutes": self.lasting.as_secs_f64() / 60.0,
            "keys": self.keys,
            "saturation_rps": self.saturation.round(),
            "offered_rps": self.rate.round(),
            "answers": answers,
            "wrong_answers": wrong,
            "admin_changes": self.changes.made,
            "admin_answered_busy_first": self.changes.busy,
            "usage_checked_keys": self.exact.checked,
            "usage_differing": self.exact.differing.iter().map(|(id, cp, seen)| json!({"key": id, "control_plane": cp, "seen": seen})).collect::<Vec<_>>(),
            "memory": memory,
            "memory_every_10_s": self.memory.iter().map(|m| json!({
                "at_s": m.at.as_secs(), "envoy_kib": m.envoy_kib, "control_plane_kib": m.control_plane_kib,
            })).collect::<Vec<_>>(),
            "per_minute": minutes,
            "control_plane_routes": self.routes.iter().map(|r| json!({
                "method": r.method, "route": r.route, "count": r.count,
                "mean_ms": r.mean_ms, "p99_at_most_ms": r.p99_at_most_ms,
            })).collect::<Vec<_>>(),
            "store": {
                "samples": self.store.iter().map(|x| json!({"at_s": x.at.as_secs(), "bytes": x.bytes, "rows": x.rows})).collect::<Vec<_>>(),
                "bytes_by_table": self.tables,
                "key_usage_ms": {
                    "p50": self.queries.key_usage.get(self.queries.key_usage.len() / 2).map(|d| d.as_secs_f64() * 1e3),
                    "max": self.queries.key_usage.last().map(|d| d.as_secs_f64() * 1e3),
                    "calls": self.queries.key_usage.len(),
                },
                "tenant_usage_daily_ms": self.queries.tenant_usage.as_secs_f64() * 1e3,
                "tenant_usage_daily_bytes": self.queries.tenant_usage_bytes,
            },
        });
        let mut md = format!(
            "`cargo xtask soak`, {}, commit `{}`, {}.\n\n\
             {:.1} minutes, {} keys, {:.0} requests/s offered (a closed loop reached {:.0}/s), \
             {} admin changes ({} answered 503 busy first); {} answers, {} wrong; usage of {} keys compared, {} differing.\n\n",
            json["date"].as_str().unwrap_or(""),
            json["commit"].as_str().unwrap_or(""),
            json["machine"].as_str().unwrap_or(""),
            self.lasting.as_secs_f64() / 60.0,
            self.keys,
            self.rate,
            self.saturation,
            self.changes.made,
            self.changes.busy,
            self.seen.answers.values().sum::<u64>(),
            self.wrong(),
            self.exact.checked,
            self.exact.differing.len(),
        );
        if let Some((warm, end)) = self.memory_span() {
            md.push_str(&format!(
                "Memory (RSS) at {} s and at the end: Envoy {} → {} KiB ({:+.1} %), control plane {} → {} KiB ({:+.1} %).\n\n",
                warm.at.as_secs(),
                warm.envoy_kib,
                end.envoy_kib,
                growth(warm.envoy_kib, end.envoy_kib),
                warm.control_plane_kib,
                end.control_plane_kib,
                growth(warm.control_plane_kib, end.control_plane_kib),
            ));
            if let Some(half) = self.memory_from(0.5) {
                md.push_str(&format!(
                    "Over the second half (from {} s): Envoy {:+.1} %, control plane {:+.1} %.\n\n",
                    half.at.as_secs(),
                    growth(half.envoy_kib, end.envoy_kib),
                    growth(half.control_plane_kib, end.control_plane_kib),
                ));
            }
        }
        md.push_str("| minute | requests | p50 µs | p99 µs |\n|---|---|---|---|\n");
        for m in &minutes {
            md.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                m["minute"], m["requests"], m["p50_us"], m["p99_us"]
            ));
        }
        md.push_str(
            "\nThe control plane's answer times, from its own histograms (the 99th \
             percentile as the bucket holding it):\n\n\
             | route | answers | mean ms | p99 ms at most |\n|---|---|---|---|\n",
        );
        for r in &self.routes {
            let p99 = r
                .p99_at_most_ms
                .map_or_else(|| "over 60,000".to_owned(), |ms| format!("{ms}"));
            md.push_str(&format!(
                "| {} {} | {} | {:.1} | {p99} |\n",
                r.method, r.route, r.count, r.mean_ms
            ));
        }
        md.push_str(&self.store_md(&json["store"]));
        std::fs::create_dir_all(&options.out)
            .map_err(|e| format!("create {}: {e}", options.out.display()))?;
        for (name, text) in [
            ("soak.md", md.clone()),
            ("soak.json", format!("{json:#}\n")),
        ] {
            let path = options.out.join(name);
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        println!("\n{md}wrote {}", options.out.join("soak.md").display());
        Ok(())
    }

    /// The database's growth, table by table, and the usage queries' time.
    fn store_md(&self, store: &Value) -> String {
        let mut md = format!(
            "\nThe control plane's SQLite database (rows of the tables that grow; bytes of the \
             database file and its WAL):\n\n| at s | bytes | {} |\n|---|---|{}\n",
            store_size::GROWING.join(" | "),
            "---|".repeat(store_size::GROWING.len())
        );
        for x in self.store {
            let rows: Vec<String> = store_size::GROWING
                .iter()
                .map(|t| x.rows.get(*t).copied().unwrap_or(0).to_string())
                .collect();
            md.push_str(&format!(
                "| {} | {} | {} |\n",
                x.at.as_secs(),
                x.bytes,
                rows.join(" | ")
            ));
        }
        let last = self.store.last();
        md.push_str(
            "\n| table (with its indexes) | bytes | rows | bytes per row |\n|---|---|---|---|\n",
        );
        for (table, bytes) in &self.tables {
            let rows = last.and_then(|x| x.rows.get(table)).copied();
            let per_row = rows
                .filter(|n| *n > 0)
                .map(|n| format!("{:.0}", *bytes as f64 / n as f64))
                .unwrap_or_default();
            let rows = rows.map(|n| n.to_string()).unwrap_or_default();
            md.push_str(&format!("| {table} | {bytes} | {rows} | {per_row} |\n"));
        }
        md.push_str(&format!(
            "\nUsage API at the end: `GET /v1/keys/{{id}}/usage` p50 {:.1} ms, max {:.1} ms over {} keys; \
             `GET /v1/tenants/{{id}}/usage?granularity=day` over the {} keys {:.0} ms ({} bytes).\n",
            store["key_usage_ms"]["p50"].as_f64().unwrap_or(0.0),
            store["key_usage_ms"]["max"].as_f64().unwrap_or(0.0),
            self.queries.key_usage.len(),
            self.keys,
            self.queries.tenant_usage.as_secs_f64() * 1e3,
            self.queries.tenant_usage_bytes,
        ));
        md
    }

    fn verdict(&self) -> Result {
        if self.wrong() > 0 {
            return Err(format!("wrong answers: {:?}", self.seen.wrong));
        }
        if !self.exact.differing.is_empty() {
            return Err(format!(
                "usage differs (key, control plane, seen): {:?}",
                self.exact.differing
            ));
        }
        Ok(())
    }
}
