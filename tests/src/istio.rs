//! What Istio makes of Tollgate's `WasmPlugin`: the manifests users copy,
//! rendered, and the Envoy configuration Istio's control plane and agent
//! would give a sidecar for them.
//!
//! There is no Kubernetes here, so each step Istio would take is done the way
//! its source does it (1.29; tags and paths in the README's Istio section):
//! the CRD's rules that matter for Tollgate, checked by hand
//! ([`WasmPlugin::from_document`]); pilot's JSON for `pluginConfig`
//! ([`istio_plugin_config_json`]); the ECDS resource after the agent has pulled
//! the module ([`ecds_response`]) or failed to ([`failed_pull_response`]); and
//! an Envoy bootstrap with a sidecar's names for the listener, the filter and
//! the clusters ([`sidecar_bootstrap`]). A test then runs the real Envoy on
//! what a sidecar would run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

/// Istio's cluster for the control-plane Service (envoy/istio/control-plane.yaml):
/// `outbound|<port>||<service>.<namespace>.svc.cluster.local`.
pub const CONTROL_PLANE_CLUSTER: &str =
    "outbound|8080||tollgate-control-plane.tollgate.svc.cluster.local";
/// The `node` of the emulated sidecar: pod `app-0` in namespace `default`.
pub const SIDECAR_NODE_ID: &str = "sidecar~127.0.0.1~app-0.default~default.svc.cluster.local";
pub const SIDECAR_NODE_CLUSTER: &str = "app.default";

pub const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
pub const RBAC_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const STRING_VALUE_TYPE_URL: &str = "type.googleapis.com/google.protobuf.StringValue";
const EXTENSION_CONFIG_TYPE_URL: &str =
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
/// Istio ≤ 1.29 (`WasmPluginResourceNamePrefix`); 1.30+ names the resource
/// `extensions.istio.io/trafficextension/<ns>.<name>~istio-translated-wasmplugin`.
const ECDS_NAME_PREFIX: &str = "extensions.istio.io/wasmplugin/";
/// pilot puts the pull secret, pull policy and resource version into the VM's
/// environment under this prefix for its agent, which strips them again.
const AGENT_ENV_PREFIX: &str = "ISTIO_META_";

// ---------------------------------------------------------------------------
// Placeholders

/// The values that fill the `{{placeholder}}`s of `envoy/istio/*.yaml` and
/// `envoy/envoy-gateway/*.yaml`; each file's header says which it uses.
#[derive(Debug, Clone)]
pub struct ManifestValues {
    /// The filter's image with its tag and no scheme: `registry/repository:tag`.
    pub filter_image: String,
    /// Its manifest digest: 64 lowercase hex digits, without `sha256:`.
    pub filter_digest: String,
    pub control_plane_image: String,
    /// Namespace and `app` label of the workload Tollgate protects.
    pub app_namespace: String,
    pub app: String,
    pub admin_token: String,
    pub sync_token: String,
    pub secrets_key: String,
    pub database_url: String,
    /// The DNS name of a control plane outside the mesh.
    pub control_plane_host: String,
    /// The CA that signed the control plane's certificate, PEM, base64 on
    /// one line.
    pub control_plane_ca_base64: String,
    pub gateway_namespace: String,
    pub gateway_name: String,
}

impl ManifestValues {
    /// Plausible values for everything but the digest, the same in every test.
    pub fn example(filter_digest: &str) -> Self {
        Self {
            filter_image: "registry.example.com/tollgate/filter:0.1.0".into(),
            filter_digest: filter_digest.into(),
            control_plane_image: "registry.example.com/tollgate/control-plane:0.1.0".into(),
            app_namespace: "default".into(),
            app: "app".into(),
            admin_token: "example-admin-token-0123456789".into(),
            sync_token: "example-sync-token-0123456789".into(),
            secrets_key: "0f".repeat(32),
            database_url:
                "postgres://tollgate:secret@postgres.tollgate.svc.cluster.local:5432/tollgate"
                    .into(),
            control_plane_host: "tollgate.example.com".into(),
            // Not a certificate: the manifests' checks only carry it along.
            control_plane_ca_base64: "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==".into(),
            gateway_namespace: "gateways".into(),
            gateway_name: "api".into(),
        }
    }

    fn by_name(&self, name: &str) -> Option<&str> {
        let value = match name {
            "filter_image" => &self.filter_image,
            "filter_digest" => &self.filter_digest,
            "control_plane_image" => &self.control_plane_image,
            "app_namespace" => &self.app_namespace,
            "app" => &self.app,
            "admin_token" => &self.admin_token,
            "sync_token" => &self.sync_token,
            "secrets_key" => &self.secrets_key,
            "database_url" => &self.database_url,
            "control_plane_host" => &self.control_plane_host,
            "control_plane_ca_base64" => &self.control_plane_ca_base64,
            "gateway_namespace" => &self.gateway_namespace,
            "gateway_name" => &self.gateway_name,
            _ => return None,
        };
        Some(value)
    }
}

/// Fills every `{{placeholder}}` of a manifest; refuses a placeholder it has no
/// value for, one left open, and values that would change the YAML around them.
pub fn render_manifest(template: &str, values: &ManifestValues) -> Result<String, String> {
    if !is_sha256_hex(&values.filter_digest) {
        return Err(format!(
            "filter_digest {:?} must be the manifest digest's 64 lowercase hex digits, \
             without the `sha256:` prefix",
            values.filter_digest
        ));
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!(
                "the manifest has an unclosed placeholder at {:?}",
                after.lines().next().unwrap_or_default()
            ));
        };
        let name = &after[..end];
        let value = values
            .by_name(name)
            .ok_or_else(|| format!("the manifest has an unknown placeholder {{{{{name}}}}}"))?;
        if value.is_empty() || value.contains(['"', '\\', '\n', '\r']) || value.contains("{{") {
            return Err(format!(
                "{name} must be non-empty, on one line, without quotes, backslashes or `{{{{`"
            ));
        }
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

// ---------------------------------------------------------------------------
// YAML

/// The documents of a YAML stream as JSON values, as Kubernetes reads them;
/// empty documents (comments only) are skipped. Mapping keys must be strings
/// and a key may appear once; anchors and aliases are refused (none of the
/// manifests needs them).
pub fn yaml_documents(text: &str) -> Result<Vec<Value>, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    docs.iter()
        .filter(|doc| !matches!(doc, Yaml::Null))
        .map(|doc| yaml_to_json(doc, "$"))
        .collect()
}

