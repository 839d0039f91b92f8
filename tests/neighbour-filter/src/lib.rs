//! Another Wasm plugin on the same proxy, for the end-to-end test that
//! Tollgate and its neighbours leave each other alone.
//!
//! Under Istio every `WasmPlugin` of a proxy runs with the empty `vm_id`, so
//! all of them share one shared-data namespace and one queue namespace. This
//! filter uses both the way a plugin that never heard of Tollgate might, with
//! plain names, including the ones Tollgate itself used before its names
//! carried a prefix (`tg/version`, `k/…`, the queue `tollgate_usage`): on
//! every request it counts the request in shared data, overwrites those
//! names with junk and enqueues an item; its root context drains the queue
//! on each tick and counts what it drained. It answers what it counted in
//! response headers, so the test sees that its own data stayed whole while
//! Tollgate kept working beside it.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

const REQUESTS: &str = "requests";
const DRAINED: &str = "drained";
const QUEUE: &str = "tollgate_usage";
/// Names an unprefixed design would use, Tollgate's old ones among them.
const JUNK: [&str; 4] = ["tg/version", "version", "k/ungWv48Bz-pBQUDeXa4i", "p/plan"];

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { queue: None }) });
}}

/// Adds `by` to a counter in shared data, with compare-and-swap.
fn add(name: &str, by: u64) -> u64 {
    for _ in 0..32 {
        let (value, cas) = hostcalls::get_shared_data(name).unwrap_or((None, None));
        let now = value
            .and_then(|v| v.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0);
        let next = now + by;
        if hostcalls::set_shared_data(name, Some(&next.to_le_bytes()), cas).is_ok() {
            return next;
        }
    }
    0
}

fn read(name: &str) -> u64 {
    hostcalls::get_shared_data(name)
        .ok()
        .and_then(|(v, _)| v)
        .and_then(|v| v.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

struct Root {
    queue: Option<u32>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        hostcalls::set_tick_period(Duration::from_millis(100)).is_ok()
    }

    fn on_tick(&mut self) {
        if self.queue.is_none() {
            self.queue = hostcalls::register_shared_queue(QUEUE).ok();
        }
        let Some(queue) = self.queue else { return };
        let mut drained = 0;
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue) {
            drained += 1;
        }
        if drained > 0 {
            add(DRAINED, drained);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request { counted: 0 }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    counted: u64,
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.counted = add(REQUESTS, 1);
        for name in JUNK {
            let _ = hostcalls::set_shared_data(name, Some(b"neighbour's own bytes"), None);
        }
        if let Ok(Some(queue)) = hostcalls::resolve_shared_queue("", QUEUE) {
            let _ = hostcalls::enqueue_shared_queue(queue, Some(b"neighbour item"));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let counted = self.counted.to_string();
        let drained = read(DRAINED).to_string();
        let _ = hostcalls::set_map_value(
            MapType::HttpResponseHeaders,
            "x-neighbour-requests",
            Some(&counted),
        );
        let _ = hostcalls::set_map_value(
            MapType::HttpResponseHeaders,
            "x-neighbour-drained",
            Some(&drained),
        );
        Action::Continue
    }
}
