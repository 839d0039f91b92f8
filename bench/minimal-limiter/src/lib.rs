//! The benchmark's second floor: a proxy-wasm filter that makes only the
//! host calls that any rate limiter keeping its buckets in Envoy's shared
//! data, and answering with rate-limit headers, has to make, and does
//! nothing else: no hashing, no plans, no quota, no identity headers, no
//! usage reports.
//!
//! Per request: read the `x-api-key` header, read the clock, read the key's
//! bucket and write it back with compare-and-swap, then set `RateLimit-Policy`
//! and `RateLimit` on the response. Six host calls, two of which hand data
//! back into the VM. What it costs over the empty filter is what those calls
//! cost; what Tollgate costs over it is what Tollgate itself adds.
//!
//! With the plugin configuration `strip-key` it also removes `x-api-key`
//! from an admitted request, as any API-key filter must before the request
//! goes upstream: a seventh call, and Envoy then matches the route again
//! (a request header changed). The `minimal-limiter-strip` arm measures what
//! that one write costs, a floor's part Tollgate cannot leave out.
//!
//! With `tollgate-headers` it also writes every other header Tollgate's
//! shipped configuration sends, with values as long as Tollgate's: the
//! three identity headers upstream and the three `X-RateLimit-*` headers
//! downstream. Thirteen calls, as many as Tollgate makes for a key it has
//! seen (Tollgate's fourteenth, the config version, is read once a
//! millisecond). The `minimal-limiter-headers` arm is then what Tollgate's
//! defaults cost in host calls alone; what Tollgate costs beyond it is its
//! own work in the VM.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { headers: Headers::Minimal }) });
}}

/// The one window: large enough that the benchmark never hits it.
const MAX_TOKENS: u64 = 1_000_000_000;
const WINDOW_SECONDS: u64 = 60;

/// Which headers an admitted request gets, by the plugin configuration.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Headers {
    /// The two IETF rate-limit headers on the response (none given).
    Minimal,
    /// Those, and the key removed from the request (`strip-key`).
    StripKey,
    /// Those, and Tollgate's identity and `X-RateLimit-*` headers
    /// (`tollgate-headers`).
    Tollgate,
}

struct Root {
    headers: Headers,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.headers = match config.as_slice() {
            b"strip-key" => Headers::StripKey,
            b"tollgate-headers" => Headers::Tollgate,
            _ => Headers::Minimal,
        };
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Limiter {
            remaining: None,
            headers: self.headers,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Limiter {
    remaining: Option<u64>,
    headers: Headers,
}

/// Tollgate's identity headers, with values as long as its ids.
const IDENTITY: [(&str, &str); 3] = [
    ("x-tenant-id", "tnt_00000000000000000001"),
    ("x-api-key-id", "key_00000000000000000001"),
    ("x-plan", "pln_00000000000000000001"),
];

impl Context for Limiter {}

/// A bucket as 16 bytes: tokens left, then when it was last refilled (ms).
fn decode(bytes: &[u8]) -> Option<(u64, u64)> {
    let tokens = u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
    let at = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((tokens, at))
}

fn encode(tokens: u64, at: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&tokens.to_le_bytes());
    out[8..].copy_from_slice(&at.to_le_bytes());
    out
}

/// Takes one token from `key`'s bucket; `None` if it is empty or the store refused.
fn consume(key: &str, now_ms: u64) -> Option<u64> {
    for _ in 0..8 {
        let (bytes, cas) = hostcalls::get_shared_data(key).ok()?;
        let (tokens, at) = bytes
            .as_deref()
            .and_then(decode)
            .unwrap_or((MAX_TOKENS, now_ms));
        let refill = now_ms.saturating_sub(at).saturating_mul(MAX_TOKENS) / (WINDOW_SECONDS * 1000);
        let tokens = tokens
            .saturating_add(refill)
            .min(MAX_TOKENS)
            .checked_sub(1)?;
        match hostcalls::set_shared_data(key, Some(&encode(tokens, now_ms)), cas) {
            Ok(()) => return Some(tokens),
            Err(proxy_wasm::types::Status::CasMismatch) => continue,
            Err(_) => return None,
        }
    }
    None
}

impl HttpContext for Limiter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let key = hostcalls::get_map_value(MapType::HttpRequestHeaders, "x-api-key")
            .ok()
            .flatten();
        let now_ms = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64);
        let (Some(key), Some(now_ms)) = (key, now_ms) else {
            let _ = hostcalls::send_http_response(401, vec![], None);
            return Action::Pause;
        };
        match consume(&key, now_ms) {
            Some(remaining) => {
                self.remaining = Some(remaining);
                if self.headers != Headers::Minimal {
                    let _ =
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-api-key", None);
                }
                if self.headers == Headers::Tollgate {
                    for (name, value) in IDENTITY {
                        let _ = hostcalls::set_map_value(
                            MapType::HttpRequestHeaders,
                            name,
                            Some(value),
                        );
                    }
                }
                Action::Continue
            }
            None => {
                let _ = hostcalls::send_http_response(429, vec![], None);
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Some(remaining) = self.remaining {
            let policy = format!("\"window\";q={MAX_TOKENS};w={WINDOW_SECONDS}");
            let state = format!("\"window\";r={remaining};t={WINDOW_SECONDS}");
            let _ = hostcalls::set_map_value(
                MapType::HttpResponseHeaders,
                "ratelimit-policy",
                Some(&policy),
            );
            let _ =
                hostcalls::set_map_value(MapType::HttpResponseHeaders, "ratelimit", Some(&state));
            if self.headers == Headers::Tollgate {
                let trio = [
                    ("x-ratelimit-limit", MAX_TOKENS.to_string()),
                    ("x-ratelimit-remaining", remaining.to_string()),
                    ("x-ratelimit-reset", WINDOW_SECONDS.to_string()),
                ];
                for (name, value) in &trio {
                    let _ =
                        hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
                }
            }
        }
        Action::Continue
    }
}