fn yaml_to_json(yaml: &Yaml, at: &str) -> Result<Value, String> {
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(text) => {
            let number = text
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .ok_or_else(|| format!("{at}: {text} is not a finite number"))?;
            Value::Number(number)
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| yaml_to_json(item, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Hash(entries) => {
            let mut map = Map::new();
            for (key, value) in entries {
                let Yaml::String(key) = key else {
                    return Err(format!("{at}: mapping key {key:?} is not a string"));
                };
                map.insert(key.clone(), yaml_to_json(value, &format!("{at}.{key}"))?);
            }
            Value::Object(map)
        }
        Yaml::Alias(_) => return Err(format!("{at}: YAML aliases are not supported")),
        Yaml::BadValue => return Err(format!("{at}: not a YAML value")),
    })
}

// ---------------------------------------------------------------------------
// The WasmPlugin

/// `spec.phase`: where in the HTTP filter chain the plugin goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    UnspecifiedPhase,
    Authn,
    Authz,
    Stats,
}

/// `spec.failStrategy`. Absent is `FAIL_CLOSE`: it is the enum's zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailStrategy {
    FailClose,
    FailOpen,
    FailReload,
}

/// `spec.match[].mode`: the traffic direction a selector picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    Undefined,
    Client,
    Server,
    ClientAndServer,
}

/// `spec.vmConfig.env[].valueFrom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnvValueSource {
    /// `value` itself, which then sits in the resource and in config dumps.
    Inline,
    /// The variable of that name in the proxy's own environment.
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PullPolicy {
    #[serde(rename = "UNSPECIFIED_POLICY")]
    Unspecified,
    IfNotPresent,
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PluginType {
    #[serde(rename = "UNSPECIFIED_PLUGIN_TYPE")]
    Unspecified,
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "NETWORK")]
    Network,
}

/// One entry of `spec.match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficSelector {
    pub mode: WorkloadMode,
    pub ports: Vec<u16>,
}

/// One entry of `spec.vmConfig.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub name: String,
    pub value: Option<String>,
    pub value_from: EnvValueSource,
}

/// What matters of an `extensions.istio.io/v1alpha1` `WasmPlugin`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct WasmPlugin {
    pub name: String,
    pub namespace: String,
    /// `spec.selector.matchLabels`.
    pub selector: BTreeMap<String, String>,
    pub url: String,
    /// `None` when absent or empty.
    pub sha256: Option<String>,
    pub image_pull_policy: Option<PullPolicy>,
    pub phase: Phase,
    pub priority: Option<i32>,
    pub fail_strategy: FailStrategy,
    /// Becomes the filter's `root_id`.
    pub plugin_name: Option<String>,
    pub plugin_type: PluginType,
    pub matches: Vec<TrafficSelector>,
    pub vm_env: Vec<EnvVar>,
    /// `spec.pluginConfig`: always an object, empty when absent.
    pub plugin_config: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

/// The rest of `metadata` (labels, annotations, ...) does not matter here.
#[derive(Deserialize)]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
}

