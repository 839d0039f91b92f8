//! One outstanding call to the control plane at a time, with capped
//! exponential back-off after failures: the pacing the sync loop and the
//! usage reporter share.

/// The host always answers a dispatched call by its timeout; past this much
/// more, a call is presumed lost so a missing callback cannot wedge a loop.
const LOST_AFTER_MS: u64 = 5_000;

#[derive(Debug, Default)]
pub struct Pacing {
    in_flight: Option<(u32, u64)>,
    next_attempt_ms: u64,
    failures: u32,
}

impl Pacing {
    /// Whether a call may be sent at `now`.
    pub fn due(&mut self, now: u64, timeout_ms: u64) -> bool {
        if let Some((_, started)) = self.in_flight {
            if now.saturating_sub(started) < timeout_ms.saturating_add(LOST_AFTER_MS) {
                return false;
            }
            self.in_flight = None;
        }
        now >= self.next_attempt_ms
    }

    /// Whether a call is out at `now` and not yet presumed lost.
    pub fn busy(&self, now: u64, timeout_ms: u64) -> bool {
        self.in_flight.is_some_and(|(_, started)| {
            now.saturating_sub(started) < timeout_ms.saturating_add(LOST_AFTER_MS)
        })
    }

    pub fn sent(&mut self, token: u32, now: u64) {
        self.in_flight = Some((token, now));
    }

    /// Whether `token` answers our call; it is no longer in flight if so.
    pub fn answered(&mut self, token: u32) -> bool {
        match self.in_flight {
            Some((expected, _)) if expected == token => {
                self.in_flight = None;
                true
            }
            _ => false,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Waits `retry_ms`, doubling with each consecutive failure, at most `max_ms`.
    pub fn failed(&mut self, now: u64, retry_ms: u64, max_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        let delay = retry_ms
            .saturating_mul(1u64 << self.failures.min(8).saturating_sub(1))
            .min(max_ms);
        self.next_attempt_ms = now.saturating_add(delay);
    }

    /// Resets the failures; the next call is due `after_ms` from `now`.
    pub fn succeeded(&mut self, now: u64, after_ms: u64) {
        self.failures = 0;
        self.next_attempt_ms = now.saturating_add(after_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_at_a_time_and_back_off_doubles_to_the_cap() {
        let mut p = Pacing::default();
        assert!(p.due(0, 1_000));
        p.sent(7, 0);
        assert!(p.busy(5_999, 1_000) && !p.busy(6_000, 1_000));
        assert!(!p.due(5_999, 1_000));
        assert!(!p.answered(8));
        assert!(p.answered(7));
        p.failed(100, 250, 2_000);
        assert!(!p.due(349, 1_000) && p.due(350, 1_000));
        p.failed(350, 250, 2_000);
        assert!(!p.due(849, 1_000) && p.due(850, 1_000));
        for _ in 0..10 {
            p.failed(0, 250, 2_000);
        }
        assert!(!p.due(1_999, 1_000) && p.due(2_000, 1_000));
        assert_eq!(p.failures(), 12);
        p.succeeded(10, 1_000);
        assert_eq!(p.failures(), 0);
        assert!(!p.due(1_009, 1_000) && p.due(1_010, 1_000));
    }

    #[test]
    fn a_lost_callback_frees_the_slot_after_timeout_and_grace() {
        let mut p = Pacing::default();
        p.sent(1, 0);
        assert!(!p.due(5_999, 1_000));
        assert!(p.due(6_000, 1_000));
        assert!(!p.answered(1));
    }
}
