//! The plugin configuration: parsed, then validated, as a whole.
//!
//! ```json
//! {"sync": {"cluster": "outbound|8080||tollgate-control-plane.tollgate.svc.cluster.local",
//!           "token_env": "TOLLGATE_SYNC_TOKEN", "stale_after_seconds": 300, "when_stale": "enforce"},
//!  "api_key": {"headers": ["x-api-key"], "bearer": true, "query": "api_key", "cookie": "api_key"},
//!  "pass_through_before_config": [{"methods": ["GET"], "path_prefix": "/healthz"}],
//!  "rate_limit_headers": ["ietf", "x-ratelimit"],
//!  "identity_headers": {"tenant_id": "x-tenant-id", "key_id": "x-api-key-id", "plan": null}}
//! ```
//!
//! Envoy runs `on_configure` first in a canary VM that it then throws away,
//! and refuses the configuration if that fails: so reading it has no side
//! effects, and a configuration with anything wrong is refused whole while
//! the previous one stays in force. Unknown fields are errors. It reads
//! what Istio's pilot writes from a `WasmPlugin`'s `pluginConfig` (compact
//! JSON, keys sorted, whole numbers without a fraction).

use tollgate_core::access::Scope;
use tollgate_core::credential::{is_token, KeySources};
use tollgate_core::decide::Allowed;
use tollgate_core::json::write::Quoted;
use tollgate_core::json::{self, Field, Fields, FromJson, Reader};
use tollgate_core::response::{
    upstream_headers, STRIPPED_REQUEST_HEADERS, UPSTREAM_KEY_ID, UPSTREAM_PLAN, UPSTREAM_TENANT,
};
use tollgate_core::wire::WireScope;

/// The validated configuration one root context runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    pub sync: SyncConfig,
    pub api_key: KeySources,
    /// Routes (method set and path prefix) that go to the upstream
    /// untouched until the first config is applied, instead of being
    /// refused `config_unavailable`: health checks. Empty by default.
    pub pass_through_before_config: Vec<Scope>,
    /// Which rate-limit headers answers carry.
    pub rate_limit_headers: RateLimitSets,
    /// Which identity headers the upstream gets, and their names.
    pub identity_headers: IdentityHeaders,
}

/// The rate-limit header sets answers carry (`rate_limit_headers`): each
/// header written costs the request a host call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSets {
    /// `RateLimit-Policy` and `RateLimit` (the IETF draft's).
    pub ietf: bool,
    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
    pub x_ratelimit: bool,
}

impl Default for RateLimitSets {
    fn default() -> Self {
        Self {
            ietf: true,
            x_ratelimit: true,
        }
    }
}

impl RateLimitSets {
    /// Whether the header `name` (one of `core::response`'s rate-limit
    /// headers, or any other) is sent.
    pub fn sends(&self, name: &str) -> bool {
        if name.starts_with("x-ratelimit-") {
            self.x_ratelimit
        } else if name.starts_with("ratelimit") {
            self.ietf
        } else {
            true
        }
    }

    pub fn none(&self) -> bool {
        !self.ietf && !self.x_ratelimit
    }
}

/// The headers that tell the upstream who called (`identity_headers`):
/// each named, or `None` not to send it. Whatever a client sends under
/// these names, or the default ones, is removed first, so the upstream
/// can trust them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    pub tenant_id: Option<String>,
    pub key_id: Option<String>,
    pub plan: Option<String>,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            tenant_id: Some(UPSTREAM_TENANT.to_owned()),
            key_id: Some(UPSTREAM_KEY_ID.to_owned()),
            plan: Some(UPSTREAM_PLAN.to_owned()),
        }
    }
}

impl IdentityHeaders {
    fn configured(&self) -> impl Iterator<Item = &str> {
        [&self.tenant_id, &self.key_id, &self.plan]
            .into_iter()
            .filter_map(Option::as_deref)
    }

