//! Fleet-wide limits, as one Envoy holds them: the share of each key's (and
//! tenant's) limits that the control plane has leased this Envoy.
//!
//! A limit holds across every Envoy because each one meters only its share
//! of it ([`crate::bucket::Meter`]) and the control plane never leases more
//! than the whole: it grants one Envoy more only out of what is unleased or
//! what another has acknowledged giving up. What arrives with each usage
//! receipt ([`crate::wire::FleetLeases`]) is kept in two places, both read by
//! a request at no extra host call: the [`Terms`] with the applied version,
//! and each entry's own [`Lease`] in its bucket entry.
//!
//! The rule a request applies ([`share`]) is the whole contract, so it is
//! here, apart from where it is stored:
//! - no terms yet (before the first receipt): no share at all, since this
//!   Envoy has not been counted yet;
//! - a lease of the current generation: its share; any other entry: the
//!   default share;
//! - past `valid_until_ms` (no receipt for a lease's length: the control
//!   plane is unreachable): the smaller of that and the default share, so a
//!   share only ever shrinks while nobody can account for it.
//!
//! **Quota slices.** A monthly quota is shared by standings (what the other
//! Envoys reported using) while far from its end. Near the end, where the
//! standings could be stale by more than what remains, each Envoy counts a
//! key only up to its [`Slice`]: a cap on its own count that the control
//! plane grants out of what no Envoy holds, so the fleet stops at the quota
//! exactly. The rule is [`quota_cap`].

/// A whole limit: shares are in 65,536ths.
pub const FULL_SHARE: u32 = 1 << 16;

/// What the last receipt said about every entry at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// Which leases are current: the control plane draws a new generation
    /// when it counts this Envoy afresh (first report, or after losing it).
    pub generation: u64,
    /// This Envoy's clock, Unix ms: after it, shares fall back (see [`share`]).
    pub valid_until_ms: u64,
    /// The share of every entry with no lease of its own.
    pub default_share: u32,
}

/// One entry's own lease, kept in its bucket entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub share: u32,
    pub generation: u64,
}

/// The share of an entry's fleet-wide limits this Envoy may use at `now_ms`.
pub fn share(terms: Option<Terms>, lease: Option<Lease>, now_ms: u64) -> u32 {
    let Some(terms) = terms else {
        return 0;
    };
    let default = terms.default_share.min(FULL_SHARE);
    let leased = lease
        .filter(|l| l.generation == terms.generation)
        .map_or(default, |l| l.share.min(FULL_SHARE));
    if now_ms < terms.valid_until_ms {
        leased
    } else {
        leased.min(default)
    }
}

/// How near its end a quota is sliced: within what the key's fleet-wide
/// rate limits admit in this long, standings (a second or two old while the
/// control plane answers) could no longer keep the fleet within it.
pub const SLICING_WINDOW_MS: u64 = 5_000;

/// One key's slice of its quota, kept in its bucket entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    /// The most this Envoy's own count may reach.
    pub cap: u64,
    pub generation: u64,
    pub period_start_ms: u64,
}

/// The remaining quota at which a key starts being sliced: what its
/// fleet-wide rate limits (`limits`, a key's own) admit across the fleet in
/// [`SLICING_WINDOW_MS`], the tightest of them. `None` without any: nothing
/// bounds how fast the fleet uses the quota, so slicing could not start in
/// time; such a quota is shared by standings alone.
pub fn slicing_horizon<'a>(
    limits: impl IntoIterator<Item = &'a crate::config::Limit>,
) -> Option<u64> {
    limits
        .into_iter()
        .filter(|l| !l.per_envoy)
        .map(|l| {
            let window = u128::from(l.window_ms().max(1));
            let refill = (u128::from(l.max) * u128::from(SLICING_WINDOW_MS)).div_ceil(window);
            l.max_tokens
                .saturating_add(u64::try_from(refill).unwrap_or(u64::MAX))
        })
        .min()
}

/// What this Envoy knows of one key's quota when a request comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaView {
    pub max: u64,
    pub period_start_ms: u64,
    /// This Envoy's own count this period.
    pub own: u64,
    /// The other Envoys' count, as last reported.
    pub others: u64,
    pub horizon: Option<u64>,
}

/// The most this Envoy's own count of a key may reach (`None`: no cap of
/// its own; the quota as the standings show it is the only bound):
/// - a slice of this generation and period: its cap, whatever else holds,
///   even with the control plane unreachable;
/// - else, while the terms hold, with other Envoys sharing the key (this
///   one's default share is not the whole) and no more than the horizon
///   left as far as this Envoy knows: its own count, so nothing more until
///   a slice comes (the control plane learns of it from the refusals);
/// - else none.
pub fn quota_cap(
    terms: Option<Terms>,
    slice: Option<Slice>,
    view: QuotaView,
    now_ms: u64,
) -> Option<u64> {
    let terms = terms?;
    if let Some(slice) = slice
        .filter(|s| s.generation == terms.generation && s.period_start_ms == view.period_start_ms)
    {
        return Some(slice.cap);
    }
    let horizon = view.horizon?;
    let shared = terms.default_share < FULL_SHARE;
    let left = view
        .max
        .saturating_sub(view.own.saturating_add(view.others));
    (now_ms < terms.valid_until_ms && shared && left <= horizon).then_some(view.own)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERMS: Terms = Terms {
        generation: 7,
        valid_until_ms: 10_000,
        default_share: FULL_SHARE / 4,
    };

    #[test]
    fn nothing_before_the_first_terms() {
        let lease = Lease {
            share: FULL_SHARE,
            generation: 7,
        };
        assert_eq!(share(None, Some(lease), 0), 0);
    }

    #[test]
    fn a_current_lease_wins_and_an_old_generation_is_no_lease() {
        let mine = Lease {
            share: FULL_SHARE / 2,
            generation: 7,
        };
        assert_eq!(share(Some(TERMS), Some(mine), 9_999), FULL_SHARE / 2);
        let old = Lease {
            generation: 6,
            ..mine
        };
        assert_eq!(share(Some(TERMS), Some(old), 9_999), FULL_SHARE / 4);
        assert_eq!(share(Some(TERMS), None, 9_999), FULL_SHARE / 4);
        let zero = Lease {
            share: 0,
            generation: 7,
        };
        assert_eq!(share(Some(TERMS), Some(zero), 9_999), 0);
    }

    #[test]
    fn past_its_validity_a_share_only_shrinks_to_the_default() {
        let big = Lease {
            share: FULL_SHARE,
            generation: 7,
        };
        assert_eq!(share(Some(TERMS), Some(big), 9_999), FULL_SHARE);
        assert_eq!(share(Some(TERMS), Some(big), 10_000), FULL_SHARE / 4);
        let small = Lease {
            share: 100,
            generation: 7,
        };
        assert_eq!(share(Some(TERMS), Some(small), 10_000), 100);
    }
}
