//! What every handler shares: the database, the clock, the tokens, and the
//! version feed that wakes long-polling Envoys.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::clock::{Clock, Now, SystemClock};
use crate::db::Db;
use crate::egress::Targets;
use crate::fleet::{FleetConfig, Registry};
use crate::leak_signatures::VerificationKeys;
use crate::metrics::Metrics;
use crate::outage::Reachability;
use crate::reporters::Reporters;
use crate::sealing::Sealer;
use crate::shares::{Allocator, Leasing, SharesConfig};
use crate::store;
use crate::store::retention::RetentionPolicy;
use crate::throttle::{AdminLimiter, ThrottleConfig};

/// A bearer token held only as its SHA-256, compared in constant time.
#[derive(Clone)]
pub struct TokenDigest([u8; 32]);

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Lower-case hex, as the dashboard's sessions record the token they
    /// were signed in with.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Hashing first makes the comparison independent of the presented length too.
    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.0.ct_eq(&presented).into()
    }
}

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// Where every handler and worker takes `now` from, once per request or pass.
    pub clock: Arc<dyn Clock>,
    pub admin_token: TokenDigest,
    pub sync_token: TokenDigest,
    /// The latest committed config version.
    pub versions: Arc<watch::Sender<u64>>,
    /// Set when the server is shutting down, so held long-polls end at once.
    pub shutting_down: Arc<watch::Sender<bool>>,
    /// Rate limits on the admin API itself (not on the Envoys' `/v1/sync` and `/v1/usage`).
    pub throttle: Arc<AdminLimiter>,
    /// What `GET /metrics` reports.
    pub metrics: Arc<Metrics>,
    /// When set, `GET /metrics` wants this bearer token; open otherwise.
    pub metrics_token: Option<TokenDigest>,
    /// Most keys one usage receipt carries standings for.
    pub standings_page: usize,
    /// Most keys one `/v1/sync` response carries; more are paged with `next`.
    pub sync_page: usize,
    /// The proxy registry's thresholds, write-through memory and wake-ups.
    pub fleet: Arc<Registry>,
    /// The shares of fleet-wide limits this replica leases to the Envoys
    /// that report to it.
    pub leasing: Arc<Leasing>,
    /// Whether the database answers (watched on PostgreSQL only).
    pub reachability: Arc<Reachability>,
    /// Where webhooks may be sent: public addresses only unless allowed.
    pub webhook_targets: Targets,
    /// A secret scanner's token for `POST /v1/leaked-keys`, and nothing
    /// else; `None`: only the admin token reports leaks.
    pub leak_report_token: Option<TokenDigest>,
    /// The keys a signed leak report (GitHub's) is checked against; `None`:
    /// signed reports are refused.
    pub leak_report_keys: Option<Arc<VerificationKeys>>,
    /// What the usage store keeps, and for how long (`store::retention`).
    pub retention: RetentionPolicy,
    /// When this replica last wrote that each usage reporter reported.
    pub reporters: Arc<Reporters>,
    /// The keys webhook signing secrets are sealed with at rest (`sealing`).
    pub sealer: Arc<Sealer>,
}

impl AppState {
    pub fn new(db: Db, admin_token: &str, sync_token: &str, version: u64) -> Self {
        Self {
            db,
            clock: Arc::new(SystemClock),
            admin_token: TokenDigest::of(admin_token),
            sync_token: TokenDigest::of(sync_token),
            versions: Arc::new(watch::Sender::new(version)),
            shutting_down: Arc::new(watch::Sender::new(false)),
            throttle: Arc::new(AdminLimiter::new(ThrottleConfig::default())),
            metrics: Arc::new(Metrics::default()),
            metrics_token: None,
            standings_page: store::usage::MAX_STANDINGS,
            sync_page: store::feed::SYNC_PAGE_KEYS,
            fleet: Arc::new(Registry::default()),
            leasing: Arc::new(Leasing::new(Allocator::new(
                SharesConfig::default(),
                SystemClock.now().unix_ms(),
                false,
            ))),
            reachability: Arc::default(),
            webhook_targets: Targets::PublicOnly,
            leak_report_token: None,
            leak_report_keys: None,
            retention: RetentionPolicy::default(),
            reporters: Arc::default(),
            sealer: Arc::default(),
        }
    }

    /// The same state reading time from `clock` (tests set it).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Now, by the state's clock.
    pub fn now(&self) -> Now {
        self.clock.now()
    }

    /// The same state with `GET /metrics` behind `token` (`None`: open).
    pub fn with_metrics_token(mut self, token: Option<&str>) -> Self {
        self.metrics_token = token.map(TokenDigest::of);
        self
    }

    /// The same state sending webhooks only where `targets` allows.
    pub fn with_webhook_targets(mut self, targets: Targets) -> Self {
        self.webhook_targets = targets;
        self
    }

    /// The same state taking leak reports signed by one of `keys`.
    pub fn with_leak_report_keys(mut self, keys: Option<VerificationKeys>) -> Self {
        self.leak_report_keys = keys.map(Arc::new);
        self
    }

    /// The same state sealing webhook secrets with `sealer`'s keys.
    pub fn with_sealer(mut self, sealer: Sealer) -> Self {
        self.sealer = Arc::new(sealer);
        self
    }

    /// The same state taking `token` (if any) for leak reports.
    pub fn with_leak_report_token(mut self, token: Option<&str>) -> Self {
        self.leak_report_token = token.map(TokenDigest::of);
        self
    }

    /// The same state with the admin API limited by `config` instead of the defaults.
    pub fn with_throttle(mut self, config: ThrottleConfig) -> Self {
        self.throttle = Arc::new(AdminLimiter::new(config));
        self
    }

    /// The same state with usage receipts paged at `keys` keys (tests use small pages).
    pub fn with_standings_page(mut self, keys: usize) -> Self {
        self.standings_page = keys.max(1);
        self
    }

    /// The same state with `/v1/sync` paged at `keys` keys (tests use small pages).
    pub fn with_sync_page(mut self, keys: usize) -> Self {
        self.sync_page = keys.max(1);
        self
    }

    /// The same state keeping usage as `policy` says.
    pub fn with_retention(mut self, policy: RetentionPolicy) -> Self {
        self.retention = policy;
        self
    }

    /// The same state with the proxy registry's thresholds set to `config`.
    pub fn with_fleet(mut self, config: FleetConfig) -> Self {
        self.fleet = Arc::new(Registry::new(config));
        self
    }

    /// Tells long-polling Envoys that `version` is committed.
    pub fn published(&self, version: i64) {
        Self::publish_to(&self.versions, version);
    }

    /// Moves `versions` up to `version`, waking who waits for it; never down.
    pub fn publish_to(versions: &watch::Sender<u64>, version: i64) {
        let version = u64::try_from(version).unwrap_or(0);
        versions.send_if_modified(|current| {
            if version > *current {
                *current = version;
                true
            } else {
                false
            }
        });
    }
}
