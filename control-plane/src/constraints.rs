//! What the server enforces on what it is sent, stated in the OpenAPI
//! document: the ranges, lengths, patterns and item counts that `input`,
//! `paging`, the handlers and the core's `config` check, written as JSON
//! Schema keywords onto the schemas utoipa generated, from the same
//! constants, so that the document and the checks cannot say different
//! things. A client (or a fuzzer) that keeps to the document is not refused
//! for its form, and what the document rules out is refused with a 4xx.
//!
//! Done on the document's JSON rather than in `#[schema(...)]` attributes
//! because most of these rules sit on the core's wire types (`WireLimit`,
//! `UsageBatch`…), whose derives live in a crate the filter shares, and
//! because attributes take literals only, not the constants. A rule naming a
//! schema, property or parameter the document lacks panics, so every test
//! that builds the document catches a rename.
//!
//! What JSON Schema cannot say is in the descriptions: a limit name used
//! twice in one list, an expiry in the past, a plan that does not exist
//! (404), metadata over 16 KiB.

use serde_json::{json, Map, Value};
use tollgate_core::config::{
    MAX_KEY_RULES, MAX_LIMITS, MAX_NAME_LEN, MAX_ROUTE_COSTS, MAX_TOKENS, MAX_WINDOW_SECONDS,
    QUOTA_POLICY,
};
use tollgate_core::usage::MAX_KEYS;

use crate::input::{
    MAX_NAME_CHARS, MAX_PATH_PREFIX, NAME_PATTERN, PATH_PREFIX_PATTERN, TEXT_PATTERN,
};
use crate::paging::{CURSOR_PATTERN, MAX_PAGE};
use crate::routes::keys::{MAX_BATCH_KEYS, MAX_GRACE_SECONDS};
use crate::routes::usage::{MAX_BATCH_ID, MAX_CODE_LEN};
use crate::routes::webhooks::MAX_URL_LEN;
use crate::store::feed::SYNC_CURSOR_PATTERN;
use crate::store::usage::ALLOWED;

/// The largest count a `BIGINT` column holds.
const MAX_STORED: i64 = i64::MAX;

/// An HTTP method in a scope or route cost (core's `Scope::validate`).
const METHOD_PATTERN: &str = "^[A-Za-z]{1,20}$";

/// One decimal octet, without the leading zeros Rust's parser refuses.
const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";

/// An IPv6 address in any of its compressed forms (without an embedded IPv4 tail).
const IPV6: &str = "(([0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\
|([0-9A-Fa-f]{1,4}:){1,7}:\
|([0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}\
|([0-9A-Fa-f]{1,4}:){1,5}(:[0-9A-Fa-f]{1,4}){1,2}\
|([0-9A-Fa-f]{1,4}:){1,4}(:[0-9A-Fa-f]{1,4}){1,3}\
|([0-9A-Fa-f]{1,4}:){1,3}(:[0-9A-Fa-f]{1,4}){1,4}\
|([0-9A-Fa-f]{1,4}:){1,2}(:[0-9A-Fa-f]{1,4}){1,5}\
|[0-9A-Fa-f]{1,4}:(:[0-9A-Fa-f]{1,4}){1,6}\
|:((:[0-9A-Fa-f]{1,4}){1,7}|:))";

/// A limit name: core's alphabet and length, and not the quota's policy id.
fn limit_name_pattern() -> String {
    format!("^(?!{QUOTA_POLICY}$)[A-Za-z0-9._-]{{1,{MAX_NAME_LEN}}}$")
}

/// An allowed client address: an IPv4 or IPv6 address, alone or with a prefix length.
fn cidr_pattern() -> String {
    let v4 = format!("{OCTET}(\\.{OCTET}){{3}}(/(3[0-2]|[12]?[0-9]))?");
    let v6 = format!("{IPV6}(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?");
    format!("^({v4}|{v6})$")
}

/// A webhook URL: http(s), a host name or IPv4 address, an optional port,
/// path and query of URL characters; every such URL parses. The server also
/// takes other absolute http(s) URLs without credentials (an IPv6 host, say).
fn url_pattern() -> String {
    let label = "[A-Za-z0-9]+(-[A-Za-z0-9]+)*";
    let top = "[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*";
    let host = format!("(({label}\\.)*{top}|{OCTET}(\\.{OCTET}){{3}})");
    let port =
        "(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?";
    let chars = "A-Za-z0-9._~!$&'()*+,;=:@%/-";
    format!("^https?://{host}{port}(/[{chars}]*)?(\\?[{chars}?]*)?$")
}

