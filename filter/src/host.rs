//! The real [`SharedStore`]: proxy-wasm shared data, shared by every VM with our `vm_id`.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use tollgate_core::store::{SetError, SharedStore};

pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(bytes), Some(cas))) if !bytes.is_empty() => Some((bytes, cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), SetError> {
        hostcalls::set_shared_data(key, value, cas).map_err(|status| match status {
            Status::CasMismatch => SetError::CasMismatch,
            other => SetError::Host(format!("{other:?}")),
        })
    }
}

/// Host wall-clock time in Unix milliseconds, or `None` if the host will not say.
pub fn now_ms() -> Option<u64> {
    let now = hostcalls::get_current_time().ok()?;
    let since = now.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}