/// `spec` as the CRD of Istio 1.29 has it; a field it lacks is an error, as
/// kubectl's default strict field validation makes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    selector: Option<Selector>,
    target_ref: Option<Value>,
    target_refs: Option<Vec<Value>>,
    url: String,
    sha256: Option<String>,
    image_pull_policy: Option<PullPolicy>,
    image_pull_secret: Option<String>,
    #[serde(rename = "verificationKey")]
    _verification_key: Option<String>,
    plugin_config: Option<Map<String, Value>>,
    plugin_name: Option<String>,
    phase: Option<Phase>,
    priority: Option<i32>,
    fail_strategy: Option<FailStrategy>,
    #[serde(rename = "match")]
    matches: Option<Vec<SelectorEntry>>,
    #[serde(rename = "type")]
    plugin_type: Option<PluginType>,
    vm_config: Option<VmConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Selector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorEntry {
    mode: Option<WorkloadMode>,
    #[serde(default)]
    ports: Vec<PortSelector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortSelector {
    number: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmConfig {
    #[serde(default)]
    env: Vec<EnvEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EnvEntry {
    name: String,
    value: Option<String>,
    value_from: Option<EnvValueSource>,
}

/// The one `WasmPlugin` among the documents of a rendered manifest.
pub fn wasm_plugin(rendered: &str) -> Result<WasmPlugin, String> {
    let docs = yaml_documents(rendered)?;
    let mut plugins = docs
        .iter()
        .filter(|doc| doc.get("kind").and_then(Value::as_str) == Some("WasmPlugin"));
    match (plugins.next(), plugins.next()) {
        (Some(doc), None) => WasmPlugin::from_document(doc),
        (None, _) => Err("the manifest has no WasmPlugin".into()),
        (Some(_), Some(_)) => Err("the manifest has more than one WasmPlugin".into()),
    }
}

impl WasmPlugin {
    /// Reads one document, with the CRD's schema and its `x-kubernetes-validations`
    /// rules (the CEL ones, which a JSON-schema check misses) checked by hand.
    pub fn from_document(doc: &Value) -> Result<Self, String> {
        let doc: Document = serde_json::from_value(doc.clone())
            .map_err(|e| format!("not a valid WasmPlugin: {e}"))?;
        let name = doc.metadata.name.unwrap_or_default();
        let at = format!(
            "WasmPlugin {}/{name}",
            doc.metadata.namespace.as_deref().unwrap_or("?")
        );
        let fail = |what: String| Err(format!("{at}: {what}"));
        if doc.api_version != "extensions.istio.io/v1alpha1" || doc.kind != "WasmPlugin" {
            return fail(format!(
                "is {} {}, not extensions.istio.io/v1alpha1 WasmPlugin",
                doc.api_version, doc.kind
            ));
        }
        if !is_dns_subdomain(&name) {
            return fail(format!(
                "metadata.name {name:?} is not a DNS subdomain (lowercase letters, digits, '-', '.')"
            ));
        }
        let Some(namespace) = doc.metadata.namespace else {
            return fail(
                "metadata.namespace is missing: the filter's name (<namespace>.<name>) depends on it"
                    .into(),
            );
        };
        let spec = doc.spec;

        let targets = usize::from(spec.selector.is_some())
            + usize::from(spec.target_ref.is_some())
            + usize::from(spec.target_refs.is_some());
        if targets > 1 {
            return fail("only one of targetRefs or selector can be set".into());
        }
        if spec
            .target_refs
            .as_ref()
            .is_some_and(|refs| refs.len() > 16)
        {
            return fail("targetRefs has more than 16 entries".into());
        }
        let selector = spec.selector.map(|s| s.match_labels).unwrap_or_default();
        for (key, value) in &selector {
            if key.is_empty() || key.contains('*') {
                return fail(format!(
                    "selector key {key:?}: keys must be non-empty, without wildcards"
                ));
            }
            if value.len() > 63 || value.contains('*') {
                return fail(format!(
                    "selector value {value:?}: at most 63 characters, no wildcards"
                ));
            }
        }

        if let Err(why) = check_url(&spec.url) {
            return fail(format!("url {:?}: {why}", spec.url));
        }
        let sha256 = spec.sha256.filter(|s| !s.is_empty());
        if let Some(sha) = &sha256 {
            if !is_sha256_hex(sha) {
                return fail(format!(
                    "sha256 {sha:?} must match ^[a-f0-9]{{64}}$ (no `sha256:` prefix)"
                ));
            }
        }
        if let Some(plugin_name) = &spec.plugin_name {
            if plugin_name.is_empty() || plugin_name.len() > 256 {
                return fail("pluginName must have 1 to 256 characters".into());
            }
        }
        if let Some(secret) = &spec.image_pull_secret {
            if secret.is_empty() || secret.len() > 253 {
                return fail("imagePullSecret must have 1 to 253 characters".into());
            }
        }

        let mut matches = Vec::new();
        for entry in spec.matches.unwrap_or_default() {
            let mut ports = Vec::new();
            for port in entry.ports {
                let number = u16::try_from(port.number)
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("{at}: match port {} is not 1..65535", port.number))?;
                if ports.contains(&number) {
                    return fail(format!("match port {number} is listed twice"));
                }
                ports.push(number);
            }
            matches.push(TrafficSelector {
                mode: entry.mode.unwrap_or(WorkloadMode::Undefined),
                ports,
            });
        }

        let mut vm_env: Vec<EnvVar> = Vec::new();
        for entry in spec.vm_config.map(|vm| vm.env).unwrap_or_default() {
            if entry.name.is_empty() || entry.name.len() > 256 {
                return fail("vmConfig.env names must have 1 to 256 characters".into());
            }
            if vm_env.iter().any(|e| e.name == entry.name) {
                return fail(format!("vmConfig.env {:?} is listed twice", entry.name));
            }
            if entry.value.as_ref().is_some_and(|v| v.len() > 2048) {
                return fail(format!(
                    "vmConfig.env {:?}: values have at most 2048 characters",
                    entry.name
                ));
            }
            let value_from = entry.value_from.unwrap_or(EnvValueSource::Inline);
            if value_from == EnvValueSource::Host && entry.value.is_some() {
                return fail(format!(
                    "vmConfig.env {:?}: value may only be set when valueFrom is INLINE",
                    entry.name
                ));
            }
            vm_env.push(EnvVar {
                name: entry.name,
                value: entry.value,
                value_from,
            });
        }

        Ok(Self {
            name,
            namespace,
            selector,
            url: spec.url,
            sha256,
            image_pull_policy: spec.image_pull_policy,
            phase: spec.phase.unwrap_or(Phase::UnspecifiedPhase),
            priority: spec.priority,
            fail_strategy: spec.fail_strategy.unwrap_or(FailStrategy::FailClose),
            plugin_name: spec.plugin_name,
            plugin_type: spec.plugin_type.unwrap_or(PluginType::Unspecified),
            matches,
            vm_env,
            plugin_config: Value::Object(spec.plugin_config.unwrap_or_default()),
        })
    }
}

/// The CRD's rule: a URL whose scheme is one of http, https, oci and file, or
/// none at all (pilot then reads it as oci).
fn check_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("must not be empty".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace".into());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(());
    };
    if !["http", "https", "oci", "file"].contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err("url must have schema one of [http, https, file, oci]".into());
    }
    if rest.is_empty() {
        return Err("has nothing after the scheme".into());
    }
    Ok(())
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------------------
// pluginConfig as pilot writes it

/// The text pilot puts into the filter's `google.protobuf.StringValue`
/// configuration: `protomarshal.ToJSON` of the `google.protobuf.Struct` the
/// CRD stored, which is golang/protobuf's `jsonpb` (v1.5.4, `jsonpb/encode.go`):
/// compact, object keys sorted bytewise, every number a double printed by
/// Go's `encoding/json`, and strings escaped as `json.Marshal` escapes them,
/// HTML characters included.
pub fn istio_plugin_config_json(config: &Value) -> String {
    let mut out = String::new();
    write_jsonpb(config, &mut out);
    out
}

fn write_jsonpb(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&go_double(n.as_f64().unwrap_or(f64::NAN))),
        Value::String(s) => write_go_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_jsonpb(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_go_string(key, out);
                out.push(':');
                if let Some(item) = map.get(key) {
                    write_jsonpb(item, out);
                }
            }
            out.push('}');
        }
    }
}

/// `encoding/json`'s float64 encoder: `strconv` 'f' with the shortest digits
/// that round-trip, or 'e' below 1e-6 and from 1e21 on, with the exponent's
/// sign always written and no leading zero (`1e+21`, `1e-7`). Rust's `{}` and
/// `{:e}` print the same shortest digits. jsonpb writes non-finite doubles as
/// strings, though JSON input can never hold one.
fn go_double(f: f64) -> String {
    if f.is_nan() {
        return "\"NaN\"".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "\"Infinity\""
        } else {
            "\"-Infinity\""
        }
        .into();
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let text = format!("{f:e}");
        match text.split_once('e') {
            Some((mantissa, exponent)) if !exponent.starts_with('-') => {
                format!("{mantissa}e+{exponent}")
            }
            _ => text,
        }
    } else {
        format!("{f}")
    }
}

/// `encoding/json`'s string encoder with HTML escaping on, as `json.Marshal`
/// has it: `<`, `>` and `&` as `\u003c`, `\u003e`, `\u0026`; U+2028 and
/// U+2029 escaped; `\b \f \n \r \t` by name and other control characters as
/// `\u00xx`; everything else, DEL and non-ASCII included, as it is.
fn write_go_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\0'..='\u{1f}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------
// ECDS

/// Envoy's `envoy.extensions.wasm.v3.FailurePolicy` for the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    FailClosed,
    FailOpen,
    FailReload,
}

