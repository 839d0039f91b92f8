//! The root context: one per VM and configuration, the glue of the background work.
//!
//! Every root context, on every tick, hands its VM's counts to the usage
//! queue and takes part in the election ([`crate::lease`]); the one that
//! leads also runs the sync loop and the usage reporter. The decisions are
//! in those modules, behind `crate::host::Host`; this file only reads the
//! clock, passes answers in as values and applies what they decide.
//!
//! A VM's tally and config memo belong to the VM, not to a root context: a
//! configuration update replaces the root contexts but keeps the VMs, and
//! requests still in flight keep counting into the same tally, which the
//! new root context hands over.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

use tollgate_core::cache::ConfigCache;
use tollgate_core::layout::read_leases;

use crate::config::PluginConfig;
use crate::host::{self, Host, Proxy};
use crate::http::{SharedCache, TollgateHttp};
use crate::lease::{self, Lease};
use crate::report::{self, Reporter, SharedTally, USAGE_QUEUE};
use crate::sync::SyncLoop;

/// How often every root context ticks: the hand-over of counts, the lease,
/// and the leader's look at whether a poll or a report is due.
pub const TICK: Duration = Duration::from_millis(50);

thread_local! {
    /// This VM's decisions since the last hand-over.
    static TALLY: SharedTally = SharedTally::default();
    /// This VM's parsed config, shared by its HTTP contexts.
    static CACHE: SharedCache = Rc::new(RefCell::new(ConfigCache::with_seed(Proxy.random())));
    /// Whether this VM has served a request: the main thread's never does.
    static SERVING: Cell<bool> = const { Cell::new(false) };
}

#[derive(Default)]
pub struct TollgateRoot {
    config: Option<Rc<PluginConfig>>,
    /// Drawn on the first tick, never in `on_configure`, which Envoy also
    /// runs in a canary VM it throws away.
    lease: Option<Lease>,
    queue: Option<u32>,
    sync: SyncLoop,
    reporter: Reporter,
    /// When this root context last took the lead.
    leading_since: u64,
    /// Whether shares of fleet-wide limits have been received (by any leader).
    leases_known: bool,
}

/// Longest the first sync waits for the first usage receipt: a control
/// plane that leases nothing (or does not answer reports) delays it no more.
const FIRST_LEASES_WAIT_MS: u64 = 2_000;

impl TollgateRoot {
    fn started(&mut self) -> Option<(Lease, u32)> {
        if self.queue.is_none() {
            crate::metrics::define();
            self.queue = host::register_queue(USAGE_QUEUE);
            if self.queue.is_none() {
                host::log(
                    LogLevel::Error,
                    "tollgate: cannot register the usage queue; retrying",
                );
            }
        }
        if self.lease.is_none() {
            self.lease = lease::draw_number(&Proxy).map(Lease::new);
        }
        Some((self.lease?, self.queue?))
    }

    fn resign(&mut self) {
        self.sync.resign();
        self.reporter.resign();
    }

    /// Hands the lease to the contender that asked, once this leader's
    /// long-poll has ended; until then it sends no new one.
    fn hand_over_if_asked(&mut self, config: &PluginConfig, now: u64) -> bool {
        let Some(lease) = self.lease.as_mut() else {
            return false;
        };
        if !lease.asked() {
            return false;
        }
        self.sync.hold();
        if !self.sync.idle(&config.sync, now) || !lease.hand_over(&Proxy, now) {
            return false;
        }
        host::log(
            LogLevel::Info,
            &format!(
                "tollgate: root context {} hands the lead to a root context that serves no requests",
                lease.me()
            ),
        );
        self.resign();
        true
    }
}

impl Drop for TollgateRoot {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.as_mut() {
            if lease.leading() {
                host::log(LogLevel::Info, "tollgate: leader stopping, lease given up");
            }
            lease.release(&Proxy);
        }
    }
}

impl Context for TollgateRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let (Some(config), Some(lease), Some(now)) =
            (self.config.clone(), self.lease, host::now_ms())
        else {
            return;
        };
        // Only the holder applies answers: a root that lost the lease while
        // its call was out must not write over what the new leader wrote.
        if !lease.confirm(&Proxy, now) {
            self.resign();
            return;
        }
        let answer = host::call_answer(body_size);
        if !self
            .reporter
            .on_answer(&Proxy, &config.sync, token, &answer, now)
        {
            self.sync
                .on_answer(&Proxy, &config.sync, token, &answer, now);
        }
        self.hand_over_if_asked(&config, now);
    }
}

impl RootContext for TollgateRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = host::plugin_configuration();
        let config = match PluginConfig::parse(&raw, host::env_var) {
            Ok(config) => config,
            Err(e) => {
                host::log(
                    LogLevel::Error,
                    &format!(
                        "tollgate: plugin configuration refused, keeping the previous one: {e}"
                    ),
                );
                return false;
            }
        };
        if !host::set_tick_period(TICK) {
            host::log(LogLevel::Error, "tollgate: cannot start the timer");
            return false;
        }
        self.config = Some(Rc::new(config));
        true
    }

    fn on_tick(&mut self) {
        let Some(now) = host::now_ms() else { return };
        let Some((mut lease, queue)) = self.started() else {
            return;
        };
        TALLY.with(|tally| report::hand_over(&Proxy, queue, tally));
        crate::metrics::flush();
        let was_leading = lease.leading();
        let leading = lease.tick(&Proxy, now, SERVING.with(Cell::get));
        self.lease = Some(lease);
        if leading != was_leading {
            let change = if leading {
                "leads this Envoy: syncing config and reporting usage"
            } else {
                "no longer leads this Envoy"
            };
            host::log(
                LogLevel::Info,
                &format!("tollgate: root context {} {change}", lease.me()),
            );
            if leading {
                self.leading_since = now;
            } else {
                self.resign();
            }
        }
        if !leading {
            return;
        }
        let Some(config) = self.config.clone() else {
            return;
        };
        #[cfg(feature = "crash-test")]
        crate::crash_test::crash_if_asked();
        if self.hand_over_if_asked(&config, now) {
            return;
        }
        self.reporter.on_tick(&Proxy, &config.sync, queue, now);
        // The first config waits for the first usage receipt, a round trip:
        // its shares of fleet-wide limits (see `tollgate_core::fleet`), so a
        // config applied is a config whose limits admit.
        if self.leases_known || read_leases(&Proxy).is_some() {
            self.leases_known = true;
        }
        if self.leases_known || now >= self.leading_since.saturating_add(FIRST_LEASES_WAIT_MS) {
            self.sync.on_tick(&Proxy, &config.sync, now);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        SERVING.with(|serving| serving.set(true));
        Some(Box::new(TollgateHttp::new(
            TALLY.with(Rc::clone),
            CACHE.with(Rc::clone),
            self.config.clone(),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
