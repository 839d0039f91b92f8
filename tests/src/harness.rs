//! A real Tollgate stack for one test: the control plane binary on SQLite, the
//! demo upstream, and Envoy 1.40 with `filter.wasm`, each a child process on
//! loopback ports of its own, all killed (by pid) when the [`Stack`] drops.
//!
//! Paths come from the environment that `cargo xtask test` sets:
//! `TOLLGATE_ENVOY`, `TOLLGATE_FILTER_WASM`, `TOLLGATE_CONTROL_PLANE`,
//! `TOLLGATE_DEMO_UPSTREAM`, `TOLLGATE_ENVOY_TEMPLATE`.
//!
//! Starting a process and waiting until it is ready is `tollgate-launch`'s,
//! shared with `cargo xtask up` and the benchmark: a child that exits while
//! starting fails the test at once, with its last output.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tollgate_launch::{Output, Process};

use crate::tls::{ControlPlaneCertificate, CONTROL_PLANE_NAME};
use crate::{render_envoy_config, ControlPlaneTls, EnvoyValues};

/// How long a child may take to be ready.
const START_LIMIT: Duration = Duration::from_secs(30);

pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";
pub const SYNC_TOKEN: &str = "e2e-sync-token-0123456789";
/// The key the control plane seals webhook signing secrets with.
pub const SECRETS_KEY: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";

/// A path `cargo xtask test` passes in `name`; panics, naming it, if unset
/// or missing.
pub fn env_path(name: &str) -> PathBuf {
    let value = std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests through `cargo xtask test`")
    });
    let path = PathBuf::from(value);
    assert!(path.exists(), "{name}={} does not exist", path.display());
    path
}

/// A name no other call in this process returns (ports repeat, so not a port).
pub fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{n}")
}

pub fn free_port() -> u16 {
    tollgate_launch::free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `command` logging to `log` (a path).
pub(crate) fn spawn(name: &str, command: Command, log: PathBuf) -> Process {
    Process::spawn(name, command, Output::File(log)).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until `GET path` on loopback `port` answers 2xx; panics at once,
/// with its last output, if the process exits first. On a blocking thread:
/// the probe blocks, and a test's runtime may have only the one.
pub(crate) async fn until_ready(process: Process, port: u16, path: &str) -> Process {
    until(process, answers(port, path)).await
}

/// The probe of [`until_ready`]: whether `GET path` on loopback `port` answers 2xx.
fn answers(port: u16, path: &str) -> impl FnMut() -> Result<bool, String> + Send + 'static {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let path = path.to_owned();
    move || Ok(tollgate_launch::http_ok(addr, &path))
}

/// [`until_ready`] with `ready` as the probe.
async fn until(
    process: Process,
    ready: impl FnMut() -> Result<bool, String> + Send + 'static,
) -> Process {
    let (process, ready) = try_until(process, ready).await;
    if let Err(e) = ready {
        panic!("{e}");
    }
    process
}

/// [`until`], handing back why the process did not become ready.
async fn try_until(
    mut process: Process,
    ready: impl FnMut() -> Result<bool, String> + Send + 'static,
) -> (Process, Result<(), String>) {
    tokio::task::spawn_blocking(move || {
        let ready = process.wait_until(START_LIMIT, ready);
        (process, ready)
    })
    .await
    .expect("the wait for readiness")
}

/// Runs `$TOLLGATE_XTASK image <args>` (the running `cargo xtask`'s own
/// binary, so no test starts cargo); returns the `sha256:<hex>` digest it
/// prints on its last line.
pub fn xtask_image<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let output = Command::new(env_path("TOLLGATE_XTASK"))
        .arg("image")
        .args(args)
        .output()
        .expect("the xtask binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "xtask image failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default().to_owned();
    let hex = last.strip_prefix("sha256:").unwrap_or_default();
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "the last line is not a digest: {last:?}\n{stdout}"
    );
    last
}

