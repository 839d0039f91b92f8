//! `cargo xtask fuzz [--minutes N] [--target NAME]`: coverage-guided fuzzing
//! of the core's parsers on stable Rust; `--smoke` is [`smoke`], the short
//! run `cargo xtask test` makes.
//!
//! The targets are plain functions in `fuzz/` (`tollgate-fuzz`), which
//! `cargo test` replays over the committed corpus; `fuzz/libfuzzer` wraps
//! each in libFuzzer. That crate is a workspace of its own, built here into
//! `target/fuzz` with the instrumentation cargo-fuzz adds, less what needs
//! nightly (`-Zsanitizer`): SanitizerCoverage's counters, PC table and
//! comparison tracing are LLVM passes that stable rustc runs when asked.
//! Each target runs on a copy of its committed corpus under
//! `target/fuzz/corpus/`, so what libFuzzer adds never dirties the checkout;
//! the inputs worth keeping are copied into `fuzz/corpus/` by hand.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::{cargo, root, run, Result};

/// One libFuzzer binary of `fuzz/libfuzzer`.
struct Target {
    name: &'static str,
    /// Longest input tried: room for the largest seed and some.
    max_len: usize,
    /// Tokens for libFuzzer to splice in, under `fuzz/dict/`: without
    /// AddressSanitizer's hooks it cannot see what strings are compared to.
    dict: Option<&'static str>,
}

const TARGETS: &[Target] = &[
    Target {
        name: "key",
        max_len: 512,
        dict: None,
    },
    Target {
        name: "credential",
        max_len: 4096,
        dict: Some("credential.dict"),
    },
    Target {
        name: "json_differential",
        max_len: 4096,
        dict: Some("json.dict"),
    },
    // Sync answers with a few plans and keys are kilobytes.
    Target {
        name: "sync_decode",
        max_len: 16_384,
        dict: Some("json.dict"),
    },
    Target {
        name: "config_validation",
        max_len: 4096,
        dict: None,
    },
];

/// The flags cargo-fuzz builds with that stable rustc takes: libFuzzer's
/// coverage feedback (8-bit edge counters and their PC table, edges from
/// level 4), comparison operands it can solve for, and the `fuzzing` cfg.
/// Optimisation, debug assertions and overflow checks are the release
/// profile's in `fuzz/libfuzzer/Cargo.toml`.
const INSTRUMENTATION: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg",
    "fuzzing",
];

/// Inputs per target in [`smoke`], from a fixed seed and the committed
/// corpus alone: the same run on every machine, so that `cargo xtask test`
/// cannot fail on what one run happened to find and the next would not.
/// A few seconds a target.
const SMOKE_RUNS: u64 = 50_000;

pub fn fuzz(args: &[String]) -> Result {
    let usage = "cargo xtask fuzz [--minutes N] [--target NAME] | cargo xtask fuzz --smoke";
    if args.first().is_some_and(|a| a == "--smoke") {
        return match args.get(1) {
            None => smoke(),
            Some(other) => Err(format!("unknown argument {other:?} ({usage})")),
        };
    }
    let mut minutes = 1.0;
    let mut only = None;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest.next();
        match (flag.as_str(), value) {
            ("--minutes", Some(n)) => {
                minutes = n
                    .parse::<f64>()
                    .ok()
                    .filter(|m| m.is_finite() && *m > 0.0)
                    .ok_or_else(|| format!("--minutes {n:?}: a positive number ({usage})"))?;
            }
            ("--target", Some(name)) => only = Some(target(name)?),
            _ => return Err(format!("unknown argument {flag:?} ({usage})")),
        }
    }
    let seconds = (minutes * 60.0).round().max(1.0) as u64;
    let bin_dir = build()?;
    let targets = only.map_or_else(|| TARGETS.iter().collect(), |t| vec![t]);
    let mut summary = Vec::new();
    for target in targets {
        crate::step(&format!("fuzz {} for {seconds} s", target.name));
        let limit = Limit::Seconds(seconds);
        summary.push((target.name, fuzz_target(&bin_dir, target, limit, true)?));
    }
    println!();
    for (name, last) in &summary {
        println!("{name}: {last}");
    }
    println!(
        "\nNew inputs are in {}/<target>/; copy those worth keeping (a new crash once fixed, \
         a case the seeds lack) into fuzz/corpus/<target>/, which `cargo test -p tollgate-fuzz` replays.",
        work_dir("corpus").display()
    );
    Ok(())
}

/// Builds the targets and runs each on [`SMOKE_RUNS`] inputs: a check that
/// they build, run and find nothing in a short run, for `cargo xtask test`.
pub fn smoke() -> Result {
    let started = Instant::now();
    let bin_dir = build()?;
    for target in TARGETS {
        let last = fuzz_target(&bin_dir, target, Limit::Runs(SMOKE_RUNS), false)?;
        println!("{}: {last}", target.name);
    }
    println!(
        "fuzz smoke run: {} targets in {} s",
        TARGETS.len(),
        started.elapsed().as_secs()
    );
    Ok(())
}

fn target(name: &str) -> Result<&'static Target> {
    TARGETS.iter().find(|t| t.name == name).ok_or_else(|| {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        format!("no fuzz target {name:?}; there are {}", names.join(", "))
    })
}

