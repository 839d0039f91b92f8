//! Token buckets, Envoy-style, with time as an argument.
//!
//! Arithmetic is exact integers: one token is `window_ms × FULL_SHARE` units
//! and the bucket refills `max × share` units per millisecond up to
//! `burst × window_ms × share`, so an Envoy holding `share` of a fleet-wide
//! limit (see [`crate::fleet`]) gets exactly that fraction of its rate and
//! burst, with no rounding drift. Refill is lazy (on each look), so a bucket
//! is just two numbers that fit in shared data.

use crate::config::Limit;
use crate::fleet::FULL_SHARE;

/// The state of one bucket: its fill level in units and when it was last refilled (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub level: u128,
    pub last_fill_ms: u64,
}

/// The outcome of looking at a bucket for a request of some cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The request fits; the level after consuming.
    Admit { level_after: u128 },
    /// The request does not fit; milliseconds until it would.
    Deny { wait_ms: u64 },
}

/// One limit as this Envoy meters it: its share of the limit's rate and
/// burst, in bucket units. A limit applied per Envoy is metered at
/// [`FULL_SHARE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meter {
    per_token: u128,
    capacity: u128,
    per_ms: u128,
    /// Milliseconds the whole limit takes to refill from empty, the same at
    /// any share: what a request too large for the bucket is told to wait.
    fill_ms: u64,
}

impl Meter {
    /// `share` (of [`FULL_SHARE`]) of `limit`. Any share holds at least
    /// one whole request: a share of the burst smaller than that (a burst
    /// of 10 over 20 Envoys) could otherwise never admit anything. And a
    /// share that falls short of a whole request only by rounding to
    /// 65,536ths (a fifth of 10 is 1.99997) holds that whole request. Those
    /// are the slack of fleet-wide limits: at most one request per Envoy
    /// whose share of the burst is below one, plus less than
    /// `burst ÷ 65,536` per Envoy from rounding.
    pub fn new(limit: &Limit, share: u32) -> Self {
        let share = u128::from(share.min(FULL_SHARE));
        let window = u128::from(limit.window_ms().max(1));
        let per_token = window * u128::from(FULL_SHARE);
        let exact = u128::from(limit.max_tokens) * window * share;
        let capacity = if share == 0 {
            0
        } else if share == u128::from(FULL_SHARE) {
            // Whole requests already: what every per-Envoy limit and every
            // Envoy alone in its fleet meters, on every request.
            exact
        } else {
            // A share is rounded down by less than one 65,536th: the burst
            // loses less than `max_tokens × window` units by it. (Through
            // `div_floor`: a u128 remainder is a slow library call on wasm32.)
            let whole = div_floor(exact, per_token) * per_token;
            let short = if whole == exact {
                0
            } else {
                whole + per_token - exact
            };
            let rounding = u128::from(limit.max_tokens) * window;
            if short > 0 && short < rounding {
                exact + short
            } else {
                exact.max(per_token)
            }
        };
        Self {
            per_token,
            capacity,
            per_ms: u128::from(limit.max) * share,
            fill_ms: fill_ms(limit),
        }
    }

    /// Whether this Envoy holds no share of the limit: nothing it waits
    /// for refills the bucket, only a share from the control plane does.
    pub fn holds_nothing(&self) -> bool {
        self.capacity == 0
    }
}

impl From<&Limit> for Meter {
    fn from(limit: &Limit) -> Self {
        Self::new(limit, FULL_SHARE)
    }
}

impl From<&Meter> for Meter {
    fn from(meter: &Meter) -> Self {
        *meter
    }
}

// Levels are u128 so no product can overflow, but they nearly always fit
// in u64, and on wasm32 a u128 division is a slow library call.
fn div_ceil(a: u128, b: u128) -> u128 {
    if b == 0 {
        return 0;
    }
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(a), Ok(b)) => u128::from(a.div_ceil(b)),
        _ => a.div_ceil(b),
    }
}

fn div_floor(a: u128, b: u128) -> u128 {
    if b == 0 {
        return 0;
    }
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(a), Ok(b)) => u128::from(a / b),
        _ => a / b,
    }
}

