//! Turning a [`Decision`](crate::decide::Decision) into what the client and the upstream see.
//!
//! Rate-limit headers follow the IETF httpapi draft (`RateLimit-Policy` and
//! `RateLimit`, one item per policy) plus the widely used `X-RateLimit-*` trio,
//! which describes the most constrained policy. Denials are problem+json.
//!
//! A token bucket of `max` per `window_seconds` with a burst is not a quota
//! per window, so it is described by what a client can observe of it (see
//! [`bucket_status`]): `q` is the burst, `w` the seconds it takes to refill
//! from empty, `r` the whole tokens in it and `t` the seconds until it is
//! full again. Then `r ≤ q` and `t ≤ w` always hold, and a bucket without a
//! burst reads exactly as "`max` per `window_seconds`".

use crate::bucket::{ceil_seconds, fill_ms, Bucket, Meter};
use crate::config::Limit;
use crate::decide::{Allowed, Denied, DenyReason, PolicyStatus};
use crate::json::write::{push_decimal, push_json_string};

/// Headers the filter sets on an allowed request before it goes upstream.
pub const UPSTREAM_TENANT: &str = "x-tenant-id";
pub const UPSTREAM_KEY_ID: &str = "x-api-key-id";
pub const UPSTREAM_PLAN: &str = "x-plan";
/// Client-sent headers that are always removed: identity is only ever the filter's word.
pub const STRIPPED_REQUEST_HEADERS: [&str; 3] = [UPSTREAM_TENANT, UPSTREAM_KEY_ID, UPSTREAM_PLAN];

/// Identity for the upstream; an anonymous request carries only its plan.
pub fn upstream_headers(allowed: &Allowed) -> Vec<(&'static str, &str)> {
    let mut out = Vec::with_capacity(3);
    if let Some(tenant) = &allowed.tenant_id {
        out.push((UPSTREAM_TENANT, &**tenant));
    }
    if let Some(key) = &allowed.key_id {
        out.push((UPSTREAM_KEY_ID, &**key));
    }
    out.push((UPSTREAM_PLAN, &*allowed.plan_name));
    out
}

/// How a limit's bucket appears in the headers.
///
/// `q` is the burst, not `max`: a full bucket holds the burst, so with
/// `q = max` a client would read `r > q` and compute a negative use.
/// `w` is then the time the bucket takes to refill from empty,
/// `burst × window_seconds ÷ max` seconds, so `q / w` is still the refill
/// rate. It is rounded up: `w` must be whole seconds (and never 0), and a
/// client pacing itself at `q / w` then never outruns the refill; rounding
/// down would overstate the rate (burst 4 at 3 per second would read 4 per
/// second). `t` is rounded the same way from the same clock, so `t ≤ w`.
/// With no burst (burst == max) this is `q = max`, `w = window_seconds`.
pub fn bucket_status(limit: &Limit, meter: impl Into<Meter>, bucket: &Bucket) -> PolicyStatus {
    let meter = meter.into();
    PolicyStatus {
        name: limit.name.clone(),
        // The whole limit, whatever this Envoy's share of it: `q` and `w`
        // describe the policy, `r` and `t` this Envoy's part of it.
        quota: limit.max_tokens,
        window_seconds: ceil_seconds(fill_ms(limit)).max(1),
        // A bucket is refilled (capped at its burst) before it is looked at;
        // the `min` makes `r ≤ q` this function's promise, not the caller's.
        remaining: bucket.remaining(meter).min(limit.max_tokens),
        reset_seconds: ceil_seconds(bucket.ms_until_full(meter)),
    }
}

/// The names of [`RateLimitHeaders`], in order.
const RATE_LIMIT_HEADERS: [&str; 5] = [
    "ratelimit-policy",
    "ratelimit",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
];

/// `RateLimit-Policy`, `RateLimit` and `X-RateLimit-*` for some policies
/// (none if there are none). They are written on every admitted request,
/// so all five values live in one string: one allocation, no `format!`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    text: String,
    /// Where each value of [`RATE_LIMIT_HEADERS`] ends in `text`.
    ends: [usize; 5],
}

