//! What every endpoint refuses, across resources: calls without the admin
//! token, each class of bad input as a clear problem+json 4xx (never a 500),
//! unknown ids, and that a refused write leaves nothing behind.

use crate::common::{
    self, admin, assert_problem, key, plan, respond, send, tenant, test_app, version, Backend,
    ADMIN, SYNC,
};
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};
use tollgate_control_plane::AppState;

async fn admin_api_requires_the_admin_token(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let r = send(&app, Method::GET, "/v1/plans", None, None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = send(&app, Method::GET, "/v1/plans", Some("wrong"), None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = send(&app, Method::GET, "/v1/plans", Some(SYNC), None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = send(&app, Method::GET, "/v1/sync", Some(ADMIN), None).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
}

async fn bad_input_is_a_clear_4xx_never_a_500(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let cases: Vec<(&str, StatusCode, &str)> = vec![
        ("{", StatusCode::BAD_REQUEST, "malformed_json"),
        ("[]", StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (
            r#"{"name": 5, "limits": []}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            r#"{"limits": []}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            r#"{"name": "x", "limits": [], "extra": 1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            r#"{"name": "", "limits": []}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_name",
        ),
        (
            r#"{"name": "x", "limits": [{"name": "a", "max": 0, "window_seconds": 1}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plan",
        ),
        (
            r#"{"name": "x", "limits": [{"name": "a", "max": -1, "window_seconds": 1}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            r#"{"name": "x", "limits": [{"name": "a b", "max": 1, "window_seconds": 1}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plan",
        ),
        (
            r#"{"name": "x", "limits": [], "max_api_keys": 99999999999999999999}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            r#"{"name": "x", "limits": [], "max_api_keys": 18446744073709551615}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plan",
        ),
    ];
    for (body, status, code) in cases {
        let r = send(&app, Method::POST, "/v1/plans", Some(ADMIN), Some(body)).await;
        assert_problem(&r, status, code);
    }
    let huge = format!(r#"{{"name": "{}", "limits": []}}"#, "x".repeat(100_000));
    let r = send(&app, Method::POST, "/v1/plans", Some(ADMIN), Some(&huge)).await;
    assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let req = Request::post("/v1/plans")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    let r = respond(&app, req).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let r = admin(&app, Method::GET, "/v1/plans/plan_nope", None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = admin(&app, Method::GET, "/v1/nothing-here", None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = admin(&app, Method::PUT, "/v1/plans", None).await;
    assert_problem(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let r = admin(
        &app,
        Method::POST,
        "/v1/tenants",
        Some(json!({"name": "a", "plan_id": "plan_nope"})),
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "plan_not_found");
    let r = admin(
        &app,
        Method::POST,
        "/v1/tenants/tnt_nope/keys",
        Some(json!({"name": "a"})),
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    // Nothing was written by any of the above.
    assert_eq!(version(&state).await, 0);
}

async fn failed_writes_leave_nothing_behind(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let before = version(&state).await;
    let p = plan(&app, Some(1)).await;
    let t = tenant(&app, &p).await;
    key(&app, &t).await;
    let after_writes = version(&state).await;
    assert_eq!(
        after_writes,
        before + 3,
        "plan, tenant and key each bump the version once"
    );
    let r = admin(
        &app,
        Method::POST,
        &format!("/v1/tenants/{t}/keys"),
        Some(json!({"name": "second"})),
    )
    .await;
    assert_problem(&r, StatusCode::CONFLICT, "key_limit_reached");
    let r = admin(
        &app,
        Method::POST,
        "/v1/plans",
        Some(json!({"name": "bad", "limits": [{"name": "a", "max": 0, "window_seconds": 1}]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(version(&state).await, after_writes);
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

/// Rows in every table, to prove a refused request wrote nothing.
async fn row_counts(state: &AppState) -> Vec<i64> {
    let tables = ["plans", "tenants", "api_keys", "tenant_tokens", "audit_log"];
    let mut counts = common::row_counts(state, &tables).await;
    counts.push(i64::try_from(version(state).await).unwrap());
    counts
}

async fn every_write_endpoint_answers_each_class_of_bad_input(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let (key_id, _) = key(&app, &tenant_id).await;
    let taken_plan = admin(&app, Method::GET, &format!("/v1/plans/{plan_id}"), None)
        .await
        .body["name"]
        .clone();
    let taken_tenant = admin(&app, Method::GET, &format!("/v1/tenants/{tenant_id}"), None)
        .await
        .body["name"]
        .clone();
    let written = row_counts(&state).await;

    struct Endpoint {
        method: Method,
        uri: String,
        /// For the unknown-id class; None when the URI has no id.
        unknown: Option<String>,
        /// A body that passes validation, sent to the unknown id.
        valid: &'static str,
        wrong_type: &'static str,
        /// A body missing a required field; None when nothing is required.
        missing: Option<&'static str>,
        unknown_field: &'static str,
        /// A body naming something that already exists.
        duplicate: Option<Value>,
    }
    let endpoints = [
        Endpoint {
            method: Method::POST,
            uri: "/v1/plans".into(),
            unknown: None,
            valid: "{}",
            wrong_type: r#"{"name": "n", "limits": {}}"#,
            missing: Some(r#"{"name": "n"}"#),
            unknown_field: r#"{"name": "n", "limits": [], "tier": 1}"#,
            duplicate: Some(json!({"name": taken_plan, "limits": []})),
        },
        Endpoint {
            method: Method::PATCH,
            uri: format!("/v1/plans/{plan_id}"),
            unknown: Some("/v1/plans/plan_unknown".into()),
            valid: r#"{"name": "n"}"#,
            wrong_type: r#"{"public": "yes"}"#,
            missing: None,
            unknown_field: r#"{"price": 5}"#,
            duplicate: None,
        },
        Endpoint {
            method: Method::POST,
            uri: "/v1/tenants".into(),
            unknown: None,
            valid: "{}",
            wrong_type: r#"{"name": ["a"], "plan_id": "p"}"#,
            missing: Some(r#"{"name": "n"}"#),
            unknown_field: r#"{"name": "n", "plan_id": "p", "owner": "x"}"#,
            duplicate: Some(json!({"name": taken_tenant, "plan_id": plan_id})),
        },
        Endpoint {
            method: Method::PATCH,
            uri: format!("/v1/tenants/{tenant_id}"),
            unknown: Some("/v1/tenants/tnt_unknown".into()),
            valid: r#"{"name": "n"}"#,
            wrong_type: r#"{"name": 7}"#,
            missing: None,
            unknown_field: r#"{"billing": true}"#,
            duplicate: None,
        },
        Endpoint {
            method: Method::POST,
            uri: format!("/v1/tenants/{tenant_id}/keys"),
            unknown: Some("/v1/tenants/tnt_unknown/keys".into()),
            valid: r#"{"name": "n"}"#,
            wrong_type: r#"{"name": "k", "scopes": "all"}"#,
            missing: Some(r#"{"scopes": null}"#),
            unknown_field: r#"{"name": "k", "plan": "gold"}"#,
            duplicate: None,
        },
        Endpoint {
            method: Method::POST,
            uri: format!("/v1/tenants/{tenant_id}/keys/batch"),
            unknown: Some("/v1/tenants/tnt_unknown/keys/batch".into()),
            valid: r#"{"count": 1, "name": "n"}"#,
            wrong_type: r#"{"count": 1, "name": "k", "scopes": "all"}"#,
            missing: Some(r#"{"name": "n"}"#),
            unknown_field: r#"{"count": 1, "name": "k", "plan": "gold"}"#,
            duplicate: None,
        },
        Endpoint {
            method: Method::PATCH,
            uri: format!("/v1/keys/{key_id}"),
            unknown: Some("/v1/keys/key_unknown".into()),
            valid: r#"{"name": "n"}"#,
            wrong_type: r#"{"active": "no"}"#,
            missing: None,
            unknown_field: r#"{"key": "tg_x"}"#,
            duplicate: None,
        },
        Endpoint {
            method: Method::POST,
            uri: format!("/v1/keys/{key_id}/rotate"),
            unknown: Some("/v1/keys/key_unknown/rotate".into()),
            valid: r#"{"grace_seconds": 1}"#,
            wrong_type: r#"{"grace_seconds": "1h"}"#,
            missing: None,
            unknown_field: r#"{"grace": 60}"#,
            duplicate: None,
        },
        Endpoint {
            method: Method::PUT,
            uri: "/v1/anonymous-access".into(),
            unknown: None,
            valid: r#"{"routes": []}"#,
            wrong_type: r#"{"routes": "all"}"#,
            missing: Some(r#"{"plan_id": null}"#),
            unknown_field: r#"{"routes": [], "open": true}"#,
            duplicate: None,
        },
        Endpoint {
            method: Method::POST,
            uri: format!("/v1/tenants/{tenant_id}/tokens"),
            unknown: Some("/v1/tenants/tnt_unknown/tokens".into()),
            valid: r#"{"name": "n"}"#,
            wrong_type: r#"{"name": false}"#,
            missing: Some("{}"),
            unknown_field: r#"{"name": "t", "scope": "all"}"#,
            duplicate: None,
        },
    ];
    let huge = format!(r#"{{"name": "{}"}}"#, "x".repeat(100_000));
    for e in &endpoints {
        let at = format!("{} {}", e.method, e.uri);
        let r = send(
            &app,
            e.method.clone(),
            &e.uri,
            Some(ADMIN),
            Some(r#"{"name": "#),
        )
        .await;
        assert_eq!(r.body["code"], "malformed_json", "{at}: {:?}", r.body);
        assert_problem(&r, StatusCode::BAD_REQUEST, "malformed_json");
        for body in [e.wrong_type, e.unknown_field, "[]", "null"] {
            let r = send(&app, e.method.clone(), &e.uri, Some(ADMIN), Some(body)).await;
            assert_eq!(r.body["code"], "invalid_body", "{at} {body}: {:?}", r.body);
            assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
        }
        if let Some(body) = e.missing {
            let r = send(&app, e.method.clone(), &e.uri, Some(ADMIN), Some(body)).await;
            assert_eq!(r.body["code"], "invalid_body", "{at} {body}: {:?}", r.body);
            assert!(
                r.body["detail"].as_str().unwrap().contains("missing field"),
                "{at}: {:?}",
                r.body
            );
        }
        let r = send(&app, e.method.clone(), &e.uri, Some(ADMIN), Some(&huge)).await;
        assert_eq!(
            r.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{at}: {:?}",
            r.body
        );
        assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        if let Some(unknown) = &e.unknown {
            let r = send(&app, e.method.clone(), unknown, Some(ADMIN), Some(e.valid)).await;
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "{at} → {unknown}: {:?}",
                r.body
            );
            assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
        }
        if let Some(body) = &e.duplicate {
            let r = admin(&app, e.method.clone(), &e.uri, Some(body.clone())).await;
            assert_eq!(r.status, StatusCode::CONFLICT, "{at}: {:?}", r.body);
            assert!(
                r.body["code"].as_str().unwrap().ends_with("_name_taken"),
                "{at}: {:?}",
                r.body
            );
        }
    }
    // Renaming onto a taken name is a duplicate too.
    assert_eq!(row_counts(&state).await, written);
    let other = tenant(&app, &plan_id).await;
    let written = row_counts(&state).await;
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/tenants/{other}"),
        Some(json!({"name": taken_tenant})),
    )
    .await;
    assert_problem(&r, StatusCode::CONFLICT, "tenant_name_taken");

    // Unknown ids on reads and deletes.
    for (method, uri) in [
        (Method::GET, "/v1/plans/plan_unknown"),
        (Method::DELETE, "/v1/plans/plan_unknown"),
        (Method::GET, "/v1/tenants/tnt_unknown"),
        (Method::DELETE, "/v1/tenants/tnt_unknown"),
        (Method::GET, "/v1/tenants/tnt_unknown/keys"),
        (Method::GET, "/v1/tenants/tnt_unknown/tokens"),
        (Method::GET, "/v1/keys/key_unknown"),
        (Method::DELETE, "/v1/keys/key_unknown"),
        (Method::DELETE, "/v1/tenants/tnt_unknown/tokens/tok_unknown"),
    ] {
        let r = admin(&app, method.clone(), uri, None).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {uri}: {:?}",
            r.body
        );
        assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    }
    let r = admin(
        &app,
        Method::DELETE,
        &format!("/v1/tenants/{tenant_id}/tokens/tok_unknown"),
        None,
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    // Nothing above was written.
    assert_eq!(row_counts(&state).await, written);
}

on_both_databases!(
    admin_api_requires_the_admin_token,
    bad_input_is_a_clear_4xx_never_a_500,
    failed_writes_leave_nothing_behind,
    every_write_endpoint_answers_each_class_of_bad_input,
);
