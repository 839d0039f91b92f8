//! The OpenAPI document at `/openapi.json` against the router that serves it.
//!
//! [`ROUTES`] is the list of what the router serves. The document must list
//! exactly those ([`documents_exactly_the_routes_the_router_serves`]), the
//! route table in the sources must too ([`the_sources_route_exactly_routes`],
//! so a route added without documentation fails), each is routed and no
//! other method is ([`every_documented_operation_is_routed`]). A status,
//! header, content type or body shape the document does not describe fails
//! [`answers_match_the_documented_responses`], which walks through every
//! endpoint and checks each answer against the document with a small JSON
//! Schema checker (enough of it for the shapes utoipa generates).
//!
//! Every test that builds the app runs on SQLite and on the PostgreSQL server
//! named by `TOLLGATE_TEST_POSTGRES_URL`; the two that need no database,
//! [`the_sources_route_exactly_routes`] (it reads `src/routes`) and
//! [`the_checker_catches_what_it_should`], run once.

pub mod common;

use std::collections::BTreeSet;

use axum::http::{header, StatusCode};
use axum::Router;
use common::{send, Backend, Reply, ADMIN, LEAK_REPORTER, SYNC};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Every (method, path) the router serves, as the document must spell it.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/v1/anonymous-access"),
    ("PUT", "/v1/anonymous-access"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/catalog"),
    ("GET", "/v1/keys/{id}"),
    ("PATCH", "/v1/keys/{id}"),
    ("DELETE", "/v1/keys/{id}"),
    ("POST", "/v1/keys/{id}/rotate"),
    ("GET", "/v1/keys/{id}/usage"),
    ("POST", "/v1/leaked-keys"),
    ("GET", "/v1/plans"),
    ("GET", "/v1/proxies"),
    ("GET", "/v1/propagation/{version}"),
    ("POST", "/v1/plans"),
    ("GET", "/v1/plans/{id}"),
    ("PATCH", "/v1/plans/{id}"),
    ("DELETE", "/v1/plans/{id}"),
    ("GET", "/v1/sync"),
    ("GET", "/v1/tenants"),
    ("POST", "/v1/tenants"),
    ("GET", "/v1/tenants/{id}"),
    ("PATCH", "/v1/tenants/{id}"),
    ("DELETE", "/v1/tenants/{id}"),
    ("GET", "/v1/tenants/{id}/usage"),
    ("GET", "/v1/tenants/{tenant_id}/keys"),
    ("POST", "/v1/tenants/{tenant_id}/keys"),
    ("POST", "/v1/tenants/{tenant_id}/keys/batch"),
    ("GET", "/v1/tenants/{tenant_id}/tokens"),
    ("POST", "/v1/tenants/{tenant_id}/tokens"),
    ("DELETE", "/v1/tenants/{tenant_id}/tokens/{id}"),
    ("GET", "/v1/tenants/{tenant_id}/webhook"),
    ("PUT", "/v1/tenants/{tenant_id}/webhook"),
    ("DELETE", "/v1/tenants/{tenant_id}/webhook"),
    ("GET", "/v1/tenants/{tenant_id}/webhook-deliveries"),
    ("POST", "/v1/usage"),
    ("POST", "/v1/internal/leases"),
];

/// Operations anyone may call.
const PUBLIC: &[&str] = &["/healthz", "/v1/catalog"];

/// Operations for the Envoys' sync token.
const SYNC_ONLY: &[&str] = &["/v1/sync", "/v1/usage", "/v1/internal/leases"];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Route files whose routes are not nested under `/v1` (see `app()` in lib.rs).
const TOP_LEVEL_ROUTE_FILES: &[&str] = &["health.rs"];

/// The app on a fresh, migrated database of `backend`.
async fn test_app(backend: Backend) -> Router {
    common::test_app(backend).await.0
}

/// The fallback's answer: no route for this path at all.
fn is_no_such_endpoint(r: &Reply) -> bool {
    r.status == StatusCode::NOT_FOUND
        && r.content_type() == "application/problem+json"
        && r.json()["detail"] == "No such endpoint."
}

async fn document(app: &Router) -> Value {
    let r = send(app, "GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.content_type().starts_with("application/json"),
        "{}",
        r.content_type()
    );
    r.json()
}

/// (METHOD, path, operation) for every operation of the document.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if METHODS.contains(&method.as_str()) {
                ops.push((method.to_uppercase(), path.clone(), op));
            }
        }
    }
    ops
}

fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let op = &doc["paths"][path][method.to_lowercase()];
    assert!(op.is_object(), "{method} {path} is not documented");
    op
}

