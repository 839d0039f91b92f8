//! Who may call what, for every operation the OpenAPI document lists, so
//! that a new endpoint cannot be missed: each operation is called as the
//! admin, as the owning tenant's token (A), as another tenant's (B), with a
//! revoked token, with none and with a malformed one, on resources of
//! tenant A made fresh for it, and each answer is held to what the
//! document's `security` says:
//!
//! - no token, a malformed one or a revoked one: `401`;
//! - an operation only the admin (or the sync, or the leak-report token)
//!   may call: a tenant token gets `403`, or `401` where tenant tokens are
//!   not a kind of credential at all (the sync feed);
//! - an operation tenant tokens may call: A is let in, and B gets `404`
//!   (`not_found`), never A's data and never a `2xx`;
//! - the admin is let in everywhere it is listed.
//!
//! "Let in" is any answer but `401`, `403` and `404`. And what B may list
//! (its audit log) never holds one of A's ids.

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tollgate_control_plane::openapi;

use tollgate_control_plane::app;
use tollgate_control_plane::throttle::ThrottleConfig;

use crate::common::{
    admin, create, key, plan, send, tenant, tenant_token, test_state, Backend, Reply, ADMIN,
};

/// An app without the admin API's rate limit: the matrix makes hundreds
/// of calls with one admin token in a moment.
async fn unthrottled(backend: Backend) -> Router {
    app(test_state(backend)
        .await
        .with_throttle(ThrottleConfig::off()))
}

/// The credentials each operation is called with, in this order (the
/// owner's and the admin's last: they may change what they call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Nobody,
    Malformed,
    Revoked,
    TenantB,
    TenantA,
    Admin,
}

const CALLERS: [Caller; 6] = [
    Caller::Nobody,
    Caller::Malformed,
    Caller::Revoked,
    Caller::TenantB,
    Caller::TenantA,
    Caller::Admin,
];

/// Tenant A's resources, made fresh for each operation, and the tokens.
struct Fixture {
    plan: String,
    tenant: String,
    key: String,
    /// A token of A's that the operation may delete, not one it calls with.
    token_id: String,
    token_a: String,
    token_b: String,
    revoked: String,
    /// Every id of A's that B must never see.
    ids: Vec<String>,
}

