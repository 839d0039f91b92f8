//! The benchmark behind `cargo xtask bench`: what Tollgate costs Envoy, next
//! to what Envoy already ships and to the floor of being a proxy-wasm filter
//! at all.
//!
//! A crate of its own, not a part of xtask: xtask installs Envoy, builds the
//! filters, the control plane and the rate limit service, and runs this
//! binary with their paths in `TOLLGATE_ENVOY`, `TOLLGATE_CONTROL_PLANE`
//! (unless `--control-plane` names one), `TOLLGATE_FILTER_WASM`,
//! `TOLLGATE_FILTER_HOST_CALLS_WASM` (the counting build, [`host_calls`]),
//! `TOLLGATE_EMPTY_WASM`, `TOLLGATE_MINIMAL_LIMITER_WASM` and
//! `TOLLGATE_BENCH_RLS`; the runner's own arguments are `cargo xtask
//! bench`'s, passed on as they are.
//!
//! One run starts one Envoy per arm ([`arms`]), every one `--concurrency 1`
//! and pinned to CPU 0, the load generator ([`load`]) on CPU 1, and the
//! control plane on CPU 0 as SCHED_IDLE (why: [`ControlPlane::start_niced`]);
//! the report gives its CPU per request too. The `rls-limitador` arm is Envoy's own global rate limit
//! filter and `TOLLGATE_BENCH_RLS` (`bench/rls`, a rate limit service on
//! the `limitador` crate), which runs on CPU 0 too; its CPU per request is
//! Envoy's plus the service's, and the report gives the service's share.
//! At each key scale it loads keys through the control plane's API, times a
//! cold Envoy's full sync, reads Envoy's memory, counts host calls per
//! request, then runs alternated rounds
//! over the arms: a closed loop for Envoy CPU per request (from
//! `/proc/<pid>/stat`) and requests/s, and a fixed offered load for p50/p99
//! latency. At the largest scale it times revocations (API call
//! to first 401). [`report`] writes JSON, Markdown and an SVG plot.
//!
//! `--smoke` (run by `cargo xtask test`) does all of it small and fast and
//! writes under `target/`, so it proves the benchmark works, not figures.

mod arms;
mod fleet;
mod host_calls;
mod load;
mod report;
mod route_times;
mod soak;
mod store_size;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_launch::{free_port, Output, Process};

use arms::{Arm, Inputs, Ports};
use load::{Conn, Requests};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const SYNC_TOKEN: &str = "bench-sync-token-0123456789";
/// Keys of the per-Envoy arm, at every scale: compared with the
/// fleet-wide arm at 1,000 keys.
const PER_ENVOY_KEYS: usize = 1_000;
/// Keys issued per batch call (the API's maximum).
const BATCH: usize = 10_000;
/// How long a control plane or an Envoy may take to be ready.
const START_LIMIT: Duration = Duration::from_secs(60);

type Result<T = ()> = std::result::Result<T, String>;

/// The workspace root: `envoy/tollgate.yaml`, the default `--out`, `git`.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

#[derive(Debug, Clone)]
pub struct Options {
    pub smoke: bool,
    pub scales: Vec<usize>,
    pub rounds: usize,
    /// Requests per closed-loop round.
    pub requests: usize,
    pub connections: usize,
    /// Offered load for the latency runs, requests/s, and for how long.
    pub rate: u32,
    pub rate_for: Duration,
    pub revocations: usize,
    pub out: PathBuf,
    /// A control-plane binary to use instead of building one.
    pub control_plane: Option<PathBuf>,
    /// Only these arms (by name), for quick comparisons while developing.
    pub arms: Option<Vec<String>>,
    /// Another build of the filter, measured as arm `tollgate-candidate`
    /// alongside `tollgate-per-envoy` (the same per-Envoy keys) in the same
    /// alternated rounds: run-to-run noise on this machine is larger than
    /// most changes worth comparing.
    pub candidate: Option<PathBuf>,
    /// Instead of the arms: the control plane on PostgreSQL against this
    /// many simulated proxies, one size after the other ([`fleet`]).
    pub fleet: Option<Vec<usize>>,
    /// Keys each simulated proxy reports use of every second (0: heartbeats only).
    pub fleet_keys: usize,
    /// Instead of the arms: a soak of this long ([`soak`]).
    pub soak: Option<Duration>,
}

const USAGE: &str = "cargo xtask bench [--smoke] [--scales 1,1000,100000,1000000] [--rounds 5] \
[--requests 60000] [--rate 2000] [--out bench] [--control-plane <binary>] \
[--arms plain,empty-wasm,tollgate] [--candidate <other filter.wasm>] [--fleet 100,1000] \
[--fleet-keys 20] [--soak <minutes>]";

impl Options {
    pub fn full() -> Self {
        Self {
            smoke: false,
            scales: vec![1, 1_000, 100_000, 1_000_000],
            rounds: 5,
            requests: 60_000,
            connections: 16,
            rate: 2_000,
            rate_for: Duration::from_secs(4),
            revocations: 100,
            out: root().join("bench"),
            control_plane: None,
            arms: None,
            candidate: None,
            fleet: None,
            fleet_keys: 20,
            soak: None,
        }
    }

    pub fn smoke() -> Self {
        Self {
            smoke: true,
            scales: vec![1, 2_500],
            rounds: 1,
            requests: 2_000,
            connections: 4,
            rate: 200,
            rate_for: Duration::from_secs(1),
            revocations: 5,
            out: root().join("target/bench-smoke"),
            control_plane: None,
            arms: None,
            candidate: None,
            fleet: None,
            fleet_keys: 20,
            soak: None,
        }
    }

