//! `bench-rls`: the benchmark's peer arm, the design Envoy itself
//! recommends for global limits. Envoy's own `envoy.filters.http.ratelimit`
//! asks a rate limit service over gRPC (RLS v3, `ShouldRateLimit`) about
//! every request; this is such a service, with its counters in the
//! `limitador` crate, which Kuadrant's Limitador server is built on.
//!
//! Only what the benchmark needs: counters in memory, limits from flags,
//! one thread. The runner (`bench/runner`) starts it pinned to Envoy's CPU,
//! waits until it accepts connections, and adds its CPU time to Envoy's.
//!
//! ```text
//! bench-rls --listen 127.0.0.1:PORT [--domain bench] [--per-second N] [--exhausted KEY]
//! ```
//!
//! Every value of descriptor key `api_key` may make `--per-second` requests
//! a second; `--exhausted` names one value allowed one request an hour. Once
//! it listens it prints `bench-rls: listening on <address>`.
//!
//! - [`proto`]: the RLS messages, declared by hand;
//! - [`limits`]: a request's verdict, counted by limitador;
//! - [`service`]: the gRPC method on tonic.

// No panics where requests are decided; tests may.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod limits;
mod proto;
mod service;

use std::net::SocketAddr;
use std::process::ExitCode;

use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use limits::{Limiter, Limits};
use service::RateLimitService;

const USAGE: &str = "usage: bench-rls --listen <address:port> [--domain bench] \
[--per-second 1000000000] [--exhausted <key>]";

#[derive(Debug, PartialEq, Eq)]
struct Config {
    listen: SocketAddr,
    limits: Limits,
}

/// What the command line asks for: run with a configuration, or print usage.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Run(Config),
    Help,
}

fn parse(args: &[String]) -> Result<Command, String> {
    let mut listen = None;
    let mut limits = Limits {
        domain: "bench".into(),
        per_second: 1_000_000_000,
        exhausted: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(Command::Help);
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--listen" => {
                listen = Some(value.parse().map_err(|_| {
                    format!("--listen: {value:?} is not an address and port, e.g. 127.0.0.1:8081")
                })?);
            }
            "--domain" if !value.is_empty() => limits.domain.clone_from(value),
            "--domain" => return Err("--domain: empty".into()),
            "--per-second" => {
                limits.per_second =
                    value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("--per-second: {value:?} is not a positive number")
                    })?;
            }
            "--exhausted" => {
                // It goes into a CEL condition between quotes: a plain token only.
                let plain = !value.is_empty()
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !plain {
                    return Err(format!(
                        "--exhausted: {value:?} is not a key of letters, digits, '-', '_' and '.'"
                    ));
                }
                limits.exhausted = Some(value.clone());
            }
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    let listen = listen.ok_or_else(|| format!("--listen is required\n{USAGE}"))?;
    Ok(Command::Run(Config { listen, limits }))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse(&args).and_then(|command| match command {
        Command::Help => {
            println!("{USAGE}");
            Ok(())
        }
        Command::Run(config) => run(&config),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-rls: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config) -> Result<(), String> {
    let limiter = Limiter::new(&config.limits)?;
    // One thread, as Envoy's one worker: the runner pins both to one CPU,
    // and more threads there would only take turns.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(config.listen, limiter))
}

async fn serve(listen: SocketAddr, limiter: Limiter) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    // Bound, so connections queue from here on: ready.
    println!("bench-rls: listening on {bound}");
    // Envoy's calls are small frames on one connection: Nagle's algorithm
    // would hold each answer for the previous one's acknowledgement.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .serve_with_incoming(RateLimitService::new(limiter), incoming)
        .await
        .map_err(|e| format!("serving on {bound}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn reads_the_flags() {
        let command = parse(&args(&[
            "--listen",
            "127.0.0.1:8081",
            "--per-second",
            "5",
            "--exhausted",
            "bench-rls-exhausted",
        ]))
        .unwrap();
        assert_eq!(
            command,
            Command::Run(Config {
                listen: "127.0.0.1:8081".parse().unwrap(),
                limits: Limits {
                    domain: "bench".into(),
                    per_second: 5,
                    exhausted: Some("bench-rls-exhausted".into()),
                },
            })
        );
        assert_eq!(parse(&args(&["--help"])).unwrap(), Command::Help);
    }

    #[test]
    fn refuses_bad_flags_with_a_reason() {
        for (bad, says) in [
            (&["--per-second", "5"][..], "--listen is required"),
            (&["--listen", "localhost"], "not an address"),
            (
                &["--listen", "127.0.0.1:1", "--per-second", "0"],
                "positive",
            ),
            (
                &["--listen", "127.0.0.1:1", "--exhausted", "a' || true"],
                "--exhausted",
            ),
            (&["--listen"], "needs a value"),
            (&["--port", "1"], "unknown argument"),
        ] {
            let error = parse(&args(bad)).unwrap_err();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
    }
}
