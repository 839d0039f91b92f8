//! Tenants: moving to another plan and deletion, and what both put on the
//! sync feed.

use crate::common::{admin, assert_problem, key, plan, sync, tenant, test_app, Backend};
use axum::http::{Method, StatusCode};
use serde_json::json;
use tollgate_core::key::KeyHash;

async fn tenant_plan_change_and_deletion_reach_the_sync_feed(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let free = plan(&app, None).await;
    let pro = plan(&app, None).await;
    let t = tenant(&app, &free).await;
    let (key_id, plaintext) = key(&app, &t).await;
    let v0 = sync(&app, 0).await.version;

    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/tenants/{t}"),
        Some(json!({"plan_id": pro})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["plan_id"], pro.as_str());
    let delta = sync(&app, v0).await;
    assert_eq!(delta.keys.len(), 1);
    assert_eq!(delta.keys[0].plan_id, pro);

    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/tenants/{t}"),
        Some(json!({"plan_id": "plan_nope"})),
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "plan_not_found");
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/tenants/{t}"),
        Some(json!({})),
    )
    .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");

    let list = admin(
        &app,
        Method::GET,
        &format!("/v1/tenants?plan_id={pro}"),
        None,
    )
    .await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);

    let r = admin(&app, Method::DELETE, &format!("/v1/tenants/{t}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let gone = sync(&app, delta.version).await;
    assert_eq!(
        gone.deleted_keys,
        vec![KeyHash::of(plaintext.as_bytes()).to_hex()]
    );
    assert_problem(
        &admin(&app, Method::GET, &format!("/v1/keys/{key_id}"), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_problem(
        &admin(&app, Method::GET, &format!("/v1/tenants/{t}"), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let r = admin(
        &app,
        Method::POST,
        &format!("/v1/tenants/{t}/keys"),
        Some(json!({"name": "late"})),
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    assert_problem(
        &admin(&app, Method::DELETE, &format!("/v1/tenants/{t}"), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

on_both_databases!(tenant_plan_change_and_deletion_reach_the_sync_feed,);
