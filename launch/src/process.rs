//! A child process started and waited on until it is ready.
//!
//! A server that refuses its arguments (the control plane with an admin
//! token under 16 characters, Envoy with a bad bootstrap) exits within
//! milliseconds, having said why. Waiting for its port until a timeout would
//! hide that for a minute and then report only the timeout, so every wait
//! here checks the child first and, once it has exited, fails with its exit
//! status and the last lines it wrote.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How many of a child's last lines an error quotes.
const TAIL_LINES: usize = 20;
/// How much of its output is kept or read back to find them.
const TAIL_BYTES: usize = 64 * 1024;
/// Between readiness probes: a probe is a loopback connect, cheap enough
/// that a shorter wait only makes start-up quicker.
const POLL: Duration = Duration::from_millis(20);

/// Where a child's stdout and stderr go.
pub enum Output {
    /// Both appended to this file: the tests' and the benchmark's logs, read
    /// when something fails.
    File(PathBuf),
    /// Passed on to this process's own stdout and stderr, as `cargo xtask up`
    /// shows them; copied through pipes, since a terminal cannot be read back.
    Terminal,
}

/// Where the last lines come from when they are needed.
enum Captured {
    /// The log file, from where it ended when the child started: earlier
    /// lines are an earlier process's (a restarted control plane appends).
    File { path: PathBuf, from: u64 },
    Terminal {
        tail: Arc<Mutex<Vec<u8>>>,
        copiers: Vec<JoinHandle<()>>,
    },
}

/// A running child, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Process {
    name: String,
    child: Child,
    captured: Captured,
}

