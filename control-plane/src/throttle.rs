//! Rate limits on the admin API itself, per bearer token and per client address.
//!
//! The admin API holds the keys to everything, so nobody may hammer it: not a
//! script guessing tokens (each guess is one request from one address, so the
//! per-address limit is what makes guessing hopeless on top of 40 random
//! characters), not a tenant token in a runaway loop, not a leaked token used
//! from many machines (the per-token limit follows the token wherever it is
//! presented). `/v1/sync` and `/v1/usage` are not limited here: they are the
//! Envoys' (sync token), and throttling them would only delay config changes
//! and usage counts. `/healthz` is not either.
//!
//! Both limits are checked before authentication, so a throttled caller costs
//! no database lookup; the per-token map is therefore keyed by whatever token
//! is presented (its SHA-256, never the plaintext), valid or not. A wrong
//! token's bucket is full again one refill interval later and then prunable.
//!
//! [`AdminLimiter`] is pure: time is an argument, in milliseconds, and the
//! buckets are `tollgate_core::bucket`'s exact-integer ones, so the edges are
//! tested to the millisecond. `middleware::limit_admin` feeds it the clock,
//! the presented token and the client address.
//!
//! Memory is bounded: each map tracks at most `max_entries` callers. When a
//! new caller finds its map full, buckets that are full again (idle callers,
//! indistinguishable from callers never seen) are dropped; if that frees
//! nothing, the new caller is charged to one shared *overflow* bucket with the
//! same rate as a single caller. So a flood of new addresses or tokens gets
//! one caller's worth of requests in total, never an unlimited pass, while
//! callers already tracked keep their own buckets.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use axum::http::StatusCode;
use sha2::{Digest, Sha256};
use tollgate_core::bucket::{ceil_seconds, Bucket, Check};
use tollgate_core::config::Limit;

use crate::error::ApiError;

/// Callers tracked per map (tokens, addresses) before pruning and overflow.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

/// A full map is scanned for idle buckets at most this often, so a flood
/// cannot make every request pay for a scan of the whole map.
pub const PRUNE_INTERVAL_MS: u64 = 1_000;

/// A sustained rate in requests per minute, with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u64,
    pub burst: u64,
}

impl Rate {
    /// `None` (no limit) when either number is 0.
    pub fn new(per_minute: u64, burst: u64) -> Option<Self> {
        (per_minute > 0 && burst > 0).then_some(Self { per_minute, burst })
    }

    fn limit(self, name: &str) -> Limit {
        Limit {
            name: name.into(),
            max: self.per_minute,
            window_seconds: 60,
            max_tokens: self.burst,
            scope: Default::default(),
            per_envoy: true,
        }
    }
}

/// What the admin API allows; `None` turns a limit off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleConfig {
    pub per_token: Option<Rate>,
    pub per_ip: Option<Rate>,
    /// Callers tracked per map.
    pub max_entries: usize,
}

impl ThrottleConfig {
    /// Per token: 1200 a minute (20 a second), bursts of 300.
    pub const DEFAULT_PER_TOKEN: Rate = Rate {
        per_minute: 1200,
        burst: 300,
    };
    /// Per client address: 3000 a minute (50 a second), bursts of 600.
    pub const DEFAULT_PER_IP: Rate = Rate {
        per_minute: 3000,
        burst: 600,
    };

    /// No limits at all.
    pub fn off() -> Self {
        Self {
            per_token: None,
            per_ip: None,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            per_token: Some(Self::DEFAULT_PER_TOKEN),
            per_ip: Some(Self::DEFAULT_PER_IP),
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Token,
    ClientAddress,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "per_token",
            Self::ClientAddress => "per_client_address",
        }
    }
}

/// A refusal: which limit, and how long until the request would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub scope: Scope,
    pub wait_ms: u64,
}

impl Throttled {
    /// For `Retry-After`: whole seconds, rounded up, at least 1.
    pub fn retry_after_s(&self) -> u64 {
        ceil_seconds(self.wait_ms).max(1)
    }
}