impl FailurePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailClosed => "FAIL_CLOSED",
            Self::FailOpen => "FAIL_OPEN",
            Self::FailReload => "FAIL_RELOAD",
        }
    }
}

impl FailStrategy {
    /// pilot's mapping (`buildPluginConfig`).
    pub fn failure_policy(self) -> FailurePolicy {
        match self {
            Self::FailClose => FailurePolicy::FailClosed,
            Self::FailOpen => FailurePolicy::FailOpen,
            Self::FailReload => FailurePolicy::FailReload,
        }
    }
}

/// The name of the ECDS resource, which is also the HTTP filter's name in the
/// listener (Istio ≤ 1.29).
pub fn ecds_resource_name(plugin: &WasmPlugin) -> String {
    format!("{ECDS_NAME_PREFIX}{}.{}", plugin.namespace, plugin.name)
}

/// The Wasm `PluginConfig`'s `name` (proxy-wasm's `plugin_name`).
pub fn plugin_config_name(plugin: &WasmPlugin) -> String {
    format!("{}.{}", plugin.namespace, plugin.name)
}

/// The `DiscoveryResponse` (JSON, which Envoy also reads from a `.yaml` file)
/// that a sidecar's ECDS would deliver for `plugin` once Istio's agent has
/// pulled the module to `wasm_file`: one `TypedExtensionConfig` holding an
/// HTTP Wasm filter (the plugin's `type` must be HTTP or unset), with pilot's
/// name, root id, environment and configuration and no `vm_id`, so every
/// plugin shares the empty one. `failure_policy` overrides the one that
/// `failStrategy` gives.
pub fn ecds_response(
    plugin: &WasmPlugin,
    wasm_file: &Path,
    failure_policy: Option<FailurePolicy>,
) -> String {
    let mut vm_config = Map::new();
    vm_config.insert("runtime".into(), json!("envoy.wasm.runtime.v8"));
    vm_config.insert(
        "code".into(),
        json!({"local": {"filename": wasm_file.display().to_string()}}),
    );
    if let Some(env) = environment_variables(&plugin.vm_env) {
        vm_config.insert("environment_variables".into(), env);
    }

    let mut config = Map::new();
    config.insert("name".into(), json!(plugin_config_name(plugin)));
    if let Some(root_id) = &plugin.plugin_name {
        config.insert("root_id".into(), json!(root_id));
    }
    config.insert("vm_config".into(), Value::Object(vm_config));
    // pilot leaves the configuration out for an absent or empty pluginConfig.
    if plugin
        .plugin_config
        .as_object()
        .is_some_and(|fields| !fields.is_empty())
    {
        config.insert(
            "configuration".into(),
            json!({
                "@type": STRING_VALUE_TYPE_URL,
                "value": istio_plugin_config_json(&plugin.plugin_config),
            }),
        );
    }
    let policy = failure_policy.unwrap_or(plugin.fail_strategy.failure_policy());
    config.insert("failure_policy".into(), json!(policy.as_str()));

    discovery_response(
        &ecds_resource_name(plugin),
        json!({"@type": WASM_TYPE_URL, "config": config}),
    )
}

