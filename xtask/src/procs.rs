//! Child processes that never outlive `cargo xtask`.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Asks the kernel to SIGKILL the child if xtask dies, even by SIGKILL, so a
/// crashed `up` leaves nothing running.
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

pub struct Managed {
    pub name: &'static str,
    child: Child,
}

impl Managed {
    pub fn spawn(name: &'static str, mut command: Command) -> crate::Result<Self> {
        use std::os::unix::process::CommandExt;
        die_with_parent(&mut command);
        // Its own process group: a terminal's Ctrl-C reaches only xtask, which
        // then stops the children in order instead of racing them.
        command.process_group(0);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Self { name, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL after 5 s; always reaps.
    pub fn stop(self) {
        self.stop_with(libc::SIGTERM);
    }

    /// `signal`, then SIGKILL after 5 s; always reaps.
    pub fn stop_with(mut self, signal: libc::c_int) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            #[allow(unsafe_code)]
            // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
            unsafe {
                libc::kill(pid, signal);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
