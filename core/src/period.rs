//! Quota periods: calendar months in UTC, or months from a billing anchor day.
//!
//! The period is computed from the time, so nothing has to reset it: the
//! filter, the control plane and the usage API all call [`quota_period`] with
//! the same `now` and anchor and agree on where the period starts and ends.
//! An anchor past the end of a shorter month falls on that month's last day
//! (anchor 31 → 30 April, 28 or 29 February).

/// Milliseconds in a day.
const DAY_MS: u64 = 86_400_000;

/// A half-open span of Unix milliseconds `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Period {
    pub fn seconds(&self) -> u64 {
        (self.end_ms.saturating_sub(self.start_ms)) / 1000
    }

    /// Milliseconds from `now_ms` until the period ends.
    pub fn ms_left(&self, now_ms: u64) -> u64 {
        self.end_ms.saturating_sub(now_ms)
    }
}

/// Anchors must name a day every month has or clamps to: 1 to 31.
pub fn valid_anchor_day(day: u8) -> bool {
    (1..=31).contains(&day)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1-12).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    (days_from_civil(next_year, next_month, 1) - days_from_civil(year, month, 1)) as u32
}

/// Unix ms of the anchor day's midnight in (year, month).
fn anchor_in(year: i64, month: u32, anchor: u32) -> u64 {
    let day = anchor.min(days_in_month(year, month));
    let days = days_from_civil(year, month, day).max(0);
    (days as u64).saturating_mul(DAY_MS)
}

fn next_month(year: i64, month: u32) -> (i64, u32) {
    if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    }
}

fn previous_month(year: i64, month: u32) -> (i64, u32) {
    if month == 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    }
}

/// The quota period containing `now_ms`. `anchor_day` `None` (or invalid)
/// means calendar months, the same as anchor 1.
pub fn quota_period(now_ms: u64, anchor_day: Option<u8>) -> Period {
    let anchor = u32::from(anchor_day.filter(|d| valid_anchor_day(*d)).unwrap_or(1));
    let days = i64::try_from(now_ms / DAY_MS).unwrap_or(i64::MAX / 2);
    let (year, month, _) = civil_from_days(days);
    let this = anchor_in(year, month, anchor);
    let (start_y, start_m) = if now_ms >= this {
        (year, month)
    } else {
        previous_month(year, month)
    };
    let (end_y, end_m) = next_month(start_y, start_m);
    Period {
        start_ms: anchor_in(start_y, start_m, anchor),
        end_ms: anchor_in(end_y, end_m, anchor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of a UTC date and time.
    fn at(y: i64, mo: u32, d: u32, h: u64, mi: u64, s: u64, ms: u64) -> u64 {
        days_from_civil(y, mo, d) as u64 * DAY_MS + ((h * 60 + mi) * 60 + s) * 1000 + ms
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for days in [0, 59, 60, 365, 11_016, 11_017, 20_000, 25_000, 60_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2026, 2), 28);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2026, 12), 31);
    }

    #[test]
    fn calendar_month_boundaries_are_exact_to_the_millisecond() {
        let last_ms_of_nov = at(2026, 11, 30, 23, 59, 59, 999);
        let p = quota_period(last_ms_of_nov, None);
        assert_eq!(p.start_ms, at(2026, 11, 1, 0, 0, 0, 0));
        assert_eq!(p.end_ms, at(2026, 12, 1, 0, 0, 0, 0));
        assert_eq!(p.ms_left(last_ms_of_nov), 1);
        let dec = quota_period(last_ms_of_nov + 1, None);
        assert_eq!(dec.start_ms, p.end_ms);
        assert_eq!(dec.end_ms, at(2027, 1, 1, 0, 0, 0, 0));
        assert_eq!(dec.seconds(), 31 * 86_400);
        assert_eq!(quota_period(at(2026, 11, 23, 12, 0, 0, 0), Some(1)), p);
    }

    #[test]
    fn anchor_days_start_mid_month_and_clamp_to_short_months() {
        // Anchor 15: 23 Nov is in 15 Nov .. 15 Dec; 14 Nov in 15 Oct .. 15 Nov.
        let p = quota_period(at(2026, 11, 23, 0, 0, 0, 0), Some(15));
        assert_eq!(
            (p.start_ms, p.end_ms),
            (at(2026, 11, 15, 0, 0, 0, 0), at(2026, 12, 15, 0, 0, 0, 0))
        );
        let p = quota_period(at(2026, 11, 14, 23, 59, 59, 999), Some(15));
        assert_eq!(p.start_ms, at(2026, 10, 15, 0, 0, 0, 0));
        // Anchor 31: February ends the January period on its last day.
        let p = quota_period(at(2027, 2, 10, 0, 0, 0, 0), Some(31));
        assert_eq!(
            (p.start_ms, p.end_ms),
            (at(2027, 1, 31, 0, 0, 0, 0), at(2027, 2, 28, 0, 0, 0, 0))
        );
        let p = quota_period(at(2027, 2, 28, 0, 0, 0, 0), Some(31));
        assert_eq!(
            (p.start_ms, p.end_ms),
            (at(2027, 2, 28, 0, 0, 0, 0), at(2027, 3, 31, 0, 0, 0, 0))
        );
        // Across the year end.
        let p = quota_period(at(2027, 1, 3, 0, 0, 0, 0), Some(20));
        assert_eq!(p.start_ms, at(2026, 12, 20, 0, 0, 0, 0));
        // Invalid anchors mean calendar months.
        assert_eq!(
            quota_period(at(2027, 1, 3, 0, 0, 0, 0), Some(0)),
            quota_period(at(2027, 1, 3, 0, 0, 0, 0), None)
        );
        assert!(!valid_anchor_day(32));
    }
}
