//! `cargo xtask up`: control plane, demo upstream and Envoy with the filter, in the foreground.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tollgate_launch::{http_ok, render_envoy_config, EnvoyValues, Output, Process};

use crate::{build_artifacts, debug_bin, filter_wasm, install, root, Result};

/// How long the control plane and Envoy may take to be ready.
const START_LIMIT: Duration = Duration::from_secs(60);

struct Flags {
    envoy_port: u16,
    envoy_admin_port: u16,
    control_plane_port: u16,
    upstream_port: u16,
    concurrency: u16,
    data_dir: PathBuf,
}

const USAGE: &str = "cargo xtask up [--envoy-port 10000] [--envoy-admin-port 9901] \
[--control-plane-port 8080] [--upstream-port 8000] [--concurrency 2] [--data-dir ./data]";

fn parse(args: &[String]) -> Result<Flags> {
    let mut flags = Flags {
        envoy_port: 10000,
        envoy_admin_port: 9901,
        control_plane_port: 8080,
        upstream_port: 8000,
        concurrency: 2,
        data_dir: PathBuf::from("./data"),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let port = || -> Result<u16> {
            value
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{flag}: {value:?} is not a port number"))
        };
        match flag.as_str() {
            "--envoy-port" => flags.envoy_port = port()?,
            "--envoy-admin-port" => flags.envoy_admin_port = port()?,
            "--control-plane-port" => flags.control_plane_port = port()?,
            "--upstream-port" => flags.upstream_port = port()?,
            "--concurrency" => {
                flags.concurrency = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| format!("--concurrency: {value:?} is not 1 to 64"))?
            }
            "--data-dir" => flags.data_dir = PathBuf::from(value),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(flags)
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(format!(
        "tgsync_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// Starts `command` with its output on the terminal and waits until `GET
/// path` on `port` answers; an error at once if it exits first, or on Ctrl-C.
fn start_ready(
    name: &str,
    command: Command,
    port: u16,
    path: &str,
    stop: &AtomicBool,
    running: &mut Vec<Process>,
) -> Result {
    let mut process = Process::spawn_owned(name, command, Output::Terminal)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ready = process.wait_until(START_LIMIT, || {
        if stop.load(Ordering::SeqCst) {
            return Err("interrupted".into());
        }
        Ok(http_ok(addr, path))
    });
    running.push(process);
    ready
}

pub fn up(args: &[String]) -> Result {
    let flags = parse(args)?;
    println!("==> install what is missing");
    run_install()?;
    let envoy = install::envoy()?;
    println!("==> build");
    build_artifacts()?;

    let data_dir = if flags.data_dir.is_absolute() {
        flags.data_dir.clone()
    } else {
        std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(&flags.data_dir)
    };
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let sync_token = match std::env::var("CONTROL_PLANE_SYNC_TOKEN") {
        Ok(token) if !token.is_empty() => token,
        _ => random_token()?,
    };
    let template = std::fs::read_to_string(root().join("envoy/tollgate.yaml"))
        .map_err(|e| format!("cannot read envoy/tollgate.yaml: {e}"))?;
    let config = render_envoy_config(
        &template,
        &EnvoyValues {
            envoy_port: flags.envoy_port,
            envoy_admin_port: flags.envoy_admin_port,
            upstream_port: flags.upstream_port,
            control_plane_port: flags.control_plane_port,
            filter_wasm: filter_wasm().display().to_string(),
            sync_token: sync_token.clone(),
            // Both on one host: plain HTTP over loopback.
            control_plane_tls: None,
        },
    )?;
    let envoy_config = data_dir.join("envoy.yaml");
    std::fs::write(&envoy_config, config)
        .map_err(|e| format!("cannot write {}: {e}", envoy_config.display()))?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .map_err(|e| format!("cannot handle signals: {e}"))?;
    }

    let mut running: Vec<Process> = Vec::new();
    let outcome = start_and_watch(
        &flags,
        &data_dir,
        &envoy,
        &envoy_config,
        &sync_token,
        &stop,
        &mut running,
    );
    println!("\n==> stopping");
    for process in running.into_iter().rev() {
        let name = process.name().to_owned();
        process.stop();
        println!("stopped {name}");
    }
    outcome
}

fn run_install() -> Result {
    crate::run(
        "rustup target add wasm32-wasip1",
        Command::new("rustup").args(["target", "add", "wasm32-wasip1"]),
    )
}

#[allow(clippy::too_many_arguments)]
fn start_and_watch(
    flags: &Flags,
    data_dir: &std::path::Path,
    envoy: &std::path::Path,
    envoy_config: &std::path::Path,
    sync_token: &str,
    stop: &AtomicBool,
    running: &mut Vec<Process>,
) -> Result {
    // Presets make the walk-through shorter; only ever into an empty database.
    crate::run(
        "control-plane seed --if-empty",
        Command::new(debug_bin("control-plane"))
            .args(["seed", "--if-empty", "--data-dir"])
            .arg(data_dir),
    )?;
    let mut control_plane = Command::new(debug_bin("control-plane"));
    control_plane
        .arg("serve")
        .args(["--addr", &format!("127.0.0.1:{}", flags.control_plane_port)])
        .arg("--data-dir")
        .arg(data_dir)
        .env("CONTROL_PLANE_SYNC_TOKEN", sync_token);
    start_ready(
        "the control plane",
        control_plane,
        flags.control_plane_port,
        "/healthz",
        stop,
        running,
    )?;

    let mut upstream = Command::new(debug_bin("demo-upstream"));
    upstream.args(["--addr", &format!("127.0.0.1:{}", flags.upstream_port)]);
    running.push(Process::spawn_owned(
        "the demo upstream",
        upstream,
        Output::Terminal,
    )?);

    let mut proxy = Command::new(envoy);
    proxy.arg("-c").arg(envoy_config).args([
        "--concurrency",
        &flags.concurrency.to_string(),
        "--disable-hot-restart",
        "--log-level",
        "warn",
    ]);
    start_ready(
        "Envoy",
        proxy,
        flags.envoy_admin_port,
        "/ready",
        stop,
        running,
    )?;

    println!(
        "\n==> Tollgate is up (Ctrl-C stops everything)\n\
         \x20   API consumers -> Envoy:  http://127.0.0.1:{}\n\
         \x20   control plane (admin):   http://127.0.0.1:{}\n\
         \x20   dashboard:               http://127.0.0.1:{}/dashboard (sign in with the admin token)\n\
         \x20   Envoy admin:             http://127.0.0.1:{}\n\
         \x20   demo upstream:           http://127.0.0.1:{}\n\
         \x20   data directory:          {}",
        flags.envoy_port,
        flags.control_plane_port,
        flags.control_plane_port,
        flags.envoy_admin_port,
        flags.upstream_port,
        data_dir.display()
    );

    while !stop.load(Ordering::SeqCst) {
        for process in running.iter_mut() {
            if let Some(status) = process.exited() {
                return Err(format!("{} exited unexpectedly ({status})", process.name()));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