/// Follows a local `$ref` (`#/components/...`), if `value` is one.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => {
            let target = doc
                .pointer(pointer.strip_prefix('#').expect("a local $ref"))
                .unwrap_or_else(|| panic!("dangling $ref {pointer}"));
            resolve(doc, target)
        }
        None => value,
    }
}

/// Every `$ref` anywhere in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

fn uses_problem(doc: &Value, response: &Value) -> bool {
    let response = resolve(doc, response);
    response["content"]["application/problem+json"]["schema"]["$ref"]
        == "#/components/schemas/Problem"
}

async fn documents_exactly_the_routes_the_router_serves(backend: Backend) {
    let app = test_app(backend).await;
    let doc = document(&app).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    assert_eq!(doc["info"]["title"], "Tollgate control plane");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["info"]["description"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));

    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(ROUTES.len(), expected.len(), "ROUTES lists a route twice");
    assert_eq!(
        documented.difference(&expected).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not in ROUTES"
    );
    assert_eq!(
        expected.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in ROUTES but not documented"
    );

    let schemes = &doc["components"]["securitySchemes"];
    for name in ["admin_token", "tenant_token", "sync_token"] {
        assert_eq!(schemes[name]["type"], "http", "{name}");
        assert_eq!(schemes[name]["scheme"], "bearer", "{name}");
    }

    let mut operation_ids = BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let what = format!("{method} {path}");
        assert!(
            operation_ids.insert(op["operationId"].as_str().unwrap().to_owned()),
            "{what}: operationId used twice"
        );
        assert!(
            op["tags"].as_array().is_some_and(|t| t.len() == 1),
            "{what}"
        );
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{what}"
        );

        // Who may call it.
        let security: BTreeSet<&str> = op["security"]
            .as_array()
            .map(|reqs| {
                reqs.iter()
                    .flat_map(|r| r.as_object().unwrap().keys().map(String::as_str))
                    .collect()
            })
            .unwrap_or_default();
        for name in &security {
            assert!(schemes[name].is_object(), "{what}: unknown scheme {name}");
        }
        if PUBLIC.contains(&path.as_str()) {
            assert!(security.is_empty(), "{what} is public: {security:?}");
        } else if SYNC_ONLY.contains(&path.as_str()) {
            assert_eq!(security, BTreeSet::from(["sync_token"]), "{what}");
        } else {
            assert!(security.contains("admin_token"), "{what}: {security:?}");
            assert!(!security.contains("sync_token"), "{what}: {security:?}");
        }

        // Path parameters: exactly the template's, all required.
        let in_template: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        let in_path: BTreeSet<String> = params
            .iter()
            .filter(|p| p["in"] == "path")
            .inspect(|p| assert_eq!(p["required"], true, "{what}: {p}"))
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            in_path,
            in_template.iter().map(|s| (*s).to_owned()).collect(),
            "{what}: path parameters"
        );

        // Errors: problem+json, and at least one 4xx unless public.
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{what}: no success response"
        );
        for (status, response) in responses {
            if !status.starts_with('2') {
                assert!(
                    uses_problem(&doc, response),
                    "{what}: {status} is not a Problem: {response}"
                );
            }
        }
        if !PUBLIC.contains(&path.as_str()) {
            assert!(
                responses
                    .iter()
                    .any(|(s, r)| s.starts_with('4') && uses_problem(&doc, r)),
                "{what}: no 4xx Problem response"
            );
            assert!(responses.contains_key("401"), "{what}: no 401");
        }
    }

    // Nothing dangles.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        resolve(&doc, &json!({ "$ref": r }));
    }
}

async fn the_problem_schema_is_what_errors_look_like(backend: Backend) {
    let app = test_app(backend).await;
    let doc = document(&app).await;
    let problem = &doc["components"]["schemas"]["Problem"];
    let properties: BTreeSet<&str> = problem["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        properties,
        BTreeSet::from(["type", "title", "status", "detail", "code"])
    );
    // A real error body has exactly those fields, with the documented types.
    let r = send(&app, "GET", "/v1/plans/nope", Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.content_type(), "application/problem+json");
    let errors = Checker::new(&doc).check(problem, &r.json());
    assert!(errors.is_empty(), "{errors:#?}");
}