impl Fixture {
    async fn new(app: &Router) -> Self {
        let plan_a = plan(app, None).await;
        let plan_b = plan(app, None).await;
        let a = tenant(app, &plan_a).await;
        let b = tenant(app, &plan_b).await;
        let (key_a, _) = key(app, &a).await;
        key(app, &b).await;
        let token_a = tenant_token(app, &a).await;
        let token_b = tenant_token(app, &b).await;
        let spare = create(
            app,
            &format!("/v1/tenants/{a}/tokens"),
            json!({"name": "spare"}),
        )
        .await;
        let token_id = spare["id"].as_str().unwrap().to_owned();
        let doomed = create(
            app,
            &format!("/v1/tenants/{a}/tokens"),
            json!({"name": "doomed"}),
        )
        .await;
        let revoked = doomed["token"].as_str().unwrap().to_owned();
        let r = admin(
            app,
            Method::DELETE,
            &format!("/v1/tenants/{a}/tokens/{}", doomed["id"].as_str().unwrap()),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
        let r = admin(
            app,
            Method::PUT,
            &format!("/v1/tenants/{a}/webhook"),
            Some(json!({"url": "https://hooks.example.com/tollgate"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        Self {
            ids: vec![a.clone(), key_a.clone(), token_id.clone(), plan_a.clone()],
            plan: plan_a,
            tenant: a,
            key: key_a,
            token_id,
            token_a,
            token_b,
            revoked,
        }
    }

    fn token(&self, caller: Caller) -> Option<&str> {
        match caller {
            Caller::Nobody => None,
            Caller::Malformed => Some("tgt_not-a-token"),
            Caller::Revoked => Some(&self.revoked),
            Caller::TenantB => Some(&self.token_b),
            Caller::TenantA => Some(&self.token_a),
            Caller::Admin => Some(ADMIN),
        }
    }

    /// `template` with its path parameters naming A's resources.
    fn path(&self, template: &str) -> String {
        let tokens_id = format!("/tokens/{}", self.token_id);
        template
            .replace("/v1/keys/{id}", &format!("/v1/keys/{}", self.key))
            .replace("/v1/plans/{id}", &format!("/v1/plans/{}", self.plan))
            .replace("{version}", "1")
            .replace("/tokens/{id}", &tokens_id)
            .replace("{tenant_id}", &self.tenant)
            .replace("/v1/tenants/{id}", &format!("/v1/tenants/{}", self.tenant))
    }

    /// A body the operation accepts from a caller it lets in.
    fn body(&self, method: &Method, template: &str) -> Option<Value> {
        let unique = tollgate_control_plane::db::new_id("n");
        Some(match (method.as_str(), template) {
            ("PUT", "/v1/anonymous-access") => json!({"routes": [], "plan_id": null}),
            ("PUT", "/v1/tenants/{tenant_id}/webhook") => {
                json!({"url": "https://hooks.example.com/other"})
            }
            ("POST", "/v1/leaked-keys") => json!([{"token": "tg_nothing", "type": "t"}]),
            ("POST", "/v1/plans") => json!({"name": unique, "limits": []}),
            ("POST", "/v1/tenants") => json!({"name": unique, "plan_id": self.plan}),
            ("POST", "/v1/tenants/{tenant_id}/keys/batch") => json!({"count": 1, "name": "k"}),
            ("POST", "/v1/keys/{id}/rotate") => json!({}),
            ("POST", "/v1/usage" | "/v1/internal/leases") => json!({}),
            ("POST" | "PATCH", _) => json!({"name": unique}),
            _ => return None,
        })
    }
}

/// The credential kinds an operation lists (`admin_token`, `tenant_token`, …).
fn schemes(doc: &Value, operation: &Value) -> BTreeSet<String> {
    operation
        .get("security")
        .or_else(|| doc.get("security"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|requirement| requirement.keys().cloned())
        .collect()
}

fn let_in(reply: &Reply) -> bool {
    !matches!(
        reply.status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
    )
}

/// What `caller` must get from an operation listing `schemes` on a path
/// that does or does not name one of A's resources; `None` where the
/// answer is only "let in".
fn expected(caller: Caller, schemes: &BTreeSet<String>, names_a: bool) -> Option<StatusCode> {
    let tenants = schemes.contains("tenant_token");
    let admins = schemes.contains("admin_token");
    match caller {
        Caller::Nobody | Caller::Malformed | Caller::Revoked => Some(StatusCode::UNAUTHORIZED),
        // Tenant tokens are a credential of the admin API only.
        Caller::TenantA | Caller::TenantB if !admins => Some(StatusCode::UNAUTHORIZED),
        Caller::TenantA | Caller::TenantB if !tenants => Some(StatusCode::FORBIDDEN),
        // A list of its own (the audit log): B is let in, to its own rows.
        Caller::TenantB if !names_a => None,
        Caller::TenantB => Some(StatusCode::NOT_FOUND),
        Caller::TenantA => None,
        Caller::Admin if admins => None,
        Caller::Admin => Some(StatusCode::UNAUTHORIZED),
    }
}

async fn every_operation_answers_each_caller_as_its_security_says(backend: Backend) {
    let app = unthrottled(backend).await;
    let doc = openapi::document();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let schemes = schemes(&doc, operation);
            if schemes.is_empty() {
                // Public: /healthz and the plan catalog.
                continue;
            }
            let mut fixture = Fixture::new(&app).await;
            for caller in CALLERS {
                // A's own call may have deleted what the admin would call.
                if caller == Caller::Admin {
                    fixture = Fixture::new(&app).await;
                }
                let uri = fixture.path(template);
                let body = fixture.body(&method, template).map(|b| b.to_string());
                let reply = send(
                    &app,
                    method.clone(),
                    &uri,
                    fixture.token(caller),
                    body.as_deref(),
                )
                .await;
                checked += 1;
                let right = match expected(caller, &schemes, template.contains('{')) {
                    Some(status) => reply.status == status,
                    None => let_in(&reply),
                };
                // Whatever B is answered, none of A's ids is in it but
                // those B sent itself.
                let leaked = caller == Caller::TenantB
                    && fixture
                        .ids
                        .iter()
                        .any(|id| !uri.contains(id.as_str()) && reply.text().contains(id.as_str()));
                if !right || leaked {
                    failures.push(format!(
                        "{method} {template} as {caller:?}: {} {}",
                        reply.status,
                        reply.text()
                    ));
                }
            }
        }
    }
    assert!(checked >= 30 * CALLERS.len(), "only {checked} calls");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// B lists the audit log: its own entries only, none naming A's resources.
async fn another_tenants_audit_entries_are_never_listed(backend: Backend) {
    let app = unthrottled(backend).await;
    let fixture = Fixture::new(&app).await;
    let reply = send(
        &app,
        Method::GET,
        "/v1/audit?limit=200",
        Some(&fixture.token_b),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let items = reply.body["items"].as_array().unwrap();
    assert!(!items.is_empty(), "B has entries of its own");
    for id in &fixture.ids {
        assert!(
            !reply.text().contains(id.as_str()),
            "{id} in {:?}",
            reply.body
        );
    }
    let own = send(
        &app,
        Method::GET,
        "/v1/audit?limit=200",
        Some(&fixture.token_a),
        None,
    )
    .await;
    assert!(
        own.text().contains(&fixture.key),
        "A sees its own key's entry"
    );
}

on_both_databases!(
    every_operation_answers_each_caller_as_its_security_says,
    another_tenants_audit_entries_are_never_listed,
);
