//! A child that exits while starting is reported at once, with its exit
//! status and what it said, in both output modes; one that never gets ready
//! is reported at the limit.
//!
//! The bounds are far from what the calls take (milliseconds) and far below
//! the limit they are given, so they hold on a loaded machine and still
//! fail if the wait ran to its limit.

use std::process::Command;
use std::time::{Duration, Instant};

use tollgate_launch::{free_port, Output, Process};

const LIMIT: Duration = Duration::from_secs(120);
const AT_ONCE: Duration = Duration::from_secs(30);

fn refusing() -> Command {
    let mut command = Command::new("sh");
    command.args([
        "-c",
        "echo opened the database; echo refusing: admin token too short >&2; exit 2",
    ]);
    command
}

fn sleeper() -> Process {
    let mut command = Command::new("sleep");
    command.arg("600");
    Process::spawn("sleeper", command, Output::Terminal).unwrap()
}

fn assert_reported_at_once(output: Output) {
    let mut process = Process::spawn("the control plane", refusing(), output).unwrap();
    let port = free_port().unwrap();
    let started = Instant::now();
    let err = process
        .wait_for_http(([127, 0, 0, 1], port).into(), "/healthz", LIMIT)
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < AT_ONCE, "reported after {took:?}: {err}");
    assert!(
        err.contains("the control plane exited while starting"),
        "{err}"
    );
    assert!(err.contains("exit status: 2"), "{err}");
    assert!(err.contains("refusing: admin token too short"), "{err}");
    assert!(err.contains("opened the database"), "{err}");
}

#[test]
fn an_exit_while_starting_is_reported_at_once_from_a_log_file() {
    let log = std::env::temp_dir().join(format!("tollgate-launch-{}.log", std::process::id()));
    std::fs::write(&log, "an earlier process's last words\n").unwrap();
    assert_reported_at_once(Output::File(log.clone()));
    let err = Process::spawn("again", refusing(), Output::File(log.clone()))
        .unwrap()
        .wait_until(LIMIT, || Ok(false))
        .unwrap_err();
    assert!(
        !err.contains("an earlier process's last words"),
        "quotes what was in the file before it started: {err}"
    );
    let _ = std::fs::remove_file(log);
}

#[test]
fn an_exit_while_starting_is_reported_at_once_from_the_terminal() {
    assert_reported_at_once(Output::Terminal);
}

#[test]
fn a_child_that_never_gets_ready_is_reported_at_the_limit_and_stopped_when_dropped() {
    let mut process = sleeper();
    let err = process
        .wait_until(Duration::from_millis(300), || Ok(false))
        .unwrap_err();
    assert!(err.contains("sleeper was not ready within 300ms"), "{err}");
    let pid = process.pid();
    drop(process);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "still running after drop"
    );
}

#[test]
fn a_probe_error_ends_the_wait_as_it_is() {
    let mut process = sleeper();
    let err = process
        .wait_until(LIMIT, || Err("interrupted".to_owned()))
        .unwrap_err();
    assert_eq!(err, "interrupted");
}