/// Under `target/fuzz/`, which nothing but this uses.
fn work_dir(name: &str) -> PathBuf {
    root().join("target/fuzz").join(name)
}

/// The host's target triple. Building for it explicitly keeps the
/// instrumentation off build scripts and proc macros, which run in the
/// compiler without libFuzzer to link against.
fn host() -> Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .map_err(|e| format!("{rustc} -vV: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| format!("{rustc} -vV names no host"))
}

/// Builds `fuzz/libfuzzer` instrumented; the directory of its binaries.
fn build() -> Result<PathBuf> {
    let host = host()?;
    let target_dir = root().join("target/fuzz");
    run(
        "build the fuzz targets (fuzz/libfuzzer)",
        cargo()
            .args(["build", "--release", "--bins", "--manifest-path"])
            .arg(root().join("fuzz/libfuzzer/Cargo.toml"))
            .args(["--target", &host])
            .env("CARGO_TARGET_DIR", &target_dir)
            // The encoded form wins over RUSTFLAGS and any config's flags,
            // and needs no splitting on spaces.
            .env("CARGO_ENCODED_RUSTFLAGS", INSTRUMENTATION.join("\u{1f}"))
            .env_remove("RUSTFLAGS"),
    )?;
    Ok(target_dir.join(host).join("release"))
}

/// How long a target runs.
#[derive(Clone, Copy)]
enum Limit {
    /// On what the working corpus holds from earlier runs too.
    Seconds(u64),
    /// This many inputs from seed 1, on the committed corpus alone.
    Runs(u64),
}

/// Runs one target within `limit` on a working copy of its corpus, with
/// libFuzzer's output in `target/fuzz/logs/<target>.log` and, when
/// `live`, on the terminal. Returns libFuzzer's last status line
/// (`#runs DONE cov: … ft: … corp: …`); a crash is an error naming the
/// input libFuzzer saved.
fn fuzz_target(bin_dir: &Path, target: &Target, limit: Limit, live: bool) -> Result<String> {
    let corpus = match limit {
        Limit::Seconds(_) => work_dir("corpus").join(target.name),
        Limit::Runs(_) => {
            let fresh = work_dir("smoke-corpus").join(target.name);
            if fresh.exists() {
                fs::remove_dir_all(&fresh).map_err(|e| format!("{}: {e}", fresh.display()))?;
            }
            fresh
        }
    };
    let artifacts = work_dir("artifacts").join(target.name);
    let logs = work_dir("logs");
    for dir in [&corpus, &artifacts, &logs] {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    copy_seeds(target.name, &corpus)?;
    let log_path = logs.join(format!("{}.log", target.name));
    let mut log =
        fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;

    let mut command = Command::new(bin_dir.join(target.name));
    command
        .arg(&corpus)
        .args(match limit {
            Limit::Seconds(seconds) => vec![format!("-max_total_time={seconds}")],
            Limit::Runs(runs) => vec![format!("-runs={runs}"), "-seed=1".to_owned()],
        })
        .arg(format!("-max_len={}", target.max_len))
        // A parse of a few kilobytes that takes seconds is a bug too.
        .arg("-timeout=10")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(dict) = target.dict {
        command.arg(format!(
            "-dict={}",
            root().join("fuzz/dict").join(dict).display()
        ));
    }
    let what = format!("fuzz target {}", target.name);
    let mut child = command
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let mut last_status = String::new();
    let mut saved = None;
    let mut tail: Vec<String> = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).split(b'\n') {
            let line = line.map_err(|e| format!("{what}: reading its output: {e}"))?;
            let line = String::from_utf8_lossy(&line).into_owned();
            // The log is for reading afterwards: a failed write loses none of the run.
            let _ = writeln!(log, "{line}");
            if live {
                eprintln!("{line}");
            }
            // `#<runs>\t<event> cov: …`; not the `######` of the dictionary it recommends.
            if line.starts_with('#') && line[1..].starts_with(|c: char| c.is_ascii_digit()) {
                last_status = line.clone();
            }
            if let Some((_, path)) = line.split_once("Test unit written to ") {
                saved = Some(path.trim().to_owned());
            }
            tail.push(line);
            if tail.len() > 40 {
                tail.remove(0);
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("{what}: waiting for it: {e}"))?;
    if status.success() {
        return Ok(last_status);
    }
    if !live {
        eprintln!("{}", tail.join("\n"));
    }
    Err(match saved {
        Some(input) => format!(
            "{what} failed ({status}) on the input saved as {input}\n  \
             replay it: {} {input}\n  \
             once the bug is fixed, copy it into fuzz/corpus/{}/ so `cargo test -p tollgate-fuzz` keeps checking it\n  \
             libFuzzer's output: {}",
            bin_dir.join(target.name).display(),
            target.name,
            log_path.display()
        ),
        None => format!(
            "{what} failed ({status}) without saving an input; libFuzzer's output: {}",
            log_path.display()
        ),
    })
}

/// Copies the committed corpus into the working one, keeping what earlier
/// runs found there.
fn copy_seeds(name: &str, to: &Path) -> Result {
    let from = root().join("fuzz/corpus").join(name);
    let entries = fs::read_dir(&from).map_err(|e| format!("{}: {e}", from.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("{}: {e}", from.display()))?
            .path();
        if let Some(file) = path.file_name().filter(|_| path.is_file()) {
            fs::copy(&path, to.join(file)).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}