/// The harness's HTTP client: trusting the public roots and, when given,
/// the test's CA.
fn client_trusting(ca_pem: Option<&str>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_info(true);
    if let Some(pem) = ca_pem {
        builder = builder.add_root_certificate(
            reqwest::Certificate::from_pem(pem.as_bytes()).expect("the CA certificate"),
        );
    }
    builder.build().expect("an HTTP client")
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `limit`
/// with `what` in the message. Returns the value and how long it took.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return (value, started.elapsed());
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("a response body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Self {
            status,
            headers,
            body,
        }
    }
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub envoy_port: u16,
    pub envoy_admin_port: u16,
    pub control_plane_port: u16,
    pub upstream_port: u16,
    /// `--database-url` for every control plane; `None` is SQLite in `dir`.
    database_url: Option<String>,
    /// More flags for every control plane, after the harness's own.
    control_plane_args: Vec<String>,
    control_plane: Option<Process>,
    /// More control planes on the same database, on their own ports.
    replicas: Vec<Process>,
    upstream: Option<Process>,
    envoy: Option<Process>,
    /// More Envoys syncing from the same control plane.
    /// Envoys beyond the first, with their listener ports (0 when unknown).
    more_envoys: Vec<(u16, Process)>,
    /// How many have been started, so names stay unique after a stop.
    envoys_started: usize,
    /// The plugin configuration Envoy gets instead of the template's.
    plugin_config: Option<Value>,
    /// Set when the control plane serves HTTPS with this certificate.
    pub tls: Option<ControlPlaneCertificate>,
    pub client: reqwest::Client,
}

impl Stack {
    /// Control plane, upstream and Envoy (2 workers), all ready.
    pub async fn start() -> Self {
        let mut stack = Self::start_without_control_plane().await;
        stack.start_control_plane().await;
        stack
    }

    /// The same, with the control plane on `database_url` (e.g. PostgreSQL).
    pub async fn start_with_database(database_url: &str) -> Self {
        let mut stack = Self::start_without_control_plane().await;
        stack.database_url = Some(database_url.to_owned());
        stack.start_control_plane().await;
        stack
    }

    /// The same, with `plugin_config` as the filter's configuration instead
    /// of `envoy/tollgate.yaml`'s (the sync token is the harness's).
    pub async fn start_with_plugin_config(plugin_config: Value) -> Self {
        let mut stack = Self::new();
        stack.plugin_config = Some(plugin_config);
        stack.start_upstream().await;
        stack.start_envoy().await;
        stack.start_control_plane().await;
        stack
    }

    /// Upstream and an Envoy whose filter has `plugin_config`, and no
    /// control plane: Envoy has never had config.
    pub async fn start_with_plugin_config_without_control_plane(plugin_config: Value) -> Self {
        let mut stack = Self::new();
        stack.plugin_config = Some(plugin_config);
        stack.start_upstream().await;
        stack.start_envoy().await;
        stack
    }

    /// Control plane and upstream, and no Envoy yet: for a test that
    /// starts an Envoy of its own shape ([`Stack::add_envoy`]).
    pub async fn start_without_envoy() -> Self {
        let mut stack = Self::new();
        stack.start_upstream().await;
        stack.start_control_plane().await;
        stack
    }

    /// Control plane and upstream, no Envoy, the control plane on
    /// `database_url` (SQLite in the stack's directory when `None`) and
    /// given `args` besides the harness's own flags (e.g. `--admin-rate-per-ip 0`).
    pub async fn start_without_envoy_with(database_url: Option<&str>, args: &[&str]) -> Self {
        let mut stack = Self::new();
        stack.database_url = database_url.map(str::to_owned);
        stack.control_plane_args = args.iter().map(|a| (*a).to_owned()).collect();
        stack.start_upstream().await;
        stack.start_control_plane().await;
        stack
    }

    /// Control plane serving HTTPS with a certificate from a CA of the
    /// test's own, upstream, and Envoy reaching the control plane over TLS,
    /// trusting that CA: the shipped template's TLS block, filled in. The
    /// harness's admin requests go over HTTPS too.
    pub async fn start_with_tls() -> Self {
        let mut stack = Self::new().serving_https();
        stack.start_upstream().await;
        stack.start_control_plane().await;
        stack.start_envoy().await;
        stack
    }

    /// [`Stack::start_with_database`], serving HTTPS as in
    /// [`Stack::start_with_tls`]: replicas forward to the one that allocates
    /// over HTTPS, checking its certificate for [`CONTROL_PLANE_NAME`]
    /// against the test's CA, as the Kubernetes manifests configure them.
    pub async fn start_with_database_and_tls(database_url: &str) -> Self {
        let mut stack = Self::new().serving_https();
        stack.database_url = Some(database_url.to_owned());
        stack.start_upstream().await;
        stack.start_control_plane().await;
        stack.start_envoy().await;
        stack
    }

