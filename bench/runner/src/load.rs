//! The benchmark's load generator: plain HTTP/1.1 keep-alive over blocking
//! sockets, one thread per connection, with no dependency of its own.
//!
//! Two shapes. [`closed_loop`] sends as fast as the answers come back, for
//! requests per second and Envoy CPU per request. [`fixed_rate`] offers a
//! fixed load for latency, and measures each request from the moment it
//! *should* have been sent, like wrk2 and `oha --latency-correction`: a slow
//! answer that delays the requests behind it counts against all of them
//! (no coordinated omission). Every answer's status is checked.
//!
//! Each request carries a key drawn at random from a set, which no
//! off-the-shelf load generator does per request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Result;

/// Requests to draw from: one per key, pre-built.
#[derive(Clone)]
pub struct Requests {
    pub addr: SocketAddr,
    built: Arc<Vec<Vec<u8>>>,
    /// The status every answer must have.
    pub expect: u16,
}

impl Requests {
    /// `GET path` with `x-api-key: <key>` for each key (none if `keys` is empty).
    pub fn new(addr: SocketAddr, path: &str, keys: &[String], expect: u16) -> Self {
        let built = if keys.is_empty() {
            vec![request_bytes(path, None)]
        } else {
            keys.iter().map(|k| request_bytes(path, Some(k))).collect()
        };
        Self {
            addr,
            built: Arc::new(built),
            expect,
        }
    }

    fn pick(&self, rng: &mut Rng) -> &[u8] {
        let i = rng.below(self.built.len());
        self.built.get(i).map_or(&[][..], Vec::as_slice)
    }
}

/// `GET path`, with `x-api-key: <key>` if there is one, as it goes on the wire.
pub fn request_bytes(path: &str, key: Option<&str>) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nhost: bench\r\n");
    if let Some(key) = key {
        r.push_str("x-api-key: ");
        r.push_str(key);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// xorshift64*: enough to spread keys, and no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        usize::try_from(x % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }
}

/// One keep-alive connection.
pub struct Conn {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// An answer: status, the headers (lower-case names) and the body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(Duration::from_secs(30))))
            .map_err(|e| format!("socket options: {e}"))?;
        let writer = stream
            .try_clone()
            .map_err(|e| format!("socket clone: {e}"))?;
        Ok(Self {
            addr,
            reader: BufReader::with_capacity(16 * 1024, stream),
            writer,
        })
    }

    /// Sends one request (bytes as they go on the wire) and reads its answer,
    /// reconnecting once if the server had closed the connection.
    pub fn exchange(&mut self, request: &[u8]) -> Result<Answer> {
        match self.try_exchange(request) {
            Ok(answer) => Ok(answer),
            Err(_) => {
                *self = Self::open(self.addr)?;
                self.try_exchange(request)
            }
        }
    }

    fn try_exchange(&mut self, request: &[u8]) -> Result<Answer> {
        self.writer
            .write_all(request)
            .map_err(|e| format!("send to {}: {e}", self.addr))?;
        let answer = self.read_answer()?;
        if answer
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            *self = Self::open(self.addr)?;
        }
        Ok(answer)
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| format!("read from {}: {e}", self.addr))?;
        if n == 0 {
            return Err(format!("{} closed the connection", self.addr));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn read_answer(&mut self) -> Result<Answer> {
        let status_line = self.line()?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let line = self.line()?;
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        let chunked = answer
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if chunked {
            loop {
                let size_line = self.line()?;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap_or(""), 16)
                    .map_err(|_| format!("bad chunk size {size_line:?}"))?;
                if size == 0 {
                    while !self.line()?.is_empty() {}
                    break;
                }
                self.read_body(&mut answer.body, size)?;
                self.line()?;
            }
        } else if let Some(len) = answer.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| format!("bad content-length {len:?}"))?;
            let mut body = Vec::new();
            self.read_body(&mut body, len)?;
            answer.body = body;
        }
        Ok(answer)
    }

    fn read_body(&mut self, into: &mut Vec<u8>, len: usize) -> Result {
        let start = into.len();
        into.resize(start + len, 0);
        self.reader
            .read_exact(into.get_mut(start..).unwrap_or_default())
            .map_err(|e| format!("read body from {}: {e}", self.addr))
    }
}

/// What a closed-loop run did.
pub struct ClosedRun {
    pub requests: usize,
    pub elapsed: Duration,
}