impl From<Throttled> for ApiError {
    fn from(t: Throttled) -> Self {
        let whose = match t.scope {
            Scope::Token => "with this token (per-token limit)",
            Scope::ClientAddress => "from this client address (per-client-address limit)",
        };
        let seconds = t.retry_after_s();
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "admin_rate_limited",
            format!("Too many admin API requests {whose}; retry in {seconds} s."),
        )
        .with_retry_after(seconds)
    }
}

/// A client address as limited: IPv4 addresses one by one, IPv6 by /64,
/// because one host is routinely given a whole /64 and could otherwise
/// rotate through 2^64 addresses to dodge the limit. IPv4-mapped IPv6
/// addresses (from dual-stack sockets) count as the IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4([u8; 4]),
    V6Net([u16; 4]),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let [a, b, c, d, ..] = v6.segments();
                Self::V6Net([a, b, c, d])
            }
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::V4(octets) => write!(f, "{}", std::net::Ipv4Addr::from(octets)),
            Self::V6Net([a, b, c, d]) => write!(f, "{}/64", Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0)),
        }
    }
}

/// Where a caller's requests are counted.
#[derive(Debug, Clone, Copy)]
enum Slot<K> {
    Own(K),
    Overflow,
}

/// One look at a caller's bucket: where it lives, the bucket refilled to now,
/// and whether the request fits.
struct Look<K> {
    slot: Slot<K>,
    refilled: Bucket,
    check: Check,
}

impl<K> Look<K> {
    fn refusal(&self, scope: Scope) -> Option<Throttled> {
        match self.check {
            Check::Admit { .. } => None,
            Check::Deny { wait_ms } => Some(Throttled { scope, wait_ms }),
        }
    }
}

/// One keyed set of buckets, bounded.
struct Keyed<K> {
    limit: Limit,
    buckets: HashMap<K, Bucket>,
    /// Shared by every caller that finds the map full.
    overflow: Bucket,
    max_entries: usize,
    last_prune_ms: Option<u64>,
}

impl<K: Copy + Eq + Hash> Keyed<K> {
    fn new(limit: Limit, max_entries: usize) -> Self {
        let overflow = Bucket::full(&limit, 0);
        Self {
            limit,
            buckets: HashMap::new(),
            overflow,
            max_entries,
            last_prune_ms: None,
        }
    }

    /// The bucket `key` is charged to, tracking it if there is room.
    fn slot(&mut self, key: K, now_ms: u64) -> Slot<K> {
        if self.buckets.contains_key(&key) {
            return Slot::Own(key);
        }
        if self.buckets.len() >= self.max_entries {
            self.prune(now_ms);
        }
        if self.buckets.len() < self.max_entries {
            self.buckets.insert(key, Bucket::full(&self.limit, now_ms));
            Slot::Own(key)
        } else {
            Slot::Overflow
        }
    }

    /// Drops buckets that are full again: forgetting them changes nothing,
    /// since an unknown caller starts with a full bucket.
    fn prune(&mut self, now_ms: u64) {
        if self
            .last_prune_ms
            .is_some_and(|last| now_ms.saturating_sub(last) < PRUNE_INTERVAL_MS)
        {
            return;
        }
        self.last_prune_ms = Some(now_ms);
        let limit = &self.limit;
        self.buckets
            .retain(|_, bucket| bucket.refilled(limit, now_ms).ms_until_full(limit) > 0);
    }

    fn look(&mut self, key: K, now_ms: u64) -> Look<K> {
        let slot = self.slot(key, now_ms);
        let current = match slot {
            Slot::Own(key) => self.buckets.get(&key).copied(),
            Slot::Overflow => Some(self.overflow),
        }
        .unwrap_or_else(|| Bucket::full(&self.limit, now_ms));
        let refilled = current.refilled(&self.limit, now_ms);
        let check = refilled.check(&self.limit, 1);
        Look {
            slot,
            refilled,
            check,
        }
    }

    fn store(&mut self, slot: Slot<K>, bucket: Bucket) {
        match slot {
            Slot::Own(key) => {
                if let Some(b) = self.buckets.get_mut(&key) {
                    *b = bucket;
                }
            }
            Slot::Overflow => self.overflow = bucket,
        }
    }

