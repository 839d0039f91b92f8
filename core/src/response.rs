//! Turning a [`Decision`](crate::decide::Decision) into what the client and the upstream see.
//!
//! Rate-limit headers follow the IETF httpapi draft (`RateLimit-Policy` and
//! `RateLimit`, one item per policy) plus the widely used `X-RateLimit-*` trio,
//! which describes the most constrained policy. Denials are problem+json.

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
        out.push((UPSTREAM_TENANT, tenant.as_str()));
    }
    if let Some(key) = &allowed.key_id {
        out.push((UPSTREAM_KEY_ID, key.as_str()));
    }
    out.push((UPSTREAM_PLAN, allowed.plan_name.as_str()));
    out
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
    retry_after: Option<String>,
    rate_limit: RateLimitHeaders,
    pub body: String,
}

impl LocalReply {
    /// The reply's headers, rate-limit ones included.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let content_type = ("content-type", "application/problem+json");
        let retry_after = self.retry_after.as_deref().map(|s| ("retry-after", s));
        let challenge =
            (self.status == 401).then_some(("www-authenticate", "Bearer realm=\"tollgate\""));
        core::iter::once(content_type)
            .chain(retry_after)
            .chain(challenge)
            .chain(self.rate_limit.iter())
    }
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
    let status = denied.reason.status();
    let retry_after = denied.retry_after.map(|secs| {
        let mut text = String::new();
        push_decimal(&mut text, secs);
        text
    });
    LocalReply {
        status,
        retry_after,
        rate_limit: RateLimitHeaders::of(&denied.policies),
        body: problem_json(denied),
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

    fn p(name: &str, quota: u64, w: u64, r: u64, t: u64) -> PolicyStatus {
        PolicyStatus {
            name: name.into(),
            quota,
            window_seconds: w,
            remaining: r,
            reset_seconds: t,
        }
    }

    #[crate::testing::test]
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

    #[crate::testing::test]
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

    #[crate::testing::test]
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

    #[crate::testing::test]
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
}