    /// The headers the upstream gets for `allowed`, under their names.
    pub fn of<'a>(&'a self, allowed: &'a Allowed) -> Vec<(&'a str, &'a str)> {
        upstream_headers(allowed)
            .into_iter()
            .filter_map(|(name, value)| {
                let ours = match name {
                    UPSTREAM_TENANT => &self.tenant_id,
                    UPSTREAM_KEY_ID => &self.key_id,
                    _ => &self.plan,
                };
                Some((ours.as_deref()?, value))
            })
            .collect()
    }

    /// Every name removed from a request before the upstream sees it: the
    /// configured ones and the defaults (an upstream written against the
    /// defaults must not be fooled either).
    pub fn stripped(&self) -> impl Iterator<Item = &str> {
        STRIPPED_REQUEST_HEADERS.into_iter().chain(
            self.configured()
                .filter(|name| !STRIPPED_REQUEST_HEADERS.contains(name)),
        )
    }
}

/// Most routes `pass_through_before_config` may list.
pub const MAX_PASS_THROUGH: usize = 16;

impl PluginConfig {
    /// Whether a request for `method` and `path` passes untouched while no
    /// config has been applied.
    pub fn passes_before_config(&self, method: &str, path: &str) -> bool {
        self.pass_through_before_config
            .iter()
            .any(|route| route.permits(method, path))
    }
}

/// How the leader reaches the control plane.
#[derive(Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// The Envoy cluster that reaches the control plane.
    pub cluster: String,
    /// `:authority` sent to the control plane.
    pub authority: String,
    /// The control plane's sync token (`CONTROL_PLANE_SYNC_TOKEN`).
    pub token: String,
    /// How long the control plane may hold a poll open when nothing changed.
    pub wait_ms: u64,
    /// First retry delay after a failed call, doubling up to a cap.
    pub retry_ms: u64,
    /// The staleness budget: how long without a successful sync before
    /// the config counts as stale. `None`: never.
    pub stale_after_ms: Option<u64>,
    /// What a stale config means for requests.
    pub when_stale: WhenStale,
}

/// What the filter does once its config is stale (`sync.when_stale`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WhenStale {
    /// Keep enforcing the last applied config (the default).
    #[default]
    Enforce,
    /// Refuse every request with 503 `config_stale`.
    Refuse,
}

impl SyncConfig {
    /// The budget after which requests are refused `config_stale`, if the
    /// configuration asks for that.
    pub fn refuse_after_ms(&self) -> Option<u64> {
        self.stale_after_ms
            .filter(|_| self.when_stale == WhenStale::Refuse)
    }
}

/// The token stays out of logs and config dumps of ours.
impl core::fmt::Debug for SyncConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SyncConfig")
            .field("cluster", &self.cluster)
            .field("authority", &self.authority)
            .field("token", &"<redacted>")
            .field("wait_ms", &self.wait_ms)
            .field("retry_ms", &self.retry_ms)
            .field("stale_after_ms", &self.stale_after_ms)
            .field("when_stale", &self.when_stale)
            .finish()
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The configuration as written.
#[derive(Debug, Default)]
struct WireConfig {
    sync: WireSync,
    api_key: Option<WireKeySources>,
    pass_through_before_config: Option<Vec<WireScope>>,
    rate_limit_headers: Option<Vec<String>>,
    identity_headers: Option<WireIdentity>,
}

/// An identity header as written: absent (the default name), `null` (not
/// sent) or a name.
#[derive(Debug, Default)]
enum WireName {
    #[default]
    Default,
    Off,
    Named(String),
}

impl FromJson for WireName {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, json::Error> {
        Ok(match reader.read::<Option<String>>()? {
            None => WireName::Off,
            Some(name) => WireName::Named(name),
        })
    }
}

#[derive(Debug, Default)]
struct WireIdentity {
    tenant_id: WireName,
    key_id: WireName,
    plan: WireName,
}

