//! The control plane's one reading of the wall clock.
//!
//! Handlers take [`Now`] once per request from the state's [`Clock`], and
//! background workers once per pass, and pass it down: the store, the audit
//! log and the quota periods never look at the clock themselves. Tests put a
//! [`SetClock`] in the state, so what depends on hours, months or expiry is
//! tested at the instants that matter, not at whatever time the test runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An instant on the wall clock, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Now {
    unix_ms: u64,
}

impl Now {
    pub fn from_unix_ms(unix_ms: u64) -> Self {
        Self { unix_ms }
    }

    /// Unix milliseconds.
    pub fn unix_ms(self) -> u64 {
        self.unix_ms
    }

    /// Unix milliseconds as every `_ms` column stores them.
    pub fn db_ms(self) -> i64 {
        i64::try_from(self.unix_ms).unwrap_or(i64::MAX)
    }

    /// RFC 3339 UTC to the second: the form of every `created_at` / `updated_at`.
    pub fn rfc3339(self) -> String {
        rfc3339_ms(self.unix_ms)
    }

    /// RFC 3339 UTC to the millisecond: the audit log's form, so text order is time order.
    pub fn rfc3339_millis(self) -> String {
        humantime::format_rfc3339_millis(self.system_time()).to_string()
    }

    pub fn system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.unix_ms)
    }

    /// As the `time` crate's UTC date-time.
    pub fn offset_date_time(self) -> time::OffsetDateTime {
        time::OffsetDateTime::from(self.system_time())
    }

    /// `ms` later (saturating).
    pub fn plus_ms(self, ms: u64) -> Self {
        Self::from_unix_ms(self.unix_ms.saturating_add(ms))
    }
}

/// Unix milliseconds as RFC 3339 UTC with seconds, the form of [`Now::rfc3339`].
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Where [`Now`] comes from.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Now;
}

/// The wall clock, for the server.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Now {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Now::from_unix_ms(ms)
    }
}

/// A clock that shows what it was set to, for tests.
#[derive(Debug)]
pub struct SetClock {
    unix_ms: AtomicU64,
}

impl SetClock {
    pub fn at(now: Now) -> Self {
        Self {
            unix_ms: AtomicU64::new(now.unix_ms()),
        }
    }

    /// At an RFC 3339 time such as `2026-11-30T23:59:59Z`; the epoch if it is not one.
    pub fn at_rfc3339(text: &str) -> Self {
        let ms = humantime::parse_rfc3339(text)
            .ok()
            .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self::at(Now::from_unix_ms(ms))
    }

    pub fn set(&self, now: Now) {
        self.unix_ms.store(now.unix_ms(), Ordering::SeqCst);
    }

    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.unix_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for SetClock {
    fn now(&self) -> Now {
        Now::from_unix_ms(self.unix_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_clock_shows_what_it_was_set_to_and_moves_only_when_told() {
        let clock = SetClock::at_rfc3339("2026-11-30T23:59:59.999Z");
        assert_eq!(clock.now().rfc3339_millis(), "2026-11-30T23:59:59.999Z");
        assert_eq!(clock.now().rfc3339(), "2026-11-30T23:59:59Z");
        clock.advance(Duration::from_millis(1));
        assert_eq!(clock.now().rfc3339(), "2026-12-01T00:00:00Z");
        assert_eq!(clock.now().unix_ms(), 1_796_083_200_000);
        clock.set(Now::from_unix_ms(0));
        assert_eq!(clock.now().rfc3339(), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn the_forms_agree_with_each_other() {
        let now = Now::from_unix_ms(1_796_083_200_123);
        assert_eq!(now.db_ms(), 1_796_083_200_123);
        assert_eq!(now.offset_date_time().unix_timestamp(), 1_796_083_200);
        assert_eq!(now.plus_ms(877).rfc3339(), "2026-12-01T00:00:01Z");
        assert_eq!(rfc3339_ms(now.unix_ms()), now.rfc3339());
    }
}
