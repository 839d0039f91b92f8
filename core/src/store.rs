//! The narrow door to proxy-wasm shared data.
//!
//! The filter implements [`SharedStore`] over the host calls; tests use
//! [`MemoryStore`], which behaves like Envoy's shared data (a global CAS
//! counter, and a write to an absent key always succeeds) and can inject CAS
//! conflicts to exercise the retry loop.

use core::fmt;

/// A write lost the compare-and-swap race, or the host refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetError {
    CasMismatch,
    Host(String),
}

impl fmt::Display for SetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CasMismatch => f.write_str("compare-and-swap mismatch"),
            Self::Host(why) => write!(f, "shared data write failed: {why}"),
        }
    }
}

/// Proxy-wasm shared data, as much of it as Tollgate needs.
pub trait SharedStore {
    /// The value and its CAS token, or `None` when the key is absent or was removed.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes (or with `None`, removes) a value. With `cas`, fails with
    /// [`SetError::CasMismatch`] if the value changed since it was read.
    fn set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), SetError>;
}

#[cfg(any(test, feature = "test-util"))]
pub use memory::MemoryStore;

#[cfg(any(test, feature = "test-util"))]
mod memory {
    use super::{SetError, SharedStore};
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// In-memory shared data with Envoy's semantics, for tests.
    #[derive(Default)]
    pub struct MemoryStore {
        data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
        conflicts: Cell<u32>,
        /// Entries whose next CAS-guarded writes fail, and how many.
        conflicts_on: RefCell<HashMap<String, u32>>,
        sets: Cell<u32>,
    }

    impl MemoryStore {
        pub fn new() -> Self {
            Self::default()
        }

        /// The next `n` CAS-guarded writes fail as if another worker had written first.
        pub fn inject_cas_conflicts(&self, n: u32) {
            self.conflicts.set(n);
        }

        /// The next `n` CAS-guarded writes of `key` fail, whatever the
        /// others do: a race lost on one entry of a request's several.
        pub fn inject_cas_conflicts_on(&self, key: &str, n: u32) {
            self.conflicts_on.borrow_mut().insert(key.to_owned(), n);
        }

        /// How many writes succeeded so far.
        pub fn successful_sets(&self) -> u32 {
            self.sets.get()
        }

        pub fn keys(&self) -> Vec<String> {
            let mut keys: Vec<String> = self.data.borrow().keys().cloned().collect();
            keys.sort();
            keys
        }
    }

    impl SharedStore for MemoryStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.data
                .borrow()
                .get(key)
                .filter(|(v, _)| !v.is_empty())
                .cloned()
        }

        fn set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), SetError> {
            let mut data = self.data.borrow_mut();
            if let (Some(cas), Some((_, current))) = (cas, data.get(key)) {
                if let Some(left) = self.conflicts_on.borrow_mut().get_mut(key) {
                    if *left > 0 {
                        *left -= 1;
                        return Err(SetError::CasMismatch);
                    }
                }
                if self.conflicts.get() > 0 {
                    self.conflicts.set(self.conflicts.get() - 1);
                    return Err(SetError::CasMismatch);
                }
                if cas != 0 && cas != *current {
                    return Err(SetError::CasMismatch);
                }
            }
            let next = self.next_cas.get().wrapping_add(1).max(1);
            self.next_cas.set(next);
            data.insert(key.to_owned(), (value.unwrap_or_default().to_vec(), next));
            self.sets.set(self.sets.get() + 1);
            Ok(())
        }
    }
}
