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
    local_reply, rate_limit_headers, upstream_headers, STRIPPED_REQUEST_HEADERS,
};

use crate::host::{now_ms, HostStore};
use crate::usage::SharedTally;

pub struct TollgateHttp {
    response_headers: Vec<(&'static str, String)>,
    tally: SharedTally,
    cache: SharedCache,
}

/// A worker's [`ConfigCache`], shared by its root context and its HTTP contexts.
pub type SharedCache = Rc<RefCell<ConfigCache>>;

impl TollgateHttp {
    pub fn new(tally: SharedTally, cache: SharedCache) -> Self {
        Self {
            response_headers: Vec::new(),
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
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    if let Err(status) = hostcalls::send_http_response(reply.status, headers, Some(&reply.body)) {
        let _ = hostcalls::log(
            LogLevel::Error,
            &format!("tollgate: cannot send local reply: {status:?}"),
        );
    }
    Action::Pause
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

impl HttpContext for TollgateHttp {
    // Host calls cost about a microsecond each, so the request's headers are
    // read in one call and, when it is admitted, written back in one call.
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let headers = hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        let x_api_key = find(&headers, "x-api-key");
        let authorization = find(&headers, "authorization");
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
            method: find(&headers, ":method").unwrap_or_default(),
            path: find(&headers, ":path").unwrap_or_default(),
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
                let ours = upstream_headers(&allowed);
                let mut upstream: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .filter(|(n, _)| {
                        *n != "x-api-key"
                            && !(bearer_is_key && *n == "authorization")
                            && !STRIPPED_REQUEST_HEADERS.contains(n)
                    })
                    .collect();
                upstream.extend(ours);
                let _ = hostcalls::set_map(MapType::HttpRequestHeaders, upstream);
                self.response_headers = rate_limit_headers(&allowed.policies);
                Action::Continue
            }
            Decision::Deny(denied) => reply(&denied),
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.response_headers.is_empty() {
            return Action::Continue;
        }
        let ours = std::mem::take(&mut self.response_headers);
        let headers = hostcalls::get_map(MapType::HttpResponseHeaders).unwrap_or_default();
        let mut merged: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .filter(|(n, _)| !ours.iter().any(|(o, _)| o == n))
            .collect();
        merged.extend(ours.iter().map(|(n, v)| (*n, v.as_str())));
        let _ = hostcalls::set_map(MapType::HttpResponseHeaders, merged);
        Action::Continue
    }
}
