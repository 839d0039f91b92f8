//! Host calls per request at every key scale the benchmark loads, counted by
//! the filter's `host-call-counts` build (`host::counts` in
//! `filter/src/host.rs`). Issue 23 proves scale by counts, which are the same
//! however many keys are loaded; `tests/tests/host_calls.rs` asserts them
//! exactly up to 100k keys, all CI's time allows, and the benchmark, which
//! loads a million keys anyway, reports them at each of its scales.
//!
//! One more Envoy (one worker, as every arm) runs the counting build from
//! the shipped template. At each scale, once it has the new config version
//! (which empties every VM's memo, so each scale starts alike), it is sent
//! the same requests, 3 ms apart so that each reads the config version: a
//! key that was never issued, then per-Envoy keys (whose limits need no
//! fleet share, so a newcomer admits them at once), one repeatedly and
//! others once each. Each outcome's histogram of calls is the scale's
//! figure. Refusals for an exhausted key are left out: whether its one
//! request an hour is still this Envoy's to admit depends on the fleet's
//! shares, not on the filter.

use std::collections::BTreeMap;
use std::time::Duration;

use tollgate_launch::host_calls::{self, Histogram};

use crate::load::{request_bytes, Conn};
use crate::{Envoy, Result};

/// Requests this far apart each read the config version.
const PACE: Duration = Duration::from_millis(3);
/// Repeats of the unknown key and of the first per-Envoy key.
const REPEATS: usize = 4;
/// Per-Envoy keys sent once each, after the first.
const COLD_KEYS: usize = 5;

/// Outcome (`allowed`, `invalid_api_key`) → calls per request → requests.
pub type Counts = BTreeMap<String, BTreeMap<u64, u64>>;

/// Sends this scale's requests through `envoy` (running the counting build)
/// and returns what they counted.
pub fn count(envoy: &Envoy, unknown_key: &str, per_envoy_keys: &[String]) -> Result<Counts> {
    let before = counted(envoy)?;
    let mut conn = Conn::open(envoy.listener)?;
    let mut send = |key: &str, status: u16| -> Result {
        std::thread::sleep(PACE);
        let answer = conn.exchange(&request_bytes("/", Some(key)))?;
        if answer.status == status {
            Ok(())
        } else {
            Err(format!(
                "host calls: expected {status}, the counting Envoy answered {}",
                answer.status
            ))
        }
    };
    for _ in 0..REPEATS {
        send(unknown_key, 401)?;
    }
    let (first, cold) = per_envoy_keys
        .split_first()
        .ok_or("host calls: no per-Envoy key")?;
    for _ in 0..REPEATS {
        send(first, 200)?;
    }
    for key in cold.iter().take(COLD_KEYS) {
        send(key, 200)?;
    }
    // Each request is counted as its stream ends, after the answer.
    std::thread::sleep(Duration::from_millis(100));
    let between = host_calls::since(&before, &counted(envoy)?);
    Ok(between
        .keys()
        .map(|outcome| (outcome.clone(), host_calls::totals(&between, outcome)))
        .collect())
}

/// Every request counted so far, from Envoy's stats.
fn counted(envoy: &Envoy) -> Result<Histogram> {
    let text = envoy.stats_text("tollgate_test.host_calls")?;
    host_calls::parse(&text).map_err(|e| format!("host calls: {e}"))
}

/// `14 ×3, 16 ×1`: calls per request, and how many requests made them.
pub fn describe(calls: &BTreeMap<u64, u64>) -> String {
    calls
        .iter()
        .map(|(n, requests)| format!("{n} ×{requests}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `allowed 14 ×3, 16 ×1; invalid_api_key 4 ×3`: [`describe`] per outcome.
pub fn describe_outcomes(counts: &Counts) -> String {
    counts
        .iter()
        .map(|(outcome, calls)| format!("{outcome} {}", describe(calls)))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_then_requests_in_order_of_calls() {
        assert_eq!(
            describe(&BTreeMap::from([(16, 1), (14, 3)])),
            "14 ×3, 16 ×1"
        );
    }
}
