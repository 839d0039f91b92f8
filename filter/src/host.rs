//! The one door to Envoy: every host call the filter makes is in this file.
//!
//! The background work (the lease, the sync loop, the usage reporter) sees
//! the host only through the narrow [`Host`] trait, so it is plain Rust that
//! native unit tests drive with an in-memory fake (`crate::fake`). The
//! request path and the root context's glue call the free functions below.
//!
//! Host errors are handled, never unwrapped: the SDK's trait defaults
//! unwrap, so nothing here uses them, and the header calls are the ABI's own
//! (see [`raw`]) so that their statuses are numbers to check.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};
use tollgate_core::store::{SetError, SharedStore};

/// A call to the control plane, as the loops ask for it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub cluster: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    /// The sync token, sent as `Authorization: Bearer`.
    pub token: &'a str,
    /// Sent with `content-type: application/json` when present.
    pub body: Option<&'a [u8]>,
    /// More headers: the proxy's identity (`crate::identity`).
    pub headers: &'a [(&'static str, String)],
    pub timeout_ms: u64,
}

/// A call's answer, as the loops see it: `status` is `None` when no
/// response came (reset, timeout, no upstream).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub status: Option<u16>,
    pub body: Vec<u8>,
}

/// What the background loops need of Envoy: shared data (through
/// [`SharedStore`]), calls out, the usage queue, logs and stats.
pub trait Host: SharedStore {
    fn log(&self, level: LogLevel, message: &str);
    /// Sends `call`; the answer comes later under the returned token.
    fn dispatch(&self, call: &Call<'_>) -> Result<u32, String>;
    /// Appends to a shared queue; false if the queue is gone.
    fn enqueue(&self, queue: u32, bytes: &[u8]) -> bool;
    /// The oldest item of a shared queue, `None` when it is empty or gone.
    fn dequeue(&self, queue: u32) -> Option<Vec<u8>>;
    /// Bits for a new reporter identity.
    fn random(&self) -> u64;
    /// An Envoy attribute as text (`["node", "id"]`), `None` if absent.
    fn property(&self, path: &[&str]) -> Option<String>;
    /// A stats event (`crate::metrics`).
    fn stat(&self, event: crate::metrics::Event);
}

/// What a host call does, for the count the `host-call-counts` build keeps
/// ([`counts`]); in the shipped build [`note`] is empty and this is unused
/// at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SharedGet,
    SharedSet,
    Clock,
    Property,
    HeaderRead,
    HeaderWrite,
    LocalReply,
    /// Logs, stats, calls out, queues, buffers, timers.
    Other,
}

/// Counts one host call of `kind` (the `host-call-counts` build only).
#[inline(always)]
fn note(kind: Kind) {
    #[cfg(feature = "host-call-counts")]
    counts::note(kind);
    #[cfg(not(feature = "host-call-counts"))]
    let _ = kind;
}

/// Every host call counted by [`Kind`], in the `host-call-counts` build:
/// a request's calls are added up callback by callback (so that the root
/// context's ticks, which run between them, are not), and when the stream
/// ends Envoy's stats get one count per request under
/// `tollgate_test.host_calls.<outcome>.<kind>.<n>`: how many requests with
/// that outcome made `n` calls of that kind (`total` for all kinds).
/// `tests/tests/host_calls.rs` reads them.
#[cfg(feature = "host-call-counts")]
pub mod counts {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use proxy_wasm::hostcalls;
    use proxy_wasm::types::MetricType;

    use super::Kind;

    pub const KINDS: usize = 8;
    pub type Calls = [u64; KINDS];

    const NAMES: [&str; KINDS] = [
        "shared_get",
        "shared_set",
        "clock",
        "property",
        "header_read",
        "header_write",
        "local_reply",
        "other",
    ];

    thread_local! {
        static CALLS: Cell<Calls> = const { Cell::new([0; KINDS]) };
        static IDS: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
    }

    pub(super) fn note(kind: Kind) {
        CALLS.with(|calls| {
            let mut now = calls.get();
            if let Some(n) = now.get_mut(kind as usize) {
                *n += 1;
            }
            calls.set(now);
        });
    }

    /// The calls counted so far in this VM.
    pub fn now() -> Calls {
        CALLS.with(Cell::get)
    }