fn name_rules() -> Value {
    json!({"minLength": 1, "maxLength": MAX_NAME_CHARS, "pattern": NAME_PATTERN})
}

fn quota_rules() -> Value {
    json!({"minimum": 1, "maximum": MAX_TOKENS})
}

fn path_prefix_rules() -> Value {
    json!({"pattern": PATH_PREFIX_PATTERN, "maxLength": MAX_PATH_PREFIX})
}

fn batch_id_rules(min: usize) -> Value {
    json!({"minLength": min, "maxLength": MAX_BATCH_ID, "pattern": TEXT_PATTERN})
}

/// Refusal counts by code: lower-case codes, but not the admitted requests' own.
fn counts_by_code() -> Value {
    json!({
        "propertyNames": {"pattern": format!("^(?!{ALLOWED}$)[a-z_]{{1,{MAX_CODE_LEN}}}$")},
        "additionalProperties": {"type": "integer", "minimum": 0, "maximum": MAX_STORED},
    })
}

/// The rules of each component schema: (schema, property, keywords);
/// an empty property is the schema itself, `name/items` an array's items,
/// `oneOf/0` the first alternative.
fn schema_rules() -> Vec<(&'static str, &'static str, Value)> {
    let scope = |schema| {
        [
            (schema, "methods/items", json!({"pattern": METHOD_PATTERN})),
            (schema, "path_prefix", path_prefix_rules()),
        ]
    };
    let plan = |schema| {
        [
            (schema, "name", name_rules()),
            (schema, "limits", json!({"maxItems": MAX_LIMITS})),
            (schema, "route_costs", json!({"maxItems": MAX_ROUTE_COSTS})),
            (schema, "monthly_quota", quota_rules()),
            (schema, "max_api_keys", json!({"maximum": MAX_STORED})),
            (schema, "max_users", json!({"maximum": MAX_STORED})),
        ]
    };
    let key = |schema| {
        [
            (schema, "name", name_rules()),
            (schema, "scopes", json!({"maxItems": MAX_KEY_RULES})),
            (schema, "allowed_cidrs", json!({"maxItems": MAX_KEY_RULES})),
            (
                schema,
                "allowed_cidrs/items",
                json!({"pattern": cidr_pattern()}),
            ),
            (schema, "limits", json!({"maxItems": MAX_LIMITS})),
            (schema, "monthly_quota", quota_rules()),
        ]
    };
    let mut rules = vec![
        (
            "WireLimit",
            "name",
            json!({"pattern": limit_name_pattern()}),
        ),
        (
            "WireLimit",
            "max",
            json!({"minimum": 1, "maximum": MAX_TOKENS}),
        ),
        (
            "WireLimit",
            "burst",
            json!({"minimum": 1, "maximum": MAX_TOKENS}),
        ),
        (
            "WireLimit",
            "window_seconds",
            json!({"minimum": 1, "maximum": MAX_WINDOW_SECONDS}),
        ),
        ("WireRouteCost", "cost", json!({"maximum": MAX_TOKENS})),
        ("CreateTenant", "name", name_rules()),
        ("UpdateTenant", "name", name_rules()),
        ("CreateToken", "name", name_rules()),
        (
            "CreateKeys",
            "count",
            json!({"minimum": 1, "maximum": MAX_BATCH_KEYS}),
        ),
        (
            "RotateKey",
            "grace_seconds",
            json!({"maximum": MAX_GRACE_SECONDS}),
        ),
        (
            "SetWebhook",
            "url",
            json!({"maxLength": MAX_URL_LEN, "pattern": url_pattern()}),
        ),
        (
            "PutAnonymousAccess",
            "routes",
            json!({"maxItems": MAX_KEY_RULES}),
        ),
        ("PutAnonymousAccess", "plan_id", json!({"minLength": 1})),
        // Routes need a plan whose limits apply to them.
        (
            "PutAnonymousAccess",
            "",
            json!({"anyOf": [
                {"properties": {"routes": {"maxItems": 0}}},
                {"required": ["plan_id"], "properties": {"plan_id": {"type": "string"}}},
            ]}),
        ),
        ("UsageBatch", "batch_id", batch_id_rules(1)),
        ("UsageBatch", "reporter_id", batch_id_rules(0)),
        ("UsageBatch", "keys", json!({"maxItems": MAX_KEYS})),
        ("UsageBatch", "unattributed", counts_by_code()),
        ("KeyUsage", "key_id", batch_id_rules(1)),
        ("KeyUsage", "allowed", json!({"maximum": MAX_STORED})),
        ("KeyUsage", "cost", json!({"maximum": MAX_STORED})),
        ("KeyUsage", "denied", counts_by_code()),
        // An entry is `{"Key": …}` or `{"Tenant": …}`, one field and no other.
        ("Entry", "oneOf/0", json!({"additionalProperties": false})),
        ("Entry", "oneOf/1", json!({"additionalProperties": false})),
    ];
    rules.extend(scope("WireRouteCost"));
    rules.extend(scope("WireScope"));
    rules.extend(plan("CreatePlan"));
    rules.extend(plan("UpdatePlan"));
    rules.extend(key("CreateKey"));
    rules.extend(key("CreateKeys"));
    rules.extend(key("UpdateKey"));
    rules
}