#[derive(Debug, Default)]
struct WireSync {
    cluster: String,
    authority: Option<String>,
    token: Option<String>,
    token_env: Option<String>,
    wait_ms: Option<u64>,
    retry_ms: Option<u64>,
    stale_after_seconds: Option<u64>,
    when_stale: Option<String>,
}

#[derive(Debug, Default)]
struct WireKeySources {
    headers: Option<Vec<String>>,
    bearer: Option<bool>,
    query: Option<String>,
    cookie: Option<String>,
}

const CONFIG: Fields = Fields::closed(&[
    Field::required("sync"),
    Field::optional("api_key"),
    Field::optional("pass_through_before_config"),
    Field::optional("rate_limit_headers"),
    Field::optional("identity_headers"),
]);
const IDENTITY: Fields = Fields::closed(&[
    Field::optional("tenant_id"),
    Field::optional("key_id"),
    Field::optional("plan"),
]);
const SYNC: Fields = Fields::closed(&[
    Field::required("cluster"),
    Field::optional("authority"),
    Field::optional("token"),
    Field::optional("token_env"),
    Field::optional("wait_ms"),
    Field::optional("retry_ms"),
    Field::optional("stale_after_seconds"),
    Field::optional("when_stale"),
]);
const KEY_SOURCES: Fields = Fields::closed(&[
    Field::optional("headers"),
    Field::optional("bearer"),
    Field::optional("query"),
    Field::optional("cookie"),
]);

impl FromJson for WireConfig {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, json::Error> {
        let mut v = WireConfig::default();
        reader.object(&CONFIG, &mut |r, field| match field {
            0 => r.set(&mut v.sync),
            1 => r.set(&mut v.api_key),
            2 => r.set(&mut v.pass_through_before_config),
            3 => r.set(&mut v.rate_limit_headers),
            _ => r.set(&mut v.identity_headers),
        })?;
        Ok(v)
    }
}

impl FromJson for WireIdentity {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, json::Error> {
        let mut v = WireIdentity::default();
        reader.object(&IDENTITY, &mut |r, field| match field {
            0 => r.set(&mut v.tenant_id),
            1 => r.set(&mut v.key_id),
            _ => r.set(&mut v.plan),
        })?;
        Ok(v)
    }
}

fn rate_limit_sets(names: Option<Vec<String>>) -> Result<RateLimitSets, ConfigError> {
    let Some(names) = names else {
        return Ok(RateLimitSets::default());
    };
    let mut sets = RateLimitSets {
        ietf: false,
        x_ratelimit: false,
    };
    for name in &names {
        let set = match name.as_str() {
            "ietf" => &mut sets.ietf,
            "x-ratelimit" => &mut sets.x_ratelimit,
            _ => &mut sets.ietf,
        };
        let known = matches!(name.as_str(), "ietf" | "x-ratelimit");
        if !known || *set {
            return Err(ConfigError(
                "rate_limit_headers lists the sets to send, each at most once: \"ietf\" \
                 (RateLimit-Policy, RateLimit) and \"x-ratelimit\" (X-RateLimit-*)"
                    .into(),
            ));
        }
        *set = true;
    }
    Ok(sets)
}

/// Names an identity header may not take: HTTP's, Envoy's, and those of
/// Tollgate's own answers.
const RESERVED_NAMES: [&str; 12] = [
    "host",
    "authorization",
    "cookie",
    "connection",
    "content-length",
    "content-type",
    "transfer-encoding",
    "te",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "retry-after",
];
const RESERVED_PREFIXES: [&str; 3] = ["ratelimit", "x-ratelimit", "x-envoy-"];