impl RateLimitHeaders {
    pub fn of(policies: &[PolicyStatus]) -> Self {
        let Some(tightest) = policies.iter().min_by(|a, b| {
            a.remaining
                .cmp(&b.remaining)
                .then(b.reset_seconds.cmp(&a.reset_seconds))
        }) else {
            return Self::default();
        };
        let mut text = String::with_capacity(64 * policies.len() + 32);
        let mut ends = [0; 5];
        let mut slots = ends.iter_mut();
        let mut end = |text: &String| {
            if let Some(slot) = slots.next() {
                *slot = text.len();
            }
        };
        // Each policy as `"name";a=1;b=2`, comma-separated.
        let items = |text: &mut String, [a, b]: [&str; 2], of: fn(&PolicyStatus) -> [u64; 2]| {
            for (i, p) in policies.iter().enumerate() {
                let [x, y] = of(p);
                if i > 0 {
                    text.push_str(", ");
                }
                text.push('"');
                text.push_str(&p.name);
                text.push_str("\";");
                text.push_str(a);
                text.push('=');
                push_decimal(text, x);
                text.push(';');
                text.push_str(b);
                text.push('=');
                push_decimal(text, y);
            }
        };
        items(&mut text, ["q", "w"], |p| [p.quota, p.window_seconds]);
        end(&text);
        items(&mut text, ["r", "t"], |p| [p.remaining, p.reset_seconds]);
        end(&text);
        for n in [tightest.quota, tightest.remaining, tightest.reset_seconds] {
            push_decimal(&mut text, n);
            end(&text);
        }
        Self { text, ends }
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Each header's name and value; nothing when there are no policies.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let starts = core::iter::once(0).chain(self.ends);
        RATE_LIMIT_HEADERS
            .into_iter()
            .zip(starts.zip(self.ends))
            .filter(|_| !self.is_empty())
            .filter_map(|(name, (start, end))| Some((name, self.text.get(start..end)?)))
    }
}

/// A local reply: status, headers and problem+json body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    /// For a gRPC call: the status it ends with; `body` is then the
    /// status message, which Envoy sends as `grpc-message`.
    pub grpc_status: Option<u32>,
    retry_after: Option<String>,
    rate_limit: RateLimitHeaders,
    pub body: String,
}

impl LocalReply {
    /// The reply's headers, rate-limit ones included; a gRPC reply's are
    /// its metadata, and Envoy sets its content type.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let content_type = self
            .grpc_status
            .is_none()
            .then_some(("content-type", "application/problem+json"));
        let retry_after = self.retry_after.as_deref().map(|s| ("retry-after", s));
        let challenge =
            (self.status == 401).then_some(("www-authenticate", "Bearer realm=\"tollgate\""));
        content_type
            .into_iter()
            .chain(retry_after)
            .chain(challenge)
            .chain(self.rate_limit.iter())
    }
}

/// Whether a request with this `content-type` is a gRPC call (as Envoy
/// judges it: `application/grpc`, or a `+` or `;` after it; gRPC-Web is not).
pub fn is_grpc(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let ct = ct.trim();
        let Some(rest) = ct.get(.."application/grpc".len()) else {
            return false;
        };
        rest.eq_ignore_ascii_case("application/grpc")
            && matches!(ct.as_bytes().get(rest.len()), None | Some(b'+' | b';'))
    })
}

/// [`local_reply`] for a gRPC call: the reason's gRPC status, and as its
/// message the stable `code` and the detail (`rate_limited: Rate limit
/// per-second exceeded; retry in 1 s.`); `retry-after` and the rate-limit
/// headers ride as metadata.
pub fn grpc_reply(denied: &Denied) -> LocalReply {
    let mut message = String::with_capacity(24 + denied.detail.len());
    message.push_str(denied.reason.code());
    message.push_str(": ");
    message.push_str(&denied.detail);
    reply_with(denied, Some(denied.reason.grpc_status()), message)
}

const QUOTA_EXCEEDED_TYPE: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";
const PROBLEM_TYPE_PREFIX: &str = "urn:tollgate:problem:";

