//! The HTTP filter: gather facts, call `decide`, apply the decision.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, MapType};
use tollgate_core::cache::ConfigCache;
use tollgate_core::decide::{
    decide, decide_cached, presented_key, ClientIp, Decision, Denied, DenyReason, RequestFacts,
};
use tollgate_core::key::KEY_PREFIX;
use tollgate_core::response::{
    local_reply, upstream_headers, RateLimitHeaders, STRIPPED_REQUEST_HEADERS,
};

use crate::headers::{self, HeaderBlock};
use crate::host::{now_ms, HostStore};
use crate::usage::SharedTally;

pub struct TollgateHttp {
    response_headers: RateLimitHeaders,
    tally: SharedTally,
    cache: SharedCache,
}

/// A worker's [`ConfigCache`], shared by its root context and its HTTP contexts.
pub type SharedCache = Rc<RefCell<ConfigCache>>;

impl TollgateHttp {
    pub fn new(tally: SharedTally, cache: SharedCache) -> Self {
        Self {
            response_headers: RateLimitHeaders::default(),
            tally,
            cache,
        }
    }
}

impl Context for TollgateHttp {}

/// The downstream peer, from Envoy's `source.address` attribute (`ip:port`).
fn client_ip() -> Option<std::net::IpAddr> {
    let raw = hostcalls::get_property(vec!["source", "address"]).ok()??;
    let text = std::str::from_utf8(&raw).ok()?;
    text.parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| text.parse::<std::net::IpAddr>())
        .ok()
}

fn reply(denied: &Denied) -> Action {
    let reply = local_reply(denied);
    let headers: Vec<(&str, &str)> = reply.headers().collect();
    if let Err(status) =
        hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()))
    {
        let _ = hostcalls::log(
            LogLevel::Error,
            &format!("tollgate: cannot send local reply: {status:?}"),
        );
    }
    Action::Pause
}

impl HttpContext for TollgateHttp {
    // A host call that hands data back costs about a microsecond (the host
    // calls into the VM to allocate), one that only takes data far less: the
    // request's headers are read in one call, and what changes is written
    // header by header.
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let headers = HeaderBlock::request();
        let x_api_key = headers.get("x-api-key");
        let authorization = headers.get("authorization");
        let presented = presented_key(x_api_key, authorization);

        let Some(now) = now_ms() else {
            crate::metrics::denied(DenyReason::ConfigUnavailable);
            return reply(&Denied {
                reason: DenyReason::ConfigUnavailable,
                detail: "The gateway cannot read its clock.".into(),
                retry_after: None,
                policies: Vec::new(),
                violated: Vec::new(),
                key_id: None,
            });
        };
        let facts = RequestFacts {
            api_key: presented,
            method: headers.get(":method").unwrap_or_default(),
            path: headers.get(":path").unwrap_or_default(),
            client_ip: ClientIp::Ask(client_ip),
        };
        let decision = match self.cache.try_borrow_mut() {
            Ok(mut cache) => decide_cached(&facts, &HostStore, &mut cache, now),
            Err(_) => decide(&facts, &HostStore, now),
        };
        crate::metrics::count(&decision);
        if let Ok(mut tally) = self.tally.try_borrow_mut() {
            match &decision {
                Decision::Allow(allowed) => match &allowed.key_id {
                    Some(key_id) => tally.allowed(key_id, allowed.cost, now),
                    None => tally.anonymous(),
                },
                Decision::Deny(denied) => {
                    tally.denied(denied.key_id.as_deref(), denied.reason.code())
                }
            }
        }
        match decision {
            Decision::Allow(allowed) => {
                // The key never travels upstream, and identity headers are only ever ours.
                let bearer_is_key = authorization
                    .and_then(|a| presented_key(None, Some(a)))
                    .is_some_and(|k| x_api_key.is_none() || k.starts_with(KEY_PREFIX));
                let request = MapType::HttpRequestHeaders;
                if headers.contains("x-api-key") {
                    headers::set(request, "x-api-key", None);
                }
                if bearer_is_key {
                    headers::set(request, "authorization", None);
                }
                let ours = upstream_headers(&allowed);
                for name in STRIPPED_REQUEST_HEADERS {
                    if headers.contains(name) && !ours.iter().any(|(n, _)| *n == name) {
                        headers::set(request, name, None);
                    }
                }
                for (name, value) in ours {
                    headers::set(request, name, Some(value));
                }
                self.response_headers = RateLimitHeaders::of(&allowed.policies);
                Action::Continue
            }
            Decision::Deny(denied) => reply(&denied),
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.response_headers.is_empty() {
            return Action::Continue;
        }
        for (name, value) in self.response_headers.iter() {
            headers::set(MapType::HttpResponseHeaders, name, Some(value));
        }
        Action::Continue
    }
}
