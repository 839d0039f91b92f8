//! The admin API against its own OpenAPI document, by Schemathesis (PyPI
//! `schemathesis`, which `cargo xtask test` installs): every operation, every
//! check, every phase (the document's examples, its boundaries, generated
//! requests, and stateful sequences that follow the document's links from a
//! plan to its tenants, their keys and tokens), on SQLite and on PostgreSQL,
//! against the real control-plane binary. A request the document allows must
//! not be refused for its form, one it rules out must be refused with a 4xx,
//! no answer may be a server error, and every answer must be one the document
//! describes.
//!
//! Bounded in examples per operation and seeded, so a run is the same run on
//! every machine and takes a minute or two on two cores. The admin API's own
//! rate limits are off: a fuzzer is one client sending as fast as it can,
//! and answers of 429 would leave the operations behind them untested.
//! `tests/schemathesis/` holds the configuration (a token per security
//! scheme) and the hooks (what JSON Schema cannot say).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tollgate_e2e::harness::{env_path, fresh_postgres_database, Stack, ADMIN_TOKEN, SYNC_TOKEN};

/// Test cases per operation and phase.
const MAX_EXAMPLES: &str = "20";
/// Fixed, so a failure seen once is seen again; other seeds are tried by hand
/// (`cargo test -p tollgate-e2e --test schemathesis` with TOLLGATE_SCHEMATHESIS_SEED).
const SEED: &str = "20261206";
/// Far above a run's minute or two: a hung run fails instead of holding CI.
const RUN_LIMIT: Duration = Duration::from_secs(15 * 60);

/// The admin API's rate limits, off.
const UNTHROTTLED: &[&str] = &["--admin-rate-per-token", "0", "--admin-rate-per-ip", "0"];

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis")
}

/// Runs Schemathesis against the stack's control plane; panics with its
/// output unless it found nothing, and prints its summary either way.
async fn schemathesis(stack: &Stack, database: &str) {
    let seed = std::env::var("TOLLGATE_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.to_owned());
    let work = stack.dir.path().join("schemathesis");
    std::fs::create_dir_all(&work).expect("a directory for the run");
    let output = work.join("output.txt");
    let mut command = Command::new("python3");
    command
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(config_dir().join("schemathesis.toml"))
        .arg("run")
        .arg(format!(
            "http://127.0.0.1:{}/openapi.json",
            stack.control_plane_port
        ))
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", &seed])
        // One worker: the order of requests, and so the run, depends on the seed alone.
        .args(["--workers", "1"])
        // Nothing carried over from an earlier run.
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "30", "--no-color"])
        .args(["--report", "junit,ndjson", "--report-dir"])
        .arg(&work)
        .arg("--report-ndjson-path")
        .arg(work.join("events.ndjson"))
        // Its caches go in the stack's directory, not the work tree.
        .current_dir(&work)
        .env("PYTHONPATH", env_path("TOLLGATE_SCHEMATHESIS_PYTHONPATH"))
        .env("SCHEMATHESIS_HOOKS", config_dir().join("hooks.py"))
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TOLLGATE_SYNC_TOKEN", SYNC_TOKEN)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&output).expect("the output file"))
        .stderr(Stdio::from(
            std::fs::File::create(work.join("stderr.txt")).expect("the stderr file"),
        ));
    let started = Instant::now();
    let mut child = command.spawn().expect("python3 runs");
    let status = tokio::task::spawn_blocking(move || loop {
        if let Some(status) = child.try_wait().expect("the run's status") {
            return Some(status);
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    })
    .await
    .expect("the wait for schemathesis");
    let text = std::fs::read_to_string(&output).unwrap_or_default();
    let stderr = std::fs::read_to_string(work.join("stderr.txt")).unwrap_or_default();
    let summary = text.find("SUMMARY").map_or(text.as_str(), |at| {
        &text[text[..at].rfind('\n').unwrap_or(at)..]
    });
    let tally = Tally::read(&work.join("events.ndjson"));
    println!(
        "schemathesis on {database} (seed {seed}, {MAX_EXAMPLES} examples), {:.0?}: \
         {} requests, {} checks of {} kinds, {} failed{summary}",
        started.elapsed(),
        tally.requests,
        tally.checks,
        tally.kinds.len(),
        tally.failed
    );
    match status {
        Some(status) if status.success() => {}
        Some(status) => panic!(
            "schemathesis on {database} failed ({status}):\n{text}\n{stderr}\n{}",
            stack.logs()
        ),
        None => panic!("schemathesis on {database} ran past {RUN_LIMIT:?}:\n{text}\n{stderr}"),
    }
}

/// What a run did, from its NDJSON events: each finished scenario records
/// its requests and the result of every check on each answer.
#[derive(Default)]
struct Tally {
    requests: usize,
    checks: usize,
    failed: usize,
    kinds: std::collections::BTreeSet<String>,
}

impl Tally {
    fn read(path: &Path) -> Self {
        let mut tally = Self::default();
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let events = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok());
        for event in events {
            let recorder = &event["ScenarioFinished"]["recorder"];
            tally.requests += recorder["interactions"].as_object().map_or(0, |i| i.len());
            let results = recorder["checks"]
                .as_object()
                .into_iter()
                .flat_map(|checks| checks.values())
                .filter_map(|results| results.as_array())
                .flatten();
            for result in results {
                tally.checks += 1;
                tally.failed += usize::from(result["status"] != "success");
                if let Some(name) = result["name"].as_str() {
                    tally.kinds.insert(name.to_owned());
                }
            }
        }
        tally
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_keeps_to_its_openapi_document_on_sqlite() {
    let stack = Stack::start_without_envoy_with(None, UNTHROTTLED).await;
    schemathesis(&stack, "SQLite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_keeps_to_its_openapi_document_on_postgres() {
    let url = fresh_postgres_database("schemathesis");
    let stack = Stack::start_without_envoy_with(Some(&url), UNTHROTTLED).await;
    schemathesis(&stack, "PostgreSQL").await;
}
