//! `cargo xtask bench`: builds what the benchmark measures and runs it.
//!
//! The benchmark itself is `bench/runner` (package `tollgate-bench`), a
//! crate of its own so that xtask stays a task runner; what xtask keeps is
//! what it already does for `up` and `test`: installing Envoy, building
//! and shipping the filter, building the control plane (and `bench/rls`,
//! the rate limit service of the `rls-limitador` arm). The runner gets
//! their paths in the environment and `cargo xtask bench`'s arguments as
//! they are, and runs in the caller's directory, so that a relative `--out`
//! or `--candidate` means what it did.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{
    build_test_filters, cargo, debug_bin, filter_wasm, host_calls_filter_wasm, install, root, run,
    run_here, wasm, wasm_release_build, Result,
};

pub fn bench(args: &[String]) -> Result {
    install::rust_bits()?;
    if args.iter().any(|a| a == "--vm") {
        return vm(args);
    }
    let envoy = install::envoy()?;
    run_bench(args, &envoy)
}

/// `cargo xtask bench --vm [--smoke]`: Tollgate's own work per request in
/// V8 without Envoy (`bench/vm`), run in
/// Node.js; nothing else of the benchmark.
pub fn vm(args: &[String]) -> Result {
    if let Some(other) = args.iter().find(|a| *a != "--vm" && *a != "--smoke") {
        return Err(format!(
            "--vm takes no argument but --smoke, not {other:?} (cargo xtask bench --vm [--smoke])"
        ));
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    install::node()?;
    run(
        "build bench/vm for wasm32-wasip1",
        &mut wasm_release_build(&["tollgate-bench-vm"]),
    )?;
    // The same WASI runner as core's wasm32 unit tests.
    let mut node = Command::new("node");
    node.arg(root().join("xtask/wasi/run.mjs"))
        .arg(root().join("target/wasm32-wasip1/release/vm-work.wasm"));
    if smoke {
        node.arg("--smoke");
    }
    run("Tollgate's work per request in V8 (bench/vm)", &mut node)
}

/// `cargo xtask soak [--minutes N] [--smoke]`: the benchmark runner's
/// `--soak`, 10 minutes by default.
pub fn soak(args: &[String]) -> Result {
    install::rust_bits()?;
    let envoy = install::envoy()?;
    install::sqlite3()?;
    run_bench(&soak_args(args)?, &envoy)
}

/// The runner's arguments for `cargo xtask soak`'s: `--smoke` soaks 30 s.
pub fn soak_args(args: &[String]) -> Result<Vec<String>> {
    let smoke = args.iter().any(|a| a == "--smoke");
    let mut minutes = if smoke { "0.5" } else { "10" }.to_owned();
    let mut it = args.iter().filter(|a| *a != "--smoke");
    while let Some(flag) = it.next() {
        match (flag.as_str(), it.next()) {
            ("--minutes", Some(n)) => minutes = n.clone(),
            _ => {
                return Err(format!(
                    "unknown argument {flag:?} (cargo xtask soak [--minutes N] [--smoke])"
                ))
            }
        }
    }
    let mut out = vec!["--soak".to_owned(), minutes];
    if smoke {
        out.push("--smoke".to_owned());
    }
    Ok(out)
}

/// Builds, then runs the benchmark with `args`; `--smoke` is the small run
/// `cargo xtask test` makes.
pub fn run_bench(args: &[String], envoy: &Path) -> Result {
    // Built first, in the debug profile the benchmark has always run in (the
    // load generator's figures depend on it), so that it refuses mistyped
    // arguments before minutes of building.
    run(
        "build the benchmark runner",
        cargo().args(["build", "-p", "tollgate-bench"]),
    )?;
    check_args(args)?;
    let built = build(args)?;
    run_runner(args, envoy, built.control_plane, built.rls)
}

/// [`run_bench`] for `cargo xtask test`, whose workspace build has already
/// built the runner, the debug control plane and the debug rate limit
/// service a `--smoke` run uses: building them here, each on its own, would
/// compile their dependencies again with other features.
pub fn run_built_bench(args: &[String], envoy: &Path) -> Result {
    check_args(args)?;
    build_wasm()?;
    run_runner(
        args,
        envoy,
        Some(debug_bin("control-plane")),
        Some(debug_bin("bench-rls")),
    )
}

fn check_args(args: &[String]) -> Result {
    run_here(
        "the benchmark's arguments",
        Command::new(debug_bin("tollgate-bench"))
            .arg("--check-args")
            .args(args),
    )
}

fn run_runner(
    args: &[String],
    envoy: &Path,
    control_plane: Option<PathBuf>,
    rls: Option<PathBuf>,
) -> Result {
    let mut command = Command::new(debug_bin("tollgate-bench"));
    command.args(args);
    if let Some(control_plane) = control_plane {
        command.env("TOLLGATE_CONTROL_PLANE", control_plane);
    }
    if let Some(rls) = rls {
        command.env("TOLLGATE_BENCH_RLS", rls);
    }
    // `--fleet` measures the control plane on PostgreSQL: a throwaway
    // server, as for the tests, with its psql for the database's counters.
    let _cluster = if args.iter().any(|a| a == "--fleet") {
        let cluster = crate::pg::start()?;
        command
            .env("TOLLGATE_BENCH_DATABASE_URL", &cluster.url)
            .env("TOLLGATE_BENCH_PSQL", install::postgres()?.join("psql"));
        Some(cluster)
    } else {
        None
    };
    let wasm_dir = root().join("target/wasm32-wasip1/release");
    run_here(
        "the benchmark",
        command
            .env("TOLLGATE_ENVOY", envoy)
            .env("TOLLGATE_FILTER_WASM", filter_wasm())
            .env("TOLLGATE_FILTER_HOST_CALLS_WASM", host_calls_filter_wasm())
            .env("TOLLGATE_EMPTY_WASM", wasm_dir.join("empty_filter.wasm"))
            .env(
                "TOLLGATE_MINIMAL_LIMITER_WASM",
                wasm_dir.join("minimal_limiter.wasm"),
            ),
    )
}

/// The binaries [`build`] built.
struct Built {
    control_plane: Option<PathBuf>,
    rls: Option<PathBuf>,
}

/// Builds what the arms run: the filters; the control plane unless `args`
/// name one; the counting filter and the rate limit service of the
/// `rls-limitador` arm unless it is a soak or a fleet run, which have no
/// arms. The two binaries in release unless `--smoke`.
fn build(args: &[String]) -> Result<Built> {
    build_wasm()?;
    let smoke = args.iter().any(|a| a == "--smoke");
    // The runner has checked the arguments: past `--smoke`, flags and values alternate.
    let flags: Vec<&String> = args.iter().filter(|a| *a != "--smoke").step_by(2).collect();
    let given = flags.iter().any(|flag| *flag == "--control-plane");
    let arms = !flags
        .iter()
        .any(|flag| *flag == "--soak" || *flag == "--fleet");
    if arms {
        // The counting build, for the host calls reported at each scale
        // (`cargo xtask test` has built it before its smoke run).
        build_test_filters()?;
    }
    let mut command = cargo();
    command.arg("build");
    // In one build: cargo unifies their dependencies' features, so tokio,
    // hyper and the rest are compiled once for both.
    if !given {
        command.args(["-p", "tollgate-control-plane", "--bin", "control-plane"]);
    }
    if arms {
        command.args(["-p", "tollgate-bench-rls", "--bin", "bench-rls"]);
    }
    let profile = if smoke {
        "debug"
    } else {
        command.arg("--release");
        "release"
    };
    let what = match (!given, arms) {
        (true, true) => Some("build the control plane and the rate limit service"),
        (true, false) => Some("build the control plane"),
        (false, true) => Some("build the rate limit service"),
        (false, false) => None,
    };
    if let Some(what) = what {
        run(what, &mut command)?;
    }
    let bin = |name: &str| root().join("target").join(profile).join(name);
    Ok(Built {
        control_plane: (!given).then(|| bin("control-plane")),
        rls: arms.then(|| bin("bench-rls")),
    })
}

/// filter.wasm and the two floors it is measured against, in release.
fn build_wasm() -> Result {
    install::binaryen()?;
    run(
        "build filter.wasm and the two floors",
        &mut wasm_release_build(&[
            "tollgate-filter",
            "tollgate-empty-filter",
            "tollgate-minimal-limiter",
        ]),
    )?;
    // The floors stay as cargo builds them: the empty filter is the floor the
    // issue defines, an SDK filter that does nothing.
    wasm::ship(&wasm::built_filter(), &filter_wasm())?;
    Ok(())
}