/// The VM's environment after the agent's rewrite: pilot's `ISTIO_META_*`
/// entries (pull secret, pull policy, resource version) stripped, INLINE
/// values as `key_values`, HOST names as `host_env_keys`, and nothing at all
/// when both are empty (`pkg/wasm/convert.go` `rewriteVMConfig`).
fn environment_variables(env: &[EnvVar]) -> Option<Value> {
    let mut key_values = Map::new();
    let mut host_env_keys = Vec::new();
    for var in env {
        match var.value_from {
            EnvValueSource::Inline if !var.name.starts_with(AGENT_ENV_PREFIX) => {
                key_values.insert(
                    var.name.clone(),
                    json!(var.value.clone().unwrap_or_default()),
                );
            }
            EnvValueSource::Inline => {}
            EnvValueSource::Host => host_env_keys.push(json!(var.name)),
        }
    }
    let mut out = Map::new();
    if !host_env_keys.is_empty() {
        out.insert("host_env_keys".into(), Value::Array(host_env_keys));
    }
    if !key_values.is_empty() {
        out.insert("key_values".into(), Value::Object(key_values));
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// What the agent sends Envoy instead when it cannot pull the module
/// (`pkg/wasm/convert.go`, Istio 1.25+): an RBAC filter under the same name,
/// allowing everything when the policy is FAIL_OPEN and denying everything
/// (403 "RBAC: access denied") otherwise, FAIL_RELOAD included.
pub fn failed_pull_response(plugin: &WasmPlugin, failure_policy: Option<FailurePolicy>) -> String {
    let policy = failure_policy.unwrap_or(plugin.fail_strategy.failure_policy());
    let rbac = if policy == FailurePolicy::FailOpen {
        // No rules: nothing is checked.
        json!({"@type": RBAC_TYPE_URL, "rules_stat_prefix": "wasm-default-allow"})
    } else {
        // Rules without a policy: nothing matches, everything is denied.
        json!({"@type": RBAC_TYPE_URL, "rules": {}, "rules_stat_prefix": "wasm-default-deny"})
    };
    discovery_response(&ecds_resource_name(plugin), rbac)
}

fn discovery_response(name: &str, typed_config: Value) -> String {
    let resource = json!({
        "@type": EXTENSION_CONFIG_TYPE_URL,
        "name": name,
        "typed_config": typed_config,
    });
    // A version that changes with the content, for Envoy's update stats.
    let version = format!("{:016x}", fnv1a(resource.to_string().as_bytes()));
    let response = json!({
        "version_info": version,
        "type_url": EXTENSION_CONFIG_TYPE_URL,
        "resources": [resource],
    });
    let mut text = serde_json::to_string_pretty(&response).unwrap_or_else(|_| response.to_string());
    text.push('\n');
    text
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Replaces `path` with `contents` in one step, through a temporary file in the
/// same directory and a rename: Envoy's `path_config_source` watches for the
/// file being moved into place and never reads it half written.
pub fn write_atomically(path: &Path, contents: &str) -> Result<(), String> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| format!("cannot create a temporary file in {}: {e}", dir.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.as_file().sync_all())
        .map_err(|e| format!("cannot write {}: {e}", file.path().display()))?;
    file.persist(path).map_err(|e| {
        format!(
            "cannot move the new file to {}: {}",
            path.display(),
            e.error
        )
    })?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The sidecar

/// What [`sidecar_bootstrap`] needs.
#[derive(Debug, Clone)]
pub struct SidecarValues {
    pub admin_port: u16,
    /// Where requests come in (a sidecar's inbound listener).
    pub listener_port: u16,
    /// The workload's own port: the inbound cluster's endpoint.
    pub upstream_port: u16,
    /// Where [`CONTROL_PLANE_CLUSTER`] points on loopback.
    pub control_plane_port: u16,
    /// The file [`ecds_response`] (or [`failed_pull_response`]) is written to.
    pub ecds_path: PathBuf,
    /// The HTTP filter's name, which is the ECDS resource's:
    /// [`ecds_resource_name`].
    pub filter_name: String,
    /// HTTP filters placed before the plugin's, each one YAML mapping (`name:`
    /// and `typed_config:`), for a test of a neighbouring filter.
    pub extra_filters: Vec<String>,
    /// TLS to the control plane as `control-plane-tls.yaml` makes pilot set
    /// it ([`sidecar_tls`]); `None`: plain HTTP.
    pub control_plane_tls: Option<SidecarTls>,
}

/// What pilot makes of `envoy/istio/control-plane-tls.yaml`'s
/// DestinationRule for the control plane's cluster (`constructUpstreamTLS`
/// and `ApplyCustomSDSToClientCommonTLSContext` in 1.29): SNI, the names
/// checked, and the CA as the SDS secret `kubernetes://<credentialName>-cacert`.
/// istiod serves that secret from the Secret's `ca.crt` over ADS; here it is
/// a static secret in the bootstrap, read from a file, under the same name.
#[derive(Debug, Clone)]
pub struct SidecarTls {
    pub sni: String,
    pub subject_alt_names: Vec<String>,
    pub ca_secret_name: String,
    pub ca_file: PathBuf,
}

/// [`SidecarTls`] from the rendered `control-plane-tls.yaml`, the CA written
/// into `dir`.
pub fn sidecar_tls(rendered: &str, dir: &Path) -> Result<SidecarTls, String> {
    use base64::Engine;
    let docs = yaml_documents(rendered)?;
    let find = |kind: &str, name: Option<&str>| {
        docs.iter()
            .find(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n))
            .ok_or_else(|| format!("no {kind} {}", name.unwrap_or_default()))
    };
    let rule = find("DestinationRule", None)?;
    let setting = rule
        .pointer("/spec/trafficPolicy/portLevelSettings/0/tls")
        .ok_or("the DestinationRule sets no TLS")?;
    let text = |field: &str| {
        setting[field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("the DestinationRule's tls has no {field}"))
    };
    if text("mode")? != "SIMPLE" {
        return Err("only mode SIMPLE is emulated".into());
    }
    let credential = text("credentialName")?;
    let secret = find("Secret", Some(&credential))?;
    let ca = secret["data"]["ca.crt"]
        .as_str()
        .ok_or_else(|| format!("the Secret {credential} has no data.ca.crt"))?;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(ca)
        .map_err(|e| format!("the Secret's ca.crt is not base64: {e}"))?;
    let ca_secret_name = format!("kubernetes://{credential}-cacert");
    let ca_file = dir.join(format!("{credential}-cacert.pem"));
    std::fs::write(&ca_file, ca).map_err(|e| format!("cannot write the CA: {e}"))?;
    let subject_alt_names = setting["subjectAltNames"]
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(SidecarTls {
        sni: text("sni")?,
        subject_alt_names,
        ca_secret_name,
        ca_file,
    })
}

/// The control plane cluster's `transport_socket` and the bootstrap's
/// `secrets` for `tls`, each one line of YAML (JSON) at its indentation.
fn sidecar_tls_lines(tls: &SidecarTls) -> (String, String) {
    let socket = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": tls.sni,
            "common_tls_context": {
                // pilot's defaultUpstreamCommonTLSContext.
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_2",
                    "tls_maximum_protocol_version": "TLSv1_3",
                },
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_subject_alt_names": tls
                            .subject_alt_names
                            .iter()
                            .map(|name| json!({"exact": name}))
                            .collect::<Vec<_>>(),
                    },
                    "validation_context_sds_secret_config": { "name": tls.ca_secret_name },
                },
            },
        },
    });
    let secret = json!({
        "name": tls.ca_secret_name,
        "validation_context": { "trusted_ca": { "filename": tls.ca_file.display().to_string() } },
    });
    (
        format!("    transport_socket: {socket}\n"),
        format!("  secrets: [{secret}]\n"),
    )
}

const SIDECAR_TEMPLATE: &str = r#"# An Envoy shaped like an Istio sidecar for one WasmPlugin: a node id and
# cluster like a pod's, no bootstrap extensions, an inbound listener whose
# HTTP filter comes from ECDS under the plugin's resource name (here from a
# file, not from istiod), and clusters named the way pilot names them.
node:
  id: "{{node_id}}"
  cluster: "{{node_cluster}}"
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: {{admin_port}} }
static_resources:
{{secrets}}
  listeners:
  - name: virtualInbound
    address:
      socket_address: { address: 127.0.0.1, port_value: {{listener_port}} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: "inbound_0.0.0.0_{{upstream_port}}"
          route_config:
            name: "inbound|{{upstream_port}}||"
            virtual_hosts:
            - name: "inbound|http|{{upstream_port}}"
              domains: ["*"]
              routes:
              - name: default
                match: { prefix: "/" }
                route: { cluster: "inbound|{{upstream_port}}||" }
          http_filters:
{{extra_filters}}
          - name: {{filter_name}}
            config_discovery:
              config_source:
                path_config_source: { path: {{ecds_path}} }
                # As pilot sets it: the listener waits for the filter.
                initial_fetch_timeout: 0s
              type_urls:
              - type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              - type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: "inbound|{{upstream_port}}||"
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: "inbound|{{upstream_port}}||"
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{upstream_port}} } } }
  - name: "{{control_plane_cluster}}"
    type: STATIC
    connect_timeout: 1s
{{control_plane_transport_socket}}
    load_assignment:
      cluster_name: "{{control_plane_cluster}}"
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{control_plane_port}} } } }
"#;

/// The http_filters entries' indentation in [`SIDECAR_TEMPLATE`].
const FILTER_INDENT: &str = "          ";