    pub fn parse(args: &[String]) -> Result<Self> {
        let mut options = if args.iter().any(|a| a == "--smoke") {
            Self::smoke()
        } else {
            Self::full()
        };
        let mut it = args.iter().filter(|a| *a != "--smoke");
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            let number = || -> Result<usize> {
                value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{flag}: {value:?} is not a positive number"))
            };
            match flag.as_str() {
                "--fleet" => {
                    let sizes = value
                        .split(',')
                        .map(|s| s.trim().parse::<usize>().ok().filter(|n| *n > 0))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| format!("--fleet: {value:?} is not a list of counts"))?;
                    options.fleet = Some(sizes);
                }
                "--fleet-keys" => {
                    options.fleet_keys = value
                        .parse()
                        .map_err(|_| format!("--fleet-keys: {value:?} is not a count"))?;
                }
                "--scales" => {
                    options.scales = value
                        .split(',')
                        .map(|s| s.trim().parse::<usize>().ok().filter(|n| *n > 0))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| format!("--scales: {value:?} is not a list of counts"))?;
                    options.scales.sort_unstable();
                }
                "--soak" => {
                    let minutes = value
                        .parse::<f64>()
                        .ok()
                        .filter(|m| *m > 0.0 && *m <= 24.0 * 60.0)
                        .ok_or_else(|| format!("--soak: {value:?} is not a number of minutes"))?;
                    options.soak = Some(Duration::from_secs_f64(minutes * 60.0));
                }
                "--rounds" => options.rounds = number()?,
                "--requests" => options.requests = number()?,
                "--rate" => options.rate = u32::try_from(number()?).unwrap_or(u32::MAX),
                "--out" => options.out = PathBuf::from(value),
                "--control-plane" => options.control_plane = Some(PathBuf::from(value)),
                "--candidate" => options.candidate = Some(PathBuf::from(value)),
                "--arms" => {
                    let arms: Vec<String> = value.split(',').map(|a| a.trim().to_owned()).collect();
                    let known = |a: &str| ARM_LOADS.contains(&a) || a == CANDIDATE;
                    if let Some(bad) = arms.iter().find(|a| !known(a)) {
                        return Err(format!(
                            "--arms: no arm {bad:?}; arms are {}, and {CANDIDATE} with --candidate",
                            ARM_LOADS.join(", ")
                        ));
                    }
                    options.arms = Some(arms);
                }
                _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
            }
        }
        if let Some(wasm) = &options.candidate {
            if !wasm.is_file() {
                return Err(format!("--candidate: no file {}", wasm.display()));
            }
        }
        Ok(options)
    }
}