/// One identity header's name as configured: `Err` holds the field's name.
fn identity_name<'a>(
    field: &'a str,
    wire: WireName,
    default: Option<String>,
    api_key: &KeySources,
) -> Result<Option<String>, &'a str> {
    let name = match wire {
        WireName::Default => return Ok(default),
        WireName::Off => return Ok(None),
        WireName::Named(name) => name,
    };
    // A header name, and none that HTTP, Envoy, Tollgate's own answers or
    // the key itself use.
    let usable = is_token(&name)
        && !name.bytes().any(|b| b.is_ascii_uppercase())
        && !RESERVED_NAMES.contains(&name.as_str())
        && !RESERVED_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
        && !api_key.headers.contains(&name);
    if usable {
        Ok(Some(name))
    } else {
        Err(field)
    }
}

fn identity_headers(
    wire: Option<WireIdentity>,
    api_key: &KeySources,
) -> Result<IdentityHeaders, ConfigError> {
    let defaults = IdentityHeaders::default();
    let Some(wire) = wire else {
        return Ok(defaults);
    };
    let named = (|| {
        Ok::<_, &str>(IdentityHeaders {
            tenant_id: identity_name("tenant_id", wire.tenant_id, defaults.tenant_id, api_key)?,
            key_id: identity_name("key_id", wire.key_id, defaults.key_id, api_key)?,
            plan: identity_name("plan", wire.plan, defaults.plan, api_key)?,
        })
    })();
    match named {
        Ok(headers) => {
            let [a, b, c] = [&headers.tenant_id, &headers.key_id, &headers.plan];
            let same = |x: &Option<String>, y: &Option<String>| x.is_some() && x == y;
            if same(a, b) || same(a, c) || same(b, c) {
                return Err(ConfigError(
                    "identity_headers gives two headers the same name".into(),
                ));
            }
            Ok(headers)
        }
        Err(field) => Err(ConfigError(format!(
            "identity_headers.{field} must be null (not sent) or a lower-case header name \
             that is not host, authorization, cookie, content-type, a hop-by-hop header, \
             retry-after, a rate-limit header, x-envoy-* or a header keys are read from"
        ))),
    }
}

impl FromJson for WireSync {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, json::Error> {
        let mut v = WireSync::default();
        reader.object(&SYNC, &mut |r, field| match field {
            0 => r.set(&mut v.cluster),
            1 => r.set(&mut v.authority),
            2 => r.set(&mut v.token),
            3 => r.set(&mut v.token_env),
            4 => r.set(&mut v.wait_ms),
            5 => r.set(&mut v.retry_ms),
            6 => r.set(&mut v.stale_after_seconds),
            _ => r.set(&mut v.when_stale),
        })?;
        Ok(v)
    }
}

impl FromJson for WireKeySources {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, json::Error> {
        let mut v = WireKeySources::default();
        reader.object(&KEY_SOURCES, &mut |r, field| match field {
            0 => r.set(&mut v.headers),
            1 => r.set(&mut v.bearer),
            2 => r.set(&mut v.query),
            _ => r.set(&mut v.cookie),
        })?;
        Ok(v)
    }
}

const DEFAULT_AUTHORITY: &str = "tollgate-control-plane";
const DEFAULT_WAIT_MS: u64 = 20_000;
const DEFAULT_RETRY_MS: u64 = 250;
/// A week: longer is no budget at all.
const MAX_STALE_AFTER_SECONDS: u64 = 7 * 24 * 3600;