    /// Adds the calls made since `before` to `into`.
    pub fn add_since(before: Calls, into: &mut Calls) {
        for ((into, now), before) in into.iter_mut().zip(now()).zip(before) {
            *into += now.saturating_sub(before);
        }
    }

    fn bump(name: String) {
        // Straight to the SDK: these calls are the count's own, not the request's.
        let id = IDS.with(|ids| {
            if let Some(id) = ids.borrow().get(&name) {
                return Some(*id);
            }
            let id = hostcalls::define_metric(MetricType::Counter, &name).ok()?;
            ids.borrow_mut().insert(name, id);
            Some(id)
        });
        if let Some(id) = id {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }

    /// Records one request's `calls` under `outcome`.
    pub fn record(outcome: &str, calls: &Calls) {
        let total: u64 = calls.iter().sum();
        bump(format!("tollgate_test.host_calls.{outcome}.total.{total}"));
        for (name, n) in NAMES.iter().zip(calls) {
            bump(format!("tollgate_test.host_calls.{outcome}.{name}.{n}"));
        }
    }
}

/// Envoy, the real host.
pub struct Proxy;

impl SharedStore for Proxy {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        note(Kind::SharedGet);
        match hostcalls::get_shared_data(key) {
            Ok((Some(bytes), Some(cas))) if !bytes.is_empty() => Some((bytes, cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), SetError> {
        note(Kind::SharedSet);
        hostcalls::set_shared_data(key, value, cas).map_err(|status| match status {
            Status::CasMismatch => SetError::CasMismatch,
            other => SetError::Host(format!("{other:?}")),
        })
    }
}

impl Host for Proxy {
    fn log(&self, level: LogLevel, message: &str) {
        log(level, message);
    }

    fn dispatch(&self, call: &Call<'_>) -> Result<u32, String> {
        let auth = format!("Bearer {}", call.token);
        let mut headers = vec![
            (":method", call.method),
            (":path", call.path),
            (":authority", call.authority),
            ("authorization", auth.as_str()),
        ];
        if call.body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        headers.extend(call.headers.iter().map(|(n, v)| (*n, v.as_str())));
        note(Kind::Other);
        hostcalls::dispatch_http_call(
            call.cluster,
            headers,
            call.body,
            vec![],
            Duration::from_millis(call.timeout_ms),
        )
        .map_err(|status| format!("{status:?}"))
    }

    fn enqueue(&self, queue: u32, bytes: &[u8]) -> bool {
        note(Kind::Other);
        hostcalls::enqueue_shared_queue(queue, Some(bytes)).is_ok()
    }

    fn dequeue(&self, queue: u32) -> Option<Vec<u8>> {
        note(Kind::Other);
        hostcalls::dequeue_shared_queue(queue).ok().flatten()
    }

    fn random(&self) -> u64 {
        note(Kind::Other);
        // It never fails in Envoy; the clock keeps ids apart if it ever did.
        raw::random_u64().unwrap_or_else(|| now_ms().unwrap_or(0))
    }

    fn stat(&self, event: crate::metrics::Event) {
        crate::metrics::record(event);
    }

    fn property(&self, path: &[&str]) -> Option<String> {
        note(Kind::Property);
        let raw = hostcalls::get_property(path.to_vec()).ok()??;
        String::from_utf8(raw).ok()
    }
}

pub fn log(level: LogLevel, message: &str) {
    note(Kind::Other);
    let _ = hostcalls::log(level, message);
}

/// Host wall-clock time in Unix milliseconds, or `None` if the host will not say.
pub fn now_ms() -> Option<u64> {
    note(Kind::Clock);
    let now = hostcalls::get_current_time().ok()?;
    let since = now.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

/// The plugin configuration's bytes (empty when there is none).
pub fn plugin_configuration() -> Vec<u8> {
    note(Kind::Other);
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// An environment variable of the VM (Envoy's `vm_config.environment_variables`,
/// Istio's `vmConfig.env`), read through WASI.
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

pub fn set_tick_period(period: Duration) -> bool {
    note(Kind::Other);
    hostcalls::set_tick_period(period).is_ok()
}

/// The shared queue called `name` in this VM's `vm_id`, created if absent.
/// Registering an existing queue keeps what it holds.
pub fn register_queue(name: &str) -> Option<u32> {
    note(Kind::Other);
    hostcalls::register_shared_queue(name).ok()
}

/// The most of an answer read into the VM: several times the largest the
/// control plane sends (a sync page of 20,000 keys is a few MB).
pub const MAX_ANSWER_BYTES: usize = 32 << 20;

/// The answer to the call being delivered now. A call that failed (reset,
/// timed out, cut off in its body) has no headers: Envoy then answers the
/// SDK's header read with a status it panics on, so the ABI is called
/// directly.
pub fn call_answer(body_size: usize) -> Answer {
    if body_size > MAX_ANSWER_BYTES {
        log(
            LogLevel::Warn,
            &format!(
                "tollgate: an answer of {body_size} bytes is over the {MAX_ANSWER_BYTES}-byte limit; taken as a failed call"
            ),
        );
        return Answer {
            status: None,
            body: Vec::new(),
        };
    }
    note(Kind::Other);
    let status = raw::header_value(MapType::HttpCallResponseHeaders, ":status")
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
    let body = match status {
        Some(_) if body_size > 0 => {
            note(Kind::Other);
            raw::buffer(BufferType::HttpCallResponseBody, body_size).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    Answer { status, body }
}

/// The downstream peer, from Envoy's `source.address` attribute (`ip:port`).
pub fn client_ip() -> Option<std::net::IpAddr> {
    note(Kind::Property);
    let raw = hostcalls::get_property(vec!["source", "address"]).ok()??;
    let text = std::str::from_utf8(&raw).ok()?;
    text.parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| text.parse::<std::net::IpAddr>())
        .ok()
}

/// Answers the request from the filter instead of the upstream; a gRPC
/// call with `grpc_status` (Envoy then sends `body` as its `grpc-message`).
pub fn send_local_reply(
    status: u32,
    headers: &[(&str, &str)],
    body: &[u8],
    grpc_status: Option<u32>,
) -> bool {
    note(Kind::LocalReply);
    let sent = raw::send_local_response(status, headers, body, grpc_status);
    if !sent {
        log(LogLevel::Error, "tollgate: cannot send local reply");
    }
    sent
}

/// The request's headers as the host serializes them (see `crate::headers`).
pub fn request_header_block() -> Vec<u8> {
    note(Kind::HeaderRead);
    raw::header_map_pairs(MapType::HttpRequestHeaders).unwrap_or_default()
}

/// Sets `name` to `value` (replacing any values it had) on the request or
/// response headers; `None` removes it. False if the host refused.
pub fn set_header(map: MapType, name: &str, value: Option<&str>) -> bool {
    note(Kind::HeaderWrite);
    raw::set_header(map, name, value)
}

pub fn define_counter(name: &str) -> Option<u32> {
    note(Kind::Other);
    hostcalls::define_metric(MetricType::Counter, name).ok()
}

pub fn define_gauge(name: &str) -> Option<u32> {
    note(Kind::Other);
    hostcalls::define_metric(MetricType::Gauge, name).ok()
}

pub fn increment_metric(id: u32, by: u64) {
    note(Kind::Other);
    let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
}

pub fn record_metric(id: u32, value: u64) {
    note(Kind::Other);
    let _ = hostcalls::record_metric(id, value);
}

// The proxy-wasm ABI calls the SDK wraps, declared again so that their
// statuses are numbers to check rather than panics.
#[allow(unsafe_code)]
mod raw {
    use proxy_wasm::types::{BufferType, MapType};

    const OK: u32 = 0;

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: MapType,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        fn proxy_replace_header_map_value(
            map_type: MapType,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_remove_header_map_value(
            map_type: MapType,
            key_data: *const u8,
            key_size: usize,
        ) -> u32;
        fn proxy_get_header_map_value(
            map_type: MapType,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        fn proxy_get_buffer_bytes(
            buffer_type: BufferType,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
        fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            additional_headers_map_data: *const u8,
            additional_headers_size: usize,
            grpc_status: i32,
        ) -> u32;
    }

    // WASI's, which Envoy answers from its own random source. Called
    // directly: std reaches it only through `RandomState`, whose failure
    // path alone brings 5 KB of WASI error names into filter.wasm.
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        fn random_get(buf: *mut u8, buf_len: usize) -> i32;
    }

    pub fn random_u64() -> Option<u64> {
        let mut bytes = [0u8; 8];
        // SAFETY: the host writes `bytes.len()` bytes at the pointer during the call only.
        let errno = unsafe { random_get(bytes.as_mut_ptr(), bytes.len()) };
        (errno == 0).then(|| u64::from_le_bytes(bytes))
    }

    /// Headers as the ABI passes a map: the number of pairs, each pair's two
    /// lengths, then each name and value followed by a NUL.
    pub(super) fn serialize_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
        let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
        let mut out = Vec::with_capacity(
            4 + pairs
                .iter()
                .map(|(n, v)| 10 + n.len() + v.len())
                .sum::<usize>(),
        );
        out.extend_from_slice(&len(pairs.len()));
        for (name, value) in pairs {
            out.extend_from_slice(&len(name.len()));
            out.extend_from_slice(&len(value.len()));
        }
        for (name, value) in pairs {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.extend_from_slice(value.as_bytes());
            out.push(0);
        }
        out
    }

    /// The ABI's own call: the SDK's panics on a status it does not expect.
    pub fn send_local_response(
        status: u32,
        headers: &[(&str, &str)],
        body: &[u8],
        grpc_status: Option<u32>,
    ) -> bool {
        let map = serialize_pairs(headers);
        // -1: no gRPC status of ours; Envoy maps the HTTP status for a gRPC call.
        let grpc = grpc_status
            .and_then(|g| i32::try_from(g).ok())
            .unwrap_or(-1);
        // SAFETY: the host only reads the given ranges during the call.
        let status = unsafe {
            proxy_send_local_response(
                status,
                std::ptr::null(),
                0,
                body.as_ptr(),
                body.len(),
                map.as_ptr(),
                map.len(),
                grpc,
            )
        };
        status == OK
    }

    pub fn header_map_pairs(map: MapType) -> Option<Vec<u8>> {
        // SAFETY: an ABI call that returns bytes the host allocated; it
        // writes the two out-parameters during the call only.
        unsafe { received(|data, size| proxy_get_header_map_pairs(map, data, size)) }
            .filter(|pairs| !pairs.is_empty())
    }

    /// Takes what the host wrote through `call`: a pointer to bytes it
    /// allocated through the SDK's `proxy_on_memory_allocate`, which
    /// allocates a `Vec<u8>` of exactly that capacity, so ownership passes
    /// to us. `None` on any status but OK.
    ///
    /// # Safety
    /// `call` must be a proxy-wasm ABI call that, on OK, leaves in its
    /// out-parameters a pointer the host allocated so, and its length.
    unsafe fn received(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Option<Vec<u8>> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        if call(&mut data, &mut size) != OK {
            return None;
        }
        if data.is_null() {
            return Some(Vec::new());
        }
        // SAFETY: per this function's contract, the host allocated `size`
        // bytes at `data` as a `Vec<u8>` of that capacity.
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }

    pub fn header_value(map: MapType, name: &str) -> Option<Vec<u8>> {
        // SAFETY: an ABI call that returns bytes the host allocated; it
        // reads `name` and writes the two out-parameters during the call only.
        unsafe {
            received(|data, size| {
                proxy_get_header_map_value(map, name.as_ptr(), name.len(), data, size)
            })
        }
    }

    pub fn buffer(kind: BufferType, max_size: usize) -> Option<Vec<u8>> {
        // SAFETY: an ABI call that returns bytes the host allocated; it
        // writes the two out-parameters during the call only.
        unsafe { received(|data, size| proxy_get_buffer_bytes(kind, 0, max_size, data, size)) }
    }

    pub fn set_header(map: MapType, name: &str, value: Option<&str>) -> bool {
        // SAFETY: the host only reads the given ranges during the call.
        let status = unsafe {
            match value {
                Some(value) => proxy_replace_header_map_value(
                    map,
                    name.as_ptr(),
                    name.len(),
                    value.as_ptr(),
                    value.len(),
                ),
                None => proxy_remove_header_map_value(map, name.as_ptr(), name.len()),
            }
        };
        status == OK
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn headers_are_serialized_as_the_abi_reads_a_map() {
        let bytes = super::raw::serialize_pairs(&[("ab", "c"), ("d", "")]);
        let mut expected = vec![2, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(b"ab\0c\0d\0\0");
        assert_eq!(bytes, expected);
    }
}