/// The rules of query parameters: (path, parameter, keywords); `*` is every
/// operation that has the parameter, and a later rule for one path replaces
/// its keywords.
fn parameter_rules() -> Vec<(&'static str, &'static str, Value)> {
    let text = || json!({"pattern": TEXT_PATTERN});
    vec![
        ("*", "after", json!({"pattern": CURSOR_PATTERN})),
        ("/v1/sync", "after", json!({"pattern": SYNC_CURSOR_PATTERN})),
        (
            "/v1/tenants/{tenant_id}/webhook-deliveries",
            "limit",
            json!({"minimum": 1, "maximum": MAX_PAGE}),
        ),
        (
            "/v1/tenants/{tenant_id}/webhook-deliveries",
            "status",
            json!({"enum": ["pending", "delivered", "failed"]}),
        ),
        ("/v1/tenants", "plan_id", text()),
        ("/v1/audit", "action", text()),
        ("/v1/audit", "actor", text()),
        ("/v1/audit", "resource_type", text()),
        ("/v1/audit", "resource_id", text()),
        ("/v1/audit", "tenant_id", text()),
    ]
}

/// `keywords` added to `schema`; a nullable type keeps `null`.
fn add(schema: &mut Value, keywords: &Value) {
    let (Some(schema), Some(keywords)) = (schema.as_object_mut(), keywords.as_object()) else {
        panic!("constraints: not an object schema: {schema}");
    };
    schema.extend(keywords.clone());
}

fn property<'a>(schemas: &'a mut Map<String, Value>, name: &str, path: &str) -> &'a mut Value {
    let mut at = schemas
        .get_mut(name)
        .unwrap_or_else(|| panic!("constraints: no schema {name}"));
    for step in path.split('/').filter(|s| !s.is_empty()) {
        at = if let Ok(n) = step.parse::<usize>() {
            at.get_mut(n)
        } else if matches!(step, "items" | "oneOf") {
            at.get_mut(step)
        } else {
            at.get_mut("properties").and_then(|p| p.get_mut(step))
        }
        .unwrap_or_else(|| panic!("constraints: no {name}/{path}"));
    }
    at
}

/// utoipa writes a `u64` as `format: int64` with `minimum: 0`, but JSON
/// Schema's int64 is signed: the maximum the server takes is said outright,
/// wherever no rule set a lower one.
fn unsigned_maximum(schema: &mut Value) {
    match schema {
        Value::Object(fields) => {
            let unsigned = fields.get("format").is_some_and(|f| f == "int64")
                && fields.get("minimum").is_some_and(|m| m == 0)
                && !fields.contains_key("maximum");
            if unsigned {
                fields.insert("maximum".into(), json!(u64::MAX));
            }
            fields.values_mut().for_each(unsigned_maximum);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_maximum),
        _ => {}
    }
}

/// Applies every rule of this module to `doc`, the document as JSON.
pub fn state_in(doc: &mut Value) {
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .expect("the document has component schemas");
    for (name, path, keywords) in schema_rules() {
        add(property(schemas, name, path), &keywords);
    }
    for (path, name, keywords) in parameter_rules() {
        let mut found = false;
        let items = doc["paths"]
            .as_object_mut()
            .expect("the document has paths");
        for (at, item) in items.iter_mut() {
            if path != "*" && path != at {
                continue;
            }
            for operation in item
                .as_object_mut()
                .into_iter()
                .flat_map(|i| i.values_mut())
            {
                let parameters = operation
                    .get_mut("parameters")
                    .and_then(Value::as_array_mut);
                for parameter in parameters.into_iter().flatten() {
                    if parameter["name"] == name && parameter["in"] == "query" {
                        add(&mut parameter["schema"], &keywords);
                        found = true;
                    }
                }
            }
        }
        assert!(found, "constraints: no query parameter {name} at {path}");
    }
    unsigned_maximum(doc);
}