async fn swagger_ui_is_served_from_the_binary(backend: Backend) {
    let app = test_app(backend).await;

    // `/docs` redirects to `/docs/`, which is Swagger UI's page.
    let r = send(&app, "GET", "/docs", None, None).await;
    assert!(r.status.is_redirection(), "{}", r.status);
    assert_eq!(r.headers[header::LOCATION], "/docs/");

    let r = send(&app, "GET", "/docs/", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.content_type().starts_with("text/html"),
        "{}",
        r.content_type()
    );
    let page = r.text();
    assert!(page.to_lowercase().contains("swagger"), "{page}");
    // Its scripts and styles are relative: served by us, not by a CDN.
    assert!(!page.contains("https://"), "{page}");
    assert!(page.contains("swagger-ui-bundle.js"), "{page}");

    for (asset, content_type) in [
        ("/docs/swagger-ui.css", "text/css"),
        ("/docs/swagger-ui-bundle.js", "javascript"),
        ("/docs/swagger-ui-standalone-preset.js", "javascript"),
    ] {
        let r = send(&app, "GET", asset, None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{asset}");
        assert!(
            r.content_type().contains(content_type),
            "{asset}: {}",
            r.content_type()
        );
        assert!(r.bytes.len() > 10_000, "{asset}: {} bytes", r.bytes.len());
    }
    // The UI is pointed at our document.
    let r = send(&app, "GET", "/docs/swagger-initializer.js", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("/openapi.json"), "{}", r.text());
}

async fn other_paths_still_answer_the_api_s_own_404_and_405(backend: Backend) {
    let app = test_app(backend).await;
    for uri in [
        "/nope",
        "/v1/nope",
        "/openapi.yaml",
        "/v1/openapi.json",
        "/v1/docs",
    ] {
        let r = send(&app, "GET", uri, Some(ADMIN), None).await;
        assert!(is_no_such_endpoint(&r), "{uri}: {} {}", r.status, r.text());
    }
    let r = send(&app, "POST", "/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.content_type(), "application/problem+json");
    assert_eq!(r.json()["code"], "method_not_allowed");
}

/// `(METHOD, path)` for each `.route("<path>", get(..).post(..))` in `source`.
fn routes_in(source: &str, prefix: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (start, _) in source.match_indices(".route(") {
        let rest = &source[start + ".route(".len()..];
        let rest = rest.trim_start().strip_prefix('"').expect("a literal path");
        let (path, rest) = rest.split_once('"').unwrap();
        // The method router: up to the `)` closing `.route(`.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .unwrap();
        let methods = &rest[..end];
        for method in ["get", "post", "put", "patch", "delete"] {
            for (at, _) in methods.match_indices(&format!("{method}(")) {
                let before = methods[..at].chars().next_back();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    found.push((method.to_uppercase(), format!("{prefix}{path}")));
                }
            }
        }
    }
    found
}

#[test]
fn the_sources_route_exactly_routes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/routes");
    let mut routed = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let prefix = if TOP_LEVEL_ROUTE_FILES.contains(&name.as_str()) {
            ""
        } else {
            "/v1"
        };
        let source = std::fs::read_to_string(&path).unwrap();
        for route in routes_in(&source, prefix) {
            assert!(routed.insert(route.clone()), "{route:?} routed twice");
        }
    }
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        routed.difference(&expected).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routed in src/routes but not in ROUTES (and so not documented)"
    );
    assert_eq!(
        expected.difference(&routed).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in ROUTES but not routed in src/routes"
    );
}

/// The token an operation is called with when authenticated.
fn token_for(path: &str) -> Option<&'static str> {
    if PUBLIC.contains(&path) {
        None
    } else if SYNC_ONLY.contains(&path) {
        Some(SYNC)
    } else {
        Some(ADMIN)
    }
}