impl PluginConfig {
    /// Reads and validates `raw`; `env` looks up the VM's environment
    /// variables (for `sync.token_env`).
    pub fn parse(raw: &[u8], env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError(
                "the plugin configuration is empty: Tollgate needs at least \
                 {\"sync\": {\"cluster\": <cluster>, \"token\" or \"token_env\": ...}}"
                    .into(),
            ));
        }
        let wire: WireConfig = json::from_slice(raw)
            .map_err(|e| ConfigError(format!("the plugin configuration is not valid: {e}")))?;
        Self::try_from_wire(wire, env)
    }

    fn try_from_wire(
        wire: WireConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let bad = |why: &str| Err(ConfigError(why.to_owned()));
        let s = wire.sync;
        if s.cluster.is_empty() {
            return bad("sync.cluster must name the Envoy cluster that reaches the control plane");
        }
        let token = match (s.token, s.token_env) {
            (Some(token), None) => token,
            (None, Some(name)) => match env(&name) {
                Some(token) => token,
                None => {
                    return Err(ConfigError(format!(
                        "sync.token_env names {}, which is not set in the Wasm VM's environment \
                         (Envoy: vm_config.environment_variables; Istio: vmConfig.env)",
                        Quoted(&name)
                    )))
                }
            },
            (Some(_), Some(_)) => return bad("sync has both token and token_env: give one"),
            (None, None) => {
                return bad("sync needs the control plane's sync token: token or token_env")
            }
        };
        let token = token.trim().to_owned();
        if token.is_empty() {
            return bad("sync token must not be empty");
        }
        if token.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return bad("sync token must not contain spaces or control characters");
        }
        let authority = s.authority.unwrap_or_else(|| DEFAULT_AUTHORITY.to_owned());
        if authority.is_empty() {
            return bad("sync.authority must not be empty");
        }
        let wait_ms = s.wait_ms.unwrap_or(DEFAULT_WAIT_MS);
        if !(1..=60_000).contains(&wait_ms) {
            return bad("sync.wait_ms must be between 1 and 60000");
        }
        let retry_ms = s.retry_ms.unwrap_or(DEFAULT_RETRY_MS);
        if !(1..=60_000).contains(&retry_ms) {
            return bad("sync.retry_ms must be between 1 and 60000");
        }
        let stale_after_ms = match s.stale_after_seconds {
            None => None,
            Some(secs) if (1..=MAX_STALE_AFTER_SECONDS).contains(&secs) => Some(secs * 1000),
            Some(_) => {
                return Err(ConfigError(format!(
                    "sync.stale_after_seconds must be between 1 and {MAX_STALE_AFTER_SECONDS}"
                )))
            }
        };
        // A healthy long poll may be held `wait_ms` before it answers: a
        // budget that short would call a working channel stale.
        if stale_after_ms.is_some_and(|budget| budget <= wait_ms + 1_000) {
            return bad("sync.stale_after_seconds must exceed sync.wait_ms by more than 1 s");
        }
        let when_stale = match s.when_stale.as_deref() {
            None | Some("enforce") => WhenStale::Enforce,
            Some("refuse") => WhenStale::Refuse,
            Some(other) => {
                return Err(ConfigError(format!(
                    "sync.when_stale is {}: \"enforce\" or \"refuse\"",
                    Quoted(other)
                )))
            }
        };
        if when_stale == WhenStale::Refuse && stale_after_ms.is_none() {
            return bad("sync.when_stale \"refuse\" needs sync.stale_after_seconds");
        }
        let defaults = KeySources::default();
        let api_key = match wire.api_key {
            None => defaults,
            Some(k) => KeySources {
                headers: k.headers.unwrap_or(defaults.headers),
                bearer: k.bearer.unwrap_or(defaults.bearer),
                query: k.query,
                cookie: k.cookie,
            },
        };
        api_key.validate().map_err(|e| ConfigError(e.0))?;
        let routes = wire.pass_through_before_config.unwrap_or_default();
        if routes.len() > MAX_PASS_THROUGH {
            return Err(ConfigError(format!(
                "pass_through_before_config lists {} routes, at most {MAX_PASS_THROUGH}",
                routes.len()
            )));
        }
        let mut pass_through_before_config = Vec::with_capacity(routes.len());
        for route in &routes {
            let methods = route.methods.as_deref().unwrap_or_default();
            let scope = Scope::validate(methods, route.path_prefix.as_deref())
                .map_err(|e| ConfigError(format!("pass_through_before_config: {e}")))?;
            if scope.path_prefix.is_none() {
                return bad("pass_through_before_config: every route needs a path_prefix");
            }
            pass_through_before_config.push(scope);
        }
        let rate_limit_headers = rate_limit_sets(wire.rate_limit_headers)?;
        let identity_headers = identity_headers(wire.identity_headers, &api_key)?;
        Ok(Self {
            sync: SyncConfig {
                cluster: s.cluster,
                authority,
                token,
                wait_ms,
                retry_ms,
                stale_after_ms,
                when_stale,
            },
            api_key,
            pass_through_before_config,
            rate_limit_headers,
            identity_headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(raw: &str) -> Result<PluginConfig, ConfigError> {
        PluginConfig::parse(raw.as_bytes(), |name| {
            (name == "TOLLGATE_SYNC_TOKEN").then(|| "from-env".to_owned())
        })
    }

    #[test]
    fn the_smallest_configuration_takes_the_defaults() {
        let c = parse(r#"{"sync":{"cluster":"cp","token":"t"}}"#).unwrap();
        assert_eq!(
            c.sync,
            SyncConfig {
                cluster: "cp".into(),
                authority: "tollgate-control-plane".into(),
                token: "t".into(),
                wait_ms: 20_000,
                retry_ms: 250,
                stale_after_ms: None,
                when_stale: WhenStale::Enforce,
            }
        );
        assert_eq!(c.sync.refuse_after_ms(), None);
        assert_eq!(c.api_key, KeySources::default());
        assert!(c.pass_through_before_config.is_empty());
        assert!(!c.passes_before_config("GET", "/healthz"));
    }

    #[test]
    fn the_staleness_budget_and_what_it_does() {
        let c = parse(r#"{"sync":{"cluster":"cp","token":"t","stale_after_seconds":30}}"#).unwrap();
        assert_eq!(c.sync.stale_after_ms, Some(30_000));
        assert_eq!(c.sync.when_stale, WhenStale::Enforce);
        assert_eq!(c.sync.refuse_after_ms(), None, "enforcing is the default");
        let c = parse(
            r#"{"sync":{"cluster":"cp","token":"t","stale_after_seconds":2,"wait_ms":500,"when_stale":"refuse"}}"#,
        )
        .unwrap();
        assert_eq!(c.sync.refuse_after_ms(), Some(2_000));
    }

    #[test]
    fn rate_limit_header_sets_and_identity_headers_are_chosen_or_default() {
        let c = parse(r#"{"sync":{"cluster":"cp","token":"t"}}"#).unwrap();
        assert_eq!(c.rate_limit_headers, RateLimitSets::default());
        assert!(c.rate_limit_headers.sends("ratelimit-policy"));
        assert!(c.rate_limit_headers.sends("x-ratelimit-reset"));
        assert_eq!(c.identity_headers, IdentityHeaders::default());

        let c = parse(
            r#"{"sync":{"cluster":"cp","token":"t"},"rate_limit_headers":["ietf"],
                "identity_headers":{"tenant_id":"x-org","plan":null}}"#,
        )
        .unwrap();
        let sets = c.rate_limit_headers;
        assert!(sets.sends("ratelimit") && sets.sends("ratelimit-policy"));
        assert!(!sets.sends("x-ratelimit-limit") && !sets.sends("x-ratelimit-remaining"));
        assert!(sets.sends("retry-after") && sets.sends("content-type"));
        assert_eq!(
            c.identity_headers,
            IdentityHeaders {
                tenant_id: Some("x-org".into()),
                key_id: Some("x-api-key-id".into()),
                plan: None,
            }
        );
        // A client's own copies go, under the new name and the old ones.
        let stripped: Vec<&str> = c.identity_headers.stripped().collect();
        assert_eq!(stripped, ["x-tenant-id", "x-api-key-id", "x-plan", "x-org"]);

        let none = parse(r#"{"sync":{"cluster":"cp","token":"t"},"rate_limit_headers":[]}"#)
            .unwrap()
            .rate_limit_headers;
        assert!(none.none());
        assert!(!none.sends("ratelimit") && !none.sends("x-ratelimit-reset"));
        assert!(none.sends("retry-after"));
    }

    #[test]
    fn bad_header_choices_refuse_the_configuration() {
        for (extra, says) in [
            (r#""rate_limit_headers":["IETF"]"#, "each at most once"),
            (
                r#""rate_limit_headers":["ietf","ietf"]"#,
                "each at most once",
            ),
            (r#""rate_limit_headers":"ietf""#, "expected an array"),
            (
                r#""identity_headers":{"plan":"X-Plan"}"#,
                "lower-case header name",
            ),
            (
                r#""identity_headers":{"plan":""}"#,
                "lower-case header name",
            ),
            (
                r#""identity_headers":{"plan":"a b"}"#,
                "lower-case header name",
            ),
            (
                r#""identity_headers":{"plan":"host"}"#,
                "identity_headers.plan",
            ),
            (
                r#""identity_headers":{"tenant_id":"ratelimit"}"#,
                "identity_headers.tenant_id",
            ),
            (
                r#""identity_headers":{"key_id":"x-api-key"}"#,
                "identity_headers.key_id",
            ),
            (
                r#""identity_headers":{"plan":"x-tenant-id"}"#,
                "the same name",
            ),
            (r#""identity_headers":{"tenant":"x-t"}"#, "unknown field"),
            (r#""identity_headers":{"plan":7}"#, "expected a string"),
        ] {
            let raw = format!(r#"{{"sync":{{"cluster":"cp","token":"t"}},{extra}}}"#);
            let err = parse(&raw).unwrap_err().0;
            assert!(err.contains(says), "{extra}: {err}");
        }
    }

    #[test]
    fn chosen_routes_pass_before_the_first_config() {
        let c = parse(
            r#"{"sync":{"cluster":"cp","token":"t"},"pass_through_before_config":[{"methods":["get","HEAD"],"path_prefix":"/healthz"},{"path_prefix":"/status/"}]}"#,
        )
        .unwrap();
        assert!(c.passes_before_config("GET", "/healthz"));
        assert!(c.passes_before_config("HEAD", "/healthz/live?x=1"));
        assert!(!c.passes_before_config("POST", "/healthz"));
        assert!(!c.passes_before_config("GET", "/healthzz"));
        assert!(c.passes_before_config("DELETE", "/status/x"));
        assert!(!c.passes_before_config("GET", "/status"));
        assert!(!c.passes_before_config("GET", "/"));
    }

    #[test]
    fn what_istio_writes_from_a_plugin_config_reads() {
        // pilot's jsonpb: compact, keys sorted, numbers from doubles.
        let raw = r#"{"api_key":{"bearer":false,"cookie":"session_key","headers":["x-api-key","x-key"],"query":"api_key"},"sync":{"authority":"cp.example","cluster":"outbound|8080||tollgate-control-plane.tollgate.svc.cluster.local","retry_ms":500,"token_env":"TOLLGATE_SYNC_TOKEN","wait_ms":20000}}"#;
        let c = parse(raw).unwrap();
        assert_eq!(c.sync.token, "from-env");
        assert_eq!(
            c.sync.cluster,
            "outbound|8080||tollgate-control-plane.tollgate.svc.cluster.local"
        );
        assert_eq!((c.sync.wait_ms, c.sync.retry_ms), (20_000, 500));
        assert_eq!(
            c.api_key,
            KeySources {
                headers: vec!["x-api-key".into(), "x-key".into()],
                bearer: false,
                query: Some("api_key".into()),
                cookie: Some("session_key".into()),
            }
        );
    }

    #[test]
    fn anything_wrong_refuses_the_whole_configuration() {
        let refused = [
            "",
            " \n",
            "{}",
            "null",
            r#"{"sync":null}"#,
            r#"{"sync":{}}"#,
            r#"{"sync":{"cluster":"cp"}}"#,
            r#"{"sync":{"token":"t"}}"#,
            r#"{"sync":{"cluster":"","token":"t"}}"#,
            r#"{"sync":{"cluster":"cp","token":""}}"#,
            r#"{"sync":{"cluster":"cp","token":"a b"}}"#,
            r#"{"sync":{"cluster":"cp","token":"t","token_env":"TOLLGATE_SYNC_TOKEN"}}"#,
            r#"{"sync":{"cluster":"cp","token_env":"UNSET"}}"#,
            r#"{"sync":{"cluster":"cp","token":"t","wait":1}}"#,
            r#"{"sync":{"cluster":"cp","token":"t"},"other":1}"#,
            r#"{"sync":{"cluster":"cp","token":"t","wait_ms":0}}"#,
            r#"{"sync":{"cluster":"cp","token":"t","wait_ms":60001}}"#,
            r#"{"sync":{"cluster":"cp","token":"t","wait_ms":1.5}}"#,
            r#"{"sync":{"cluster":"cp","token":"t","wait_ms":-1}}"#,
            r#"{"sync":{"cluster":"cp","token":"t","retry_ms":0}}"#,
            r#"{"sync":{"cluster":"cp","token":"t","authority":""}}"#,
            r#"{"sync":{"cluster":"cp","token":"t"},"api_key":{"headers":["X-Key"]}}"#,
            r#"{"sync":{"cluster":"cp","token":"t"},"api_key":{"query":""}}"#,
            r#"{"sync":{"cluster":"cp","token":"t"},"api_key":{"headers":[],"bearer":false}}"#,
            r#"{"sync":{"cluster":"cp","token":"t"},"api_key":{"header":"x"}}"#,
            r#"{"sync":{"cluster":"cp","token":"t"}}}"#,
            r#"{"sync":{"cluster":"cp","token":"t","token":"u"}}"#,
            r#"{"sync":{"cluster":"cp","token":"t","stale_after_seconds":0}}"#,
            r#"{"sync":{"cluster":"cp","token":"t","stale_after_seconds":604801}}"#,
            r#"{"sync":{"cluster":"cp","token":"t","stale_after_seconds":21}}"#,
            r#"{"sync":{"cluster":"cp","token":"t","stale_after_seconds":2,"wait_ms":1000}}"#,
            r#"{"sync":{"cluster":"cp","token":"t","when_stale":"refuse"}}"#,
            r#"{"sync":{"cluster":"cp","token":"t","stale_after_seconds":60,"when_stale":"open"}}"#,
            r#"{"sync":{"cluster":"cp","token":"t"},"pass_through_before_config":{}}"#,
            r#"{"sync":{"cluster":"cp","token":"t"},"pass_through_before_config":[{"methods":["GET"]}]}"#,
            r#"{"sync":{"cluster":"cp","token":"t"},"pass_through_before_config":[{"path_prefix":"healthz"}]}"#,
            r#"{"sync":{"cluster":"cp","token":"t"},"pass_through_before_config":[{"path_prefix":"/h?x"}]}"#,
            r#"{"sync":{"cluster":"cp","token":"t"},"pass_through_before_config":[{"methods":["G T"],"path_prefix":"/h"}]}"#,
            r#"{"sync":{"cluster":"cp","token":"t"},"pass_through_before_config":[{"path_prefix":"/h","other":1}]}"#,
        ];
        for raw in refused {
            assert!(parse(raw).is_err(), "accepted {raw:?}");
        }
        let e = PluginConfig::parse(br#"{"sync":{"cluster":"cp","token_env":"X"}}"#, no_env)
            .unwrap_err();
        assert!(e.0.contains("\"X\"") && e.0.contains("vmConfig.env"), "{e}");
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let c = parse(r#"{"sync":{"cluster":"cp","token":"s3cret-token"}}"#).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