    /// Saves the look: consumed when `admit`, otherwise only refilled.
    fn settle(&mut self, look: &Look<K>, admit: bool) {
        let bucket = match look.check {
            Check::Admit { level_after } if admit => Bucket {
                level: level_after,
                last_fill_ms: look.refilled.last_fill_ms,
            },
            _ => look.refilled,
        };
        self.store(look.slot, bucket);
    }
}

struct Inner {
    tokens: Option<Keyed<[u8; 32]>>,
    ips: Option<Keyed<ClientKey>>,
}

/// The admin API's limiter: one bucket per presented token (keyed by the
/// token's SHA-256, never the plaintext) and one per client address.
pub struct AdminLimiter {
    config: ThrottleConfig,
    inner: Mutex<Inner>,
    epoch: Instant,
}

impl fmt::Debug for AdminLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminLimiter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for AdminLimiter {
    fn default() -> Self {
        Self::new(ThrottleConfig::default())
    }
}

impl AdminLimiter {
    pub fn new(config: ThrottleConfig) -> Self {
        let max_entries = config.max_entries.max(1);
        let inner = Inner {
            tokens: config
                .per_token
                .map(|rate| Keyed::new(rate.limit("admin-per-token"), max_entries)),
            ips: config
                .per_ip
                .map(|rate| Keyed::new(rate.limit("admin-per-ip"), max_entries)),
        };
        Self {
            config,
            inner: Mutex::new(inner),
            epoch: Instant::now(),
        }
    }

    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// Monotonic milliseconds since the limiter was made: the clock to pass to [`Self::check`].
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts one request by `token` (as presented, if any) from `client` (if
    /// known) at `now_ms`. Both limits must admit it; a refused request
    /// consumes from neither. When both refuse, the longer wait is reported.
    pub fn check(
        &self,
        token: Option<&str>,
        client: Option<IpAddr>,
        now_ms: u64,
    ) -> Result<(), Throttled> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Inner { tokens, ips } = &mut *inner;
        let ip_look = ips
            .as_mut()
            .zip(client)
            .map(|(map, ip)| map.look(ClientKey::of(ip), now_ms));
        let token_look = tokens.as_mut().zip(token).map(|(map, token)| {
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            map.look(digest, now_ms)
        });
        let refusal = [
            ip_look
                .as_ref()
                .and_then(|l| l.refusal(Scope::ClientAddress)),
            token_look.as_ref().and_then(|l| l.refusal(Scope::Token)),
        ]
        .into_iter()
        .flatten()
        .max_by_key(|t| t.wait_ms);
        let admit = refusal.is_none();
        if let (Some(map), Some(look)) = (ips.as_mut(), ip_look.as_ref()) {
            map.settle(look, admit);
        }
        if let (Some(map), Some(look)) = (tokens.as_mut(), token_look.as_ref()) {
            map.settle(look, admit);
        }
        refusal.map_or(Ok(()), Err)
    }