/// `path` with each `{parameter}` replaced by an id that exists nowhere.
fn with_dummy_ids(path: &str) -> String {
    path.split('/')
        .map(|s| {
            if s.starts_with('{') {
                "does-not-exist"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn every_documented_operation_is_routed(backend: Backend) {
    let app = test_app(backend).await;
    let doc = document(&app).await;
    for (method, path, _) in operations(&doc) {
        let uri = with_dummy_ids(&path);
        // Without a token, then with the right one; no body either way.
        for token in [None, token_for(&path)] {
            let r = send(&app, method.as_str(), &uri, token, None).await;
            let what = format!("{method} {uri} (token: {})", token.is_some());
            assert!(!is_no_such_endpoint(&r), "{what}: not routed");
            assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
            assert!(!r.status.is_server_error(), "{what}: {}", r.text());
            check_reply(&doc, &method, &path, &r);
        }
    }
    // And no method the document does not list.
    for (path, item) in doc["paths"].as_object().unwrap() {
        let uri = with_dummy_ids(path);
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if item.get(method.to_lowercase()).is_none() {
                let r = send(&app, method, &uri, Some(ADMIN), None).await;
                assert_eq!(
                    r.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not documented"
                );
            }
        }
    }
}

#[test]
fn the_checker_catches_what_it_should() {
    let doc = json!({"components": {"schemas": {
        "Thing": {"type": "object", "required": ["id", "at"], "properties": {
            "id": {"type": "string"},
            "at": {"type": "string", "format": "date-time"},
            "n": {"type": ["integer", "null"], "minimum": 0},
            "kind": {"type": "string", "enum": ["a", "b"]},
            "meta": {"type": "object"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}}
        }},
        "Issued": {"allOf": [{"$ref": "#/components/schemas/Thing"},
                             {"type": "object", "required": ["secret"], "properties": {"secret": {"type": "string"}}}]}
    }}});
    let thing = json!({"$ref": "#/components/schemas/Thing"});
    let issued = json!({"$ref": "#/components/schemas/Issued"});
    let checker = Checker::new(&doc);
    let ok = json!({"id": "x", "at": "2026-01-01T00:00:00Z", "n": null, "kind": "a", "meta": {"free": [1]}, "counts": {"x": 1}});
    assert_eq!(checker.check(&thing, &ok), Vec::<String>::new());
    let mut issued_ok = ok.clone();
    issued_ok["secret"] = json!("s");
    assert_eq!(checker.check(&issued, &issued_ok), Vec::<String>::new());
    for (schema, bad) in [
        (
            &thing,
            json!({"id": "x", "at": "2026-01-01T00:00:00Z", "extra": 1}),
        ),
        (&thing, json!({"id": "x"})),
        (&thing, json!({"id": 1, "at": "2026-01-01T00:00:00Z"})),
        (&thing, json!({"id": "x", "at": "yesterday"})),
        (
            &thing,
            json!({"id": "x", "at": "2026-01-01T00:00:00Z", "n": -1}),
        ),
        (
            &thing,
            json!({"id": "x", "at": "2026-01-01T00:00:00Z", "kind": "c"}),
        ),
        (
            &thing,
            json!({"id": "x", "at": "2026-01-01T00:00:00Z", "counts": {"x": "1"}}),
        ),
        (&issued, ok.clone()),
        (
            &issued,
            json!({"id": "x", "at": "2026-01-01T00:00:00Z", "secret": "s", "extra": 1}),
        ),
    ] {
        assert_ne!(checker.check(schema, &bad), Vec::<String>::new(), "{bad}");
    }
}

/// Checks `reply` against what the document says `method path` answers:
/// the status is listed, the documented headers are there, and the body has
/// the documented content type and schema.
fn check_reply(doc: &Value, method: &str, path: &str, reply: &Reply) {
    let what = format!("{method} {path} -> {}", reply.status.as_u16());
    let responses = &operation(doc, method, path)["responses"];
    let status = reply.status.as_str();
    let range = format!("{}XX", &status[..1]);
    let response = responses
        .get(status)
        .or_else(|| responses.get(&range))
        .unwrap_or_else(|| panic!("{what}: status not documented; body {}", reply.text()));
    let response = resolve(doc, response);
    if let Some(headers) = response.get("headers").and_then(Value::as_object) {
        for name in headers.keys() {
            assert!(
                reply.headers.contains_key(name.as_str()),
                "{what}: no {name} header"
            );
        }
    }
    match response.get("content").and_then(Value::as_object) {
        None => assert!(
            reply.bytes.is_empty(),
            "{what}: undocumented body {}",
            reply.text()
        ),
        Some(content) => {
            let media_type = reply
                .content_type()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim();
            let schema = &content
                .get(media_type)
                .unwrap_or_else(|| panic!("{what}: content type {media_type:?} not documented"))
                ["schema"];
            let errors = Checker::new(doc).check(schema, &reply.json());
            assert!(
                errors.is_empty(),
                "{what}: {errors:#?}\nbody: {}",
                reply.text()
            );
        }
    }
}

/// Just enough JSON Schema for what utoipa generates: `$ref`, `allOf`,
/// `type` (with `null`), `properties`, `required`, `additionalProperties`,
/// `items`, `enum`, `minimum` / `maximum` and `format: date-time`. Stricter
/// than JSON Schema in one way: an object may not carry a property its
/// schema does not list (unless `additionalProperties` allows it), so an
/// undocumented response field fails.
struct Checker<'a> {
    doc: &'a Value,
}

impl<'a> Checker<'a> {
    fn new(doc: &'a Value) -> Self {
        Self { doc }
    }

    fn check(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.at(schema, value, "", true, &mut errors);
        errors
    }

    /// The property names `schema` lists, through `allOf`.
    fn listed(&self, schema: &Value, names: &mut BTreeSet<String>) {
        let schema = resolve(self.doc, schema);
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            names.extend(props.keys().cloned());
        }
        for part in schema["allOf"].as_array().into_iter().flatten() {
            self.listed(part, names);
        }
    }

    fn at(&self, schema: &Value, value: &Value, at: &str, strict: bool, errors: &mut Vec<String>) {
        let schema = resolve(self.doc, schema);
        let at_or_root = if at.is_empty() { "/" } else { at };
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            for part in parts {
                self.at(part, value, at, false, errors);
            }
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(options) = schema.get(key).and_then(Value::as_array) {
                let fits = options.iter().any(|option| {
                    let mut e = Vec::new();
                    self.at(option, value, at, strict, &mut e);
                    e.is_empty()
                });
                if !fits {
                    errors.push(format!("{at_or_root}: fits no {key} option: {value}"));
                }
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                errors.push(format!("{at_or_root}: {value} not in {allowed:?}"));
            }
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let fits = types.is_empty()
            || types.contains(&actual)
            || (actual == "integer" && types.contains(&"number"));
        if !fits {
            errors.push(format!(
                "{at_or_root}: {actual} where {types:?} is documented"
            ));
            return;
        }
        match value {
            Value::Number(n) => {
                let n = n.as_f64().unwrap();
                if schema["minimum"].as_f64().is_some_and(|min| n < min) {
                    errors.push(format!("{at_or_root}: {n} below the minimum"));
                }
                if schema["maximum"].as_f64().is_some_and(|max| n > max) {
                    errors.push(format!("{at_or_root}: {n} above the maximum"));
                }
            }
            Value::String(s)
                if schema["format"] == "date-time"
                    && OffsetDateTime::parse(s, &Rfc3339).is_err() =>
            {
                errors.push(format!("{at_or_root}: {s:?} is not RFC 3339"));
            }
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.at(item_schema, item, &format!("{at}/{i}"), true, errors);
                    }
                }
            }
            Value::Object(map) => {
                let properties = schema["properties"].as_object();
                for name in schema["required"].as_array().into_iter().flatten() {
                    let name = name.as_str().unwrap();
                    if !map.contains_key(name) {
                        errors.push(format!("{at_or_root}: required {name:?} is missing"));
                    }
                }
                let mut listed = BTreeSet::new();
                self.listed(schema, &mut listed);
                for (name, v) in map {
                    let here = format!("{at}/{name}");
                    if let Some(prop) = properties.and_then(|p| p.get(name)) {
                        self.at(prop, v, &here, true, errors);
                    } else {
                        match schema.get("additionalProperties") {
                            Some(Value::Bool(false)) => {
                                errors.push(format!("{here}: not allowed"));
                            }
                            Some(extra @ Value::Object(_)) => {
                                self.at(extra, v, &here, true, errors);
                            }
                            Some(_) => {}
                            // An object schema with no properties is free-form (`metadata`).
                            None if strict && !listed.is_empty() && !listed.contains(name) => {
                                errors.push(format!("{here}: not documented"));
                            }
                            None => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// The documented path `uri` is an instance of: `{…}` matches one segment.
fn template_of(uri: &str) -> &'static str {
    let path = uri.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').collect();
    let matching: Vec<&str> = ROUTES
        .iter()
        .map(|(_, template)| *template)
        .filter(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t.starts_with('{') || t == s)
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(matching.len(), 1, "{uri} matches {matching:?}");
    matching[0]
}

/// The walk-through: each call is checked against the document.
struct Walk<'a> {
    app: &'a Router,
    doc: &'a Value,
}

impl Walk<'_> {
    /// Sends, checks the status and the answer against the document, hands back the body.
    async fn call(
        &self,
        token: Option<&str>,
        method: &str,
        uri: &str,
        body: Option<Value>,
        expected: StatusCode,
    ) -> Value {
        let body = body.map(|b| b.to_string());
        let r = send(self.app, method, uri, token, body.as_deref()).await;
        assert_eq!(r.status, expected, "{method} {uri}: {}", r.text());
        check_reply(self.doc, method, template_of(uri), &r);
        if r.bytes.is_empty() {
            Value::Null
        } else {
            r.json()
        }
    }
}

fn id(body: &Value) -> String {
    body["id"].as_str().unwrap().to_owned()
}

async fn answers_match_the_documented_responses(backend: Backend) {
    let app = test_app(backend).await;
    let doc = document(&app).await;
    let w = Walk {
        app: &app,
        doc: &doc,
    };
    let a = Some(ADMIN);
    let s = Some(SYNC);
    use StatusCode as S;

    // Plans.
    let plan = w
        .call(
            a,
            "POST",
            "/v1/plans",
            Some(json!({
                "name": "Pro",
                "limits": [
                    {"name": "per-second", "max": 5, "window_seconds": 1, "burst": 10},
                    {"name": "daily", "max": 1000, "window_seconds": 86400, "scope": "tenant"}
                ],
                "route_costs": [{"methods": ["POST"], "path_prefix": "/search", "cost": 5}],
                "monthly_quota": 100000, "max_api_keys": 3, "metadata": {"price": 29}, "public": true
            })),
            S::CREATED,
        )
        .await;
    let plan_uri = format!("/v1/plans/{}", id(&plan));
    let taken = json!({"name": "Pro", "limits": []});
    w.call(a, "POST", "/v1/plans", Some(taken), S::CONFLICT)
        .await;
    let unknown_field = json!({"name": "x", "limits": [], "extra": 1});
    w.call(
        a,
        "POST",
        "/v1/plans",
        Some(unknown_field),
        S::UNPROCESSABLE_ENTITY,
    )
    .await;
    w.call(a, "POST", "/v1/plans", None, S::UNSUPPORTED_MEDIA_TYPE)
        .await;
    w.call(a, "GET", "/v1/plans?limit=1", None, S::OK).await;
    w.call(a, "GET", "/v1/plans?limit=0", None, S::BAD_REQUEST)
        .await;
    w.call(a, "GET", &plan_uri, None, S::OK).await;
    let change = json!({"max_users": 10, "monthly_quota": null});
    w.call(a, "PATCH", &plan_uri, Some(change), S::OK).await;
    // Waiting (here for no proxy at all) adds `propagation` to the answer.
    let waited = format!("{plan_uri}?wait_for_propagation=0s");
    let changed = w
        .call(a, "PATCH", &waited, Some(json!({"max_users": 11})), S::OK)
        .await;
    assert_eq!(changed["propagation"]["complete"], true, "{changed}");
    w.call(
        a,
        "PATCH",
        &plan_uri,
        Some(json!({})),
        S::UNPROCESSABLE_ENTITY,
    )
    .await;
    let spare = json!({"name": "Spare", "limits": []});
    let spare = id(&w
        .call(a, "POST", "/v1/plans", Some(spare), S::CREATED)
        .await);

    // Tenants.
    let acme = json!({"name": "acme", "plan_id": id(&plan), "billing_anchor_day": 15});
    let tenant_id = id(&w
        .call(a, "POST", "/v1/tenants", Some(acme), S::CREATED)
        .await);
    let tenant_uri = format!("/v1/tenants/{tenant_id}");
    let no_plan = json!({"name": "other", "plan_id": "nope"});
    w.call(a, "POST", "/v1/tenants", Some(no_plan), S::NOT_FOUND)
        .await;
    let by_plan = format!("/v1/tenants?plan_id={}", id(&plan));
    w.call(a, "GET", &by_plan, None, S::OK).await;
    w.call(a, "GET", &tenant_uri, None, S::OK).await;
    let rename = json!({"name": "acme corp"});
    w.call(a, "PATCH", &tenant_uri, Some(rename), S::OK).await;
    let no_day = json!({"billing_anchor_day": 32});
    w.call(
        a,
        "PATCH",
        &tenant_uri,
        Some(no_day),
        S::UNPROCESSABLE_ENTITY,
    )
    .await;
    w.call(a, "DELETE", &plan_uri, None, S::CONFLICT).await;

    // Tenant tokens, and what a tenant token may not do.
    let tokens_uri = format!("/v1/tenants/{tenant_id}/tokens");
    let portal = json!({"name": "portal"});
    let issued = w
        .call(a, "POST", &tokens_uri, Some(portal), S::CREATED)
        .await;
    let tenant_token = issued["token"].as_str().unwrap().to_owned();
    let t = Some(tenant_token.as_str());
    w.call(a, "GET", &tokens_uri, None, S::OK).await;
    w.call(t, "GET", "/v1/plans", None, S::FORBIDDEN).await;
    w.call(t, "GET", &format!("/v1/plans/{spare}"), None, S::NOT_FOUND)
        .await;
    w.call(t, "GET", &plan_uri, None, S::OK).await;
    let replan = json!({"plan_id": spare});
    w.call(t, "PATCH", &tenant_uri, Some(replan), S::FORBIDDEN)
        .await;

    // Anonymous access: the admin's alone.
    let anonymous = "/v1/anonymous-access";
    w.call(a, "GET", anonymous, None, S::OK).await;
    let open =
        json!({"routes": [{"methods": ["GET"], "path_prefix": "/public"}], "plan_id": spare});
    w.call(a, "PUT", anonymous, Some(open.clone()), S::OK).await;
    w.call(a, "GET", anonymous, None, S::OK).await;
    let planless = json!({"routes": [{"path_prefix": "/public"}]});
    w.call(a, "PUT", anonymous, Some(planless), S::UNPROCESSABLE_ENTITY)
        .await;
    w.call(t, "GET", anonymous, None, S::FORBIDDEN).await;
    w.call(t, "PUT", anonymous, Some(open), S::FORBIDDEN).await;
    let spare_uri = format!("/v1/plans/{spare}");
    w.call(a, "DELETE", &spare_uri, None, S::CONFLICT).await;

    // Keys: every setting, issued by the admin; plain ones by the tenant.
    let keys_uri = format!("/v1/tenants/{tenant_id}/keys");
    let ci = json!({
        "name": "ci",
        "expires_at": "2099-01-01T00:00:00Z",
        "scopes": [{"methods": ["GET"], "path_prefix": "/v1"}],
        "allowed_cidrs": ["10.0.0.0/8"],
        "limits": [{"name": "per-second", "max": 1, "window_seconds": 1}],
        "monthly_quota": 50
    });
    let key_id = id(&w.call(a, "POST", &keys_uri, Some(ci), S::CREATED).await);
    let key_uri = format!("/v1/keys/{key_id}");
    let mine = json!({"name": "mine"});
    let mine = w.call(t, "POST", &keys_uri, Some(mine), S::CREATED).await;
    let wider = json!({"name": "big", "monthly_quota": 1});
    w.call(t, "POST", &keys_uri, Some(wider), S::FORBIDDEN)
        .await;
    let late = json!({"name": "late", "expires_at": "2001-01-01T00:00:00Z"});
    w.call(a, "POST", &keys_uri, Some(late), S::UNPROCESSABLE_ENTITY)
        .await;
    w.call(t, "GET", &format!("{keys_uri}?active=true"), None, S::OK)
        .await;
    w.call(a, "GET", &key_uri, None, S::OK).await;
    let narrow = json!({"active": false, "scopes": null});
    w.call(t, "PATCH", &key_uri, Some(narrow), S::OK).await;
    let rotate_uri = format!("{key_uri}/rotate");
    let grace = json!({"grace_seconds": 60});
    let rotated = w
        .call(a, "POST", &rotate_uri, Some(grace), S::CREATED)
        .await;
    let too_long = json!({"grace_seconds": 99_999_999});
    w.call(
        a,
        "POST",
        &rotate_uri,
        Some(too_long),
        S::UNPROCESSABLE_ENTITY,
    )
    .await;
    let fourth = json!({"name": "one too many"});
    w.call(a, "POST", &keys_uri, Some(fourth), S::CONFLICT)
        .await;
    let batch_uri = format!("{keys_uri}/batch");
    let too_many = json!({"count": 2});
    w.call(a, "POST", &batch_uri, Some(too_many), S::CONFLICT)
        .await;
    let none = json!({"count": 0, "name": "bulk"});
    w.call(a, "POST", &batch_uri, Some(none), S::UNPROCESSABLE_ENTITY)
        .await;
    let wider = json!({"count": 1, "name": "bulk", "monthly_quota": 1});
    w.call(t, "POST", &batch_uri, Some(wider), S::FORBIDDEN)
        .await;

    // Usage, reported and read back.
    let batch = json!({
        "batch_id": "b-1",
        "reporter_id": "envoy-a",
        "standings_since": 0,
        "keys": [{"key_id": key_id, "allowed": 3, "cost": 7, "denied": {"rate_limited": 1}, "last_used_ms": 1_700_000_000_000u64}],
        "unattributed": {"invalid_api_key": 2},
        "dropped": 0
    });
    w.call(s, "POST", "/v1/usage", Some(batch.clone()), S::OK)
        .await;
    w.call(s, "POST", "/v1/usage", Some(batch), S::OK).await;
    // This period's use through envoy-a, then envoy-b's first use of the
    // key: its receipt tells what envoy-a used.
    let now = common::now_ms();
    let uses = |batch: &str, reporter: &str| {
        json!({"batch_id": batch, "reporter_id": reporter,
               "keys": [{"key_id": key_id, "allowed": 1, "cost": 1, "last_used_ms": now}]})
    };
    w.call(s, "POST", "/v1/usage", Some(uses("b-8", "envoy-a")), S::OK)
        .await;
    let other = uses("b-9", "envoy-b");
    let receipt = w.call(s, "POST", "/v1/usage", Some(other), S::OK).await;
    assert_eq!(receipt["standings"].as_array().unwrap().len(), 1);
    let unnamed = json!({"batch_id": ""});
    w.call(
        s,
        "POST",
        "/v1/usage",
        Some(unnamed),
        S::UNPROCESSABLE_ENTITY,
    )
    .await;
    let wrong_token = json!({"batch_id": "b-2"});
    w.call(a, "POST", "/v1/usage", Some(wrong_token), S::UNAUTHORIZED)
        .await;
    w.call(t, "GET", &format!("{key_uri}/usage"), None, S::OK)
        .await;
    let daily = format!("{tenant_uri}/usage?granularity=day");
    w.call(a, "GET", &daily, None, S::OK).await;
    let weekly = format!("{tenant_uri}/usage?granularity=week");
    w.call(a, "GET", &weekly, None, S::BAD_REQUEST).await;

    // The feeds and the public endpoints.
    let sync = w.call(s, "GET", "/v1/sync?since=0", None, S::OK).await;
    assert!(!sync["keys"].as_array().unwrap().is_empty());
    w.call(s, "GET", "/v1/sync?wait_ms=60001", None, S::BAD_REQUEST)
        .await;
    w.call(a, "GET", "/v1/sync", None, S::UNAUTHORIZED).await;
    let catalog = w.call(None, "GET", "/v1/catalog", None, S::OK).await;
    assert_eq!(catalog["plans"].as_array().unwrap().len(), 1);
    w.call(None, "GET", "/healthz", None, S::OK).await;

    // The audit trail, with before / after.
    w.call(a, "GET", "/v1/audit?limit=200", None, S::OK).await;
    let own = format!("/v1/audit?tenant_id={tenant_id}&since=2000-01-01T00:00:00Z");
    w.call(t, "GET", &own, None, S::OK).await;
    let others = "/v1/audit?tenant_id=someone-else";
    w.call(t, "GET", others, None, S::NOT_FOUND).await;
    w.call(a, "GET", "/v1/audit?since=yesterday", None, S::BAD_REQUEST)
        .await;

    // Leak reports: the scanner's token or the admin's, a list in and out.
    let leaked = json!([
        {"token": mine["key"], "type": "tollgate_api_key", "url": "https://github.com/o/r/blob/c/f", "source": "content"},
        {"token": "tg_nope", "type": "tollgate_api_key"}
    ]);
    let l = Some(LEAK_REPORTER);
    let verdicts = w
        .call(l, "POST", "/v1/leaked-keys", Some(leaked.clone()), S::OK)
        .await;
    assert_eq!(verdicts[0]["label"], "true_positive", "{verdicts}");
    assert_eq!(verdicts[1]["label"], "false_positive", "{verdicts}");
    w.call(a, "POST", "/v1/leaked-keys", Some(json!([])), S::OK)
        .await;
    w.call(
        t,
        "POST",
        "/v1/leaked-keys",
        Some(leaked.clone()),
        S::FORBIDDEN,
    )
    .await;
    w.call(
        None,
        "POST",
        "/v1/leaked-keys",
        Some(leaked),
        S::UNAUTHORIZED,
    )
    .await;
    let not_a_list = json!({"token": "tg_nope", "type": "x"});
    w.call(
        l,
        "POST",
        "/v1/leaked-keys",
        Some(not_a_list),
        S::UNPROCESSABLE_ENTITY,
    )
    .await;
    let too_many = Value::Array(vec![json!({"token": "t", "type": "x"}); 1001]);
    w.call(
        l,
        "POST",
        "/v1/leaked-keys",
        Some(too_many),
        S::UNPROCESSABLE_ENTITY,
    )
    .await;
    w.call(
        l,
        "POST",
        "/v1/leaked-keys",
        None,
        S::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    w.call(l, "GET", "/v1/plans", None, S::UNAUTHORIZED).await;

    // Deletions.
    let successor = format!("/v1/keys/{}", id(&rotated));
    w.call(t, "DELETE", &successor, None, S::NO_CONTENT).await;
    // A 204 becomes a 200 with a body when asked to wait.
    let waited = format!("{key_uri}?wait_for_propagation=0s");
    let deleted = w.call(a, "DELETE", &waited, None, S::OK).await;
    assert!(deleted["config_version"].is_u64(), "{deleted}");
    w.call(a, "DELETE", &key_uri, None, S::NOT_FOUND).await;
    let two = json!({"count": 2, "name": "bulk", "allowed_cidrs": ["10.0.0.0/8"]});
    let batch = w.call(t, "POST", &batch_uri, Some(two), S::CREATED).await;
    assert_eq!(batch["keys"].as_array().unwrap().len(), 2);
    let token_uri = format!("{tokens_uri}/{}", id(&issued));
    w.call(a, "DELETE", &token_uri, None, S::NO_CONTENT).await;
    w.call(t, "GET", &tenant_uri, None, S::UNAUTHORIZED).await;
    w.call(a, "DELETE", &tenant_uri, None, S::NO_CONTENT).await;
    w.call(a, "DELETE", &plan_uri, None, S::NO_CONTENT).await;
    w.call(a, "GET", &plan_uri, None, S::NOT_FOUND).await;
}

on_both_databases!(
    documents_exactly_the_routes_the_router_serves,
    the_problem_schema_is_what_errors_look_like,
    swagger_ui_is_served_from_the_binary,
    other_paths_still_answer_the_api_s_own_404_and_405,
    every_documented_operation_is_routed,
    answers_match_the_documented_responses,
);