/// A path xtask passes in `name`.
fn env_path(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os(name).map(PathBuf::from).ok_or_else(|| {
        format!("{name} is not set: run the benchmark through `cargo xtask bench`")
    })?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{name}={} does not exist", path.display()))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // xtask checks the arguments before it spends minutes building.
    let (check_only, args) = match args.split_first() {
        Some((first, rest)) if first == "--check-args" => (true, rest),
        _ => (false, &args[..]),
    };
    let result = Options::parse(args).and_then(|options| {
        if check_only {
            Ok(())
        } else {
            run_bench(&options)
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_bench(options: &Options) -> Result {
    if let Some(sizes) = &options.fleet {
        return run_fleet(options, sizes);
    }
    if let Some(lasting) = options.soak {
        return soak::run(options, lasting);
    }
    let envoy = &env_path("TOLLGATE_ENVOY")?;
    let control_plane = match &options.control_plane {
        Some(binary) => binary.clone(),
        None => env_path("TOLLGATE_CONTROL_PLANE")?,
    };
    let filter_wasm = env_path("TOLLGATE_FILTER_WASM")?;
    let empty_wasm = env_path("TOLLGATE_EMPTY_WASM")?;
    let minimal_limiter_wasm = env_path("TOLLGATE_MINIMAL_LIMITER_WASM")?;
    let rls_binary = env_path("TOLLGATE_BENCH_RLS")?;
    let host_calls_wasm = env_path("TOLLGATE_FILTER_HOST_CALLS_WASM")?;
    let work = tempdir()?;
    pin_self_to_cpu(1);

    println!("\n==> control plane, plans, tenants and the denial keys");
    let cp = ControlPlane::start(&control_plane, &work, None)?;
    let setup = Setup::create(&cp)?;
    println!("==> the rate limit service of the rls-limitador arm, pinned to CPU 0");
    let rls = Rls::start(&rls_binary, &work)?;

    let inputs = Inputs {
        native_key: &setup.native_key,
        empty_wasm: &path_str(&empty_wasm)?,
        minimal_limiter_wasm: &path_str(&minimal_limiter_wasm)?,
        filter_wasm: &path_str(&filter_wasm)?,
        control_plane_port: cp.addr.port(),
        sync_token: SYNC_TOKEN,
        rls_port: rls.addr.port(),
    };
    println!("==> one Envoy per arm, pinned to CPU 0");
    let mut envoys = Vec::new();
    for arm in [
        Arm::Plain,
        Arm::Native,
        Arm::EmptyWasm,
        Arm::MinimalLimiter,
        Arm::MinimalLimiterStrip,
        Arm::MinimalLimiterHeaders,
        Arm::Tollgate,
        Arm::TollgateLean,
        Arm::TollgateIstio,
        Arm::RlsLimitador,
    ] {
        let mut started = Envoy::start(envoy, arm, &inputs, &work, arm.name())?;
        if arm == Arm::RlsLimitador {
            started.service = Some(rls.pid);
        }
        envoys.push(started);
    }
    let candidate = match &options.candidate {
        Some(wasm) => {
            let inputs = Inputs {
                filter_wasm: &path_str(wasm)?,
                ..inputs
            };
            Some(Envoy::start(
                envoy,
                Arm::Tollgate,
                &inputs,
                &work,
                CANDIDATE,
            )?)
        }
        None => None,
    };
    let tollgate = envoy_of(&envoys, Arm::Tollgate)?;
    let mut keys = setup.allowed_keys.clone();
    tollgate.wait_for_version(cp.version()?, Duration::from_secs(60))?;
    let per_envoy_key = setup
        .per_envoy_keys
        .first()
        .map(|k| k.key.clone())
        .ok_or("no per-Envoy key")?;
    // The arms on the per-Envoy keys, from their first admitted request.
    for arm in [Arm::TollgateLean, Arm::TollgateIstio] {
        let envoy = envoy_of(&envoys, arm)?;
        envoy.wait_for_version(cp.version()?, Duration::from_secs(60))?;
        until_admits(envoy, &per_envoy_key, Duration::from_secs(30))?;
    }
    setup.exhaust(tollgate)?;
    let ordinary_key = keys.first().map(|k| k.key.clone()).ok_or("no fleet key")?;
    if let Some(candidate) = &candidate {
        candidate.wait_for_version(cp.version()?, Duration::from_secs(60))?;
        until_admits(candidate, &per_envoy_key, Duration::from_secs(30))?;
    }
    rls.prove_limits(envoy_of(&envoys, Arm::RlsLimitador)?, &ordinary_key)?;

    let mut results = report::Results::new(options, &filter_wasm)?;
    let rss_empty = tollgate.rss_kib()?;
    for &scale in &options.scales {
        println!("\n==> {scale} keys");
        if keys.len() < scale {
            let started = Instant::now();
            keys.extend(cp.issue_keys(&setup.tenant, scale - keys.len())?);
            println!("issued in {:.1} s", started.elapsed().as_secs_f64());
        }
        let version = cp.version()?;
        let started = Instant::now();
        tollgate.wait_for_version(version, Duration::from_secs(120))?;
        for arm in [Arm::TollgateLean, Arm::TollgateIstio] {
            envoy_of(&envoys, arm)?.wait_for_version(version, Duration::from_secs(120))?;
        }
        if let Some(candidate) = &candidate {
            candidate.wait_for_version(version, Duration::from_secs(120))?;
        }
        println!(
            "the running Envoy had them {:.2} s later",
            started.elapsed().as_secs_f64()
        );
        let rss = tollgate.rss_kib()?;
        let cold_sync = cold_sync(envoy, &inputs, &work, version)?;
        println!("cold Envoy: full sync {:.2} s", cold_sync.as_secs_f64());
        let mut scale_result = report::Scale::new(scale, rss, rss_empty, cold_sync);
        scale_result.host_calls =
            count_host_calls(envoy, &inputs, &host_calls_wasm, &work, &setup, version)?;
        let mut arms = ArmLoads::new(&envoys, candidate.as_ref(), &setup, &keys)?;
        if let Some(only) = &options.arms {
            arms.0.retain(|(name, _, _)| only.iter().any(|o| o == name));
        }
        warm_up(&arms, options)?;
        let control_plane_before = cpu_us(cp.pid)?;
        for round in 0..options.rounds {
            for i in 0..arms.0.len() {
                // Alternated: each round starts one arm later.
                let Some((name, envoy, requests)) = arms.0.get((i + round) % arms.0.len()) else {
                    continue;
                };
                let sample = measure(envoy, requests, options)?;
                let service = sample
                    .service_cpu_us
                    .map(|s| format!("  (service {s:.1} µs of it)"))
                    .unwrap_or_default();
                println!(
                    "round {} {name:<23} {:6.1} µs CPU/req  {:8.0} req/s  p50 {:5.0} µs  p99 {:6.0} µs{service}",
                    round + 1,
                    sample.cpu_us,
                    sample.rps,
                    sample.p50_us,
                    sample.p99_us
                );
                scale_result.push(name, round, sample);
            }
        }
        // The last round's usage reaches the control plane within about
        // two reports.
        std::thread::sleep(Duration::from_secs(2));
        scale_result.control_plane_cpu_us = cpu_us(cp.pid)? - control_plane_before;
        results.scales.push(scale_result);
    }
    if let Some(&largest) = options.scales.last() {
        println!("\n==> revocations with {largest} keys, through three Envoys");
        let version = cp.version()?;
        let mut fleet = vec![];
        for name in ["fleet-2", "fleet-3"] {
            let envoy = Envoy::start(envoy, Arm::Tollgate, &inputs, &work, name)?;
            envoy.wait_for_version(version, Duration::from_secs(120))?;
            fleet.push(envoy);
        }
        let all: Vec<&Envoy> = std::iter::once(tollgate).chain(&fleet).collect();
        results.revocation = Some(revocations(&cp, &all, &keys, options.revocations)?);
    }
    drop(envoys);
    drop(candidate);
    drop(rls);
    drop(cp);
    remove_work(&work);
    report::write(&results, &options.out)?;
    println!("\nwrote {}", options.out.display());
    Ok(())
}

/// `--fleet`: the control plane on the PostgreSQL xtask started, 100k keys
/// (1k with `--smoke`), and each size of simulated fleet in turn.
fn run_fleet(options: &Options, sizes: &[usize]) -> Result {
    let control_plane = match &options.control_plane {
        Some(binary) => binary.clone(),
        None => env_path("TOLLGATE_CONTROL_PLANE")?,
    };
    let database_url = std::env::var("TOLLGATE_BENCH_DATABASE_URL").map_err(|_| {
        "TOLLGATE_BENCH_DATABASE_URL is not set: run it through `cargo xtask bench --fleet`"
    })?;
    let psql = env_path("TOLLGATE_BENCH_PSQL")?;
    let work = tempdir()?;
    println!("\n==> control plane on PostgreSQL");
    let cp = ControlPlane::start(&control_plane, &work, Some(&database_url))?;
    let setup = Setup::create(&cp)?;
    let count = if options.smoke { 1_000 } else { 100_000 };
    let started = Instant::now();
    let keys = cp.issue_keys(&setup.tenant, count)?;
    println!(
        "{count} keys issued in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let window = if options.smoke {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(20)
    };
    let results = fleet::run(
        &cp,
        cp.pid,
        &psql,
        &database_url,
        &keys,
        sizes,
        options.fleet_keys,
        window,
    )?;
    drop(cp);
    remove_work(&work);
    std::fs::create_dir_all(&options.out)
        .map_err(|e| format!("create {}: {e}", options.out.display()))?;
    let mut md = String::from(
        "| proxies | keys | keys per report | control-plane CPU (cores) | reports/s | row writes/s | transactions/s | change to all, p50 / p99 (samples) | listed live | errors |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &results {
        md.push_str(&r.markdown_row());
        md.push('\n');
    }
    let json = Value::Array(results.iter().map(fleet::FleetResult::json).collect());
    for (name, text) in [("fleet.md", md), ("fleet.json", format!("{json:#}\n"))] {
        let path = options.out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    println!("\nwrote {}", options.out.join("fleet.md").display());
    Ok(())
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))
}

/// A finished run's working directory: logs, Envoy configurations and the
/// control plane's database (over 100 MB with a million keys). A failed run
/// keeps it, for its logs.
fn remove_work(work: &Path) {
    let _ = std::fs::remove_dir_all(work);
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tollgate-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The load generator's threads inherit this thread's CPU.
fn pin_self_to_cpu(cpu: u32) {
    let pinned = Command::new("taskset")
        .args([
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !pinned {
        println!("warning: cannot pin the load generator to CPU {cpu}; figures will be noisier");
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One request with a JSON body (or none); the answer's status and JSON.
fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = Conn::open(addr)?.exchange(request.as_bytes())?;
    let json = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    Ok((answer.status, json))
}

fn expect_status(what: &str, (status, body): (u16, Value), want: u16) -> Result<Value> {
    if status == want {
        Ok(body)
    } else {
        Err(format!("{what}: expected {want}, got {status}: {body}"))
    }
}

struct ControlPlane {
    addr: SocketAddr,
    pid: u32,
    _process: Process,
}

impl ControlPlane {
    fn start(binary: &Path, work: &Path, database_url: Option<&str>) -> Result<Self> {
        Self::start_niced(binary, work, database_url, database_url.is_none())
    }

    /// `niced`: on Envoy's CPU, scheduled only when it is idle (see below);
    /// otherwise scheduled as any process.
    fn start_niced(
        binary: &Path,
        work: &Path,
        database_url: Option<&str>,
        niced: bool,
    ) -> Result<Self> {
        let addr = loopback(free_port()?);
        // Beside Envoy on CPU 0 as SCHED_IDLE, not on the load generator's
        // CPU 1: it runs only when neither Envoy nor anything else on CPU 0
        // wants to, and Envoy's wakeups preempt it at once. On CPU 1 at nice
        // 19 it ingesting thousands of keys' usage a second (a second of CPU
        // in 4 s at 100k keys) delayed the generator, which yields while it
        // waits for a request's due time and a yield hands the CPU even to a
        // nice-19 process; those delays counted against whichever arm was
        // measured. The minimal limiter's p99 at 2,000 req/s, 3 rounds at 1k
        // / 100k keys (2026-12-06): 0.55-2.29 / 0.59-4.51 ms on CPU 1 at
        // nice 19; 0.38-2.44 / 0.38-0.42 ms on CPU 0 at nice 19; 0.28-0.65
        // / 0.30-0.92 ms here.
        // With `--fleet` the control plane is what is measured: it has both CPUs.
        let mut command = if !niced {
            Command::new(binary)
        } else {
            let mut pinned = Command::new("taskset");
            pinned.args(["-c", "0", "chrt", "--idle", "0"]).arg(binary);
            pinned
        };
        command
            .args(["serve", "--addr", &addr.to_string(), "--data-dir"])
            .arg(work.join("data"))
            // The runner is the only admin client, and the soak reads the
            // usage of hundreds of keys at once.
            .args(["--admin-rate-per-token", "0", "--admin-rate-per-ip", "0"])
            .env("CONTROL_PLANE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("CONTROL_PLANE_SYNC_TOKEN", SYNC_TOKEN)
            .env("RUST_LOG", "warn");
        if let Some(url) = database_url {
            command.args(["--database-url", url]);
        }
        let log = Output::File(work.join("control-plane.log"));
        let mut process = Process::spawn_owned("the control plane", command, log)?;
        process.wait_for_http(addr, "/healthz", START_LIMIT)?;
        Ok(Self {
            addr,
            pid: process.pid(),
            _process: process,
        })
    }

    fn post(&self, path: &str, body: Value) -> Result<Value> {
        expect_status(path, call(self.addr, "POST", path, Some(&body))?, 201)
    }

    fn id_of(value: &Value) -> Result<String> {
        value
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("no id in {value}"))
    }

    fn tenant(&self, name: &str, plan: Value) -> Result<String> {
        let plan_id = Self::id_of(&self.post("/v1/plans", plan)?)?;
        Self::id_of(&self.post("/v1/tenants", json!({"name": name, "plan_id": plan_id}))?)
    }

    fn issue_key(&self, tenant: &str) -> Result<IssuedKey> {
        IssuedKey::from_json(&self.post(
            &format!("/v1/tenants/{tenant}/keys"),
            json!({"name": "bench"}),
        )?)
    }

    /// `count` keys through the batch endpoint.
    fn issue_keys(&self, tenant: &str, count: usize) -> Result<Vec<IssuedKey>> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let n = (count - out.len()).min(BATCH);
            let body = self.post(
                &format!("/v1/tenants/{tenant}/keys/batch"),
                json!({ "count": n }),
            )?;
            let issued = body
                .get("keys")
                .and_then(Value::as_array)
                .ok_or_else(|| format!("no keys in the batch answer: {body}"))?;
            for key in issued {
                out.push(IssuedKey::from_json(key)?);
            }
        }
        Ok(out)
    }

    /// The latest committed config version, from `/metrics`.
    fn version(&self) -> Result<u64> {
        let request = "GET /metrics HTTP/1.1\r\nhost: bench\r\n\r\n";
        let answer = Conn::open(self.addr)?.exchange(request.as_bytes())?;
        metric_value(
            &String::from_utf8_lossy(&answer.body),
            "tollgate_control_plane_config_version",
        )
        .ok_or_else(|| "the control plane's /metrics has no config version".to_owned())
    }
}

fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.trim_start_matches(':').trim().parse().ok()
    })
}

#[derive(Clone)]
struct IssuedKey {
    id: String,
    key: String,
}

impl IssuedKey {
    fn from_json(value: &Value) -> Result<Self> {
        let field = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("no {name} in {value}"))
        };
        Ok(Self {
            id: field("id")?,
            key: field("key")?,
        })
    }
}

