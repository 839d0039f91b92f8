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
    Ok(since(&before, &counted(envoy)?))
}

/// Every request counted so far, from Envoy's stats: the counting build's
/// `tollgate_test.host_calls.<outcome>.total.<calls>`.
fn counted(envoy: &Envoy) -> Result<Counts> {
    let text = envoy.stats_text("tollgate_test.host_calls")?;
    let mut out = Counts::new();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        let Some(rest) = name.split("tollgate_test.host_calls.").nth(1) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('.').collect();
        let [outcome, "total", calls] = parts[..] else {
            continue;
        };
        let (Ok(calls), Ok(requests)) = (calls.parse::<u64>(), value.trim().parse::<u64>()) else {
            return Err(format!("host calls: unreadable stat {line:?}"));
        };
        if requests > 0 {
            out.entry(outcome.to_owned())
                .or_default()
                .insert(calls, requests);
        }
    }
    Ok(out)
}

/// What was counted between two readings.
fn since(before: &Counts, after: &Counts) -> Counts {
    let mut out = Counts::new();
    for (outcome, calls) in after {
        for (n, requests) in calls {
            let earlier = before
                .get(outcome)
                .and_then(|c| c.get(n))
                .copied()
                .unwrap_or(0);
            if *requests > earlier {
                out.entry(outcome.clone())
                    .or_default()
                    .insert(*n, requests - earlier);
            }
        }
    }
    out
}

/// `14 ×3, 16 ×1`: calls per request, and how many requests made them.
pub fn describe(calls: &BTreeMap<u64, u64>) -> String {
    calls
        .iter()
        .map(|(n, requests)| format!("{n} ×{requests}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_was_counted_between_the_readings() {
        let reading = |pairs: &[(&str, u64, u64)]| {
            let mut counts = Counts::new();
            for (outcome, calls, requests) in pairs {
                counts
                    .entry((*outcome).to_owned())
                    .or_default()
                    .insert(*calls, *requests);
            }
            counts
        };
        let before = reading(&[("allowed", 14, 10), ("allowed", 16, 1)]);
        let after = reading(&[
            ("allowed", 14, 13),
            ("allowed", 16, 1),
            ("invalid_api_key", 4, 3),
        ]);
        let between = since(&before, &after);
        assert_eq!(
            between,
            reading(&[("allowed", 14, 3), ("invalid_api_key", 4, 3)])
        );
        assert_eq!(describe(&between["allowed"]), "14 ×3");
    }
}