    /// [`Stack::start_without_envoy`], the control plane serving HTTPS as
    /// in [`Stack::start_with_tls`].
    pub async fn start_without_envoy_with_tls() -> Self {
        let mut stack = Self::new().serving_https();
        stack.start_upstream().await;
        stack.start_control_plane().await;
        stack
    }

    fn serving_https(mut self) -> Self {
        let certificate = ControlPlaneCertificate::new(self.dir.path());
        self.client = client_trusting(Some(certificate.ca.pem()));
        self.tls = Some(certificate);
        self
    }

    /// Upstream and Envoy only: Envoy has never had config.
    pub async fn start_without_control_plane() -> Self {
        let mut stack = Self::new();
        stack.start_upstream().await;
        stack.start_envoy().await;
        stack
    }

    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        Self {
            envoy_port: free_port(),
            envoy_admin_port: free_port(),
            control_plane_port: free_port(),
            upstream_port: free_port(),
            dir,
            database_url: None,
            control_plane_args: Vec::new(),
            control_plane: None,
            replicas: Vec::new(),
            upstream: None,
            envoy: None,
            more_envoys: Vec::new(),
            envoys_started: 1,
            plugin_config: None,
            tls: None,
            client: client_trusting(None),
        }
    }

    /// `path` on the control plane or replica on `port`, over HTTPS when
    /// the stack's control plane serves it.
    pub fn control_plane_url(&self, port: u16, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{port}{path}")
    }

    fn spawn(&self, name: &str, command: Command, log: &str) -> Process {
        spawn(name, command, self.dir.path().join(log))
    }

    /// Before anything is configured with its port. A port free when
    /// [`free_port`] chose it can be taken by another process's outgoing
    /// connection before the upstream binds it (seen once in a full
    /// `cargo xtask test`); then the upstream starts again on another.
    async fn start_upstream(&mut self) {
        for attempt in 1..=3 {
            let mut command = Command::new(env_path("TOLLGATE_DEMO_UPSTREAM"));
            command.args(["--addr", &format!("127.0.0.1:{}", self.upstream_port)]);
            let process = self.spawn("the demo upstream", command, "upstream.log");
            match try_until(process, answers(self.upstream_port, "/")).await {
                (process, Ok(())) => {
                    self.upstream = Some(process);
                    return;
                }
                (_, Err(e)) if attempt < 3 && e.contains("Address already in use") => {
                    self.upstream_port = free_port();
                }
                (_, Err(e)) => panic!("{e}"),
            }
        }
    }

    async fn start_envoy(&mut self) {
        let child = self
            .spawn_envoy(self.envoy_port, self.envoy_admin_port, "envoy")
            .await;
        self.envoy = Some(child);
    }

    /// Another Envoy (2 workers) syncing from the same control plane and
    /// reporting to it; returns its listener port.
    pub async fn start_another_envoy(&mut self) -> u16 {
        let (port, admin_port) = (free_port(), free_port());
        self.envoys_started += 1;
        let name = format!("envoy-{}", self.envoys_started);
        let child = self.spawn_envoy(port, admin_port, &name).await;
        self.more_envoys.push((port, child));
        port
    }

    /// Starts an Envoy (2 workers) on the bootstrap at `config`, with `env`
    /// added to its environment, and waits until its admin port on
    /// `admin_port` says ready; it logs to `<name>.log` and is stopped with
    /// the stack.
    pub async fn add_envoy(
        &mut self,
        name: &str,
        config: &std::path::Path,
        admin_port: u16,
        env: &[(&str, &str)],
    ) {
        self.add_envoy_with_workers(name, config, admin_port, env, 2)
            .await;
    }

    /// [`Stack::add_envoy`] with `workers` worker threads.
    pub async fn add_envoy_with_workers(
        &mut self,
        name: &str,
        config: &std::path::Path,
        admin_port: u16,
        env: &[(&str, &str)],
        workers: u32,
    ) {
        let child = self.run_envoy(config, admin_port, name, env, workers).await;
        self.envoys_started += 1;
        self.more_envoys.push((0, child));
    }

    async fn run_envoy(
        &self,
        config: &std::path::Path,
        admin_port: u16,
        name: &str,
        env: &[(&str, &str)],
        workers: u32,
    ) -> Process {
        let mut command = Command::new(env_path("TOLLGATE_ENVOY"));
        command
            .arg("-c")
            .arg(config)
            .args(["--concurrency", &workers.to_string()])
            .args([
                "--disable-hot-restart",
                "--log-level",
                "info",
                "--service-cluster",
                "tollgate-e2e",
            ])
            // Its node id is its log's name: the proxy registry lists it so.
            .args(["--service-node", name])
            .envs(env.iter().copied());
        let process = self.spawn(&format!("Envoy ({name})"), command, &format!("{name}.log"));
        until_ready(process, admin_port, "/ready").await
    }

    /// What an Envoy wrote to `<name>.log` so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The key's use this quota period, as the control plane reports it.
    pub async fn used(&self, key_id: &str) -> u64 {
        self.used_via(self.control_plane_port, key_id).await
    }

    /// [`Stack::used`], asked of the control plane or replica on `port`.
    pub async fn used_via(&self, port: u16, key_id: &str) -> u64 {
        let r = self
            .admin_via(port, Method::GET, &format!("/v1/keys/{key_id}/usage"), None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        r.body["used"].as_u64().expect("used")
    }

    /// Waits until the key's use is `expected`; panics if it goes past it.
    pub async fn until_used(&self, key_id: &str, expected: u64, limit: Duration) {
        self.until_used_via(self.control_plane_port, key_id, expected, limit)
            .await;
    }

    /// [`Stack::until_used`], asked of the control plane or replica on `port`.
    pub async fn until_used_via(&self, port: u16, key_id: &str, expected: u64, limit: Duration) {
        eventually(limit, &format!("{expected} used by {key_id}"), || async {
            let used = self.used_via(port, key_id).await;
            assert!(
                used <= expected,
                "{used} used by {key_id}, more than {expected}"
            );
            (used == expected).then_some(())
        })
        .await;
    }

    /// The Envoy stats (admin `/stats`, `name: value` lines) of the Envoy
    /// whose admin port is `admin_port`, those whose names match the regex
    /// `filter`.
    pub async fn envoy_stats_text(&self, admin_port: u16, filter: &str) -> String {
        self.client
            .get(format!("http://127.0.0.1:{admin_port}/stats"))
            .query(&[("filter", filter)])
            .send()
            .await
            .expect("Envoy's admin answers")
            .text()
            .await
            .expect("a stats body")
    }

    /// One series of the control plane's `/metrics`, summed over its labels.
    pub async fn control_plane_metric(&self, name: &str) -> f64 {
        let url = self.control_plane_url(self.control_plane_port, "/metrics");
        let text = self
            .client
            .get(url)
            .send()
            .await
            .expect("the control plane answers")
            .text()
            .await
            .expect("a metrics body");
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let bare = series.split('{').next()?;
                (bare == name).then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }

    async fn spawn_envoy(&self, envoy_port: u16, envoy_admin_port: u16, name: &str) -> Process {
        let config = self.envoy_config(
            envoy_port,
            envoy_admin_port,
            self.upstream_port,
            self.control_plane_port,
        );
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, config).expect("write envoy.yaml");
        self.run_envoy(&path, envoy_admin_port, name, &[], 2).await
    }

    /// `envoy/tollgate.yaml` rendered for an Envoy on these ports, in front
    /// of the upstream on `upstream_port`, syncing from (and reporting to)
    /// the control plane or replica on `control_plane_port`.
    pub fn envoy_config(
        &self,
        envoy_port: u16,
        envoy_admin_port: u16,
        upstream_port: u16,
        control_plane_port: u16,
    ) -> String {
        let tls = self.tls.as_ref().map(|certificate| ControlPlaneTls {
            name: CONTROL_PLANE_NAME.to_owned(),
            ca_file: certificate.ca_file.display().to_string(),
        });
        self.envoy_config_with_tls(
            envoy_port,
            envoy_admin_port,
            upstream_port,
            control_plane_port,
            tls,
        )
    }

    /// [`Stack::envoy_config`], with the control plane reached as `tls` says
    /// (plain HTTP when `None`), whatever the stack's control plane serves.
    pub fn envoy_config_with_tls(
        &self,
        envoy_port: u16,
        envoy_admin_port: u16,
        upstream_port: u16,
        control_plane_port: u16,
        control_plane_tls: Option<ControlPlaneTls>,
    ) -> String {
        let template = std::fs::read_to_string(env_path("TOLLGATE_ENVOY_TEMPLATE"))
            .expect("the Envoy template");
        let filter = env_path("TOLLGATE_FILTER_WASM");
        let config = render_envoy_config(
            &template,
            &EnvoyValues {
                envoy_port,
                envoy_admin_port,
                upstream_port,
                control_plane_port,
                filter_wasm: filter.display().to_string(),
                sync_token: SYNC_TOKEN.to_owned(),
                control_plane_tls,
            },
        )
        .expect("the template renders");
        match &self.plugin_config {
            Some(plugin_config) => with_plugin_config(&config, plugin_config),
            None => config,
        }
    }

    /// Starts a helper process of a test's own (a gRPC server), logging to
    /// `<name>.log` in the stack's directory; it stops when dropped.
    pub fn spawn_helper(&self, name: &str, command: Command) -> Process {
        self.spawn(name, command, &format!("{name}.log"))
    }

    fn spawn_control_plane(&self, name: &str, port: u16, log: &str) -> Process {
        let mut command = Command::new(env_path("TOLLGATE_CONTROL_PLANE"));
        command
            .arg("serve")
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"));
        if let Some(url) = &self.database_url {
            command.args(["--database-url", url]);
        }
        if let Some(certificate) = &self.tls {
            command
                .arg("--tls-cert-file")
                .arg(&certificate.cert_file)
                .arg("--tls-key-file")
                .arg(&certificate.key_file)
                .arg("--tls-peer-ca-file")
                .arg(&certificate.ca_file)
                .args(["--tls-peer-name", CONTROL_PLANE_NAME]);
        }
        command
            .args(&self.control_plane_args)
            .env("CONTROL_PLANE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("CONTROL_PLANE_SYNC_TOKEN", SYNC_TOKEN)
            .env("CONTROL_PLANE_SECRETS_KEY", SECRETS_KEY)
            // The tests' webhook receivers listen on 127.0.0.1, which a
            // production start refuses as a target.
            .env("CONTROL_PLANE_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true");
        self.spawn(name, command, log)
    }

    /// Starts (or restarts) the control plane on the same port and data directory.
    pub async fn start_control_plane(&mut self) {
        let port = self.control_plane_port;
        let process = self.spawn_control_plane("the control plane", port, "control-plane.log");
        self.control_plane = Some(self.until_control_plane_ready(process, port).await);
    }

    /// Starts another control plane on the same database, one Envoy does not
    /// sync from; returns its port.
    pub async fn start_replica(&mut self) -> u16 {
        let port = free_port();
        let process = self.spawn_control_plane("a replica", port, "replica.log");
        let ready = self.until_control_plane_ready(process, port).await;
        self.replicas.push(ready);
        port
    }

    async fn until_control_plane_ready(&self, process: Process, port: u16) -> Process {
        if self.tls.is_none() {
            return until_ready(process, port, "/healthz").await;
        }
        // The plain-HTTP probe cannot speak TLS; the database is open and
        // the certificate loaded before the port is bound, so a connection
        // accepted there is a control plane ready to serve.
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        until(process, move || {
            Ok(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
        })
        .await
    }

    /// Kills the control plane and waits until it is gone.
    pub fn stop_control_plane(&mut self) {
        if let Some(process) = self.control_plane.take() {
            process.stop();
        }
    }

    /// Kills the control plane with SIGKILL: no shutdown of any kind.
    pub fn kill_control_plane(&mut self) {
        if let Some(process) = self.control_plane.take() {
            process.kill();
        }
    }

    /// Kills the first Envoy with SIGKILL: no drain, no last usage report.
    pub fn kill_envoy(&mut self) {
        if let Some(process) = self.envoy.take() {
            process.kill();
        }
    }

    /// Starts the first Envoy again on its ports and configuration; waits
    /// until Envoy is ready, not until its filter has config.
    pub async fn restart_envoy(&mut self) {
        self.start_envoy().await;
    }

    /// The control plane's process id (to freeze it).
    pub fn control_plane_pid(&self) -> Option<u32> {
        self.control_plane.as_ref().map(Process::pid)
    }

    /// Stops the Envoy [`Stack::start_another_envoy`] started on `port`.
    pub fn stop_envoy(&mut self, port: u16) {
        if let Some(at) = self.more_envoys.iter().position(|(p, _)| *p == port) {
            self.more_envoys.remove(at).1.stop();
        }
    }

    /// The status of a request with `key` through the Envoy on `port`.
    pub async fn status_through(&self, port: u16, key: &str) -> StatusCode {
        self.client
            .get(format!("http://127.0.0.1:{port}/anything"))
            .header("x-api-key", key)
            .send()
            .await
            .expect("Envoy answers")
            .status()
    }

    /// The process ids of the Envoys, the first one's first (to freeze one).
    pub fn envoy_pids(&self) -> Vec<u32> {
        self.envoy
            .iter()
            .chain(self.more_envoys.iter().map(|(_, p)| p))
            .map(Process::pid)
            .collect()
    }

    pub fn envoy_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.envoy_port)
    }

    /// One request through Envoy with extra headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.client.get(self.envoy_url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Reply::read(req.send().await.expect("Envoy answers")).await
    }

    /// One request through Envoy with header values given as bytes, which
    /// need not be UTF-8 (obs-text, 0x80 to 0xFF, is accepted).
    pub async fn get_raw(&self, path: &str, headers: &[(&str, &[u8])]) -> Reply {
        let mut req = self.client.get(self.envoy_url(path));
        for (k, v) in headers {
            let value = reqwest::header::HeaderValue::from_bytes(v).expect("a header value");
            req = req.header(*k, value);
        }
        Reply::read(req.send().await.expect("Envoy answers")).await
    }

    /// One request through Envoy with `x-api-key`.
    /// Sends `head` (a request line and header lines, each ending in CRLF,
    /// without the blank line) to Envoy as raw bytes on its own connection,
    /// so that it may hold what no HTTP client would send (NUL bytes, a
    /// header a hundred times); returns the status and the body, as JSON
    /// when it is.
    pub async fn raw_request(&self, head: &[u8]) -> (u16, Value) {
        self.raw_request_to(self.envoy_port, head).await
    }

    /// [`Self::raw_request`] to the listener on `port` (Envoy's or the control plane's).
    pub async fn raw_request_to(&self, port: u16, head: &[u8]) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("the listener accepts");
        let request = [head, b"connection: close\r\n\r\n"].concat();
        stream
            .write_all(&request)
            .await
            .expect("the request is sent");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("an answer within 10 s")
            .expect("the answer is read");
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
        (status, body)
    }

    pub async fn get_with_key(&self, key: &str) -> Reply {
        self.get("/anything", &[("x-api-key", key)]).await
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.admin_via(self.control_plane_port, method, path, body)
            .await
    }

    /// An admin request to the control plane (or replica) on `port`.
    pub async fn admin_via(
        &self,
        port: u16,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, self.control_plane_url(port, path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        Reply::read(req.send().await.expect("the control plane answers")).await
    }

    /// Creates a plan with one limit, a tenant on it and a key; returns (key id, plaintext).
    pub async fn tenant_with_key(&self, limit: Value) -> (String, String) {
        self.tenant_with_key_via(self.control_plane_port, limit)
            .await
    }

    /// [`Stack::tenant_with_key`] through the control plane or replica on `port`.
    pub async fn tenant_with_key_via(&self, port: u16, limit: Value) -> (String, String) {
        let tenant_id = self.tenant_on_via(port, json!({"limits": [limit]})).await;
        self.new_key_via(port, &tenant_id).await
    }

    /// Creates a plan with one limit and a tenant on it; returns the tenant id.
    pub async fn tenant_on_plan(&self, limit: Value) -> String {
        self.tenant_on(json!({"limits": [limit]})).await
    }

    /// Creates the plan `plan` (a plan's body but its name) and a tenant on
    /// it; returns the tenant id.
    pub async fn tenant_on(&self, plan: Value) -> String {
        self.tenant_on_via(self.control_plane_port, plan).await
    }

    async fn tenant_on_via(&self, port: u16, mut plan: Value) -> String {
        plan["name"] = json!(unique_name("plan"));
        let plan = self
            .admin_via(port, Method::POST, "/v1/plans", Some(plan))
            .await;
        assert_eq!(plan.status, StatusCode::CREATED, "{:?}", plan.body);
        let tenant = self
            .admin_via(
                port,
                Method::POST,
                "/v1/tenants",
                Some(json!({"name": unique_name("tenant"), "plan_id": plan.body["id"]})),
            )
            .await;
        assert_eq!(tenant.status, StatusCode::CREATED, "{:?}", tenant.body);
        tenant.body["id"].as_str().expect("tenant id").to_owned()
    }

    /// Deactivates the key `key_id` (`PATCH /v1/keys/{id}`, `active: false`).
    pub async fn deactivate(&self, key_id: &str) {
        let reply = self
            .admin(
                Method::PATCH,
                &format!("/v1/keys/{key_id}"),
                Some(json!({"active": false})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }

    pub async fn new_key(&self, tenant_id: &str) -> (String, String) {
        self.new_key_via(self.control_plane_port, tenant_id).await
    }

    async fn new_key_via(&self, port: u16, tenant_id: &str) -> (String, String) {
        let key = self
            .admin_via(
                port,
                Method::POST,
                &format!("/v1/tenants/{tenant_id}/keys"),
                Some(json!({"name": "e2e"})),
            )
            .await;
        assert_eq!(key.status, StatusCode::CREATED, "{:?}", key.body);
        (
            key.body["id"].as_str().expect("key id").to_owned(),
            key.body["key"].as_str().expect("plaintext key").to_owned(),
        )
    }

    /// Waits until requests with `key` get `status`; returns how long that took.
    pub async fn until_status(&self, key: &str, status: u16, limit: Duration) -> Duration {
        eventually(limit, &format!("status {status} for the key"), || async {
            (self.get_with_key(key).await.status.as_u16() == status).then_some(())
        })
        .await
        .1
    }

    /// The last lines of every log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".log"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        for name in names {
            let text = std::fs::read_to_string(self.dir.path().join(&name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            out.push_str(&format!("--- {name} ---\n{tail}\n"));
        }
        out
    }
}

/// Asserts that `reply` is a problem+json refusal with `status` and `code`.
/// A process frozen with SIGSTOP, resumed (SIGCONT) however the test
/// ends, so the stack can stop it.
pub struct Frozen(u32);

impl Frozen {
    pub fn freeze(pid: u32) -> Self {
        signal("-STOP", pid);
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(which: &str, pid: u32) {
    let status = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {which} {pid}");
}

/// What a hammer let through, per Envoy, and over how long.
#[derive(Debug)]
pub struct Hammered {
    /// Admitted (200) through each Envoy, in the order of the ports.
    pub admitted: Vec<u64>,
    /// Refused (429) through each Envoy.
    pub refused: Vec<u64>,
    /// From the first request sent to the last answer.
    pub elapsed: Duration,
}

impl Hammered {
    pub fn total(&self) -> u64 {
        self.admitted.iter().sum()
    }

    /// This and `later`, a hammering of the same Envoys after it, as one.
    pub fn and(self, later: Hammered) -> Hammered {
        let add = |a: Vec<u64>, b: Vec<u64>| a.iter().zip(&b).map(|(x, y)| x + y).collect();
        Hammered {
            admitted: add(self.admitted, later.admitted),
            refused: add(self.refused, later.refused),
            elapsed: self.elapsed + later.elapsed,
        }
    }
}

/// Sends requests with `key` through each Envoy on `ports`, one at a time
/// per Envoy, `gap` apart, for `lasting`: a load bounded in time and count.
pub async fn hammer(
    client: &reqwest::Client,
    ports: &[u16],
    key: &str,
    lasting: Duration,
    gap: Duration,
) -> Hammered {
    let started = Instant::now();
    let tasks: Vec<_> = ports
        .iter()
        .map(|&port| {
            let client = client.clone();
            let key = key.to_owned();
            tokio::spawn(async move {
                let (mut admitted, mut refused) = (0, 0);
                let mut last = Instant::now();
                while started.elapsed() < lasting {
                    let status = client
                        .get(format!("http://127.0.0.1:{port}/anything"))
                        .header("x-api-key", &key)
                        .send()
                        .await
                        .expect("Envoy answers")
                        .status();
                    last = Instant::now();
                    match status {
                        StatusCode::OK => admitted += 1,
                        StatusCode::TOO_MANY_REQUESTS => refused += 1,
                        other => panic!("through port {port}: {other}"),
                    }
                    tokio::time::sleep(gap).await;
                }
                (admitted, refused, last)
            })
        })
        .collect();
    let mut out = Hammered {
        admitted: Vec::new(),
        refused: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (admitted, refused, last) = task.await.expect("a hammer task");
        out.admitted.push(admitted);
        out.refused.push(refused);
        out.elapsed = out.elapsed.max(last.duration_since(started));
    }
    out
}

pub fn assert_problem(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status.as_u16(), status, "{:?}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(reply.body["code"], code, "{:?}", reply.body);
    assert_eq!(reply.body["status"], status);
    assert!(reply.body["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(reply.body["type"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(reply.body["detail"].as_str().is_some_and(|t| !t.is_empty()));
}

/// A plugin configuration syncing from the harness's control plane, with
/// `api_key` saying where keys are read.
pub fn plugin_config_with_api_key(api_key: Value) -> Value {
    json!({
        "sync": {"cluster": "tollgate_control_plane", "token": SYNC_TOKEN},
        "api_key": api_key,
    })
}

/// A plugin configuration syncing from the harness's control plane, with
/// `sync` fields added to (or replacing) the defaults and `more` top-level fields.
pub fn plugin_config_with(sync: Value, more: Value) -> Value {
    let mut config = json!({
        "sync": {"cluster": "tollgate_control_plane", "token": SYNC_TOKEN},
    });
    if let (Some(base), Some(extra)) = (config["sync"].as_object_mut(), sync.as_object()) {
        base.extend(extra.clone());
    }
    if let (Some(base), Some(extra)) = (config.as_object_mut(), more.as_object()) {
        base.extend(extra.clone());
    }
    config
}

/// `rendered` (from `envoy/tollgate.yaml`) with its plugin configuration
/// replaced by `config`.
pub fn with_plugin_config(rendered: &str, config: &Value) -> String {
    let marker = "value: '{\"sync\"";
    let line = rendered
        .lines()
        .find(|line| line.trim_start().starts_with(marker))
        .expect("the template's plugin configuration line");
    let indent = &line[..line.len() - line.trim_start().len()];
    let json = serde_json::to_string(config).expect("JSON");
    assert!(
        !json.contains('\''),
        "single quotes would end the YAML string"
    );
    rendered.replace(line, &format!("{indent}value: '{json}'"))
}

/// Stops `child` by pid: SIGTERM first so servers exit cleanly, SIGKILL if
/// they do not within 5 s.
pub fn stop(mut child: Child) {
    tollgate_launch::stop(&mut child);
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let replicas = std::mem::take(&mut self.replicas);
        let more_envoys = std::mem::take(&mut self.more_envoys);
        for process in [
            self.envoy.take(),
            self.control_plane.take(),
            self.upstream.take(),
        ]
        .into_iter()
        .flatten()
        .chain(replicas)
        .chain(more_envoys.into_iter().map(|(_, p)| p))
        {
            process.stop();
        }
    }
}

/// A new, empty database on the test PostgreSQL server named by
/// `TOLLGATE_TEST_POSTGRES_URL` (started by `cargo xtask test`); returns its URL.
pub fn fresh_postgres_database(prefix: &str) -> String {
    let server = std::env::var("TOLLGATE_TEST_POSTGRES_URL").expect(
        "TOLLGATE_TEST_POSTGRES_URL must name a PostgreSQL server: run `cargo xtask test`, \
         or start one with `cargo xtask postgres` and export what it prints",
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!("{prefix}_{}_{nanos}", std::process::id());
    let status = Command::new("psql")
        .args([&server, "-q", "-c", &format!("CREATE DATABASE {name}")])
        .status()
        .expect("psql runs");
    assert!(status.success(), "CREATE DATABASE {name} failed");
    let (base, _) = server.rsplit_once('/').expect("a database URL");
    format!("{base}/{name}")
}