/// What every scale shares: the tenants and the keys of the denial arms.
struct Setup {
    tenant: String,
    allowed_keys: Vec<IssuedKey>,
    /// Keys whose limits each Envoy enforces on its own.
    per_envoy_keys: Vec<IssuedKey>,
    /// Issued, then deleted: 401 `invalid_api_key`.
    unknown_key: String,
    /// One request an hour, spent before measuring: 429.
    exhausted_key: String,
    native_key: String,
}

impl Setup {
    fn create(cp: &ControlPlane) -> Result<Self> {
        let tenant = cp.tenant(
            "bench",
            json!({
                "name": "Bench",
                "limits": [
                    {"name": "per-second", "max": 1_000_000_000u64, "window_seconds": 1},
                    {"name": "per-hour", "max": 1_000_000_000_000u64, "window_seconds": 3600}
                ],
                "monthly_quota": 1_000_000_000_000u64
            }),
        )?;
        // The same limits each Envoy enforces on its own: what fleet-wide
        // limits cost per request is the difference.
        let per_envoy = cp.tenant(
            "bench-per-envoy",
            json!({
                "name": "Bench per Envoy",
                "limits": [
                    {"name": "per-second", "max": 1_000_000_000u64, "window_seconds": 1, "per_envoy": true},
                    {"name": "per-hour", "max": 1_000_000_000_000u64, "window_seconds": 3600, "per_envoy": true}
                ],
                "monthly_quota": 1_000_000_000_000u64
            }),
        )?;
        let tight = cp.tenant(
            "bench-exhausted",
            json!({
                "name": "Bench exhausted",
                "limits": [{"name": "per-hour", "max": 1, "window_seconds": 3600}]
            }),
        )?;
        let allowed = cp.issue_key(&tenant)?;
        let exhausted = cp.issue_key(&tight)?;
        let unknown = cp.issue_key(&tight)?;
        expect_status(
            "delete the unknown key",
            call(cp.addr, "DELETE", &format!("/v1/keys/{}", unknown.id), None)?,
            204,
        )?;
        Ok(Self {
            tenant,
            allowed_keys: vec![allowed],
            per_envoy_keys: cp.issue_keys(&per_envoy, PER_ENVOY_KEYS)?,
            unknown_key: unknown.key,
            exhausted_key: exhausted.key,
            native_key: "bench-native-key-0123456789".into(),
        })
    }

