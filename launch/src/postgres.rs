//! A throwaway PostgreSQL server: for `cargo xtask test` and `cargo xtask
//! postgres`, and for the end-to-end test that stops the database under load.
//!
//! The control plane's API tests and the end-to-end tests need a real
//! PostgreSQL on which they may `CREATE DATABASE`. Rather than depend on a
//! system cluster and how it is configured, each run gets its own: `initdb`
//! into a fresh temporary directory, `postgres` on a free port of 127.0.0.1
//! with trust auth and durability off, and, when the [`Cluster`] is dropped, a
//! fast shutdown and the directory deleted. The tests get its URL as
//! `TOLLGATE_TEST_POSTGRES_URL`. A cluster can also be stopped and started
//! again on the same data and port ([`Cluster::stop_server`],
//! [`Cluster::start_server`]), as an outage or a restart would.

use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{free_port, Output, Process};

type Result<T = (), E = String> = std::result::Result<T, E>;

/// A running server; dropping it stops the server and deletes its directory.
pub struct Cluster {
    /// `postgres://tollgate@127.0.0.1:<port>/postgres`; `tollgate` is a superuser.
    pub url: String,
    /// The temporary directory: data, Unix socket and `postgres.log`.
    pub dir: PathBuf,
    server: Arc<Mutex<Option<Server>>>,
    /// How to start `postgres` on this cluster's data, again after a stop.
    launch: Launch,
}

/// What starting the server takes, kept for [`Cluster::start_server`].
struct Launch {
    bin: PathBuf,
    port: String,
    user: Option<(u32, u32)>,
}

/// What must be cleaned up; behind a mutex so a signal handler can do it too.
struct Server {
    dir: PathBuf,
    process: Option<Process>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            // SIGINT is PostgreSQL's fast shutdown; SIGTERM waits for clients to leave.
            process.stop_with(libc::SIGINT);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("xtask: cannot remove {}: {e}", self.dir.display());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Cleans up while holding the lock, so a signal handler waits for it.
        let mut server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        server.take();
    }
}

impl Cluster {
    /// An error with the end of the server's log once it has exited.
    pub fn check(&self) -> Result {
        let mut server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        match server.as_mut().and_then(|s| s.process.as_mut()?.exited()) {
            Some(status) => Err(format!(
                "postgres exited ({status}); end of its log:\n{}",
                log_tail(&self.dir)
            )),
            None => Ok(()),
        }
    }

    /// Stops the server and deletes its data, from any thread: for a signal
    /// handler of a caller that does not watch for signals itself.
    pub fn clean_up(&self) -> impl Fn() + Send + 'static {
        let server = self.server.clone();
        move || {
            server.lock().unwrap_or_else(PoisonError::into_inner).take();
        }
    }

    /// A fast shutdown (SIGINT: clients are disconnected at once), keeping
    /// the data; [`Cluster::start_server`] brings it back.
    pub fn stop_server(&self) {
        let process = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .and_then(|server| server.process.take());
        if let Some(process) = process {
            process.stop_with(libc::SIGINT);
        }
    }

    /// `postgres` on the same data and port, until it accepts connections.
    pub fn start_server(&self) -> Result {
        let process = self.launch.spawn(&self.dir)?;
        if let Some(server) = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            server.process = Some(process);
        }
        self.until_ready()
    }

    fn until_ready(&self) -> Result {
        let limit = Duration::from_secs(30);
        let ready_since = Instant::now();
        loop {
            let ready = Command::new(self.launch.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.launch.port])
                .args(["-U", "tollgate", "-d", "postgres"])
                .status()
                .map_err(|e| format!("pg_isready: cannot start: {e}"))?;
            if ready.success() {
                return Ok(());
            }
            self.check()?;
            if ready_since.elapsed() > limit {
                return Err(format!(
                    "postgres did not accept connections within {limit:?}; end of its log:\n{}",
                    log_tail(&self.dir)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Launch {
    fn command(&self, program: &str, dir: &Path) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(dir);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn spawn(&self, dir: &Path) -> Result<Process> {
        let mut postgres = self.command("postgres", dir);
        postgres
            .arg("-D")
            .arg(dir)
            .arg("-k")
            .arg(dir)
            .args(["-c", "listen_addresses=127.0.0.1", "-p", &self.port])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .stdin(Stdio::null());
        let log = Output::File(dir.join("postgres.log"));
        Process::spawn_owned("postgres", postgres, log)
    }
}

fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `initdb` and `postgres` refuse to run as root: then they run as the
/// `postgres` user that Debian's package creates. `None`: as ourselves.
fn run_as() -> Result<Option<(u32, u32)>> {
    #[allow(unsafe_code)]
    // SAFETY: geteuid(2) always succeeds and touches no memory.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| format!("cannot read /etc/passwd: {e}"))?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields[..] {
                ["postgres", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
                _ => None,
            }
        })
        .map(Some)
        .ok_or_else(|| "running as root, but there is no postgres user to run PostgreSQL as".into())
}

/// Under the system's temporary directory, not the checkout: as root, the
/// `postgres` user must be able to reach it.
fn fresh_dir() -> Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("tollgate-pg-{}-{nanos}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// `initdb` into a fresh directory, then `postgres` until it accepts
/// connections; `bin` holds PostgreSQL's programs (`initdb`, `postgres`,
/// `pg_isready`).
pub fn start(bin: &Path) -> Result<Cluster> {
    let started = Instant::now();
    let dir = fresh_dir()?;
    let launch = Launch {
        bin: bin.to_owned(),
        port: free_port()?.to_string(),
        user: run_as()?,
    };
    if let Some((uid, gid)) = launch.user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|e| format!("cannot chown {}: {e}", dir.display()))?;
    }
    let url = format!("postgres://tollgate@127.0.0.1:{}/postgres", launch.port);
    // From here on, dropping `cluster`, on an error too, deletes the directory.
    let cluster = Cluster {
        url,
        dir: dir.clone(),
        server: Arc::new(Mutex::new(Some(Server {
            dir: dir.clone(),
            process: None,
        }))),
        launch,
    };

    let initdb = cluster
        .launch
        .command("initdb", &dir)
        .arg("-D")
        .arg(&dir)
        .args(["-U", "tollgate", "--auth=trust", "-E", "UTF8", "--locale=C"])
        .output()
        .map_err(|e| {
            let who = if cluster.launch.user.is_some() {
                "the postgres user"
            } else {
                "it"
            };
            format!(
                "initdb: cannot start in {} ({who} must be able to reach it): {e}",
                dir.display()
            )
        })?;
    if !initdb.status.success() {
        return Err(format!(
            "initdb failed ({}):\n{}{}",
            initdb.status,
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        ));
    }
    cluster.start_server()?;
    println!(
        "postgres up on 127.0.0.1:{} in {:.1} s (data in {})",
        cluster.launch.port,
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(cluster)
}
