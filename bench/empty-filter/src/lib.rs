//! The floor of `cargo xtask bench`: a proxy-wasm HTTP filter with a root
//! context and an HTTP context that override nothing. Whatever Envoy spends
//! on it is the price of being a proxy-wasm filter in V8 at all, which no
//! filter can go below; Tollgate's own cost is measured against it.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Nothing) });
}}

struct Nothing;

impl Context for Nothing {}

impl HttpContext for Nothing {}

impl RootContext for Nothing {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Nothing))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