    /// Spends the exhausted key's one request.
    /// Spends the exhausted key's one request through `tollgate`. Its
    /// limit is fleet-wide, so `tollgate` may hold no share of that one
    /// request at all: then it is refused already.
    fn exhaust(&self, tollgate: &Envoy) -> Result {
        let mut conn = Conn::open(tollgate.listener)?;
        let request = load::request_bytes("/", Some(&self.exhausted_key));
        for _ in 0..2 {
            let answer = conn.exchange(&request)?;
            match answer.status {
                429 => return Ok(()),
                200 => continue,
                other => {
                    return Err(format!(
                        "exhausting a key: expected 200 or 429, got {other}"
                    ))
                }
            }
        }
        Err("a key limited to one request an hour was admitted twice".into())
    }
}

/// Waits until `envoy` admits `key`, for at most `limit`.
fn until_admits(envoy: &Envoy, key: &str, limit: Duration) -> Result {
    let started = Instant::now();
    let mut conn = Conn::open(envoy.listener)?;
    let request = load::request_bytes("/", Some(key));
    loop {
        let status = conn.exchange(&request)?.status;
        if status == 200 {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(format!(
                "{} still answers {status} to a loaded key after {limit:?}",
                envoy.arm.name()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The key `bench-rls` allows one request an hour, for
/// [`Rls::prove_limits`]; no other arm knows it.
const RLS_EXHAUSTED_KEY: &str = "bench-rls-exhausted-key";

/// `bench-rls`, the rate limit service the `rls-limitador` arm's Envoy asks.
struct Rls {
    pid: u32,
    addr: SocketAddr,
    _process: Process,
}

impl Rls {
    fn start(binary: &Path, work: &Path) -> Result<Self> {
        let addr = loopback(free_port()?);
        // On CPU 0 beside Envoy, not on CPU 1: Tollgate and Envoy's own
        // filters do all their limiting on the one core Envoy has, so this
        // arm's limiting shares that core too, and its CPU and latency
        // compare like with like (nor does it take the load generator's CPU).
        let mut command = Command::new("taskset");
        command
            .args(["-c", "0"])
            .arg(binary)
            .args(["--listen", &addr.to_string(), "--domain", arms::RLS_DOMAIN])
            // Far above any rate the benchmark reaches: measured keys are
            // never refused.
            .args(["--per-second", "1000000000"])
            .args(["--exhausted", RLS_EXHAUSTED_KEY]);
        let log = Output::File(work.join("bench-rls.log"));
        let mut process = Process::spawn_owned("the rate limit service", command, log)?;
        // It binds before it serves: once a connection is accepted, Envoy's will be.
        process.wait_until(START_LIMIT, || {
            Ok(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
        })?;
        Ok(Self {
            pid: process.pid(),
            addr,
            _process: process,
        })
    }

    /// That the arm really limits, through its Envoy: the exhausted key is
    /// admitted once, then refused with the rate-limit headers; an ordinary
    /// key is admitted.
    fn prove_limits(&self, envoy: &Envoy, ordinary_key: &str) -> Result {
        let mut conn = Conn::open(envoy.listener)?;
        let exhausted = load::request_bytes("/", Some(RLS_EXHAUSTED_KEY));
        for (what, want) in [("first", 200), ("second", 429)] {
            let answer = conn.exchange(&exhausted)?;
            if answer.status != want {
                return Err(format!(
                    "rls-limitador: the exhausted key's {what} request answered {}, not {want}",
                    answer.status
                ));
            }
            if answer.header("x-ratelimit-remaining") != Some("0") {
                return Err(format!(
                    "rls-limitador: the exhausted key's {what} answer has no x-ratelimit-remaining: 0"
                ));
            }
        }
        let status = conn
            .exchange(&load::request_bytes("/", Some(ordinary_key)))?
            .status;
        if status != 200 {
            return Err(format!(
                "rls-limitador: an ordinary key answered {status}, not 200"
            ));
        }
        println!("rls-limitador limits: the exhausted key 200 then 429, an ordinary key 200");
        Ok(())
    }
}

struct Envoy {
    arm: Arm,
    pid: u32,
    /// A process doing this Envoy's limiting for it (the `rls-limitador`
    /// arm's rate limit service), whose CPU counts with Envoy's.
    service: Option<u32>,
    listener: SocketAddr,
    admin: SocketAddr,
    _process: Process,
}

impl Envoy {
    fn start(
        binary: &Path,
        arm: Arm,
        inputs: &Inputs<'_>,
        work: &Path,
        name: &str,
    ) -> Result<Self> {
        let ports = Ports {
            listener: free_port()?,
            admin: free_port()?,
        };
        let config = match arm {
            Arm::TollgateIstio => {
                arms::istio(&ports, inputs, &work.join(format!("{name}-ecds.yaml")))?
            }
            _ => arms::envoy_config(arm, &ports, inputs)?,
        };
        let path = work.join(format!("{name}.yaml"));
        std::fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut command = Command::new("taskset");
        command
            .args(["-c", "0"])
            .arg(binary)
            .arg("-c")
            .arg(&path)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ]);
        if arm == Arm::TollgateIstio {
            command.env(arms::ISTIO_SYNC_TOKEN_ENV, inputs.sync_token);
        }
        let log = Output::File(work.join(format!("{name}.log")));
        let mut process = Process::spawn_owned(&format!("Envoy ({name})"), command, log)?;
        let admin = loopback(ports.admin);
        process.wait_for_http(admin, "/ready", START_LIMIT)?;
        Ok(Self {
            arm,
            pid: process.pid(),
            service: None,
            listener: loopback(ports.listener),
            admin,
            _process: process,
        })
    }

    /// User plus system CPU time of the whole process, and of its
    /// [`Envoy::service`] (zero without one), in microseconds.
    fn cpu_us(&self) -> Result<(f64, f64)> {
        let service = self.service.map_or(Ok(0.0), cpu_us)?;
        Ok((cpu_us(self.pid)?, service))
    }

    fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .map_err(|e| format!("/proc/{}/status: {e}", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| "no VmRSS".to_owned())
    }

    /// The stats whose names match `filter` (a regular expression), as
    /// Envoy's admin lists them: `name: value` lines.
    fn stats_text(&self, filter: &str) -> Result<String> {
        let request = format!("GET /stats?filter={filter} HTTP/1.1\r\nhost: bench\r\n\r\n");
        let answer = Conn::open(self.admin)?.exchange(request.as_bytes())?;
        Ok(String::from_utf8_lossy(&answer.body).into_owned())
    }

    fn config_version(&self) -> Option<u64> {
        metric_value(
            &self.stats_text("tollgate.config_version").ok()?,
            "wasmcustom.tollgate.config_version",
        )
    }

    fn wait_for_version(&self, version: u64, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            if self.config_version().is_some_and(|v| v >= version) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "Envoy did not reach config version {version} within {limit:?} (it has {:?})",
                    self.config_version()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// User plus system CPU time of process `pid`, in microseconds.
fn cpu_us(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name, which may hold spaces: state is
    // field 3, utime 14 and stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
        return Err(format!("cannot read CPU times from /proc/{pid}/stat"));
    };
    Ok((user + system) as f64 * 1e6 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Host calls per request at this scale ([`host_calls`]), from an Envoy
/// running the counting build, started for the count and stopped before
/// the rounds: an idle Tollgate Envoy still takes its share of the fleet's
/// background work on Envoy's CPU.
fn count_host_calls(
    binary: &Path,
    inputs: &Inputs<'_>,
    wasm: &Path,
    work: &Path,
    setup: &Setup,
    version: u64,
) -> Result<host_calls::Counts> {
    let wasm = path_str(wasm)?;
    let inputs = Inputs {
        filter_wasm: &wasm,
        ..*inputs
    };
    let counting = Envoy::start(binary, Arm::Tollgate, &inputs, work, "host-calls")?;
    counting.wait_for_version(version, Duration::from_secs(120))?;
    let per_envoy: Vec<String> = setup.per_envoy_keys.iter().map(|k| k.key.clone()).collect();
    let counts = host_calls::count(&counting, &setup.unknown_key, &per_envoy)?;
    for (outcome, calls) in &counts {
        println!("host calls, {outcome}: {}", host_calls::describe(calls));
    }
    Ok(counts)
}

/// From starting a new Envoy to its holding `version`, the whole key set.
fn cold_sync(binary: &Path, inputs: &Inputs<'_>, work: &Path, version: u64) -> Result<Duration> {
    let started = Instant::now();
    let envoy = Envoy::start(binary, Arm::Tollgate, inputs, work, "cold")?;
    envoy.wait_for_version(version, Duration::from_secs(120))?;
    Ok(started.elapsed())
}

/// The names of [`ArmLoads`], in order.
const ARM_LOADS: [&str; 13] = [
    "plain",
    "native",
    "empty-wasm",
    "minimal-limiter",
    "minimal-limiter-strip",
    "minimal-limiter-headers",
    "tollgate",
    "rls-limitador",
    "tollgate-lean",
    "tollgate-per-envoy",
    "tollgate-istio",
    "tollgate-401-unknown",
    "tollgate-429-exhausted",
];

/// The arm of `--candidate`.
const CANDIDATE: &str = "tollgate-candidate";

/// Each arm's Envoy and the requests it is measured with.
struct ArmLoads<'a>(Vec<(&'static str, &'a Envoy, Requests)>);

impl<'a> ArmLoads<'a> {
    fn new(
        envoys: &'a [Envoy],
        candidate: Option<&'a Envoy>,
        setup: &Setup,
        keys: &[IssuedKey],
    ) -> Result<Self> {
        let plaintexts: Vec<String> = keys.iter().map(|k| k.key.clone()).collect();
        let per_envoy: Vec<String> = setup.per_envoy_keys.iter().map(|k| k.key.clone()).collect();
        let native = std::slice::from_ref(&setup.native_key);
        let arm = |name, arm, keys: &[String], status| -> Result<_> {
            let envoy = envoy_of(envoys, arm)?;
            Ok((
                name,
                envoy,
                Requests::new(envoy.listener, "/", keys, status),
            ))
        };
        let mut loads = vec![
            arm("plain", Arm::Plain, native, 200)?,
            arm("native", Arm::Native, native, 200)?,
            arm("empty-wasm", Arm::EmptyWasm, native, 200)?,
            arm("minimal-limiter", Arm::MinimalLimiter, &plaintexts, 200)?,
            arm(
                "minimal-limiter-strip",
                Arm::MinimalLimiterStrip,
                &plaintexts,
                200,
            )?,
            arm(
                "minimal-limiter-headers",
                Arm::MinimalLimiterHeaders,
                &plaintexts,
                200,
            )?,
            arm("tollgate", Arm::Tollgate, &plaintexts, 200)?,
            // Every fleet key has the service's per-second limit of its own.
            arm("rls-limitador", Arm::RlsLimitador, &plaintexts, 200)?,
            // Keys of its own, whose limits each Envoy holds alone: on the
            // fleet-wide keys its demand would take shares from the
            // tollgate arm. Compare it with tollgate-per-envoy.
            arm("tollgate-lean", Arm::TollgateLean, &per_envoy, 200)?,
            arm("tollgate-per-envoy", Arm::Tollgate, &per_envoy, 200)?,
            // Loaded the Istio way; on the per-Envoy keys, so compare it
            // with tollgate-per-envoy.
            arm("tollgate-istio", Arm::TollgateIstio, &per_envoy, 200)?,
            arm(
                "tollgate-401-unknown",
                Arm::Tollgate,
                std::slice::from_ref(&setup.unknown_key),
                401,
            )?,
            arm(
                "tollgate-429-exhausted",
                Arm::Tollgate,
                std::slice::from_ref(&setup.exhausted_key),
                429,
            )?,
        ];
        // On the per-Envoy keys, like tollgate-per-envoy, which it is compared
        // with: on the fleet-wide keys the two Envoys would take shares from
        // each other.
        if let Some(envoy) = candidate {
            let requests = Requests::new(envoy.listener, "/", &per_envoy, 200);
            loads.push((CANDIDATE, envoy, requests));
        }
        Ok(Self(loads))
    }
}

/// The running Envoy of `arm`.
fn envoy_of(envoys: &[Envoy], arm: Arm) -> Result<&Envoy> {
    envoys
        .iter()
        .find(|e| e.arm == arm)
        .ok_or_else(|| format!("no {} Envoy", arm.name()))
}

fn warm_up(arms: &ArmLoads<'_>, options: &Options) -> Result {
    for (_, _, requests) in &arms.0 {
        load::closed_loop(requests, options.requests / 4, options.connections)?;
    }
    Ok(())
}

/// One arm's figures in one round.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Envoy's CPU per request, and its service's with one.
    pub cpu_us: f64,
    pub rps: f64,
    pub cpu_us_at_rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// The service's part of `cpu_us` and `cpu_us_at_rate`, for an arm with
    /// one ([`Envoy::service`]).
    pub service_cpu_us: Option<f64>,
    pub service_cpu_us_at_rate: Option<f64>,
    /// Requests sent in the round: closed loop and fixed rate.
    pub requests: usize,
}

fn measure(envoy: &Envoy, requests: &Requests, options: &Options) -> Result<Sample> {
    // Per request over an interval: Envoy's and its service's, both.
    let per_request = |before: (f64, f64), after: (f64, f64), requests: usize| {
        let n = requests.max(1) as f64;
        let service = (after.1 - before.1) / n;
        ((after.0 - before.0) / n + service, service)
    };
    let before = envoy.cpu_us()?;
    let closed = load::closed_loop(requests, options.requests, options.connections)?;
    let (cpu_us, service_cpu_us) = per_request(before, envoy.cpu_us()?, closed.requests);
    let before = envoy.cpu_us()?;
    let latencies = load::fixed_rate(requests, options.rate, options.rate_for, 8)?;
    let (cpu_us_at_rate, service_cpu_us_at_rate) =
        per_request(before, envoy.cpu_us()?, latencies.0.len());
    let with_service = |v: f64| envoy.service.map(|_| v);
    Ok(Sample {
        cpu_us,
        rps: closed.per_second(),
        cpu_us_at_rate,
        p50_us: latencies.quantile(0.50),
        p99_us: latencies.quantile(0.99),
        service_cpu_us: with_service(service_cpu_us),
        service_cpu_us_at_rate: with_service(service_cpu_us_at_rate),
        requests: closed.requests + latencies.0.len(),
    })
}

/// API call to a 401 through every one of `envoys`, for `count` keys in turn.
fn revocations(
    cp: &ControlPlane,
    envoys: &[&Envoy],
    keys: &[IssuedKey],
    count: usize,
) -> Result<report::Revocation> {
    let mut rng = load::Rng::new(42);
    let mut conns = envoys
        .iter()
        .map(|e| Conn::open(e.listener))
        .collect::<Result<Vec<_>>>()?;
    let mut latencies = Vec::with_capacity(count);
    let mut api_ms = Vec::with_capacity(count);
    let mut revoked = std::collections::HashSet::new();
    while latencies.len() < count.min(keys.len()) {
        let i = rng.below(keys.len());
        let Some(key) = keys.get(i).filter(|_| revoked.insert(i)) else {
            continue;
        };
        let request = format!(
            "GET / HTTP/1.1\r\nhost: bench\r\nx-api-key: {}\r\n\r\n",
            key.key
        );
        for conn in &mut conns {
            let before = conn.exchange(request.as_bytes())?;
            if before.status != 200 {
                return Err(format!(
                    "key {} answered {} before revocation",
                    key.id, before.status
                ));
            }
        }
        let started = Instant::now();
        expect_status(
            "deactivate a key",
            call(
                cp.addr,
                "PATCH",
                &format!("/v1/keys/{}", key.id),
                Some(&json!({"active": false})),
            )?,
            200,
        )?;
        api_ms.push(started.elapsed().as_secs_f64() * 1e3);
        // Each Envoy in turn until it refuses: the last one's 401 is when
        // the revocation held everywhere.
        for conn in &mut conns {
            loop {
                let answer = conn.exchange(request.as_bytes())?;
                if answer.status == 401 {
                    break;
                }
                if started.elapsed() > Duration::from_secs(10) {
                    return Err(format!(
                        "key {} still answered {} after 10 s",
                        key.id, answer.status
                    ));
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(report::Revocation::new(latencies, api_ms, envoys.len()))
}
