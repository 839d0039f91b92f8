//! The HTTP filter: gather facts, call `decide`, apply the decision.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use tollgate_core::cache::ConfigCache;
use tollgate_core::decide::{
    decide, decide_cached, is_stale, stale_refusal, ClientIp, Decision, Denied, DenyReason,
    RequestFacts,
};
use tollgate_core::response::{grpc_reply, is_grpc, local_reply, RateLimitHeaders};

use crate::config::{PluginConfig, RateLimitSets};
use crate::headers::HeaderBlock;
use crate::host::{self, Proxy};
use crate::report::SharedTally;

pub struct TollgateHttp {
    response_headers: RateLimitHeaders,
    /// Which of `response_headers` are sent.
    rate_limit_sets: RateLimitSets,
    tally: SharedTally,
    cache: SharedCache,
    /// `None` only for a root context Envoy never configured.
    config: Option<Rc<PluginConfig>>,
    #[cfg(feature = "host-call-counts")]
    counted: Counted,
}

/// A request's host calls so far, and what it came to (the
/// `host-call-counts` build only: see `host::counts`).
#[cfg(feature = "host-call-counts")]
#[derive(Default)]
struct Counted {
    outcome: &'static str,
    calls: host::counts::Calls,
}

/// A VM's [`ConfigCache`], shared by its root contexts and its HTTP contexts.
pub type SharedCache = Rc<RefCell<ConfigCache>>;

impl TollgateHttp {
    pub fn new(tally: SharedTally, cache: SharedCache, config: Option<Rc<PluginConfig>>) -> Self {
        Self {
            response_headers: RateLimitHeaders::default(),
            rate_limit_sets: RateLimitSets::default(),
            tally,
            cache,
            config,
            #[cfg(feature = "host-call-counts")]
            counted: Counted::default(),
        }
    }

    /// Notes what the request came to, for the count of its host calls.
    #[cfg(feature = "host-call-counts")]
    fn came_to(&mut self, outcome: &'static str) {
        self.counted.outcome = outcome;
    }

    /// Whether this Envoy has applied a config, as of `now`.
    fn config_applied(&self, now: u64) -> bool {
        match self.cache.try_borrow_mut() {
            Ok(mut cache) => cache.version(&Proxy, now).is_some(),
            Err(_) => tollgate_core::layout::applied_version(&Proxy).is_some(),
        }
    }

    /// The `config_stale` refusal if the applied config's last successful
    /// sync is `budget` ms or more before `now`. The sync time rides on the
    /// version entry, which `decide` reads anyway (the cache keeps it for
    /// this millisecond): no host call of its own.
    fn stale_refusal(&self, budget: u64, now: u64) -> Option<Denied> {
        let synced_at = match self.cache.try_borrow_mut() {
            Ok(mut cache) => {
                cache.version(&Proxy, now)?;
                cache.synced_at_ms()
            }
            Err(_) => tollgate_core::layout::applied_state(&Proxy)?.synced_at_ms,
        };
        is_stale(synced_at, budget, now)
            .then(|| stale_refusal(now.saturating_sub(synced_at.unwrap_or(now))))
    }
}

impl Context for TollgateHttp {}

/// Refuses the request: a gRPC call (`grpc`) with the reason's gRPC status,
/// anything else with problem+json; with the rate-limit headers of `sets`.
fn reply(denied: &Denied, grpc: bool, sets: RateLimitSets) -> Action {
    let reply = if grpc {
        grpc_reply(denied)
    } else {
        local_reply(denied)
    };
    let mut headers: Vec<(&str, &str)> = reply.headers().collect();
    headers.retain(|(name, _)| sets.sends(name));
    host::send_local_reply(
        reply.status,
        &headers,
        reply.body.as_bytes(),
        reply.grpc_status,
    );
    Action::Pause
}

/// Refuses the request for `reason` alone, counted (no policy: no
/// rate-limit headers to choose from).
fn refuse(reason: DenyReason, detail: &str, grpc: bool) -> Action {
    crate::metrics::denied(reason);
    reply(&Denied::new(reason, detail), grpc, RateLimitSets::default())
}

