//! The Envoys the benchmark compares: the same listener and the same
//! `direct_response` route, with only the HTTP filters in front changing.
//!
//! Tollgate's arm is rendered from `envoy/tollgate.yaml`, the file users copy,
//! with its route swapped for the same `direct_response`, so what is measured
//! is what ships.
//!
//! The `tollgate-istio` arm is the same filter delivered as Istio delivers
//! it ([`istio`]): over ECDS from the `WasmPlugin` users copy, in a
//! bootstrap shaped like a sidecar's, both rendered by the end-to-end
//! harness's Istio emulation (`tollgate_e2e::istio`), with the same route.
//!
//! The `rls-limitador` arm is Envoy's own global rate limit filter asking
//! `bench-rls` (`bench/rls`) over gRPC. That filter does nothing on a
//! `direct_response` route (it needs a route to a cluster), so its route
//! names a cluster that is never reached and Envoy's health-check filter,
//! after the rate limit filter, answers 200 itself: a local reply, as a
//! `direct_response` is, with an empty body instead of "ok".

use std::path::Path;

use tollgate_e2e::istio::{
    ecds_resource_name, ecds_response, render_manifest, sidecar_bootstrap, wasm_plugin,
    write_atomically, ManifestValues, SidecarValues,
};
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
    /// The minimal limiter also removing the key from an admitted request,
    /// as any API-key filter must: what that one request-header write
    /// costs in Envoy.
    MinimalLimiterStrip,
    /// The minimal limiter also writing every other header Tollgate's
    /// shipped configuration sends: what those defaults cost in host calls
    /// alone, before any work of Tollgate's own.
    MinimalLimiterHeaders,
    /// Tollgate.
    Tollgate,
    /// Tollgate with the fewest headers an operator may choose: the IETF
    /// rate-limit headers only, and the key id as the one identity header.
    TollgateLean,
    /// Tollgate loaded the Istio way: see [`istio`].
    TollgateIstio,
    /// Envoy's global `ratelimit` filter and a rate limit service on the
    /// `limitador` crate: the design Envoy recommends for global limits.
    RlsLimitador,
}

impl Arm {
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Native => "native",
            Self::EmptyWasm => "empty-wasm",
            Self::MinimalLimiter => "minimal-limiter",
            Self::MinimalLimiterStrip => "minimal-limiter-strip",
            Self::MinimalLimiterHeaders => "minimal-limiter-headers",
            Self::Tollgate => "tollgate",
            Self::TollgateLean => "tollgate-lean",
            Self::TollgateIstio => "tollgate-istio",
            Self::RlsLimitador => "rls-limitador",
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
    /// Where `bench-rls` listens.
    pub rls_port: u16,
}

/// The domain the `rls-limitador` arm's filter sends, and `bench-rls` limits.
pub const RLS_DOMAIN: &str = "bench";

pub fn envoy_config(arm: Arm, ports: &Ports, inputs: &Inputs<'_>) -> Result<String> {
    match arm {
        Arm::Tollgate => return tollgate(ports, inputs),
        Arm::TollgateLean => return lean(&tollgate(ports, inputs)?, inputs),
        Arm::TollgateIstio => {
            return Err(
                "the tollgate-istio arm's config comes with its ECDS file: arms::istio".into(),
            )
        }
        _ => {}
    }
    let mut route = DIRECT_RESPONSE.to_owned();
    let mut clusters = String::new();
    let filters = match arm {
        Arm::Plain | Arm::Tollgate | Arm::TollgateLean | Arm::TollgateIstio => String::new(),
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
        Arm::MinimalLimiterStrip => minimal_limiter_told("strip-key", inputs),
        Arm::MinimalLimiterHeaders => minimal_limiter_told("tollgate-headers", inputs),
        Arm::RlsLimitador => {
            route = RLS_ROUTE.to_owned();
            clusters = rls_clusters(inputs.rls_port);
            rls_filters()
        }
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
                {route}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{clusters}"#,
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

/// The `rls-limitador` arm's route: the key in `x-api-key` becomes the
/// descriptor entry `api_key` of the one descriptor each request is
/// checked against. A route to a cluster, for the filter to act on.
const RLS_ROUTE: &str = r#"route:
                  cluster: unreached
                  rate_limits:
                  - actions:
                    - request_headers: { header_name: x-api-key, descriptor_key: api_key }"#;

fn rls_filters() -> String {
    // A 1 s timeout, not the default 20 ms: with `failure_mode_deny` a
    // timed-out call is a 500, which would end the run; a slow answer
    // belongs in the latency figures instead.
    format!(
        r#"
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: {RLS_DOMAIN}
              failure_mode_deny: true
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              timeout: 1s
              rate_limit_service:
                transport_api_version: V3
                grpc_service: {{ envoy_grpc: {{ cluster_name: rls }} }}
          - name: envoy.filters.http.health_check
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
              pass_through_mode: false
              headers: [{{ name: ":path", string_match: {{ prefix: "/" }} }}]"#
    )
}

/// `bench-rls` over HTTP/2, as gRPC needs; and the route's cluster, which
/// the health-check filter answers before any request reaches it.
fn rls_clusters(rls_port: u16) -> String {
    format!(
        r#"  clusters:
  - name: rls
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: rls
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {rls_port} }} }} }}
  - name: unreached
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: unreached
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 9 }} }} }}
"#
    )
}

