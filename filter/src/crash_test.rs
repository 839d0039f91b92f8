//! A way to crash the leader's VM on purpose, compiled only into the test
//! build (`--features crash-test`, `target/filter-crash-test.wasm`): the
//! end-to-end tests use it to show that a reloaded VM (Envoy's
//! `FAIL_RELOAD`) or a lease that lapses hands the sync loop and the usage
//! reporter over without losing or double-counting anything. The shipped
//! `filter.wasm` has no such path.

use proxy_wasm::types::{Action, LogLevel};
use tollgate_core::store::SharedStore;

use crate::headers::HeaderBlock;
use crate::host::{self, Proxy};

/// The request header that arms the crash.
pub const HEADER: &str = "x-tollgate-crash-test";
const ARMED: &str = "tg3/test/crash-leader";

/// A request carrying [`HEADER`]`: leader` arms the crash and is answered
/// at once (204), without being counted.
pub fn arm_if_asked(headers: &HeaderBlock) -> Option<Action> {
    if headers.get(HEADER)? != "leader" {
        return None;
    }
    let _ = Proxy.set(ARMED, Some(b"1"), None);
    host::send_local_reply(204, &[("x-tollgate-crash-test", "armed")], b"", None);
    Some(Action::Pause)
}

/// Called by the leader on its tick: aborts the VM once after arming.
pub fn crash_if_asked() {
    if Proxy.get(ARMED).is_some() {
        let _ = Proxy.set(ARMED, None, None);
        host::log(
            LogLevel::Critical,
            "tollgate: crash test: leader aborting its VM",
        );
        std::process::abort();
    }
}
