//! Reading what the filter's counting build (`host-call-counts`, see
//! `host::counts` in `filter/src/host.rs`) counted, from Envoy's stats: the
//! end-to-end test asserts the counts and the benchmark reports them, and
//! both read the same stat names the same way.
//!
//! The build gives Envoy one count per request under
//! `tollgate_test.host_calls.<outcome>.<kind>.<n>`: how many requests with
//! that outcome made `n` calls of that kind (`total` for all kinds).

use std::collections::BTreeMap;

/// `outcome` → `kind` → calls made → requests.
pub type Histogram = BTreeMap<String, BTreeMap<String, BTreeMap<u64, u64>>>;

/// The name every counting stat has before its outcome.
pub const STAT_PREFIX: &str = "tollgate_test.host_calls.";

/// The counts in `stats`, Envoy admin's `name: value` lines (other stats
/// are skipped; a counting stat that does not read is an error).
pub fn parse(stats: &str) -> Result<Histogram, String> {
    let mut out = Histogram::new();
    for line in stats.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        let Some(rest) = name.split(STAT_PREFIX).nth(1) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('.').collect();
        let unexpected = || format!("unexpected counting stat {line:?}");
        let [outcome, kind, calls] = parts[..] else {
            return Err(unexpected());
        };
        let (Ok(calls), Ok(requests)) = (calls.parse::<u64>(), value.trim().parse::<u64>()) else {
            return Err(unexpected());
        };
        if requests > 0 {
            out.entry(outcome.to_owned())
                .or_default()
                .entry(kind.to_owned())
                .or_default()
                .insert(calls, requests);
        }
    }
    Ok(out)
}

/// What was counted between two readings.
pub fn since(before: &Histogram, after: &Histogram) -> Histogram {
    let mut out = Histogram::new();
    for (outcome, kinds) in after {
        for (kind, calls) in kinds {
            for (n, requests) in calls {
                let earlier = before
                    .get(outcome)
                    .and_then(|k| k.get(kind))
                    .and_then(|c| c.get(n))
                    .copied()
                    .unwrap_or(0);
                if *requests > earlier {
                    out.entry(outcome.clone())
                        .or_default()
                        .entry(kind.clone())
                        .or_default()
                        .insert(*n, requests - earlier);
                }
            }
        }
    }
    out
}

/// Requests by total calls, for one outcome.
pub fn totals(histogram: &Histogram, outcome: &str) -> BTreeMap<u64, u64> {
    histogram
        .get(outcome)
        .and_then(|kinds| kinds.get("total"))
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counts_and_what_changed_between_two_readings() {
        let before = parse(
            "wasmcustom.tollgate_test.host_calls.allowed.total.14: 10\n\
             wasmcustom.tollgate_test.host_calls.allowed.total.16: 1\n\
             wasmcustom.tollgate.config_version: 3\n",
        )
        .unwrap();
        let after = parse(
            "wasmcustom.tollgate_test.host_calls.allowed.total.14: 13\n\
             wasmcustom.tollgate_test.host_calls.allowed.total.16: 1\n\
             wasmcustom.tollgate_test.host_calls.allowed.clock.1: 13\n\
             wasmcustom.tollgate_test.host_calls.invalid_api_key.total.4: 3\n\
             wasmcustom.tollgate_test.host_calls.missing_api_key.total.4: 0\n",
        )
        .unwrap();
        let between = since(&before, &after);
        assert_eq!(totals(&between, "allowed"), BTreeMap::from([(14, 3)]));
        assert_eq!(between["allowed"]["clock"], BTreeMap::from([(1, 13)]));
        assert_eq!(
            totals(&between, "invalid_api_key"),
            BTreeMap::from([(4, 3)])
        );
        assert!(!between.contains_key("missing_api_key"));
        assert!(parse("wasmcustom.tollgate_test.host_calls.allowed.14: 1").is_err());
    }
}
