//! A tenant's keys as its page lists them: each with the states it is in
//! (as badges with words, never colour alone), its last use and this
//! period's use against its quota, and the filter by state. Apart from the
//! key pages (`keys`), which use the tenant's page to answer a new key.

use crate::clock::Now;
use crate::dashboard::page::{allowance, count, when, PageError, ShownOnce};
use crate::routes::tenants::TenantView;
use crate::state::AppState;
use crate::store::usage::{self, truncated};
use crate::store::{keys, plans};

/// A key "expires soon" within this of now.
const SOON_MS: i64 = 24 * 3600 * 1000;

/// One state a key is in, as a badge with its words (never colour alone).
pub struct Badge {
    pub class: &'static str,
    pub text: String,
}

pub struct KeyLine {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub badges: Vec<Badge>,
    pub last_used: String,
    pub expires: String,
    pub created: String,
    pub used: String,
    pub quota: String,
}

/// The key list narrowed to keys in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    All,
    Active,
    Deactivated,
    Expired,
    ExpiresSoon,
    Rotating,
    OverQuota,
}

impl StatusFilter {
    pub const ALL: [Self; 7] = [
        Self::All,
        Self::Active,
        Self::Deactivated,
        Self::Expired,
        Self::ExpiresSoon,
        Self::Rotating,
        Self::OverQuota,
    ];

    pub fn parse(text: Option<&str>) -> Self {
        Self::ALL
            .into_iter()
            .find(|f| Some(f.as_str()) == text)
            .unwrap_or(Self::All)
    }

    /// The badge class and the query value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Active => "active",
            Self::Deactivated => "deactivated",
            Self::Expired => "expired",
            Self::ExpiresSoon => "expires-soon",
            Self::Rotating => "rotating",
            Self::OverQuota => "over-quota",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::All => "All",
            Self::Active => "Active",
            Self::Deactivated => "Deactivated",
            Self::Expired => "Expired",
            Self::ExpiresSoon => "Expires soon",
            Self::Rotating => "Rotating",
            Self::OverQuota => "Over quota",
        }
    }

    pub fn admits(self, line: &KeyLine) -> bool {
        self == Self::All || line.badges.iter().any(|b| b.class == self.as_str())
    }
}

/// The key form as typed.
#[derive(Debug, Default)]
pub struct KeyDraft {
    pub name: String,
    pub expires_at: String,
    pub scopes: String,
    pub allowed_cidrs: String,
}

/// A key just issued, for the show-once dialog: the only time its plaintext
/// is on a page, with a way on to the key's own page.
pub fn shown_key(issued: crate::routes::keys::IssuedKey) -> ShownOnce {
    ShownOnce {
        what: "key",
        heading: format!("Your new key “{}”", issued.view.name),
        kept: "Tollgate keeps only its hash.",
        link: Some(format!("/dashboard/keys/{}", issued.view.id)),
        value: issued.key,
    }
}

/// The states a key is in at `now`.
pub fn badges(
    row: &keys::KeyRow,
    successor: bool,
    used: u64,
    quota: Option<u64>,
    now: Now,
) -> Vec<Badge> {
    let now_ms = now.db_ms();
    let mut out = Vec::new();
    let expired = row.expires_at_ms.is_some_and(|e| e <= now_ms);
    let ends = row.expires_at.as_deref().map(when).unwrap_or_default();
    if row.active == 0 {
        out.push(Badge {
            class: "deactivated",
            text: "Deactivated".into(),
        });
    }
    if expired {
        out.push(Badge {
            class: "expired",
            text: "Expired".into(),
        });
    } else if successor && row.expires_at_ms.is_some() {
        out.push(Badge {
            class: "rotating",
            text: format!("Rotating until {ends}"),
        });
    } else if row.expires_at_ms.is_some_and(|e| e - now_ms <= SOON_MS) {
        out.push(Badge {
            class: "expires-soon",
            text: format!("Expires soon ({ends})"),
        });
    }
    if quota.is_some_and(|q| used >= q) {
        out.push(Badge {
            class: "over-quota",
            text: "Over quota".into(),
        });
    }
    if row.active != 0 && !expired {
        out.insert(
            0,
            Badge {
                class: "active",
                text: "Active".into(),
            },
        );
    }
    out
}

/// Every live key of `tenant`, with its state and this period's use.
pub async fn lines(
    state: &AppState,
    tenant: &TenantView,
    period_start_ms: u64,
    now: Now,
) -> Result<Vec<KeyLine>, PageError> {
    let rows = keys::list(&state.db, &tenant.id, None, None, i64::from(u16::MAX)).await?;
    let used = usage::cost_by_key(
        &state.db,
        &tenant.id,
        &truncated(period_start_ms, usage::HOUR),
    )
    .await?;
    let plan_quota = plans::find(&state.db, &tenant.plan_id)
        .await?
        .and_then(|p| p.monthly_quota)
        .and_then(|q| u64::try_from(q).ok());
    let mut lines = Vec::with_capacity(rows.len());
    for row in &rows {
        let successor = rows
            .iter()
            .any(|other| other.rotated_from.as_deref() == Some(row.id.as_str()));
        let used = used
            .iter()
            .find(|(id, _)| *id == row.id)
            .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0));
        let quota = row
            .monthly_quota
            .and_then(|q| u64::try_from(q).ok())
            .or(plan_quota);
        lines.push(KeyLine {
            badges: badges(row, successor, used, quota, now),
            id: row.id.clone(),
            name: row.name.clone(),
            prefix: row.prefix.clone(),
            last_used: row
                .last_used_at
                .as_deref()
                .map_or_else(|| "never used".to_owned(), when),
            expires: row
                .expires_at
                .as_deref()
                .map_or_else(|| "never".to_owned(), when),
            created: when(&row.created_at),
            used: count(used),
            quota: allowance(quota),
        });
    }
    Ok(lines)
}
