//! The root context: reads plugin configuration and picks the role.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};
use tollgate_core::json::{self, Field, Fields, FromJson, Reader};

use crate::host::now_ms;
use crate::http::{SharedCache, TollgateHttp};
use crate::sync::{SyncConfig, SyncLoop};
use crate::usage::{Flusher, Reporter, SharedTally, FLUSH_EVERY, QUEUE};

/// Plugin configuration. The HTTP filter needs none; the singleton service
/// carries `{"sync": {...}}`. Unknown fields are errors.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PluginConfig {
    pub sync: Option<SyncConfig>,
}

const PLUGIN_CONFIG: Fields = Fields::closed(&[Field::optional("sync")]);

impl FromJson for PluginConfig {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, json::Error> {
        let mut v = PluginConfig::default();
        reader.object(&PLUGIN_CONFIG, &mut |r, _| r.set(&mut v.sync))?;
        Ok(v)
    }
}

impl PluginConfig {
    /// The configuration in `raw`: none at all if it is empty or
    /// whitespace, else JSON.
    pub fn parse(raw: &[u8]) -> Result<Self, json::Error> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        json::from_slice(raw)
    }
}

#[derive(Default)]
pub struct TollgateRoot {
    sync: Option<SyncLoop>,
    reporter: Option<Reporter>,
    /// This VM's decisions since the last hand-over.
    tally: SharedTally,
    /// This VM's parsed config, shared by its HTTP contexts.
    cache: SharedCache,
    flusher: Option<Flusher>,
}

/// Our `vm_id`, under which the service's usage queue lives.
fn vm_id() -> String {
    hostcalls::get_property(vec!["plugin_vm_id"])
        .ok()
        .flatten()
        .and_then(|raw| String::from_utf8(raw).ok())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| "tollgate".to_owned())
}

impl Context for TollgateRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(reporter) = self.reporter.as_mut() {
            if reporter.on_response(token, body_size) {
                return;
            }
        }
        if let Some(sync) = self.sync.as_mut() {
            sync.on_response(token, body_size);
        }
    }
}

impl RootContext for TollgateRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        crate::metrics::define();
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match PluginConfig::parse(&raw) {
            Ok(config) => config,
            Err(e) => {
                let _ = hostcalls::log(
                    LogLevel::Error,
                    &format!("tollgate: bad plugin configuration, keeping the previous one: {e}"),
                );
                return false;
            }
        };
        match config.sync {
            Some(sync_config) => {
                if let Err(e) = sync_config.validate() {
                    let _ = hostcalls::log(
                        LogLevel::Error,
                        &format!("tollgate: bad sync configuration: {e}"),
                    );
                    return false;
                }
                match self.reporter.as_mut() {
                    Some(existing) => existing.reconfigure(sync_config.clone()),
                    None => match hostcalls::register_shared_queue(QUEUE) {
                        Ok(queue) => {
                            self.reporter = Some(Reporter::new(
                                sync_config.clone(),
                                queue,
                                now_ms().unwrap_or(0),
                            ))
                        }
                        Err(e) => {
                            let _ = hostcalls::log(
                                LogLevel::Error,
                                &format!("tollgate: cannot register the usage queue: {e:?}"),
                            );
                        }
                    },
                }
                match self.sync.as_mut() {
                    Some(existing) => existing.reconfigure(sync_config),
                    None => self.sync = Some(SyncLoop::new(sync_config)),
                }
                self.flusher = None;
                if hostcalls::set_tick_period(crate::sync::TICK).is_err() {
                    let _ =
                        hostcalls::log(LogLevel::Error, "tollgate: cannot start the sync timer");
                    return false;
                }
            }
            None => {
                self.sync = None;
                self.reporter = None;
                self.flusher = Some(Flusher::new(vm_id()));
                if hostcalls::set_tick_period(FLUSH_EVERY).is_err() {
                    let _ = hostcalls::log(
                        LogLevel::Error,
                        "tollgate: cannot start the usage timer; usage will not be reported",
                    );
                }
            }
        }
        true
    }

    fn on_tick(&mut self) {
        if let Some(sync) = self.sync.as_mut() {
            sync.on_tick();
        }
        if let Some(reporter) = self.reporter.as_mut() {
            reporter.absorb(&self.tally);
            reporter.on_tick();
        }
        if let Some(flusher) = self.flusher.as_mut() {
            flusher.flush(&self.tally);
            crate::metrics::flush();
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Some(reporter) = self.reporter.as_mut() {
            if reporter.queue() == queue_id {
                reporter.on_queue_ready();
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TollgateHttp::new(
            self.tally.clone(),
            self.cache.clone(),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(authority: &str, wait_ms: u64, retry_ms: u64) -> Option<SyncConfig> {
        Some(SyncConfig {
            cluster: "cp".into(),
            authority: authority.into(),
            token: "t".into(),
            wait_ms,
            retry_ms,
        })
    }

    /// What serde_json read with the derives these types had (`sync`
    /// optional, `deny_unknown_fields` on both, defaults for `authority`,
    /// `wait_ms` and `retry_ms`): each verdict checked against it.
    #[test]
    fn plugin_configuration_reads_as_serde_json_read_it() {
        let defaults = sync("tollgate-control-plane", 20_000, 250);
        let cases: &[(&[u8], Option<Option<SyncConfig>>)] = &[
            (b"", Some(None)),
            (b" \n\t\r", Some(None)),
            (b"{}", Some(None)),
            (br#"{"sync":null}"#, Some(None)),
            (br#"{"sync":{"cluster":"cp","token":"t"}}"#, Some(defaults.clone())),
            (
                br#" { "sync" : { "token" : "t" , "cluster" : "cp" } } "#,
                Some(defaults.clone()),
            ),
            (
                br#"{"sync":{"cluster":"cp","authority":"a","token":"t","wait_ms":1,"retry_ms":60000}}"#,
                Some(sync("a", 1, 60_000)),
            ),
            (br#"{"sync":["cp","a","t"]}"#, Some(sync("a", 20_000, 250))),
            (b"[null]", Some(None)),
            (b"[]", Some(None)),
            (b"null", None),
            (b"\"\"", None),
            (br#"{"sync":{}}"#, None),
            (br#"{"sync":{"cluster":"cp"}}"#, None),
            (br#"{"sync":{"token":"t"}}"#, None),
            (br#"{"sync":{"cluster":"cp","token":"t","wait":1}}"#, None),
            (br#"{"sync":{"cluster":"cp","token":"t"},"other":1}"#, None),
            (br#"{"sync":null,"sync":null}"#, None),
            (br#"{"sync":{"cluster":"cp","token":"t","token":"u"}}"#, None),
            (br#"{"sync":{"cluster":"cp","token":"t","wait_ms":null}}"#, None),
            (br#"{"sync":{"cluster":"cp","token":"t","wait_ms":-1}}"#, None),
            (br#"{"sync":{"cluster":"cp","token":"t","wait_ms":1.5}}"#, None),
            (br#"{"sync":{"cluster":"cp","token":null}}"#, None),
            (br#"{"sync":{"cluster":"cp","token":"t"}}}"#, None),
            (br#"{"sync":{"cluster":"cp","token":"t"},}"#, None),
            (br#"{"sync":{"cluster":"cp","token":"t"}"#, None),
            (b"\x0c{}", None),
        ];
        for (raw, expected) in cases {
            let read = PluginConfig::parse(raw).ok().map(|c| c.sync);
            assert_eq!(&read, expected, "{}", String::from_utf8_lossy(raw));
        }
    }
}