/// An Envoy bootstrap (YAML) shaped like an Istio sidecar's for Tollgate's
/// plugin: see [`SIDECAR_TEMPLATE`] and [`SidecarValues`].
pub fn sidecar_bootstrap(values: &SidecarValues) -> String {
    let mut extra = String::new();
    for filter in &values.extra_filters {
        for (i, line) in filter.trim_end().lines().enumerate() {
            extra.push_str(FILTER_INDENT);
            extra.push_str(if i == 0 { "- " } else { "  " });
            extra.push_str(line);
            extra.push('\n');
        }
    }
    let quoted = |s: &str| Value::String(s.to_owned()).to_string();
    let (socket, secrets) = values
        .control_plane_tls
        .as_ref()
        .map(sidecar_tls_lines)
        .unwrap_or_default();
    SIDECAR_TEMPLATE
        .replace("{{secrets}}\n", &secrets)
        .replace("{{control_plane_transport_socket}}\n", &socket)
        .replace("{{node_id}}", SIDECAR_NODE_ID)
        .replace("{{node_cluster}}", SIDECAR_NODE_CLUSTER)
        .replace("{{admin_port}}", &values.admin_port.to_string())
        .replace("{{listener_port}}", &values.listener_port.to_string())
        .replace("{{upstream_port}}", &values.upstream_port.to_string())
        .replace(
            "{{control_plane_port}}",
            &values.control_plane_port.to_string(),
        )
        .replace("{{control_plane_cluster}}", CONTROL_PLANE_CLUSTER)
        .replace("{{filter_name}}", &quoted(&values.filter_name))
        .replace(
            "{{ecds_path}}",
            &quoted(&values.ecds_path.display().to_string()),
        )
        // Last, so nothing in a filter's own text is taken for a placeholder.
        .replace("{{extra_filters}}\n", &extra)
}