impl ClosedRun {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The first wrong status seen, kept for the error message.
type Mismatch = Arc<Mutex<Option<String>>>;

fn check(answer: &Answer, expect: u16, mismatch: &Mismatch) -> bool {
    if answer.status == expect {
        return true;
    }
    if let Ok(mut first) = mismatch.lock() {
        first.get_or_insert_with(|| {
            format!(
                "expected {expect}, got {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            )
        });
    }
    false
}

fn joined<T>(handles: Vec<std::thread::JoinHandle<Result<T>>>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(
            handle
                .join()
                .map_err(|_| "a load thread panicked".to_owned())??,
        );
    }
    Ok(out)
}

fn first_mismatch(mismatch: &Mismatch) -> Result {
    match mismatch.lock().ok().and_then(|m| m.clone()) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// `total` requests over `connections` connections, each sent as soon as the
/// previous answer on its connection arrived.
pub fn closed_loop(requests: &Requests, total: usize, connections: usize) -> Result<ClosedRun> {
    let sent = Arc::new(AtomicUsize::new(0));
    let mismatch: Mismatch = Arc::default();
    let started = Instant::now();
    let handles: Vec<_> = (0..connections)
        .map(|c| {
            let (requests, sent, mismatch) = (requests.clone(), sent.clone(), mismatch.clone());
            std::thread::spawn(move || -> Result<()> {
                let mut conn = Conn::open(requests.addr)?;
                let mut rng = Rng::new(c as u64 + 1);
                while sent.fetch_add(1, Ordering::Relaxed) < total {
                    let answer = conn.exchange(requests.pick(&mut rng))?;
                    check(&answer, requests.expect, &mismatch);
                }
                Ok(())
            })
        })
        .collect();
    joined(handles)?;
    let elapsed = started.elapsed();
    first_mismatch(&mismatch)?;
    Ok(ClosedRun {
        requests: total,
        elapsed,
    })
}

/// Latencies of a fixed-rate run, in microseconds, sorted.
pub struct Latencies(pub Vec<u64>);

impl Latencies {
    pub fn quantile(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = ((self.0.len() as f64) * q).ceil() as usize;
        let i = rank.clamp(1, self.0.len()) - 1;
        self.0.get(i).copied().unwrap_or(0) as f64
    }
}

/// Offers `rate` requests per second for `duration` over `connections`
/// connections: request *i* is due at `start + i / rate` and its latency runs
/// from then, however late it could actually be sent.
pub fn fixed_rate(
    requests: &Requests,
    rate: u32,
    duration: Duration,
    connections: usize,
) -> Result<Latencies> {
    let mismatch: Mismatch = Arc::default();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let total = (duration.as_secs_f64() * f64::from(rate)) as usize;
    let start = Instant::now() + Duration::from_millis(20);
    let handles: Vec<_> = (0..connections)
        .map(|c| {
            let (requests, mismatch) = (requests.clone(), mismatch.clone());
            std::thread::spawn(move || -> Result<Vec<u64>> {
                let mut conn = Conn::open(requests.addr)?;
                let mut rng = Rng::new(c as u64 + 101);
                let mut out = Vec::with_capacity(total / connections.max(1) + 1);
                let mut i = c;
                while i < total {
                    let due = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
                    wait_until(due);
                    let answer = conn.exchange(requests.pick(&mut rng))?;
                    let took = Instant::now().saturating_duration_since(due);
                    check(&answer, requests.expect, &mismatch);
                    out.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
                    i += connections;
                }
                Ok(out)
            })
        })
        .collect();
    let mut all: Vec<u64> = joined(handles)?.into_iter().flatten().collect();
    first_mismatch(&mismatch)?;
    all.sort_unstable();
    Ok(Latencies(all))
}

/// Sleeps most of the way and yields for the rest, so that a request is not
/// sent late by the sleep's own slack (which would count as latency).
pub fn wait_until(due: Instant) {
    const SPIN: Duration = Duration::from_micros(200);
    let now = Instant::now();
    if due > now + SPIN {
        std::thread::sleep(due - now - SPIN);
    }
    while Instant::now() < due {
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_rank_not_an_interpolation() {
        let l = Latencies((1..=100).collect());
        assert_eq!(l.quantile(0.5), 50.0);
        assert_eq!(l.quantile(0.99), 99.0);
        assert_eq!(l.quantile(1.0), 100.0);
        assert!(Latencies(Vec::new()).quantile(0.5).is_nan());
    }

    #[test]
    fn the_rng_covers_its_range() {
        let mut rng = Rng::new(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            if let Some(s) = seen.get_mut(rng.below(10)) {
                *s = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
    }
}
