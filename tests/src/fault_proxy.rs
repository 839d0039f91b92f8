//! A fault proxy between Envoy and the control plane: a loopback port that
//! passes HTTP/1.1 through to the control plane, or breaks it the way a
//! network or a broken middlebox would, switched while traffic flows.
//!
//! The faults that reach the control plane first (a truncated, garbled or
//! failed answer, or a huge one, to a request it did apply; a request
//! delivered after Envoy gave up on it) are the ones that test that a usage
//! batch is counted once however often it is sent. Each connection reads
//! one fault when it opens, and switching aborts every open connection, so
//! no kept-alive connection carries the old behaviour on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes both ways, untouched.
    Pass,
    /// Holds the request this long, then passes it on, whether or not
    /// Envoy still waits.
    Delay(Duration),
    /// Resets the connection as soon as it opens.
    Reset,
    /// Passes the request on, then sends half the answer's body under the
    /// whole one's length, and closes.
    Truncate,
    /// Passes the request on, then answers 200 with bytes that are not JSON.
    Garbage,
    /// Passes the request on, then answers 500.
    ServerError,
    /// Passes the request on, then answers 200 with a body of this many bytes.
    Huge(usize),
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    pub port: u16,
    fault: Arc<Mutex<Fault>>,
    /// Bumped on every switch; open connections end when it moves.
    switched: watch::Sender<u64>,
    faulted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port, passing through to `target_port`.
    pub async fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the fault proxy");
        let port = listener.local_addr().expect("its address").port();
        let fault = Arc::new(Mutex::new(Fault::Pass));
        let (switched, _) = watch::channel(0);
        let faulted = Arc::new(AtomicU64::new(0));
        let task = {
            let (fault, switched, faulted) = (fault.clone(), switched.clone(), faulted.clone());
            tokio::spawn(async move {
                while let Ok((downstream, _)) = listener.accept().await {
                    let now = *fault.lock().unwrap_or_else(PoisonError::into_inner);
                    let mut moved = switched.subscribe();
                    let faulted = faulted.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            () = serve(downstream, target_port, now, &faulted) => {}
                            _ = moved.changed() => {}
                        }
                    });
                }
            })
        };
        Self {
            port,
            fault,
            switched,
            faulted,
            task,
        }
    }

    /// From now on, `fault`; open connections are cut.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = fault;
        self.switched.send_modify(|n| *n += 1);
    }

    /// How many requests a fault other than [`Fault::Pass`] was applied to.
    pub fn faulted(&self) -> u64 {
        self.faulted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.switched.send_modify(|n| *n += 1);
    }
}

/// One connection from Envoy, under `fault`.
async fn serve(mut downstream: TcpStream, target_port: u16, fault: Fault, faulted: &AtomicU64) {
    let connect = || TcpStream::connect(("127.0.0.1", target_port));
    match fault {
        Fault::Pass => {
            if let Ok(mut upstream) = connect().await {
                let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
            }
        }
        Fault::Delay(hold) => {
            // Read what Envoy sends first, so that it reaches the control
            // plane late even when Envoy has given up and closed.
            let Some(request) = read_message(&mut downstream).await else {
                return;
            };
            faulted.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(hold).await;
            if let Ok(mut upstream) = connect().await {
                let _ = upstream.write_all(&request).await;
                let _ = read_message(&mut upstream).await;
            }
        }
        Fault::Reset => {
            faulted.fetch_add(1, Ordering::Relaxed);
            // SO_LINGER 0: closing sends RST instead of FIN.
            let _ = downstream.set_zero_linger();
        }
        Fault::Truncate | Fault::Garbage | Fault::ServerError | Fault::Huge(_) => loop {
            let Some(request) = read_message(&mut downstream).await else {
                return;
            };
            let Ok(mut upstream) = connect().await else {
                return;
            };
            if upstream.write_all(&request).await.is_err() {
                return;
            }
            let Some(answer) = read_message(&mut upstream).await else {
                return;
            };
            faulted.fetch_add(1, Ordering::Relaxed);
            let body_at = head_end(&answer).unwrap_or(answer.len());
            let written = match fault {
                Fault::Truncate => {
                    let cut = body_at + (answer.len() - body_at) / 2;
                    let _ = downstream.write_all(&answer[..cut]).await;
                    return;
                }
                Fault::Garbage => {
                    let body = b"\x00\xff{\"not\": json at all";
                    downstream.write_all(&reply("200 OK", body)).await
                }
                Fault::ServerError => {
                    let body = b"{\"error\": \"the fault proxy says no\"}";
                    downstream
                        .write_all(&reply("500 Internal Server Error", body))
                        .await
                }
                Fault::Huge(size) => write_huge(&mut downstream, size).await,
                Fault::Pass | Fault::Delay(_) | Fault::Reset => return,
            };
            if written.is_err() {
                return;
            }
        },
    }
}

fn reply(status: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

async fn write_huge(downstream: &mut TcpStream, size: usize) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n\r\n"
    );
    downstream.write_all(head.as_bytes()).await?;
    let chunk = vec![b' '; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        downstream.write_all(&chunk[..n]).await?;
        left -= n;
    }
    Ok(())
}

/// Where a message's head ends (after its blank line).
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// One HTTP/1.1 message with a `content-length` body (or none), whole;
/// `None` if the peer closes first. Envoy and the control plane send no
/// chunked bodies to each other here.
async fn read_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(end) = head_end(&bytes) {
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if bytes.len() >= end + length {
                bytes.truncate(end + length);
                return Some(bytes);
            }
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
}