fn clamp_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

impl Bucket {
    /// A bucket that has never been used: full.
    pub fn full(meter: impl Into<Meter>, now_ms: u64) -> Self {
        Self {
            level: meter.into().capacity,
            last_fill_ms: now_ms,
        }
    }

    /// The bucket as it is at `now_ms`. A clock that went backwards refills
    /// nothing; a level above capacity (the share just shrank) is cut to it.
    pub fn refilled(self, meter: impl Into<Meter>, now_ms: u64) -> Self {
        let meter = meter.into();
        let elapsed = now_ms.saturating_sub(self.last_fill_ms);
        let added = u128::from(elapsed) * meter.per_ms;
        Self {
            level: self.level.saturating_add(added).min(meter.capacity),
            last_fill_ms: now_ms.max(self.last_fill_ms),
        }
    }

    /// Whether `cost` tokens fit now. Does not change the bucket.
    pub fn check(&self, meter: impl Into<Meter>, cost: u64) -> Check {
        let meter = meter.into();
        let need = u128::from(cost) * meter.per_token;
        if self.level >= need {
            Check::Admit {
                level_after: self.level - need,
            }
        } else if need > meter.capacity || meter.per_ms == 0 {
            // Can never fit at this share: say "once the bucket is full"
            // rather than forever. That is the policy's `w` (see
            // [`fill_ms`]), so the `t` of a refusing policy never exceeds
            // its `w`; a share of 0 is leased anew within about a second.
            Check::Deny {
                wait_ms: meter.fill_ms,
            }
        } else {
            Check::Deny {
                wait_ms: clamp_u64(div_ceil(need - self.level, meter.per_ms)),
            }
        }
    }

    /// The bucket with `cost` tokens given back, never past capacity.
    pub fn refunded(self, meter: impl Into<Meter>, cost: u64) -> Self {
        let meter = meter.into();
        let units = u128::from(cost) * meter.per_token;
        Self {
            level: self.level.saturating_add(units).min(meter.capacity),
            ..self
        }
    }

    /// Whole tokens left.
    pub fn remaining(&self, meter: impl Into<Meter>) -> u64 {
        clamp_u64(div_floor(self.level, meter.into().per_token))
    }

    /// Milliseconds until the bucket is full again.
    pub fn ms_until_full(&self, meter: impl Into<Meter>) -> u64 {
        let meter = meter.into();
        let missing = meter.capacity.saturating_sub(self.level);
        if missing == 0 {
            return 0;
        }
        if meter.per_ms == 0 {
            return meter.fill_ms;
        }
        clamp_u64(div_ceil(missing, meter.per_ms))
    }
}

/// Milliseconds a bucket takes to refill from empty: `burst × window ÷ max`,
/// rounded up; exactly the window when the burst is `max`.
pub fn fill_ms(limit: &Limit) -> u64 {
    let capacity = u128::from(limit.max_tokens) * u128::from(limit.window_ms().max(1));
    clamp_u64(div_ceil(capacity, u128::from(limit.max.max(1))))
}

/// The largest integer an HTTP structured field may carry (RFC 9651,
/// section 3.3.1), about 31.7 million years in seconds. A burst of 10^12 at
/// one per 366 days takes longer than that to refill; saying so in a larger
/// number would make clients drop the whole header as malformed.
pub const MAX_HEADER_SECONDS: u64 = 999_999_999_999_999;

