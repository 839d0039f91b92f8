//! Tenant tokens: issued once and stored hashed, serving their own tenant
//! only, never an admin's or a sync token's rights, and revoked.

use crate::common::{admin, assert_problem, key, plan, send, tenant, test_app, Backend};
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

async fn tenant_tokens_serve_their_own_tenant_only(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let p = plan(&app, Some(2)).await;
    let other_plan = plan(&app, None).await;
    let a = tenant(&app, &p).await;
    let b = tenant(&app, &p).await;
    let r = admin(
        &app,
        Method::POST,
        &format!("/v1/tenants/{a}/tokens"),
        Some(json!({"name": "ci"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let token = r.body["token"].as_str().unwrap().to_owned();
    let token_id = r.body["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("tgt_"));
    let stored: String = sqlx::query_scalar("SELECT token_hash FROM tenant_tokens")
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert_ne!(stored, token);
    let listed = admin(&app, Method::GET, &format!("/v1/tenants/{a}/tokens"), None).await;
    assert!(!listed.body.to_string().contains(&token));
    let (b_key, _) = key(&app, &b).await;

    let as_a = |method: Method, uri: String, body: Option<Value>| {
        let app = app.clone();
        let token = token.clone();
        async move {
            send(
                &app,
                method,
                &uri,
                Some(&token),
                body.map(|b| b.to_string()).as_deref(),
            )
            .await
        }
    };

    assert_eq!(
        as_a(Method::GET, format!("/v1/tenants/{a}"), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_problem(
        &as_a(Method::GET, format!("/v1/tenants/{b}"), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let created = as_a(
        Method::POST,
        format!("/v1/tenants/{a}/keys"),
        Some(json!({"name": "mine"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let mine = created.body["id"].as_str().unwrap().to_owned();
    assert_problem(
        &as_a(
            Method::POST,
            format!("/v1/tenants/{b}/keys"),
            Some(json!({"name": "x"})),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(
        as_a(Method::GET, format!("/v1/tenants/{a}/keys"), None)
            .await
            .body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_problem(
        &as_a(Method::GET, format!("/v1/tenants/{b}/keys"), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    for (method, uri, body) in [
        (Method::GET, format!("/v1/keys/{b_key}"), None),
        (
            Method::PATCH,
            format!("/v1/keys/{b_key}"),
            Some(json!({"active": false})),
        ),
        (Method::DELETE, format!("/v1/keys/{b_key}"), None),
        (
            Method::POST,
            format!("/v1/keys/{b_key}/rotate"),
            Some(json!({})),
        ),
    ] {
        assert_problem(
            &as_a(method, uri, body).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    assert_eq!(
        admin(&app, Method::GET, &format!("/v1/keys/{b_key}"), None)
            .await
            .body["active"],
        true
    );

    assert_eq!(
        as_a(
            Method::PATCH,
            format!("/v1/keys/{mine}"),
            Some(json!({"active": false}))
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        as_a(
            Method::POST,
            format!("/v1/keys/{mine}/rotate"),
            Some(json!({"grace_seconds": 5}))
        )
        .await
        .status,
        StatusCode::CREATED
    );
    assert_problem(
        &as_a(
            Method::POST,
            format!("/v1/tenants/{a}/keys"),
            Some(json!({"name": "third"})),
        )
        .await,
        StatusCode::CONFLICT,
        "key_limit_reached",
    );

    assert_problem(
        &as_a(
            Method::PATCH,
            format!("/v1/tenants/{a}"),
            Some(json!({"plan_id": other_plan})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(
        as_a(
            Method::PATCH,
            format!("/v1/tenants/{a}"),
            Some(json!({"name": "renamed"}))
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        as_a(Method::GET, format!("/v1/plans/{p}"), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_problem(
        &as_a(Method::GET, format!("/v1/plans/{other_plan}"), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    for (method, uri, body) in [
        (Method::GET, "/v1/plans".to_owned(), None),
        (
            Method::POST,
            "/v1/plans".to_owned(),
            Some(json!({"name": "mine", "limits": []})),
        ),
        (
            Method::PATCH,
            format!("/v1/plans/{p}"),
            Some(json!({"name": "x"})),
        ),
        (Method::GET, "/v1/tenants".to_owned(), None),
        (
            Method::POST,
            "/v1/tenants".to_owned(),
            Some(json!({"name": "x", "plan_id": p})),
        ),
        (Method::DELETE, format!("/v1/tenants/{a}"), None),
        (
            Method::POST,
            format!("/v1/tenants/{a}/tokens"),
            Some(json!({"name": "x"})),
        ),
    ] {
        assert_problem(
            &as_a(method, uri, body).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    // Tenant tokens are no sync tokens either.
    assert_problem(
        &as_a(Method::GET, "/v1/sync".to_owned(), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    let r = admin(
        &app,
        Method::DELETE,
        &format!("/v1/tenants/{a}/tokens/{token_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_problem(
        &as_a(Method::GET, format!("/v1/tenants/{a}"), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let r = admin(
        &app,
        Method::DELETE,
        &format!("/v1/tenants/{a}/tokens/{token_id}"),
        None,
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = admin(
        &app,
        Method::POST,
        "/v1/tenants/tnt_nope/tokens",
        Some(json!({"name": "x"})),
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = send(
        &app,
        Method::GET,
        "/v1/plans",
        Some("tgt_forged0000000000000000000000000000000000"),
        None,
    )
    .await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
}

on_both_databases!(tenant_tokens_serve_their_own_tenant_only,);
