//! The HTTP filter: gather facts, call `decide`, apply the decision.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, MapType};
use tollgate_core::decide::{decide, presented_key, Decision, Denied, DenyReason, RequestFacts};
use tollgate_core::key::KEY_PREFIX;
use tollgate_core::response::{
    local_reply, rate_limit_headers, upstream_headers, STRIPPED_REQUEST_HEADERS,
};

use crate::host::{now_ms, HostStore};
use crate::usage::SharedTally;

pub struct TollgateHttp {
    response_headers: Vec<(&'static str, String)>,
    tally: SharedTally,
}

impl TollgateHttp {
    pub fn new(tally: SharedTally) -> Self {
        Self {
            response_headers: Vec::new(),
            tally,
        }
    }
}

impl Context for TollgateHttp {}

fn request_header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

/// The downstream peer, from Envoy's `source.address` attribute (`ip:port`).
fn client_ip() -> Option<std::net::IpAddr> {
    let raw = hostcalls::get_property(vec!["source", "address"]).ok()??;
    let text = std::str::from_utf8(&raw).ok()?;
    text.parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| text.parse::<std::net::IpAddr>())
        .ok()
}

fn set_request_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
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

impl HttpContext for TollgateHttp {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let x_api_key = request_header("x-api-key");
        let authorization = request_header("authorization");
        let presented = presented_key(x_api_key.as_deref(), authorization.as_deref());

        // The key never travels upstream, and identity headers are only ever ours.
        if x_api_key.is_some() {
            set_request_header("x-api-key", None);
        }
        let bearer_is_key = authorization
            .as_deref()
            .and_then(|a| presented_key(None, Some(a)))
            .is_some_and(|k| x_api_key.is_none() || k.starts_with(KEY_PREFIX));
        if bearer_is_key {
            set_request_header("authorization", None);
        }
        for name in STRIPPED_REQUEST_HEADERS {
            set_request_header(name, None);
        }

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
        let method = request_header(":method").unwrap_or_default();
        let path = request_header(":path").unwrap_or_default();
        let facts = RequestFacts {
            api_key: presented,
            method: &method,
            path: &path,
            client_ip: client_ip(),
        };
        let decision = decide(&facts, &HostStore, now);
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
                for (name, value) in upstream_headers(&allowed) {
                    set_request_header(name, Some(value));
                }
                self.response_headers = rate_limit_headers(&allowed.policies);
                Action::Continue
            }
            Decision::Deny(denied) => reply(&denied),
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in self.response_headers.drain(..) {
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(&value));
        }
        Action::Continue
    }
}
