//! The root context: reads plugin configuration and picks the role.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};
use serde::Deserialize;

use crate::http::TollgateHttp;
use crate::sync::{SyncConfig, SyncLoop};

/// Plugin configuration. The HTTP filter needs none; the singleton service
/// carries `{"sync": {...}}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    #[serde(default)]
    pub sync: Option<SyncConfig>,
}

#[derive(Default)]
pub struct TollgateRoot {
    sync: Option<SyncLoop>,
}

impl Context for TollgateRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(sync) = self.sync.as_mut() {
            sync.on_response(token, body_size);
        }
    }
}

impl RootContext for TollgateRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config: PluginConfig = if raw.iter().all(u8::is_ascii_whitespace) {
            PluginConfig::default()
        } else {
            match serde_json::from_slice(&raw) {
                Ok(config) => config,
                Err(e) => {
                    let _ = hostcalls::log(
                        LogLevel::Error,
                        &format!(
                            "tollgate: bad plugin configuration, keeping the previous one: {e}"
                        ),
                    );
                    return false;
                }
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
                match self.sync.as_mut() {
                    Some(existing) => existing.reconfigure(sync_config),
                    None => self.sync = Some(SyncLoop::new(sync_config)),
                }
                if hostcalls::set_tick_period(crate::sync::TICK).is_err() {
                    let _ =
                        hostcalls::log(LogLevel::Error, "tollgate: cannot start the sync timer");
                    return false;
                }
            }
            None => self.sync = None,
        }
        true
    }

    fn on_tick(&mut self) {
        if let Some(sync) = self.sync.as_mut() {
            sync.on_tick();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TollgateHttp::default()))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