/// The problem type URI for a denial. 429s use the IANA-registered type the
/// rate-limit draft points to.
pub fn problem_type(reason: DenyReason) -> String {
    let mut out = String::new();
    push_problem_type(&mut out, reason);
    out
}

fn push_problem_type(out: &mut String, reason: DenyReason) {
    match reason {
        DenyReason::RateLimited | DenyReason::QuotaExceeded => out.push_str(QUOTA_EXCEEDED_TYPE),
        other => {
            out.push_str(PROBLEM_TYPE_PREFIX);
            out.push_str(other.code());
        }
    }
}

pub fn local_reply(denied: &Denied) -> LocalReply {
    reply_with(denied, None, problem_json(denied))
}

/// The reply refusing `denied` with `body`, for a gRPC call if `grpc_status`.
fn reply_with(denied: &Denied, grpc_status: Option<u32>, body: String) -> LocalReply {
    let retry_after = denied.retry_after.map(|secs| {
        let mut text = String::new();
        push_decimal(&mut text, secs);
        text
    });
    LocalReply {
        status: denied.reason.status(),
        grpc_status,
        retry_after,
        rate_limit: RateLimitHeaders::of(&denied.policies),
        body,
    }
}

/// The problem+json body, written by hand as serde_json would write it: a
/// denial must cost no more than an admission, and throttled clients are
/// the ones that retry hardest.
fn problem_json(denied: &Denied) -> String {
    let reason = denied.reason;
    let mut out = String::with_capacity(200 + denied.detail.len());
    out.push_str("{\"type\":\"");
    push_problem_type(&mut out, reason);
    out.push_str("\",\"title\":");
    push_json_string(&mut out, reason.title());
    out.push_str(",\"status\":");
    push_decimal(&mut out, u64::from(reason.status()));
    out.push_str(",\"detail\":");
    push_json_string(&mut out, &denied.detail);
    out.push_str(",\"code\":");
    push_json_string(&mut out, reason.code());
    if !denied.violated.is_empty() {
        out.push_str(",\"violated-policies\":[");
        for (i, name) in denied.violated.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(&mut out, name);
        }
        out.push(']');
    }
    if let Some(secs) = denied.retry_after {
        out.push_str(",\"retry_after\":");
        push_decimal(&mut out, secs);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::bucket_limit as limit;

    fn p(name: &str, quota: u64, w: u64, r: u64, t: u64) -> PolicyStatus {
        PolicyStatus {
            name: name.into(),
            quota,
            window_seconds: w,
            remaining: r,
            reset_seconds: t,
        }
    }

    #[test]
    fn headers_list_every_policy_and_the_tightest_in_x_headers() {
        let h = RateLimitHeaders::of(&[
            p("per-second", 10, 1, 7, 1),
            p("per-hour", 1000, 3600, 3, 900),
        ]);
        assert_eq!(h.iter().count(), 5);
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v).unwrap();
        assert_eq!(
            get("ratelimit-policy"),
            "\"per-second\";q=10;w=1, \"per-hour\";q=1000;w=3600"
        );
        assert_eq!(
            get("ratelimit"),
            "\"per-second\";r=7;t=1, \"per-hour\";r=3;t=900"
        );
        assert_eq!(get("x-ratelimit-limit"), "1000");
        assert_eq!(get("x-ratelimit-remaining"), "3");
        assert_eq!(get("x-ratelimit-reset"), "900");
        assert!(RateLimitHeaders::of(&[]).is_empty());
        assert_eq!(RateLimitHeaders::of(&[]).iter().count(), 0);
        let one = RateLimitHeaders::of(&[p("daily", 5, 86400, 0, 10)]);
        let all: Vec<_> = one.iter().collect();
        assert_eq!(
            all,
            [
                ("ratelimit-policy", "\"daily\";q=5;w=86400"),
                ("ratelimit", "\"daily\";r=0;t=10"),
                ("x-ratelimit-limit", "5"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "10"),
            ]
        );
    }

    /// `[q, w, r, t]` of a bucket of `limit` after `taken` tokens at `at_ms`,
    /// looked at `later_ms` after.
    fn described(limit: &Limit, taken: u64, later_ms: u64) -> [u64; 4] {
        let at_ms = 1_700_000_000_000;
        let full = Bucket::full(limit, at_ms);
        let bucket = match full.check(limit, taken) {
            crate::bucket::Check::Admit { level_after } => Bucket {
                level: level_after,
                ..full
            },
            crate::bucket::Check::Deny { .. } => full,
        }
        .refilled(limit, at_ms + later_ms);
        let s = bucket_status(limit, limit, &bucket);
        [s.quota, s.window_seconds, s.remaining, s.reset_seconds]
    }

    #[test]
    fn a_bucket_without_a_burst_reads_as_max_per_window() {
        // 10 per minute: a token every 6 s.
        let l = limit(10, 60, 10);
        assert_eq!(described(&l, 0, 0), [10, 60, 10, 0]);
        assert_eq!(described(&l, 3, 0), [10, 60, 7, 18]);
        assert_eq!(described(&l, 3, 6_000), [10, 60, 8, 12]);
        assert_eq!(described(&l, 10, 0), [10, 60, 0, 60]);
        assert_eq!(described(&limit(1, 3600, 1), 1, 0), [1, 3600, 0, 3600]);
    }

    #[test]
    fn a_burst_above_max_is_the_quota_and_its_refill_time_the_window() {
        // 1 per second, burst 3: 3 at once, empty to full in 3 s.
        let l = limit(1, 1, 3);
        assert_eq!(described(&l, 0, 0), [3, 3, 3, 0]);
        assert_eq!(described(&l, 1, 0), [3, 3, 2, 1]);
        assert_eq!(described(&l, 3, 0), [3, 3, 0, 3]);
        // 1 per hour, burst 3 (the end-to-end tests' key): q=3, w=3 h.
        assert_eq!(described(&limit(1, 3600, 3), 2, 0), [3, 10_800, 1, 7_200]);
        // 5 per minute, burst 7: 7 × 60 ÷ 5 = 84 s.
        assert_eq!(described(&limit(5, 60, 7), 7, 0), [7, 84, 0, 84]);
        assert_eq!(described(&limit(5, 60, 7), 1, 0), [7, 84, 6, 12]);
    }

    #[test]
    fn a_burst_below_max_is_the_quota_too() {
        // 60 per minute, burst 3: the refill rate is still 1 per second.
        assert_eq!(described(&limit(60, 60, 3), 1, 0), [3, 3, 2, 1]);
        // 10 per second, burst 2: refills in 0.2 s, said as 1 s (never 0).
        assert_eq!(described(&limit(10, 1, 2), 2, 0), [2, 1, 0, 1]);
        assert_eq!(described(&limit(10, 1, 2), 2, 200), [2, 1, 2, 0]);
    }

    #[test]
    fn fractional_refill_times_round_up() {
        // 4 ÷ 3 per second = 1.33 s; rounding down would claim 4 per second.
        assert_eq!(described(&limit(3, 1, 4), 0, 0)[..2], [4, 2]);
        // 3 × 10 ÷ 7 = 4.29 s.
        assert_eq!(described(&limit(7, 10, 3), 3, 0), [3, 5, 0, 5]);
        // 1,000,000 per second, burst 1: a microsecond, said as 1 s.
        assert_eq!(described(&limit(1_000_000, 1, 1), 1, 0), [1, 1, 0, 1]);
    }

    #[test]
    fn very_large_windows_stay_valid_structured_field_integers() {
        use crate::bucket::MAX_HEADER_SECONDS;
        use crate::config::{MAX_TOKENS, MAX_WINDOW_SECONDS};
        // A burst of 10^12 at 1 per 366 days: 3.2 × 10^19 s to refill, more
        // than a u64 and than a header may say.
        let huge = limit(1, MAX_WINDOW_SECONDS, MAX_TOKENS);
        let [q, w, r, t] = described(&huge, 1, 0);
        assert_eq!([q, w, r], [MAX_TOKENS, MAX_HEADER_SECONDS, MAX_TOKENS - 1]);
        assert_eq!(t, MAX_WINDOW_SECONDS);
        let [_, w, _, t] = described(&huge, MAX_TOKENS, 0);
        assert_eq!((w, t), (MAX_HEADER_SECONDS, MAX_HEADER_SECONDS));
        // No burst: the window as it is.
        let year = limit(MAX_TOKENS, MAX_WINDOW_SECONDS, MAX_TOKENS);
        assert_eq!(
            described(&year, MAX_TOKENS, 0),
            [MAX_TOKENS, MAX_WINDOW_SECONDS, 0, MAX_WINDOW_SECONDS]
        );
        let h = RateLimitHeaders::of(&[bucket_status(&huge, &huge, &Bucket::full(&huge, 0))]);
        assert_eq!(
            h.iter().next(),
            Some((
                "ratelimit-policy",
                "\"l\";q=1000000000000;w=999999999999999"
            ))
        );
    }

    /// splitmix64: a fixed, dependency-free stream of test values.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// In `1..=top`, spread over magnitudes so small and huge values both come up.
        fn up_to(&mut self, top: u64) -> u64 {
            let bits = self.next() % 64;
            let v = self.next() >> bits;
            v % top + 1
        }
    }

    #[test]
    fn over_random_buckets_r_never_exceeds_q_nor_t_w() {
        use crate::bucket::{Check, MAX_HEADER_SECONDS};
        use crate::config::{MAX_TOKENS, MAX_WINDOW_SECONDS};
        let mut rng = Rng(20);
        let mut with_burst = 0;
        for _ in 0..20_000 {
            let max = rng.up_to(MAX_TOKENS);
            let window = rng.up_to(MAX_WINDOW_SECONDS);
            let burst = match rng.next() % 3 {
                0 => max,
                _ => rng.up_to(MAX_TOKENS),
            };
            let l = limit(max, window, burst);
            let capacity = u128::from(burst) * u128::from(window) * 1000;
            // Any level, up to twice the capacity (a bucket not yet capped).
            let level =
                (u128::from(rng.next()) << 64 | u128::from(rng.next())) % (2 * capacity + 1);
            let bucket = Bucket {
                level,
                last_fill_ms: 0,
            };
            let s = bucket_status(&l, &l, &bucket);
            // Formatted only on a failure: 20,000 rounds also run on wasm32.
            let context = || format!("{l:?} {bucket:?} {s:?}");
            assert!(s.remaining <= s.quota, "{}", context());
            assert!(s.reset_seconds <= s.window_seconds, "{}", context());
            assert!(
                (1..=MAX_HEADER_SECONDS).contains(&s.window_seconds),
                "{}",
                context()
            );
            assert_eq!(s.quota, burst, "{}", context());
            if burst == max {
                assert_eq!(
                    s.window_seconds,
                    window.min(MAX_HEADER_SECONDS),
                    "{}",
                    context()
                );
            } else {
                with_burst += 1;
            }
            // A refusal's wait, which a refusing policy's `t` and
            // `Retry-After` are made of, is within `w` too.
            let cost = rng.up_to(burst.saturating_mul(2));
            if let Check::Deny { wait_ms } = bucket.check(&l, cost) {
                assert!(
                    ceil_seconds(wait_ms) <= s.window_seconds,
                    "{} {cost}",
                    context()
                );
            }
            let h = RateLimitHeaders::of(core::slice::from_ref(&s));
            let x = |name: &str| -> u64 {
                h.iter()
                    .find(|(n, _)| *n == name)
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap()
            };
            assert!(
                x("x-ratelimit-remaining") <= x("x-ratelimit-limit"),
                "{}",
                context()
            );
        }
        assert!(with_burst > 10_000);
    }

    #[test]
    fn a_429_is_problem_json_with_retry_after_and_violated_policies() {
        let reply = local_reply(&Denied {
            reason: DenyReason::RateLimited,
            detail: "slow down".into(),
            retry_after: Some(3),
            policies: vec![p("per-second", 1, 1, 0, 3)],
            violated: vec!["per-second".into()],
            key_id: None,
        });
        assert_eq!(reply.status, 429);
        let headers: Vec<_> = reply.headers().collect();
        assert!(headers.contains(&("retry-after", "3")));
        assert!(headers.contains(&("content-type", "application/problem+json")));
        assert!(headers.contains(&("x-ratelimit-remaining", "0")));
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["code"], "rate_limited");
        assert_eq!(body["status"], 429);
        assert_eq!(body["violated-policies"][0], "per-second");
        assert!(body["type"].as_str().unwrap().ends_with("#quota-exceeded"));
    }

    #[test]
    fn a_401_has_no_rate_limit_headers() {
        let reply = local_reply(&Denied {
            reason: DenyReason::InvalidApiKey,
            detail: "nope".into(),
            retry_after: None,
            policies: vec![],
            violated: vec![],
            key_id: None,
        });
        assert_eq!(reply.status, 401);
        assert!(!reply
            .headers()
            .any(|(k, _)| k.starts_with("x-ratelimit") || k == "retry-after"));
        assert!(reply
            .headers()
            .any(|h| h == ("www-authenticate", "Bearer realm=\"tollgate\"")));
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["code"], "invalid_api_key");
        assert!(body.get("violated-policies").is_none());
    }

    /// What the body was before it was written by hand.
    #[derive(serde::Serialize)]
    struct Problem<'a> {
        #[serde(rename = "type")]
        kind: String,
        title: &'a str,
        status: u32,
        detail: &'a str,
        code: &'a str,
        #[serde(
            rename = "violated-policies",
            skip_serializing_if = "<[String]>::is_empty"
        )]
        violated_policies: &'a [String],
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
    }

    #[test]
    fn problem_bodies_are_what_serde_json_writes() {
        let every_control: String = (0u8..0x20).map(char::from).collect();
        let details = [
            String::new(),
            "Rate limit per-second, monthly exceeded; retry in 3 s.".into(),
            "quote \" backslash \\ slash / del \u{7f} é 😀".into(),
            every_control,
        ];
        for reason in DenyReason::ALL {
            for detail in &details {
                for (violated, retry_after) in [
                    (vec![], None),
                    (
                        vec!["per-second".to_owned(), "odd\"name".to_owned()],
                        Some(0),
                    ),
                    (vec!["monthly".to_owned()], Some(u64::MAX)),
                ] {
                    let denied = Denied {
                        reason,
                        detail: detail.clone(),
                        retry_after,
                        policies: vec![],
                        violated: violated.clone(),
                        key_id: None,
                    };
                    let expected = serde_json::to_string(&Problem {
                        kind: problem_type(reason),
                        title: reason.title(),
                        status: reason.status(),
                        detail,
                        code: reason.code(),
                        violated_policies: &violated,
                        retry_after,
                    })
                    .unwrap();
                    assert_eq!(local_reply(&denied).body, expected);
                }
            }
        }
    }

    #[test]
    fn grpc_calls_are_told_apart_as_envoy_does() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;charset=utf-8",
            " application/grpc ",
        ] {
            assert!(is_grpc(Some(grpc)), "{grpc}");
        }
        for not in [
            "application/grpc-web",
            "application/grpcx",
            "application/json",
            "",
            "é",
        ] {
            assert!(!is_grpc(Some(not)), "{not}");
        }
        assert!(!is_grpc(None));
    }

    #[test]
    fn a_grpc_refusal_has_its_status_the_code_in_its_message_and_no_content_type() {
        let mut denied = Denied::new(DenyReason::RateLimited, "Rate limit per-second exceeded.");
        denied.retry_after = Some(3);
        let reply = grpc_reply(&denied);
        assert_eq!(reply.grpc_status, Some(8));
        assert_eq!(reply.body, "rate_limited: Rate limit per-second exceeded.");
        let headers: Vec<_> = reply.headers().collect();
        assert_eq!(headers, vec![("retry-after", "3")]);
        let statuses: Vec<u32> = DenyReason::ALL.iter().map(|r| r.grpc_status()).collect();
        // UNAUTHENTICATED ×4, PERMISSION_DENIED, RESOURCE_EXHAUSTED ×3, UNAVAILABLE ×2.
        assert_eq!(statuses, vec![16, 16, 16, 16, 7, 8, 8, 8, 14, 14]);
        assert_eq!(local_reply(&denied).grpc_status, None);
    }
}