impl TollgateHttp {
    // A host call that hands data back costs about a microsecond (the host
    // calls into the VM to allocate), one that only takes data far less: the
    // request's headers are read in one call, and what changes is written
    // header by header.
    #[inline(always)]
    fn request_headers(&mut self) -> Action {
        let Some(config) = self.config.clone() else {
            #[cfg(feature = "host-call-counts")]
            self.came_to(DenyReason::ConfigUnavailable.code());
            // Before its headers are read: answered as plain HTTP.
            return refuse(
                DenyReason::ConfigUnavailable,
                "The gateway's Tollgate filter has no valid configuration.",
                false,
            );
        };
        let sources = &config.api_key;
        let headers = HeaderBlock::request();
        let header = |name: &str| headers.raw(name);
        let path = headers.get(":path").unwrap_or_default();
        #[cfg(feature = "crash-test")]
        if let Some(action) = crate::crash_test::arm_if_asked(&headers) {
            return action;
        }
        let grpc = is_grpc(headers.get("content-type"));
        let presented = sources.find(header, path);
        // Scopes and route costs see the path the upstream will see.
        let upstream_path = sources.upstream_path(path);

        let Some(now) = host::now_ms() else {
            #[cfg(feature = "host-call-counts")]
            self.came_to(DenyReason::ConfigUnavailable.code());
            return refuse(
                DenyReason::ConfigUnavailable,
                "The gateway cannot read its clock.",
                grpc,
            );
        };
        let facts = RequestFacts {
            api_key: presented.as_ref().map(|(key, _)| key.as_str()),
            method: headers.get(":method").unwrap_or_default(),
            path: upstream_path.as_deref().unwrap_or(path),
            client_ip: ClientIp::Ask(host::client_ip),
        };
        // Chosen routes (health checks) go through untouched until the
        // first config is applied. The version read is the one `decide`
        // makes anyway (the cache keeps it for this millisecond), and is
        // made only for such routes.
        if config.passes_before_config(facts.method, facts.path) && !self.config_applied(now) {
            #[cfg(feature = "host-call-counts")]
            self.came_to("passed_before_config");
            return Action::Continue;
        }
        if let Some(budget) = config.sync.refuse_after_ms() {
            if let Some(denied) = self.stale_refusal(budget, now) {
                #[cfg(feature = "host-call-counts")]
                self.came_to(denied.reason.code());
                crate::metrics::denied(denied.reason);
                return reply(&denied, grpc, config.rate_limit_headers);
            }
        }
        let mut decision = match self.cache.try_borrow_mut() {
            Ok(mut cache) => decide_cached(&facts, &Proxy, &mut cache, now),
            Err(_) => decide(&facts, &Proxy, now),
        };
        if let Decision::Deny(denied) = &mut decision {
            if denied.reason == DenyReason::MissingApiKey {
                denied.detail = sources.describe();
            }
        }
        crate::metrics::count(&decision);
        #[cfg(feature = "host-call-counts")]
        self.came_to(match &decision {
            Decision::Allow(allowed) if allowed.key_id.is_some() => "allowed",
            Decision::Allow(_) => "anonymous",
            Decision::Deny(denied) => denied.reason.code(),
        });
        if let Ok(mut tally) = self.tally.try_borrow_mut() {
            match &decision {
                Decision::Allow(allowed) => match &allowed.key_id {
                    Some(key_id) => tally.allowed(key_id, allowed.cost, now),
                    None => tally.anonymous(),
                },
                Decision::Deny(denied) => {
                    tally.denied(denied.key_id.as_ref(), denied.reason.code())
                }
            }
        }
        match decision {
            Decision::Allow(allowed) => {
                // The key never travels upstream, and identity headers are only ever ours.
                let from = presented.as_ref().map(|(_, from)| *from);
                let removals = sources.removals(header, from);
                let request = MapType::HttpRequestHeaders;
                for name in &removals.headers {
                    host::set_header(request, name, None);
                }
                if removals.authorization {
                    host::set_header(request, "authorization", None);
                }
                if let Some(path) = &upstream_path {
                    host::set_header(request, ":path", Some(path));
                }
                if let Some(cookie) = &removals.cookie {
                    let value = Some(cookie.as_str()).filter(|c| !c.is_empty());
                    host::set_header(request, "cookie", value);
                }
                let identity = &config.identity_headers;
                let ours = identity.of(&allowed);
                for name in identity.stripped() {
                    if headers.contains(name) && !ours.iter().any(|(n, _)| *n == name) {
                        host::set_header(request, name, None);
                    }
                }
                for (name, value) in ours {
                    host::set_header(request, name, Some(value));
                }
                if !config.rate_limit_headers.none() {
                    self.response_headers = RateLimitHeaders::of(&allowed.policies);
                    self.rate_limit_sets = config.rate_limit_headers;
                }
                Action::Continue
            }
            Decision::Deny(denied) => reply(&denied, grpc, config.rate_limit_headers),
        }
    }

    #[inline(always)]
    fn add_rate_limit_headers(&mut self) -> Action {
        if self.response_headers.is_empty() {
            return Action::Continue;
        }
        let sets = self.rate_limit_sets;
        for (name, value) in self.response_headers.iter() {
            if sets.sends(name) {
                host::set_header(MapType::HttpResponseHeaders, name, Some(value));
            }
        }
        Action::Continue
    }
}

// Each callback's host calls are added to the request's in the
// `host-call-counts` build; the root context's ticks run between callbacks
// and are not the request's.
impl HttpContext for TollgateHttp {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        #[cfg(feature = "host-call-counts")]
        let before = host::counts::now();
        let action = self.request_headers();
        #[cfg(feature = "host-call-counts")]
        host::counts::add_since(before, &mut self.counted.calls);
        action
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        #[cfg(feature = "host-call-counts")]
        let before = host::counts::now();
        let action = self.add_rate_limit_headers();
        #[cfg(feature = "host-call-counts")]
        host::counts::add_since(before, &mut self.counted.calls);
        action
    }

    #[cfg(feature = "host-call-counts")]
    fn on_log(&mut self) {
        host::counts::record(self.counted.outcome, &self.counted.calls);
    }
}