    /// How many (tokens, client addresses) are tracked, overflow not counted.
    pub fn tracked(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (
            inner.tokens.as_ref().map_or(0, |m| m.buckets.len()),
            inner.ips.as_ref().map_or(0, |m| m.buckets.len()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000_000;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    /// 60 a minute is one a second: the refill interval is exactly 1000 ms.
    fn limiter(per_token: Option<Rate>, per_ip: Option<Rate>, max_entries: usize) -> AdminLimiter {
        AdminLimiter::new(ThrottleConfig {
            per_token,
            per_ip,
            max_entries,
        })
    }

    fn one_a_second(burst: u64) -> Option<Rate> {
        Rate::new(60, burst)
    }

    #[test]
    fn exactly_the_burst_passes_then_the_refill_interval_to_the_millisecond() {
        let l = limiter(one_a_second(3), None, 100);
        for _ in 0..3 {
            assert_eq!(l.check(Some("tok"), None, T0), Ok(()));
        }
        let refused = l.check(Some("tok"), None, T0).unwrap_err();
        assert_eq!(refused.scope, Scope::Token);
        assert_eq!(refused.wait_ms, 1000);
        assert_eq!(refused.retry_after_s(), 1);
        // 1 ms before the refill interval: still refused, and says 1 ms.
        let refused = l.check(Some("tok"), None, T0 + 999).unwrap_err();
        assert_eq!(refused.wait_ms, 1);
        assert_eq!(refused.retry_after_s(), 1);
        // Exactly the refill interval: one more, and only one.
        assert_eq!(l.check(Some("tok"), None, T0 + 1000), Ok(()));
        assert!(l.check(Some("tok"), None, T0 + 1000).is_err());
    }

    #[test]
    fn per_ip_burst_and_refill_edges() {
        // 120 a minute: one every 500 ms.
        let l = limiter(None, Rate::new(120, 2), 100);
        let me = ip("203.0.113.7");
        assert!(l.check(None, me, T0).is_ok());
        assert!(l.check(Some("guess-1"), me, T0).is_ok());
        let refused = l.check(Some("guess-2"), me, T0).unwrap_err();
        assert_eq!(refused.scope, Scope::ClientAddress);
        assert_eq!(refused.wait_ms, 500);
        assert!(l.check(None, me, T0 + 499).is_err());
        assert!(l.check(None, me, T0 + 500).is_ok());
        assert!(l.check(None, me, T0 + 500).is_err());
    }

    #[test]
    fn other_tokens_and_addresses_are_independent() {
        let l = limiter(one_a_second(1), one_a_second(1), 100);
        assert!(l.check(Some("a"), ip("192.0.2.1"), T0).is_ok());
        assert!(l.check(Some("a"), ip("192.0.2.2"), T0).is_err());
        assert!(l.check(Some("b"), ip("192.0.2.1"), T0).is_err());
        assert!(l.check(Some("b"), ip("192.0.2.2"), T0).is_ok());
        assert!(l.check(Some("c"), None, T0).is_ok());
        assert!(l.check(None, ip("192.0.2.3"), T0).is_ok());
    }

    #[test]
    fn a_refused_request_consumes_from_neither_bucket() {
        let l = limiter(one_a_second(1), one_a_second(2), 100);
        let me = ip("192.0.2.1");
        assert!(l.check(Some("a"), me, T0).is_ok());
        // Token "a" is out; the address had 2 and must still have 1.
        assert_eq!(l.check(Some("a"), me, T0).unwrap_err().scope, Scope::Token);
        assert!(l.check(Some("b"), me, T0).is_ok());
        assert_eq!(
            l.check(Some("c"), me, T0).unwrap_err().scope,
            Scope::ClientAddress
        );
    }

    #[test]
    fn when_both_refuse_the_longer_wait_is_reported() {
        // Token: one a second; address: one a minute.
        let l = limiter(one_a_second(1), Rate::new(1, 1), 100);
        let me = ip("192.0.2.1");
        assert!(l.check(Some("a"), me, T0).is_ok());
        let refused = l.check(Some("a"), me, T0).unwrap_err();
        assert_eq!(refused.scope, Scope::ClientAddress);
        assert_eq!(refused.wait_ms, 60_000);
        assert_eq!(refused.retry_after_s(), 60);
    }

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_ipv4_is_ipv4() {
        let l = limiter(None, one_a_second(1), 100);
        assert!(l.check(None, ip("2001:db8:1:2::1"), T0).is_ok());
        assert!(l.check(None, ip("2001:db8:1:2:ffff::9"), T0).is_err());
        assert!(l.check(None, ip("2001:db8:1:3::1"), T0).is_ok());
        assert!(l.check(None, ip("198.51.100.4"), T0).is_ok());
        assert!(l.check(None, ip("::ffff:198.51.100.4"), T0).is_err());
        assert_eq!(
            ClientKey::of("2001:db8:1:2::1".parse().unwrap()).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            ClientKey::of("::ffff:198.51.100.4".parse().unwrap()).to_string(),
            "198.51.100.4"
        );
    }

    #[test]
    fn memory_is_bounded_and_a_full_map_falls_back_to_one_shared_bucket() {
        let l = limiter(None, one_a_second(2), 2);
        assert!(l.check(None, ip("192.0.2.1"), T0).is_ok());
        assert!(l.check(None, ip("192.0.2.2"), T0).is_ok());
        // Full, and neither bucket is idle: newcomers share the overflow bucket,
        // which has one caller's allowance, not a free pass.
        assert!(l.check(None, ip("192.0.2.3"), T0).is_ok());
        assert!(l.check(None, ip("192.0.2.4"), T0).is_ok());
        assert_eq!(
            l.check(None, ip("192.0.2.5"), T0).unwrap_err().scope,
            Scope::ClientAddress
        );
        assert!(l.check(None, ip("192.0.2.3"), T0).is_err());
        assert_eq!(l.tracked(), (0, 2));
        // Tracked callers keep their own buckets meanwhile.
        assert!(l.check(None, ip("192.0.2.1"), T0).is_ok());
        assert!(l.check(None, ip("192.0.2.1"), T0).is_err());
        // Once the tracked buckets are full again they are dropped for newcomers.
        let later = T0 + 2000;
        assert!(l.check(None, ip("192.0.2.6"), later).is_ok());
        assert!(l.check(None, ip("192.0.2.6"), later).is_ok());
        assert!(l.check(None, ip("192.0.2.6"), later).is_err());
        assert_eq!(l.tracked(), (0, 1));
    }

    #[test]
    fn pruning_a_full_map_is_itself_rate_limited() {
        let l = limiter(None, one_a_second(1), 1);
        assert!(l.check(None, ip("192.0.2.1"), T0).is_ok());
        // Pruned at T0 and nothing was idle: newcomers use the overflow bucket.
        assert!(l.check(None, ip("192.0.2.2"), T0).is_ok());
        // At T0 + 999 the tracked bucket is not full yet; no scan before T0 + 1000.
        assert!(l.check(None, ip("192.0.2.3"), T0 + 999).is_err());
        // At T0 + 1000 it is full again: pruned, and the newcomer gets its own bucket.
        assert!(l.check(None, ip("192.0.2.3"), T0 + 1000).is_ok());
        assert_eq!(l.tracked(), (0, 1));
    }

    #[test]
    fn many_distinct_tokens_never_grow_past_the_cap() {
        let l = limiter(Rate::new(60, 5), None, 1_000);
        for i in 0..10_000u64 {
            let _ = l.check(Some(&format!("guess-{i}")), None, T0 + i);
            assert!(l.tracked().0 <= 1_000);
        }
    }

    #[test]
    fn zero_turns_a_limit_off_and_no_client_address_skips_the_per_ip_limit() {
        assert_eq!(Rate::new(0, 10), None);
        assert_eq!(Rate::new(10, 0), None);
        let l = limiter(None, one_a_second(1), 100);
        for _ in 0..1000 {
            assert!(l.check(Some("t"), None, T0).is_ok());
        }
        assert_eq!(l.tracked(), (0, 0));
    }

    #[test]
    fn the_problem_says_which_limit_and_when_to_retry() {
        let e = ApiError::from(Throttled {
            scope: Scope::Token,
            wait_ms: 1001,
        });
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code, "admin_rate_limited");
        assert_eq!(e.retry_after_s, Some(2));
        assert!(e.detail.contains("per-token"), "{}", e.detail);
        let e = ApiError::from(Throttled {
            scope: Scope::ClientAddress,
            wait_ms: 0,
        });
        assert_eq!(e.retry_after_s, Some(1));
        assert!(e.detail.contains("client address"), "{}", e.detail);
    }

    #[test]
    fn the_default_is_generous_and_debug_hides_state() {
        let l = AdminLimiter::default();
        for _ in 0..300 {
            assert!(l.check(Some("admin"), ip("127.0.0.1"), T0).is_ok());
        }
        assert!(l.check(Some("admin"), ip("127.0.0.1"), T0).is_err());
        assert!(format!("{l:?}").contains("AdminLimiter"));
    }
}