/// The names of the `{{placeholders}}` a template uses, for checking a
/// manifest's header lists them all.
pub fn placeholders(template: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        names.insert(after[..end].to_owned());
        rest = &after[end + 2..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn shipped_plugin() -> WasmPlugin {
        let template = include_str!("../../envoy/istio/wasmplugin.yaml");
        let rendered = render_manifest(template, &ManifestValues::example(DIGEST)).unwrap();
        wasm_plugin(&rendered).unwrap()
    }

    fn plugin_yaml(spec: &str) -> Result<WasmPlugin, String> {
        let text = format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n\
             metadata: {{name: p, namespace: ns}}\nspec:\n{spec}"
        );
        wasm_plugin(&text)
    }

    #[test]
    fn placeholders_are_filled_and_unknown_or_unclosed_ones_refused() {
        let values = ManifestValues::example(DIGEST);
        let out = render_manifest("a: {{app}}\nb: \"{{filter_digest}}\"\n", &values).unwrap();
        assert_eq!(out, format!("a: app\nb: \"{DIGEST}\"\n"));
        let err = render_manifest("a: {{nope}}", &values).unwrap_err();
        assert!(err.contains("{{nope}}"), "{err}");
        let err = render_manifest("a: {{app", &values).unwrap_err();
        assert!(err.contains("unclosed"), "{err}");
    }

    #[test]
    fn values_that_would_change_the_yaml_and_prefixed_digests_are_refused() {
        let mut values = ManifestValues::example(DIGEST);
        values.sync_token = "a\"b".into();
        assert!(render_manifest("t: \"{{sync_token}}\"", &values).is_err());
        values.sync_token = "x{{app}}".into();
        assert!(render_manifest("t: \"{{sync_token}}\"", &values).is_err());
        let values = ManifestValues::example(&format!("sha256:{DIGEST}"));
        let err = render_manifest("x", &values).unwrap_err();
        assert!(err.contains("without the `sha256:` prefix"), "{err}");
    }

    #[test]
    fn the_shipped_wasmplugin_reads_as_istio_would_read_it() {
        let plugin = shipped_plugin();
        assert_eq!(
            (plugin.namespace.as_str(), plugin.name.as_str()),
            ("default", "tollgate")
        );
        assert_eq!(
            plugin.url,
            "oci://registry.example.com/tollgate/filter:0.1.0"
        );
        assert_eq!(plugin.sha256.as_deref(), Some(DIGEST));
        assert_eq!(plugin.phase, Phase::Authn);
        assert_eq!(plugin.fail_strategy, FailStrategy::FailReload);
        assert_eq!(
            plugin.matches,
            vec![TrafficSelector {
                mode: WorkloadMode::Server,
                ports: vec![]
            }]
        );
        assert_eq!(
            plugin.plugin_config["sync"]["cluster"],
            CONTROL_PLANE_CLUSTER
        );
        assert_eq!(plugin.plugin_config["sync"]["wait_ms"], 20000);
    }

    #[test]
    fn the_crd_rules_that_json_schema_misses_are_enforced() {
        let ok = "  url: oci://r/f:1\n";
        assert!(plugin_yaml(ok).is_ok());
        for (spec, expected) in [
            ("  url: ftp://r/f\n", "schema one of"),
            ("  url: oci://r/f\n  sha256: sha256:abc\n", "sha256"),
            ("  url: oci://r/f\n  sha256: ABCDEF\n", "sha256"),
            (
                "  url: r/f\n  vmConfig: {env: [{name: T, value: x, valueFrom: HOST}]}\n",
                "value may only be set when valueFrom is INLINE",
            ),
            (
                "  url: r/f\n  vmConfig: {env: [{name: T}, {name: T}]}\n",
                "listed twice",
            ),
            ("  url: r/f\n  phase: AUTHENTICATION\n", "unknown variant"),
            ("  url: r/f\n  failStrategy: FAIL_CLOSED\n", "unknown variant"),
            ("  url: r/f\n  match: [{mode: INBOUND}]\n", "unknown variant"),
            ("  url: r/f\n  pluginconfig: {}\n", "unknown field"),
            (
                "  url: r/f\n  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Gateway, name: g}]\n",
                "only one of",
            ),
            (
                "  url: r/f\n  selector: {matchLabels: {app: '*'}}\n",
                "wildcards",
            ),
            ("  url: r/f\n  match: [{ports: [{number: 0}]}]\n", "1..65535"),
        ] {
            let err = plugin_yaml(spec).unwrap_err();
            assert!(err.contains(expected), "{spec}: {err}");
        }
        let err = wasm_plugin(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: p}\nspec: {url: r/f}\n",
        )
        .unwrap_err();
        assert!(err.contains("metadata.namespace"), "{err}");
    }

    #[test]
    fn defaults_are_istios_fail_close_no_phase_and_no_config() {
        let plugin = plugin_yaml("  url: r/f\n").unwrap();
        assert_eq!(plugin.fail_strategy, FailStrategy::FailClose);
        assert_eq!(
            plugin.fail_strategy.failure_policy(),
            FailurePolicy::FailClosed
        );
        assert_eq!(plugin.phase, Phase::UnspecifiedPhase);
        assert_eq!(plugin.plugin_config, json!({}));
        let ecds: Value =
            serde_json::from_str(&ecds_response(&plugin, Path::new("/m.wasm"), None)).unwrap();
        let config = &ecds["resources"][0]["typed_config"]["config"];
        assert!(config.get("configuration").is_none(), "{config}");
        assert!(config.get("root_id").is_none(), "{config}");
        assert!(config["vm_config"].get("environment_variables").is_none());
        assert_eq!(config["failure_policy"], "FAIL_CLOSED");
    }

    #[test]
    fn jsonpb_sorts_keys_at_every_depth_and_prints_numbers_as_go_doubles() {
        let config = json!({
            "sync": {"wait_ms": 20000, "cluster": "c", "authority": "a"},
            "api_key": {"headers": ["x-api-key", "x-key"], "bearer": true, "query": null},
            "b": [{"z": 1, "a": 2}],
        });
        assert_eq!(
            istio_plugin_config_json(&config),
            r#"{"api_key":{"bearer":true,"headers":["x-api-key","x-key"],"query":null},"b":[{"a":2,"z":1}],"sync":{"authority":"a","cluster":"c","wait_ms":20000}}"#
        );
        for (number, go) in [
            (json!(20000), "20000"),
            (json!(0), "0"),
            (json!(-250), "-250"),
            (json!(0.5), "0.5"),
            (json!(1.0), "1"),
            (json!(1e20), "100000000000000000000"),
            (json!(1e21), "1e+21"),
            (json!(1.5e300), "1.5e+300"),
            (json!(0.000001), "0.000001"),
            (json!(1e-7), "1e-7"),
            (json!(-2.5e-10), "-2.5e-10"),
            (json!(0.1), "0.1"),
            (json!(123456789012345678_u64), "123456789012345680"),
        ] {
            assert_eq!(istio_plugin_config_json(&number), go, "{number}");
        }
    }

    #[test]
    fn jsonpb_escapes_strings_as_go_json_marshal_does() {
        let s =
            json!("<a href=\"x\">&amp;</a>\\\u{8}\u{c}\n\r\t\u{1}\u{1f}\u{7f}é\u{2028}\u{2029}😀");
        assert_eq!(
            istio_plugin_config_json(&s),
            r#""\u003ca href=\"x\"\u003e\u0026amp;\u003c/a\u003e\\\b\f\n\r\t\u0001\u001f"#
                .to_owned()
                + "\u{7f}é"
                + r#"\u2028\u2029"#
                + "😀\""
        );
        // Keys too, and the result is JSON that reads back to the same value.
        let config = json!({"<k>": "v&"});
        let text = istio_plugin_config_json(&config);
        assert_eq!(text, r#"{"\u003ck\u003e":"v\u0026"}"#);
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), config);
    }

    #[test]
    fn the_ecds_resource_is_what_pilot_and_the_agent_make_of_the_plugin() {
        let plugin = shipped_plugin();
        assert_eq!(
            ecds_resource_name(&plugin),
            "extensions.istio.io/wasmplugin/default.tollgate"
        );
        let text = ecds_response(&plugin, Path::new("/var/lib/istio/data/abc.wasm"), None);
        let ecds: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(ecds["type_url"], EXTENSION_CONFIG_TYPE_URL);
        let resources = ecds["resources"].as_array().unwrap();
        assert_eq!(resources.len(), 1);
        let resource = &resources[0];
        assert_eq!(
            resource["name"],
            "extensions.istio.io/wasmplugin/default.tollgate"
        );
        assert_eq!(resource["typed_config"]["@type"], WASM_TYPE_URL);
        let config = &resource["typed_config"]["config"];
        assert_eq!(config["name"], "default.tollgate");
        assert!(config.get("root_id").is_none());
        assert_eq!(config["failure_policy"], "FAIL_RELOAD");
        let vm = &config["vm_config"];
        assert!(vm.get("vm_id").is_none(), "{vm}");
        assert_eq!(vm["runtime"], "envoy.wasm.runtime.v8");
        assert_eq!(
            vm["code"]["local"]["filename"],
            "/var/lib/istio/data/abc.wasm"
        );
        assert_eq!(
            vm["environment_variables"],
            json!({"host_env_keys": ["TOLLGATE_SYNC_TOKEN"]})
        );
        assert_eq!(config["configuration"]["@type"], STRING_VALUE_TYPE_URL);
        assert_eq!(
            config["configuration"]["value"],
            istio_plugin_config_json(&plugin.plugin_config)
        );
        let overridden: Value = serde_json::from_str(&ecds_response(
            &plugin,
            Path::new("/m.wasm"),
            Some(FailurePolicy::FailClosed),
        ))
        .unwrap();
        assert_eq!(
            overridden["resources"][0]["typed_config"]["config"]["failure_policy"],
            "FAIL_CLOSED"
        );
        assert_ne!(overridden["version_info"], ecds["version_info"]);
    }

    #[test]
    fn inline_values_and_the_plugin_name_reach_the_vm_and_agent_variables_do_not() {
        let plugin = plugin_yaml(
            "  url: r/f\n  pluginName: tollgate\n  vmConfig:\n    env:\n    - {name: A, value: '1'}\n    - {name: ISTIO_META_X, value: y}\n    - {name: B, valueFrom: HOST}\n    - {name: C, valueFrom: INLINE}\n",
        )
        .unwrap();
        let ecds: Value =
            serde_json::from_str(&ecds_response(&plugin, Path::new("/m.wasm"), None)).unwrap();
        let config = &ecds["resources"][0]["typed_config"]["config"];
        assert_eq!(config["root_id"], "tollgate");
        assert_eq!(
            config["vm_config"]["environment_variables"],
            json!({"host_env_keys": ["B"], "key_values": {"A": "1", "C": ""}})
        );
    }

    #[test]
    fn a_failed_pull_denies_everything_unless_the_plugin_fails_open() {
        let plugin = shipped_plugin();
        for (policy, denies) in [
            (None, true), // FAIL_RELOAD
            (Some(FailurePolicy::FailClosed), true),
            (Some(FailurePolicy::FailOpen), false),
        ] {
            let ecds: Value = serde_json::from_str(&failed_pull_response(&plugin, policy)).unwrap();
            let resource = &ecds["resources"][0];
            assert_eq!(resource["name"], ecds_resource_name(&plugin));
            let rbac = &resource["typed_config"];
            assert_eq!(rbac["@type"], RBAC_TYPE_URL);
            assert_eq!(rbac.get("rules") == Some(&json!({})), denies, "{policy:?}");
            assert_eq!(rbac.get("rules").is_none(), !denies, "{policy:?}");
        }
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecds.yaml");
        write_atomically(&path, "one").unwrap();
        write_atomically(&path, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_atomically(&dir.path().join("missing/x"), "x").is_err());
    }

    #[test]
    fn the_sidecar_bootstrap_puts_extra_filters_before_the_plugin_and_names_the_clusters() {
        let plugin = shipped_plugin();
        let values = SidecarValues {
            admin_port: 15000,
            listener_port: 15006,
            upstream_port: 8000,
            control_plane_port: 18080,
            ecds_path: PathBuf::from("/tmp/x/ecds.yaml"),
            filter_name: ecds_resource_name(&plugin),
            extra_filters: vec![
                "name: envoy.filters.http.header_mutation\ntyped_config:\n  \"@type\": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation\n".into(),
            ],
            control_plane_tls: None,
        };
        let text = sidecar_bootstrap(&values);
        assert!(placeholders(&text).is_empty(), "{text}");
        let docs = yaml_documents(&text).unwrap();
        assert_eq!(docs.len(), 1);
        let bootstrap = &docs[0];
        assert_eq!(bootstrap["node"]["id"], SIDECAR_NODE_ID);
        assert!(bootstrap.get("bootstrap_extensions").is_none());
        let listener = &bootstrap["static_resources"]["listeners"][0];
        assert_eq!(listener["address"]["socket_address"]["port_value"], 15006);
        let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
        let names: Vec<&str> = hcm["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "envoy.filters.http.header_mutation",
                "extensions.istio.io/wasmplugin/default.tollgate",
                "envoy.filters.http.router"
            ]
        );
        let discovery = &hcm["http_filters"][1]["config_discovery"];
        assert_eq!(
            discovery["config_source"]["path_config_source"]["path"],
            "/tmp/x/ecds.yaml"
        );
        assert_eq!(
            discovery["type_urls"],
            json!([WASM_TYPE_URL, RBAC_TYPE_URL])
        );
        let clusters: Vec<&str> = bootstrap["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(clusters, ["inbound|8000||", CONTROL_PLANE_CLUSTER]);

        let plain = sidecar_bootstrap(&SidecarValues {
            extra_filters: vec![],
            ..values
        });
        let docs = yaml_documents(&plain).unwrap();
        let filters = &docs[0]["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
            [0]["typed_config"]["http_filters"];
        assert_eq!(filters.as_array().unwrap().len(), 2);
        assert!(docs[0]["static_resources"].get("secrets").is_none());
        assert!(docs[0]["static_resources"]["clusters"][1]
            .get("transport_socket")
            .is_none());
    }

    #[test]
    fn the_control_plane_cluster_gets_the_tls_pilot_makes_of_the_shipped_destination_rule() {
        let template = include_str!("../../envoy/istio/control-plane-tls.yaml");
        let values = ManifestValues::example(&"0".repeat(64));
        let rendered = render_manifest(template, &values).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tls = sidecar_tls(&rendered, dir.path()).unwrap();
        assert_eq!(tls.sni, "tollgate-control-plane.tollgate.svc");
        assert_eq!(
            tls.subject_alt_names,
            ["tollgate-control-plane.tollgate.svc"]
        );
        assert_eq!(
            tls.ca_secret_name,
            "kubernetes://tollgate-control-plane-ca-cacert"
        );
        assert_eq!(
            std::fs::read_to_string(&tls.ca_file).unwrap(),
            "-----BEGIN CERTIFICATE-----\n"
        );

        let text = sidecar_bootstrap(&SidecarValues {
            admin_port: 15000,
            listener_port: 15006,
            upstream_port: 8000,
            control_plane_port: 18080,
            ecds_path: PathBuf::from("/tmp/x/ecds.yaml"),
            filter_name: "f".into(),
            extra_filters: vec![],
            control_plane_tls: Some(tls.clone()),
        });
        let bootstrap = &yaml_documents(&text).unwrap()[0];
        let resources = &bootstrap["static_resources"];
        assert_eq!(
            resources["secrets"],
            json!([{
                "name": tls.ca_secret_name,
                "validation_context": {"trusted_ca": {"filename": tls.ca_file.display().to_string()}}
            }])
        );
        let cluster = &resources["clusters"][1];
        assert_eq!(cluster["name"], CONTROL_PLANE_CLUSTER);
        let context = &cluster["transport_socket"]["typed_config"];
        assert_eq!(context["sni"], "tollgate-control-plane.tollgate.svc");
        let validation = &context["common_tls_context"]["combined_validation_context"];
        assert_eq!(
            validation["default_validation_context"]["match_subject_alt_names"],
            json!([{"exact": "tollgate-control-plane.tollgate.svc"}])
        );
        assert_eq!(
            validation["validation_context_sds_secret_config"]["name"],
            tls.ca_secret_name
        );

        // A rule that does not originate TLS with a CA is not emulated.
        let plain = rendered.replace("mode: SIMPLE", "mode: DISABLE");
        assert!(sidecar_tls(&plain, dir.path()).is_err());
        let no_ca = rendered.replace("ca.crt:", "other:");
        assert!(sidecar_tls(&no_ca, dir.path()).is_err());
    }

    #[test]
    fn yaml_documents_skip_empty_ones_and_refuse_duplicate_keys() {
        let docs = yaml_documents("# only a comment\n---\na: 1\n---\nb: [x, 2.5]\n").unwrap();
        assert_eq!(docs, vec![json!({"a": 1}), json!({"b": ["x", 2.5]})]);
        assert!(yaml_documents("a: 1\na: 2\n")
            .unwrap_err()
            .contains("duplicated key"));
        assert!(yaml_documents("? [k]\n: v\n")
            .unwrap_err()
            .contains("not a string"));
    }
}
