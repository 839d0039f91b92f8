//! The Envoys the benchmark compares: the same listener and the same
//! `direct_response` route, with only the HTTP filters in front changing.
//!
//! Tollgate's arm is rendered from `envoy/tollgate.yaml`, the file users copy,
//! with its route swapped for the same `direct_response`, so what is measured
//! is what ships.

use tollgate_launch::{render_envoy_config, EnvoyValues};

use crate::{root, Result};

/// What the route answers in every arm.
const DIRECT_RESPONSE: &str = r#"direct_response: { status: 200, body: { inline_string: "ok" } }"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// No HTTP filter but the router.
    Plain,
    /// Envoy's own `api_key_auth` + `local_ratelimit`, rate-limit headers on.
    Native,
    /// A proxy-wasm filter that does nothing: the floor.
    EmptyWasm,
    /// A proxy-wasm filter making only the host calls a shared-data rate
    /// limiter with rate-limit headers must make: the floor for any limiter.
    MinimalLimiter,
    /// Tollgate.
    Tollgate,
    /// Tollgate with the fewest headers an operator may choose: the IETF
    /// rate-limit headers only, and the key id as the one identity header.
    TollgateLean,
}

impl Arm {
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Native => "native",
            Self::EmptyWasm => "empty-wasm",
            Self::MinimalLimiter => "minimal-limiter",
            Self::Tollgate => "tollgate",
            Self::TollgateLean => "tollgate-lean",
        }
    }
}

pub struct Ports {
    pub listener: u16,
    pub admin: u16,
}

/// Where each arm gets what it needs.
pub struct Inputs<'a> {
    pub native_key: &'a str,
    pub empty_wasm: &'a str,
    pub minimal_limiter_wasm: &'a str,
    pub filter_wasm: &'a str,
    pub control_plane_port: u16,
    pub sync_token: &'a str,
}

pub fn envoy_config(arm: Arm, ports: &Ports, inputs: &Inputs<'_>) -> Result<String> {
    match arm {
        Arm::Tollgate => return tollgate(ports, inputs),
        Arm::TollgateLean => return lean(&tollgate(ports, inputs)?, inputs),
        _ => {}
    }
    let filters = match arm {
        Arm::Plain | Arm::Tollgate | Arm::TollgateLean => String::new(),
        Arm::Native => format!(
            r#"
          - name: envoy.filters.http.api_key_auth
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth
              credentials: [{{ key: "{key}", client: "bench" }}]
              key_sources: [{{ header: "x-api-key" }}]
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: bench
              token_bucket: {{ max_tokens: 1000000000, tokens_per_fill: 1000000000, fill_interval: 1s }}
              filter_enabled: {{ runtime_key: rl_enabled, default_value: {{ numerator: 100, denominator: HUNDRED }} }}
              filter_enforced: {{ runtime_key: rl_enforced, default_value: {{ numerator: 100, denominator: HUNDRED }} }}
              enable_x_ratelimit_headers: DRAFT_VERSION_03"#,
            key = inputs.native_key
        ),
        Arm::EmptyWasm => wasm_filter("empty", inputs.empty_wasm),
        Arm::MinimalLimiter => wasm_filter("minimal", inputs.minimal_limiter_wasm),
    };
    Ok(format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listener} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                {DIRECT_RESPONSE}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        admin = ports.admin,
        listener = ports.listener,
    ))
}

/// A proxy-wasm filter of the benchmark's own, in a VM of its own.
fn wasm_filter(name: &str, path: &str) -> String {
    format!(
        r#"
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: {name}
                vm_config:
                  vm_id: {name}
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: "{path}" }} }}"#
    )
}

/// What the lean arm adds to the template's plugin configuration.
pub const LEAN: &str =
    r#""rate_limit_headers": ["ietf"], "identity_headers": {"tenant_id": null, "plan": null}"#;

/// Tollgate's arm with [`LEAN`] added to its plugin configuration.
fn lean(rendered: &str, inputs: &Inputs<'_>) -> Result<String> {
    let end = format!(r#""token": "{}"}}}}'"#, inputs.sync_token);
    if rendered.matches(&end).count() != 1 {
        return Err(format!(
            "envoy/tollgate.yaml's plugin configuration no longer ends in `{end}` for the lean arm to extend"
        ));
    }
    Ok(rendered.replace(
        &end,
        &format!(r#""token": "{}"}}, {LEAN}}}'"#, inputs.sync_token),
    ))
}

fn tollgate(ports: &Ports, inputs: &Inputs<'_>) -> Result<String> {
    let template = std::fs::read_to_string(root().join("envoy/tollgate.yaml"))
        .map_err(|e| format!("read envoy/tollgate.yaml: {e}"))?;
    let rendered = render_envoy_config(
        &template,
        &EnvoyValues {
            envoy_port: ports.listener,
            envoy_admin_port: ports.admin,
            // Never reached: the route answers itself.
            upstream_port: 9,
            control_plane_port: inputs.control_plane_port,
            filter_wasm: inputs.filter_wasm.to_owned(),
            sync_token: inputs.sync_token.to_owned(),
            // Both on loopback, as `cargo xtask up` runs them.
            control_plane_tls: None,
        },
    )?;
    let route = "route: { cluster: upstream }";
    if rendered.matches(route).count() != 1 {
        return Err(format!(
            "envoy/tollgate.yaml no longer has exactly one `{route}` for the benchmark to replace"
        ));
    }
    Ok(rendered.replace(route, DIRECT_RESPONSE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lean_arm_is_the_shipped_configuration_with_fewer_headers() {
        let inputs = Inputs {
            native_key: "k",
            empty_wasm: "/e.wasm",
            minimal_limiter_wasm: "/m.wasm",
            filter_wasm: "/f.wasm",
            control_plane_port: 8080,
            sync_token: "tok",
        };
        let ports = Ports {
            listener: 10000,
            admin: 9901,
        };
        let plain = envoy_config(Arm::Tollgate, &ports, &inputs).unwrap();
        let lean = envoy_config(Arm::TollgateLean, &ports, &inputs).unwrap();
        let line = lean
            .lines()
            .find(|l| l.contains("rate_limit_headers"))
            .expect("the plugin configuration line");
        let json = line
            .trim()
            .trim_start_matches("value: '")
            .trim_end_matches('\'');
        let config: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(config["sync"]["token"], "tok");
        assert_eq!(config["rate_limit_headers"], serde_json::json!(["ietf"]));
        assert_eq!(
            config["identity_headers"],
            serde_json::json!({"tenant_id": null, "plan": null})
        );
        // Nothing else differs.
        assert_eq!(plain.lines().count(), lean.lines().count());
        let differing = plain
            .lines()
            .zip(lean.lines())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differing, 1);
    }
}
