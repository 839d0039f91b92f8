//! An in-memory [`Host`] for the loops' native unit tests: Envoy's shared
//! data (core's `MemoryStore`), shared queues, and calls recorded for the
//! test to answer, as Envoy would, by token.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};

use proxy_wasm::types::LogLevel;
use tollgate_core::store::{MemoryStore, SetError, SharedStore};

use crate::config::SyncConfig;
use crate::host::{Call, Host};
use crate::metrics::Event;

/// A call as sent, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub token: u32,
    pub method: String,
    pub path: String,
    pub token_header: String,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

#[derive(Default)]
pub struct FakeHost {
    pub store: MemoryStore,
    pub sent: RefCell<Vec<Sent>>,
    next_token: Cell<u32>,
    pub queues: RefCell<BTreeMap<u32, VecDeque<Vec<u8>>>>,
    pub logs: RefCell<Vec<(LogLevel, String)>>,
    pub stats: RefCell<Vec<Event>>,
    /// Makes `dispatch` fail, as Envoy does for an unknown cluster.
    pub refuse_dispatch: Cell<bool>,
    /// Envoy's attributes, by path joined with dots (`node.id`).
    pub properties: RefCell<BTreeMap<String, String>>,
}

impl FakeHost {
    pub fn new() -> Self {
        let host = Self::default();
        host.queues.borrow_mut().insert(QUEUE, VecDeque::new());
        host
    }

    /// The header `name` of a call as sent.
    pub fn header<'a>(sent: &'a Sent, name: &str) -> Option<&'a str> {
        sent.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The calls sent since the last look, taken.
    pub fn take_sent(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.sent.borrow_mut())
    }
}

/// The usage queue's token in the fake.
pub const QUEUE: u32 = 1;

pub fn config() -> SyncConfig {
    SyncConfig {
        cluster: "cp".into(),
        authority: "tollgate-control-plane".into(),
        token: "sync-token".into(),
        wait_ms: 20_000,
        retry_ms: 250,
        stale_after_ms: None,
        when_stale: crate::config::WhenStale::Enforce,
    }
}

impl SharedStore for FakeHost {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.store.get(key)
    }

    fn set(&self, key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), SetError> {
        self.store.set(key, value, cas)
    }
}

impl Host for FakeHost {
    fn log(&self, level: LogLevel, message: &str) {
        self.logs.borrow_mut().push((level, message.to_owned()));
    }

    fn dispatch(&self, call: &Call<'_>) -> Result<u32, String> {
        if self.refuse_dispatch.get() {
            return Err("BadArgument".into());
        }
        let token = self.next_token.get() + 1;
        self.next_token.set(token);
        self.sent.borrow_mut().push(Sent {
            token,
            method: call.method.to_owned(),
            path: call.path.to_owned(),
            token_header: call.token.to_owned(),
            body: call.body.unwrap_or_default().to_vec(),
            headers: call
                .headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.clone()))
                .collect(),
        });
        Ok(token)
    }

    fn enqueue(&self, queue: u32, bytes: &[u8]) -> bool {
        match self.queues.borrow_mut().get_mut(&queue) {
            Some(q) => {
                q.push_back(bytes.to_vec());
                true
            }
            None => false,
        }
    }

    fn dequeue(&self, queue: u32) -> Option<Vec<u8>> {
        self.queues.borrow_mut().get_mut(&queue)?.pop_front()
    }

    fn random(&self) -> u64 {
        0xfeed_beef
    }

    fn stat(&self, event: Event) {
        self.stats.borrow_mut().push(event);
    }

    fn property(&self, path: &[&str]) -> Option<String> {
        self.properties.borrow().get(&path.join(".")).cloned()
    }
}
