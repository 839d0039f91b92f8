//! The audit log: every change recorded with who made it and the resource
//! before and after, its filters and pages, a tenant's view of its own trail,
//! and that a refused change records nothing.

use crate::common::{
    admin, assert_problem, key, plan, send, tenant, tenant_token, test_app, Backend, Reply, ADMIN,
};
use axum::http::{Method, StatusCode};
use axum::Router;
use serde_json::json;
use tollgate_core::key::KeyHash;

async fn audit(app: &Router, token: &str, query: &str) -> Reply {
    send(
        app,
        Method::GET,
        &format!("/v1/audit{query}"),
        Some(token),
        None,
    )
    .await
}

fn actions(reply: &Reply) -> Vec<String> {
    reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

async fn audit_log_records_every_change_with_who_and_before_after(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let token = tenant_token(&app, &tenant_id).await;
    let (key_id, plaintext) = key(&app, &tenant_id).await;
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{key_id}"),
        Some(json!({"active": false})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // The tenant itself rotates: the actor says so.
    let rotated = send(
        &app,
        Method::POST,
        &format!("/v1/keys/{key_id}/rotate"),
        Some(&token),
        Some(r#"{"grace_seconds": 60}"#),
    )
    .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{:?}", rotated.body);
    let successor = rotated.body["key"].as_str().unwrap().to_owned();
    let r = admin(&app, Method::DELETE, &format!("/v1/keys/{key_id}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/plans/{plan_id}"),
        Some(json!({"monthly_quota": 1000})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    let all = audit(&app, ADMIN, "").await;
    assert_eq!(all.status, StatusCode::OK, "{:?}", all.body);
    // Newest first.
    assert_eq!(
        actions(&all),
        [
            "plan.update",
            "key.delete",
            "key.create",
            "key.rotate",
            "key.update",
            "key.create",
            "token.create",
            "tenant.create",
            "plan.create"
        ]
    );
    let text = all.body.to_string();
    assert!(!text.contains(&plaintext) && !text.contains(&successor));
    assert!(!text.contains(&KeyHash::of(plaintext.as_bytes()).to_hex()));
    assert!(!text.contains(&token));

    let update = &all.body["items"][4];
    assert_eq!(update["actor"], "admin");
    assert_eq!(update["resource_type"], "key");
    assert_eq!(update["resource_id"], key_id.as_str());
    assert_eq!(update["tenant_id"], tenant_id.as_str());
    assert_eq!(update["before"]["active"], true);
    assert_eq!(update["after"]["active"], false);
    let rotate = &all.body["items"][3];
    assert_eq!(rotate["actor"], format!("tenant:{tenant_id}"));
    assert!(rotate["before"]["expires_at"].is_null());
    assert!(rotate["after"]["expires_at"].is_string());
    assert!(all.body["items"][1]["after"].is_null());
    let plan_update = &all.body["items"][0];
    assert!(plan_update["before"]["monthly_quota"].is_null());
    assert_eq!(plan_update["after"]["monthly_quota"], 1000);

    // Filters.
    let by_key = audit(&app, ADMIN, &format!("?resource_id={key_id}")).await;
    assert_eq!(
        actions(&by_key),
        ["key.delete", "key.rotate", "key.update", "key.create"]
    );
    let creates = audit(&app, ADMIN, "?action=key.create").await;
    assert_eq!(actions(&creates).len(), 2);
    let plans = audit(&app, ADMIN, "?resource_type=plan").await;
    assert_eq!(actions(&plans), ["plan.update", "plan.create"]);
    let by_tenant = audit(&app, ADMIN, &format!("?actor=tenant:{tenant_id}")).await;
    assert_eq!(actions(&by_tenant), ["key.create", "key.rotate"]);
    let future = audit(&app, ADMIN, "?since=2999-01-01T00:00:00Z").await;
    assert_eq!(actions(&future).len(), 0);
    let past = audit(&app, ADMIN, "?until=2000-01-01T00:00:00%2B02:00").await;
    assert_eq!(actions(&past).len(), 0);
    let window = audit(
        &app,
        ADMIN,
        "?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(actions(&window).len(), 9);

    // Pagination walks the same order, two at a time.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = audit(&app, ADMIN, &query).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        seen.extend(actions(&page));
        match page.body["next_cursor"].as_str() {
            Some(next) => query = format!("?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, actions(&all));

    // A tenant reads its own trail only.
    let own = audit(&app, &token, "").await;
    assert_eq!(own.status, StatusCode::OK, "{:?}", own.body);
    assert!(!actions(&own).iter().any(|a| a.starts_with("plan.")));
    assert_eq!(actions(&own).len(), 7);
    let other_tenant = tenant(&app, &plan_id).await;
    assert_problem(
        &audit(&app, &token, &format!("?tenant_id={other_tenant}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    for bad in [
        "?since=yesterday",
        "?until=2026-13-01T00:00:00Z",
        "?limit=0",
        "?color=red",
    ] {
        assert_problem(
            &audit(&app, ADMIN, bad).await,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        );
    }
    assert_problem(
        &audit(&app, ADMIN, "?after=aud_nope").await,
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
    );
    assert_eq!(
        send(&app, Method::GET, "/v1/audit", None, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

async fn a_refused_change_leaves_no_audit_entry(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let plan_id = plan(&app, Some(1)).await;
    let tenant_id = tenant(&app, &plan_id).await;
    key(&app, &tenant_id).await;
    let before = actions(&audit(&app, ADMIN, "").await);
    let limited = admin(
        &app,
        Method::POST,
        &format!("/v1/tenants/{tenant_id}/keys"),
        Some(json!({"name": "one too many"})),
    )
    .await;
    assert_problem(&limited, StatusCode::CONFLICT, "key_limit_reached");
    let name = admin(&app, Method::GET, &format!("/v1/plans/{plan_id}"), None).await;
    let dup = admin(
        &app,
        Method::POST,
        "/v1/plans",
        Some(json!({"name": name.body["name"], "limits": []})),
    )
    .await;
    assert_problem(&dup, StatusCode::CONFLICT, "plan_name_taken");
    let in_use = admin(&app, Method::DELETE, &format!("/v1/plans/{plan_id}"), None).await;
    assert_problem(&in_use, StatusCode::CONFLICT, "plan_in_use");
    assert_eq!(actions(&audit(&app, ADMIN, "").await), before);
}

on_both_databases!(
    audit_log_records_every_change_with_who_and_before_after,
    a_refused_change_leaves_no_audit_entry,
);
