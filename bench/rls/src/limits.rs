//! The service's one decision: a `RateLimitRequest` in, a
//! `RateLimitResponse` out, with the counting done by limitador, as a rate
//! limit service built on it would do it. No gRPC here, so that the tests
//! can check what Envoy would be told without a server.
//!
//! The request's domain is limitador's namespace; each descriptor's entries
//! are the variables its limits see. Two limits, both over descriptor key
//! [`KEY`]: one per second for every value (a counter per value, which
//! limitador calls a qualified counter), and optionally one request an hour
//! for one value, the exhausted key the benchmark proves refusals with.

use std::collections::HashMap;

use limitador::counter::Counter;
use limitador::limit::{Context, Expression, Limit, Namespace, Predicate};
use limitador::RateLimiter;

use crate::proto::{Code, DescriptorStatus, RateLimit, RateLimitRequest, RateLimitResponse, Unit};

/// The descriptor key Envoy's `request_headers` action fills from `x-api-key`.
pub const KEY: &str = "api_key";

/// How many per-key counters limitador keeps before evicting the least
/// used: above the benchmark's largest key count (a million), so that no
/// counter it uses is ever dropped and started again.
const COUNTERS: u64 = 2_000_000;

/// What the limits are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The domain Envoy's filter sends; limits in any other are not applied.
    pub domain: String,
    /// Requests per second for each value of [`KEY`].
    pub per_second: u64,
    /// A value of [`KEY`] allowed one request an hour.
    pub exhausted: Option<String>,
}

pub struct Limiter {
    limiter: RateLimiter,
}

impl Limiter {
    pub fn new(limits: &Limits) -> Result<Self, String> {
        let limiter = RateLimiter::new(COUNTERS);
        let per_key = Expression::parse(KEY).map_err(|e| format!("{KEY}: {e}"))?;
        let mut per_second = Limit::new(
            limits.domain.as_str(),
            limits.per_second,
            1,
            Vec::<Predicate>::new(),
            [per_key],
        );
        per_second.set_name("per-second".into());
        limiter.add_limit(per_second);
        if let Some(key) = &limits.exhausted {
            // The value is checked to be a plain token (see main.rs), so it
            // cannot break out of the quotes.
            let only = Predicate::parse(format!("{KEY} == '{key}'"))
                .map_err(|e| format!("--exhausted {key:?}: {e}"))?;
            let mut hourly = Limit::new(
                limits.domain.as_str(),
                1,
                3_600,
                [only],
                Vec::<Expression>::new(),
            );
            hourly.set_name("exhausted".into());
            limiter.add_limit(hourly);
        }
        Ok(Self { limiter })
    }

    /// Counts the request against every descriptor's limits. Over the limit
    /// if any descriptor is, as the protocol has it; each descriptor's status
    /// is its most restrictive limit, from which Envoy writes the
    /// `X-RateLimit-*` headers.
    pub fn should_rate_limit(
        &self,
        request: &RateLimitRequest,
    ) -> Result<RateLimitResponse, String> {
        let namespace = Namespace::from(request.domain.as_str());
        let hits = u64::from(request.hits_addend.max(1));
        let mut overall = Code::Ok;
        let mut statuses = Vec::with_capacity(request.descriptors.len());
        for descriptor in &request.descriptors {
            let values: HashMap<String, String> = descriptor
                .entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect();
            let result = self
                .limiter
                .check_rate_limited_and_update(&namespace, &Context::from(values), hits)
                .map_err(|e| e.to_string())?;
            let code = if result.limited {
                overall = Code::OverLimit;
                Code::OverLimit
            } else {
                Code::Ok
            };
            statuses.push(status(code, &result.counters));
        }
        Ok(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
        })
    }
}