/// Whole seconds, rounded up and at most [`MAX_HEADER_SECONDS`], for
/// `Retry-After` and the `w` and `t` of rate-limit headers. Every one of them
/// goes through here, so they round alike and never disagree.
pub fn ceil_seconds(ms: u64) -> u64 {
    ms.div_ceil(1000).min(MAX_HEADER_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::bucket_limit as limit;

    fn consume(b: &mut Bucket, l: &Limit, cost: u64, now: u64) -> bool {
        let r = b.refilled(l, now);
        match r.check(l, cost) {
            Check::Admit { level_after } => {
                *b = Bucket {
                    level: level_after,
                    last_fill_ms: r.last_fill_ms,
                };
                true
            }
            Check::Deny { .. } => {
                *b = r;
                false
            }
        }
    }

    #[test]
    fn burst_then_deny_then_refill_at_the_exact_millisecond() {
        // 1 token per second, burst 3.
        let l = limit(1, 1, 3);
        let t0 = 1_700_000_000_000;
        let mut b = Bucket::full(&l, t0);
        for _ in 0..3 {
            assert!(consume(&mut b, &l, 1, t0));
        }
        assert!(!consume(&mut b, &l, 1, t0));
        assert_eq!(b.check(&l, 1), Check::Deny { wait_ms: 1000 });
        assert!(!consume(&mut b, &l, 1, t0 + 999));
        assert_eq!(
            b.refilled(&l, t0 + 999).check(&l, 1),
            Check::Deny { wait_ms: 1 }
        );
        assert!(consume(&mut b, &l, 1, t0 + 1000));
        assert!(!consume(&mut b, &l, 1, t0 + 1000));
    }

    #[test]
    fn fractional_rates_are_exact() {
        // 10 per minute: one token every 6 s.
        let l = limit(10, 60, 1);
        let t0 = 5_000;
        let mut b = Bucket::full(&l, t0);
        assert!(consume(&mut b, &l, 1, t0));
        assert!(!consume(&mut b, &l, 1, t0 + 5_999));
        assert!(consume(&mut b, &l, 1, t0 + 6_000));
    }

    #[test]
    fn refill_never_exceeds_capacity_and_ignores_clock_going_back() {
        let l = limit(5, 1, 5);
        let mut b = Bucket::full(&l, 10_000);
        assert!(consume(&mut b, &l, 5, 10_000));
        let later = b.refilled(&l, 1_000_000_000);
        assert_eq!(later.remaining(&l), 5);
        let back = b.refilled(&l, 0);
        assert_eq!(back.last_fill_ms, 10_000);
        assert_eq!(back.remaining(&l), 0);
    }

    #[test]
    fn remaining_and_reset_count_whole_tokens() {
        let l = limit(2, 1, 4);
        let mut b = Bucket::full(&l, 0);
        assert_eq!(b.remaining(&l), 4);
        assert_eq!(b.ms_until_full(&l), 0);
        assert!(consume(&mut b, &l, 3, 0));
        assert_eq!(b.remaining(&l), 1);
        assert_eq!(b.ms_until_full(&l), 1500);
        assert_eq!(ceil_seconds(1500), 2);
        assert_eq!(ceil_seconds(1000), 1);
        assert_eq!(ceil_seconds(1), 1);
    }

    #[test]
    fn cost_above_capacity_waits_a_refill_not_forever() {
        // 1 per minute, burst 2: two minutes from empty to full.
        let l = limit(1, 60, 2);
        let b = Bucket::full(&l, 0);
        assert_eq!(b.check(&l, 3), Check::Deny { wait_ms: 120_000 });
        // Without a burst that is the window, as it always was.
        let l = limit(5, 60, 5);
        assert_eq!(
            Bucket::full(&l, 0).check(&l, 6),
            Check::Deny { wait_ms: 60_000 }
        );
    }

    #[test]
    fn fill_time_is_burst_over_rate_rounded_up() {
        assert_eq!(fill_ms(&limit(1, 1, 3)), 3_000);
        assert_eq!(fill_ms(&limit(5, 60, 7)), 84_000);
        assert_eq!(fill_ms(&limit(3, 1, 4)), 1_334);
        assert_eq!(fill_ms(&limit(10, 60, 10)), 60_000);
        assert_eq!(ceil_seconds(u64::MAX), MAX_HEADER_SECONDS);
    }

    #[test]
    fn largest_allowed_limits_do_not_overflow() {
        let l = limit(
            crate::config::MAX_TOKENS,
            crate::config::MAX_WINDOW_SECONDS,
            crate::config::MAX_TOKENS,
        );
        let mut b = Bucket::full(&l, 0);
        assert!(consume(&mut b, &l, 1, u64::MAX));
        assert_eq!(b.remaining(&l), crate::config::MAX_TOKENS - 1);
    }
}
