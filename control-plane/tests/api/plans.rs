//! Plans: creating, showing, updating and deleting them, their unique
//! names, paging through lists, and the public catalog of public plans.

use crate::common::{admin, assert_problem, plan, send, sync, tenant, test_app, Backend};
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

async fn plan_create_and_show(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let r = admin(
        &app,
        Method::POST,
        "/v1/plans",
        Some(json!({"name": "Pro", "limits": [{"name": "per-minute", "max": 600, "window_seconds": 60}], "monthly_quota": 10000, "max_api_keys": 5})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.body["id"].as_str().unwrap();
    let shown = admin(&app, Method::GET, &format!("/v1/plans/{id}"), None).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.body["name"], "Pro");
    assert_eq!(shown.body["limits"][0]["max"], 600);
    assert_eq!(shown.body["monthly_quota"], 10000);
    let dup = admin(
        &app,
        Method::POST,
        "/v1/plans",
        Some(json!({"name": "Pro", "limits": []})),
    )
    .await;
    assert_problem(&dup, StatusCode::CONFLICT, "plan_name_taken");
    let list = admin(&app, Method::GET, "/v1/plans", None).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
}

async fn plans_update_delete_and_in_use(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let p = plan(&app, None).await;
    let v0 = sync(&app, 0).await.version;

    let r = admin(&app, Method::PATCH, &format!("/v1/plans/{p}"), Some(json!({"limits": [{"name": "per-minute", "max": 100, "window_seconds": 60}], "monthly_quota": 5000, "metadata": {"price": 29}}))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["limits"][0]["name"], "per-minute");
    assert_eq!(r.body["monthly_quota"], 5000);
    assert_eq!(r.body["metadata"]["price"], 29);
    let delta = sync(&app, v0).await;
    assert_eq!(delta.plans.len(), 1);
    assert_eq!(delta.plans[0].limits[0].max, 100);
    assert_eq!(delta.plans[0].monthly_quota, Some(5000));

    // null clears an optional field; absent leaves it.
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/plans/{p}"),
        Some(json!({"monthly_quota": null})),
    )
    .await;
    assert_eq!(r.body["monthly_quota"], Value::Null);
    assert_eq!(r.body["metadata"]["price"], 29);

    // A bad PATCH changes nothing.
    let before = admin(&app, Method::GET, &format!("/v1/plans/{p}"), None)
        .await
        .body;
    for (body, code) in [
        (
            json!({"limits": [{"name": "x", "max": 0, "window_seconds": 1}]}),
            "invalid_plan",
        ),
        (json!({"metadata": [1, 2]}), "invalid_plan"),
        (json!({"name": " "}), "invalid_name"),
        (json!({"public": "yes"}), "invalid_body"),
        (json!({"nope": 1}), "invalid_body"),
    ] {
        let r = admin(&app, Method::PATCH, &format!("/v1/plans/{p}"), Some(body)).await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    assert_eq!(
        admin(&app, Method::GET, &format!("/v1/plans/{p}"), None)
            .await
            .body,
        before
    );

    let t = tenant(&app, &p).await;
    let r = admin(&app, Method::DELETE, &format!("/v1/plans/{p}"), None).await;
    assert_problem(&r, StatusCode::CONFLICT, "plan_in_use");
    assert!(r.body["detail"].as_str().unwrap().starts_with("1 tenant "));
    let r = admin(&app, Method::DELETE, &format!("/v1/tenants/{t}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let v1 = sync(&app, 0).await.version;
    let r = admin(&app, Method::DELETE, &format!("/v1/plans/{p}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(sync(&app, v1).await.deleted_plans, vec![p.clone()]);
    assert!(sync(&app, 0).await.plans.is_empty());
    let r = admin(&app, Method::GET, &format!("/v1/plans/{p}"), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = admin(&app, Method::DELETE, &format!("/v1/plans/{p}"), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
}

async fn a_deleted_name_can_be_reused_but_a_living_one_cannot(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let body = json!({"name": "Solo", "limits": []});
    let first = admin(&app, Method::POST, "/v1/plans", Some(body.clone())).await;
    let id = first.body["id"].as_str().unwrap();
    assert_problem(
        &admin(&app, Method::POST, "/v1/plans", Some(body.clone())).await,
        StatusCode::CONFLICT,
        "plan_name_taken",
    );
    let other = plan(&app, None).await;
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/plans/{other}"),
        Some(json!({"name": "Solo"})),
    )
    .await;
    assert_problem(&r, StatusCode::CONFLICT, "plan_name_taken");
    admin(&app, Method::DELETE, &format!("/v1/plans/{id}"), None).await;
    assert_eq!(
        admin(&app, Method::POST, "/v1/plans", Some(body))
            .await
            .status,
        StatusCode::CREATED
    );
}

async fn lists_paginate_in_creation_order(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(plan(&app, None).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/v1/plans?limit=2&after={c}"),
            None => "/v1/plans?limit=2".to_owned(),
        };
        let r = admin(&app, Method::GET, &uri, None).await;
        assert_eq!(r.status, StatusCode::OK);
        let items = r.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|p| p["id"].as_str().unwrap().to_owned()));
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.sort();
    let mut got = seen.clone();
    got.sort();
    assert_eq!(got, expected, "every plan exactly once");
    for (uri, code) in [
        ("/v1/plans?limit=0", "invalid_query"),
        ("/v1/plans?limit=201", "invalid_query"),
        ("/v1/plans?limit=x", "invalid_query"),
        ("/v1/plans?after=plan_unknown", "invalid_cursor"),
        ("/v1/tenants?after=tnt_unknown", "invalid_cursor"),
    ] {
        assert_problem(
            &admin(&app, Method::GET, uri, None).await,
            StatusCode::BAD_REQUEST,
            code,
        );
    }
}

async fn catalog_is_public_and_lists_only_public_plans(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let seeded = tollgate_control_plane::seed::seed(&state, true)
        .await
        .unwrap();
    assert_eq!(
        seeded.created,
        vec!["Free", "Pro", "Business", "Enterprise"]
    );
    assert!(tollgate_control_plane::seed::seed(&state, true)
        .await
        .unwrap()
        .created
        .is_empty());
    plan(&app, None).await; // private
    let r = send(&app, Method::GET, "/v1/catalog", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let plans = r.body["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 4);
    assert_eq!(plans[1]["name"], "Pro");
    assert_eq!(plans[1]["monthly_quota"], 250_000);
    assert_eq!(plans[1]["metadata"]["price_usd_per_month"], 29);
    assert!(plans[1].get("id").is_none());
    // Seeding is never forced: existing names are kept as they are.
    let again = tollgate_control_plane::seed::seed(&state, false)
        .await
        .unwrap();
    assert!(again.created.is_empty());
    assert_eq!(again.skipped.len(), 4);
}

on_both_databases!(
    plan_create_and_show,
    plans_update_delete_and_in_use,
    a_deleted_name_can_be_reused_but_a_living_one_cannot,
    lists_paginate_in_creation_order,
    catalog_is_public_and_lists_only_public_plans,
);