/// A descriptor's status from the counter with the least left.
fn status(code: Code, counters: &[Counter]) -> DescriptorStatus {
    let tightest = counters
        .iter()
        .min_by_key(|c| c.remaining().unwrap_or_else(|| c.max_value()));
    DescriptorStatus {
        code: code as i32,
        current_limit: tightest.map(|c| RateLimit {
            name: c.limit().name().unwrap_or_default().to_owned(),
            requests_per_unit: u32::try_from(c.max_value()).unwrap_or(u32::MAX),
            unit: Unit::of_window(c.window().as_secs()) as i32,
        }),
        limit_remaining: tightest
            .and_then(Counter::remaining)
            .map_or(0, |r| u32::try_from(r).unwrap_or(u32::MAX)),
        duration_until_reset: tightest.and_then(Counter::expires_in).map(Into::into),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Entry, RateLimitDescriptor};

    fn limiter() -> Limiter {
        Limiter::new(&Limits {
            domain: "bench".into(),
            per_second: 1_000_000_000,
            exhausted: Some("spent".into()),
        })
        .unwrap()
    }

    fn request(domain: &str, keys: &[&str]) -> RateLimitRequest {
        RateLimitRequest {
            domain: domain.into(),
            descriptors: keys
                .iter()
                .map(|k| RateLimitDescriptor {
                    entries: vec![Entry {
                        key: KEY.into(),
                        value: (*k).into(),
                    }],
                })
                .collect(),
            hits_addend: 0,
        }
    }

    #[test]
    fn an_ordinary_key_is_admitted_with_its_per_second_limit() {
        let limiter = limiter();
        for _ in 0..3 {
            let response = limiter
                .should_rate_limit(&request("bench", &["k1"]))
                .unwrap();
            assert_eq!(response.overall_code, Code::Ok as i32);
            let status = &response.statuses[0];
            let limit = status.current_limit.as_ref().unwrap();
            assert_eq!(limit.requests_per_unit, 1_000_000_000);
            assert_eq!(limit.unit, Unit::Second as i32);
            assert!(status.limit_remaining > 999_999_990);
        }
    }

    #[test]
    fn the_exhausted_key_is_admitted_once_then_refused_with_its_hourly_limit() {
        let limiter = limiter();
        let first = limiter
            .should_rate_limit(&request("bench", &["spent"]))
            .unwrap();
        assert_eq!(first.overall_code, Code::Ok as i32);
        assert_eq!(first.statuses[0].limit_remaining, 0);
        let second = limiter
            .should_rate_limit(&request("bench", &["spent"]))
            .unwrap();
        assert_eq!(second.overall_code, Code::OverLimit as i32);
        let status = &second.statuses[0];
        assert_eq!(status.code, Code::OverLimit as i32);
        let limit = status.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (1, Unit::Hour as i32)
        );
        assert_eq!(limit.name, "exhausted");
        let reset = status.duration_until_reset.as_ref().unwrap();
        assert!((1..=3_600).contains(&reset.seconds));
        // Another key is not affected.
        let other = limiter
            .should_rate_limit(&request("bench", &["k2"]))
            .unwrap();
        assert_eq!(other.overall_code, Code::Ok as i32);
    }

    #[test]
    fn any_descriptor_over_its_limit_makes_the_whole_request_over() {
        let limiter = limiter();
        limiter
            .should_rate_limit(&request("bench", &["spent"]))
            .unwrap();
        let response = limiter
            .should_rate_limit(&request("bench", &["k1", "spent"]))
            .unwrap();
        assert_eq!(response.overall_code, Code::OverLimit as i32);
        let codes: Vec<i32> = response.statuses.iter().map(|s| s.code).collect();
        assert_eq!(codes, [Code::Ok as i32, Code::OverLimit as i32]);
    }

    #[test]
    fn other_domains_and_other_descriptor_keys_are_not_limited() {
        let limiter = limiter();
        for _ in 0..2 {
            let response = limiter
                .should_rate_limit(&request("other", &["spent"]))
                .unwrap();
            assert_eq!(response.overall_code, Code::Ok as i32);
            assert_eq!(response.statuses[0].current_limit, None);
        }
        let mut unkeyed = request("bench", &["spent"]);
        unkeyed.descriptors[0].entries[0].key = "path".into();
        let response = limiter.should_rate_limit(&unkeyed).unwrap();
        assert_eq!(response.overall_code, Code::Ok as i32);
    }
}