/// The minimal limiter with `value` as its plugin configuration.
fn minimal_limiter_told(value: &str, inputs: &Inputs<'_>) -> String {
    format!(
        r#"{filter}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {value}"#,
        filter = wasm_filter("minimal", inputs.minimal_limiter_wasm)
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

/// The environment variable the shipped `WasmPlugin` has the VM read the
/// sync token from (`valueFrom: HOST`): set in the Istio arm's Envoy.
pub const ISTIO_SYNC_TOKEN_ENV: &str = "TOLLGATE_SYNC_TOKEN";

/// The Istio arm: `envoy/istio/wasmplugin.yaml` rendered, the ECDS answer
/// pilot and Istio's agent would give a sidecar for it written to `ecds`
/// (the module being `inputs.filter_wasm`, as if the agent had pulled it),
/// and the sidecar-shaped bootstrap that reads it, with its route swapped
/// for the same `direct_response` as every arm. The control plane is
/// reached over plain HTTP on loopback under Istio's cluster name.
pub fn istio(ports: &Ports, inputs: &Inputs<'_>, ecds: &Path) -> Result<String> {
    let template = std::fs::read_to_string(root().join("envoy/istio/wasmplugin.yaml"))
        .map_err(|e| format!("read envoy/istio/wasmplugin.yaml: {e}"))?;
    let wasm = std::fs::read(inputs.filter_wasm)
        .map_err(|e| format!("read {}: {e}", inputs.filter_wasm))?;
    let digest = tollgate_e2e::registry::digest(&wasm);
    let hex = digest.trim_start_matches("sha256:");
    let plugin = wasm_plugin(&render_manifest(&template, &ManifestValues::example(hex))?)?;
    write_atomically(
        ecds,
        &ecds_response(&plugin, Path::new(inputs.filter_wasm), None),
    )?;
    // Never reached: the route answers itself.
    let upstream_port = 9;
    let bootstrap = sidecar_bootstrap(&SidecarValues {
        admin_port: ports.admin,
        listener_port: ports.listener,
        upstream_port,
        control_plane_port: inputs.control_plane_port,
        ecds_path: ecds.to_owned(),
        filter_name: ecds_resource_name(&plugin),
        extra_filters: Vec::new(),
        control_plane_tls: None,
    });
    let route = format!(r#"route: {{ cluster: "inbound|{upstream_port}||" }}"#);
    if bootstrap.matches(&route).count() != 1 {
        return Err(format!(
            "the sidecar bootstrap no longer has exactly one `{route}` for the benchmark to replace"
        ));
    }
    Ok(bootstrap.replace(&route, DIRECT_RESPONSE))
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

    fn inputs() -> Inputs<'static> {
        Inputs {
            native_key: "k",
            empty_wasm: "/e.wasm",
            minimal_limiter_wasm: "/m.wasm",
            filter_wasm: "/f.wasm",
            control_plane_port: 8080,
            sync_token: "tok",
            rls_port: 8081,
        }
    }

    const PORTS: Ports = Ports {
        listener: 10000,
        admin: 9901,
    };

    #[test]
    fn the_lean_arm_is_the_shipped_configuration_with_fewer_headers() {
        let (inputs, ports) = (inputs(), PORTS);
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

    #[test]
    fn the_strip_and_headers_arms_are_the_minimal_limiter_told_so() {
        let minimal = envoy_config(Arm::MinimalLimiter, &PORTS, &inputs()).unwrap();
        for (arm, value) in [
            (Arm::MinimalLimiterStrip, "value: strip-key"),
            (Arm::MinimalLimiterHeaders, "value: tollgate-headers"),
        ] {
            let told = envoy_config(arm, &PORTS, &inputs()).unwrap();
            let added: Vec<&str> = told
                .lines()
                .filter(|l| !minimal.lines().any(|m| m == *l))
                .map(str::trim)
                .collect();
            assert_eq!(
                added,
                [
                    "configuration:",
                    "\"@type\": type.googleapis.com/google.protobuf.StringValue",
                    value,
                ]
            );
            // Under the plugin's `config`, beside its `vm_config`.
            let indent = |text: &str, key: &str| {
                text.lines()
                    .find(|l| l.trim_start().starts_with(key))
                    .map(|l| l.len() - l.trim_start().len())
            };
            assert_eq!(indent(&told, "configuration:"), indent(&told, "vm_config:"));
        }
    }

    #[test]
    fn the_rls_arm_differs_from_plain_in_its_filters_route_and_clusters_only() {
        let plain = envoy_config(Arm::Plain, &PORTS, &inputs()).unwrap();
        let rls = envoy_config(Arm::RlsLimitador, &PORTS, &inputs()).unwrap();
        for line in [
            "envoy.filters.http.ratelimit",
            "failure_mode_deny: true",
            "enable_x_ratelimit_headers: DRAFT_VERSION_03",
            "transport_api_version: V3",
            "grpc_service: { envoy_grpc: { cluster_name: rls } }",
            "explicit_http_config: { http2_protocol_options: {} }",
            "port_value: 8081",
            "request_headers: { header_name: x-api-key, descriptor_key: api_key }",
            "pass_through_mode: false",
        ] {
            assert!(rls.contains(line), "{line}");
        }
        assert!(rls.contains(&format!("domain: {RLS_DOMAIN}")));
        assert!(!rls.contains("direct_response"));
        // The rate limit filter sees the request before the health check
        // answers it, and the router comes last, as in every arm.
        let at = |name: &str| rls.find(name).unwrap();
        assert!(at("http.ratelimit") < at("http.health_check"));
        assert!(at("http.health_check") < at("http.router"));
        // Admin, listener and connection manager are plain's, up to the route.
        let same = plain
            .lines()
            .zip(rls.lines())
            .take_while(|(a, b)| a == b)
            .count();
        assert_eq!(
            plain.lines().nth(same).map(str::trim),
            Some(DIRECT_RESPONSE)
        );
        // And so is the router, last of the filters.
        fn from_router(config: &str) -> Vec<&str> {
            let router = "          - name: envoy.filters.http.router";
            config[config.find(router).unwrap()..]
                .lines()
                .take(3)
                .collect()
        }
        assert_eq!(from_router(&plain), from_router(&rls));
    }

    #[test]
    fn the_istio_arm_is_the_shipped_wasm_plugin_over_ecds_on_the_same_route() {
        let dir = std::env::temp_dir().join(format!("tollgate-bench-arms-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let wasm = dir.join("filter.wasm");
        std::fs::write(&wasm, b"\0asm").unwrap();
        let ecds = dir.join("ecds.yaml");
        let inputs = Inputs {
            filter_wasm: wasm.to_str().unwrap(),
            ..inputs()
        };
        let bootstrap = istio(&PORTS, &inputs, &ecds).unwrap();
        let answer = std::fs::read_to_string(&ecds).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // No bootstrap extension: the filter arrives over ECDS, from the file.
        assert!(!bootstrap.contains("bootstrap_extensions"));
        assert!(bootstrap.contains("config_discovery"));
        assert!(bootstrap.contains(&ecds.display().to_string()));
        assert_eq!(bootstrap.matches(DIRECT_RESPONSE).count(), 1);
        assert!(bootstrap.contains("port_value: 10000") && bootstrap.contains("port_value: 9901"));
        assert!(bootstrap.contains("port_value: 8080"), "the control plane");
        // pilot's filter: the empty vm_id, the configuration as JSON in a
        // StringValue, the token from the environment, the module the file.
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        let config = &answer["resources"][0]["typed_config"]["config"];
        assert!(config["vm_config"].get("vm_id").is_none(), "{config}");
        assert_eq!(
            config["vm_config"]["code"]["local"]["filename"],
            inputs.filter_wasm
        );
        assert_eq!(
            config["vm_config"]["environment_variables"]["host_env_keys"][0],
            ISTIO_SYNC_TOKEN_ENV
        );
        assert_eq!(
            config["configuration"]["@type"],
            "type.googleapis.com/google.protobuf.StringValue"
        );
        assert!(envoy_config(Arm::TollgateIstio, &PORTS, &inputs).is_err());
    }
}