impl Process {
    /// Starts `command` with its output to `output`; `name` is what errors call it.
    pub fn spawn(name: &str, mut command: Command, output: Output) -> Result<Self, String> {
        // Where the child's output starts in its log file, if it has one.
        let from = match &output {
            Output::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                let from = file.metadata().map(|m| m.len()).unwrap_or(0);
                let clone = file
                    .try_clone()
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                command.stdout(Stdio::from(file)).stderr(Stdio::from(clone));
                from
            }
            Output::Terminal => {
                command.stdout(Stdio::piped()).stderr(Stdio::piped());
                0
            }
        };
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let captured = match output {
            Output::File(path) => Captured::File { path, from },
            Output::Terminal => {
                let tail = Arc::default();
                let copiers = pass_on(&mut child, &tail);
                Captured::Terminal { tail, copiers }
            }
        };
        Ok(Self {
            name: name.to_owned(),
            child,
            captured,
        })
    }

    /// [`Process::spawn`] for a child that must never outlive this process:
    /// the kernel SIGKILLs it if we die, even by SIGKILL, so a crashed
    /// `cargo xtask` leaves nothing running. In a process group of its own,
    /// so that a terminal's Ctrl-C reaches only us, and we stop the children
    /// in order instead of racing them.
    ///
    /// Only from a thread that lives as long as the child: the kernel ties
    /// the child to the thread that started it, not to the process.
    pub fn spawn_owned(name: &str, mut command: Command, output: Output) -> Result<Self, String> {
        use std::os::unix::process::CommandExt;
        die_with_parent(&mut command);
        command.process_group(0);
        Self::spawn(name, command, output)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Polls `ready` until it says `true`. An error at once if the process
    /// exits first, and after `limit` if it never gets there, each with the
    /// process's last output; `ready`'s own error (e.g. "interrupted") as it is.
    pub fn wait_until(
        &mut self,
        limit: Duration,
        mut ready: impl FnMut() -> Result<bool, String>,
    ) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                let output = self.last_output();
                return Err(format!(
                    "{} exited while starting ({status}); its last output:\n{output}",
                    self.name
                ));
            }
            if ready()? {
                return Ok(());
            }
            if started.elapsed() > limit {
                let output = self.last_output();
                return Err(format!(
                    "{} was not ready within {limit:?}; its last output:\n{output}",
                    self.name
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// [`Process::wait_until`] `GET path` on `addr` answers 2xx.
    pub fn wait_for_http(
        &mut self,
        addr: SocketAddr,
        path: &str,
        limit: Duration,
    ) -> Result<(), String> {
        self.wait_until(limit, || Ok(http_ok(addr, path)))
    }

    /// The last lines the process wrote, indented, for error messages.
    pub fn last_output(&mut self) -> String {
        let bytes = match &mut self.captured {
            Captured::File { path, from } => read_end(path, *from),
            Captured::Terminal { tail, copiers } => {
                // What it wrote just before exiting may still be in the pipe.
                if self.child.try_wait().ok().flatten().is_some() {
                    let deadline = Instant::now() + Duration::from_secs(1);
                    while copiers.iter().any(|c| !c.is_finished()) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                tail.lock().unwrap_or_else(PoisonError::into_inner).clone()
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        let last = lines
            .get(lines.len().saturating_sub(TAIL_LINES)..)
            .unwrap_or_default();
        if last.iter().all(|l| l.trim().is_empty()) {
            return "    (nothing)".to_owned();
        }
        last.iter()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM, then SIGKILL after 5 s; always reaps.
    pub fn stop(mut self) {
        stop(&mut self.child);
    }

    /// SIGKILL at once, as a crash or an OOM kill ends a process; reaps it.
    pub fn kill(self) {
        self.stop_with(libc::SIGKILL);
    }

    /// `signal`, then SIGKILL after 5 s; always reaps.
    pub fn stop_with(mut self, signal: libc::c_int) {
        stop_with(&mut self.child, signal);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// SIGTERM first so servers exit cleanly, SIGKILL if they have not within 5 s.
pub fn stop(child: &mut Child) {
    stop_with(child, libc::SIGTERM);
}

/// `signal`, then SIGKILL if the child has not exited within 5 s; always
/// reaps, and does nothing to a child already reaped (its pid may be reused).
pub fn stop_with(child: &mut Child, signal: libc::c_int) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe {
            libc::kill(pid, signal);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Asks the kernel to SIGKILL the child when the thread that starts it dies.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls prctl,
    // which is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// One thread per stream copying the child's output on to ours, keeping the
/// last [`TAIL_BYTES`] of both.
fn pass_on(child: &mut Child, tail: &Arc<Mutex<Vec<u8>>>) -> Vec<JoinHandle<()>> {
    let mut copiers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let tail = tail.clone();
        copiers.push(std::thread::spawn(move || {
            copy(out, std::io::stdout(), &tail);
        }));
    }
    if let Some(err) = child.stderr.take() {
        let tail = tail.clone();
        copiers.push(std::thread::spawn(move || {
            copy(err, std::io::stderr(), &tail);
        }));
    }
    copiers
}

fn copy<R: Read, W: Write>(mut from: R, mut to: W, tail: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 8192];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let chunk = buf.get(..n).unwrap_or_default();
        let _ = to.write_all(chunk).and_then(|()| to.flush());
        let mut kept = tail.lock().unwrap_or_else(PoisonError::into_inner);
        kept.extend_from_slice(chunk);
        let excess = kept.len().saturating_sub(TAIL_BYTES);
        kept.drain(..excess);
    }
}

/// The end of `path` after byte `from`, at most [`TAIL_BYTES`] of it.
fn read_end(path: &Path, from: u64) -> Vec<u8> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(TAIL_BYTES as u64));
    let mut out = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_ok() {
        let _ = file.read_to_end(&mut out);
    }
    out
}

/// A loopback port nothing listens on now (another process may take it
/// before the child binds it, which start-up then reports), and never one
/// this process was handed before: the kernel may give a port just let go
/// again at once, and two servers of one test handed the same port would
/// answer for each other (a test once took the demo upstream, on Envoy's
/// admin port, for a ready Envoy).
pub fn free_port() -> Result<u16, String> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free loopback port: {e}"))?;
        if HANDED_OUT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(port)
        {
            return Ok(port);
        }
    }
    Err("no free loopback port that was not handed out before".to_owned())
}

/// Whether `GET path` on `addr` answers 2xx: a bare HTTP/1.1 request, enough
/// to probe readiness without an HTTP client.
pub fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    // "HTTP/1.1 200": the status's first digit is the tenth byte.
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok()
        && head.starts_with(b"HTTP/1.")
        && head.get(9) == Some(&b'2')
}
