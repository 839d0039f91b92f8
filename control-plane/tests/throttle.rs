//! The admin API's own rate limits, per token and per client address, driven
//! through `app(state).oneshot(..)`. Every test runs on SQLite and on the
//! PostgreSQL server named by `TOLLGATE_TEST_POSTGRES_URL`.
//!
//! Limits here are one request a minute after a small burst, so a refill can
//! never happen while a test runs and every edge is deterministic.

pub mod common;

use std::net::SocketAddr;

use axum::extract::connect_info::{ConnectInfo, MockConnectInfo};
use axum::http::{header, Method, StatusCode};
use axum::Router;
use common::{create, request, respond, send, test_state, Backend, Reply, ADMIN, SYNC};
use serde_json::json;
use tollgate_control_plane::app;
use tollgate_control_plane::throttle::{Rate, ThrottleConfig};

/// Where the limited requests come from, unless a test says otherwise.
const GUESSER: ([u8; 4], u16) = ([203, 0, 113, 7], 40_000);
const SOMEONE_ELSE: ([u8; 4], u16) = ([198, 51, 100, 9], 40_001);

/// `burst` requests, then one a minute; `None` leaves that limit off.
fn tiny(per_token: Option<u64>, per_ip: Option<u64>) -> ThrottleConfig {
    ThrottleConfig {
        per_token: per_token.and_then(|burst| Rate::new(1, burst)),
        per_ip: per_ip.and_then(|burst| Rate::new(1, burst)),
        ..ThrottleConfig::default()
    }
}

/// A GET from `from`, with a `ConnectInfo` in the request as the server would put it.
async fn get_from(app: &Router, uri: &str, token: Option<&str>, from: SocketAddr) -> Reply {
    let mut req = request(Method::GET, uri, token, None);
    req.extensions_mut().insert(ConnectInfo(from));
    respond(app, req).await
}

async fn get(app: &Router, uri: &str, token: Option<&str>) -> Reply {
    send(app, Method::GET, uri, token, None).await
}

fn assert_throttled(reply: &Reply, retry_after: u64, detail_mentions: &str) {
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        reply.body
    );
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(reply.body["code"], "admin_rate_limited", "{:?}", reply.body);
    assert_eq!(reply.body["status"], 429);
    let detail = reply.body["detail"].as_str().unwrap();
    assert!(detail.contains(detail_mentions), "{detail}");
    assert_eq!(
        reply.headers[header::RETRY_AFTER].to_str().unwrap(),
        retry_after.to_string()
    );
}

/// A plan, a tenant on it and a tenant token, made through an unthrottled app.
async fn tenant_with_token(setup: &Router) -> (String, String) {
    let plan = create(
        setup,
        "/v1/plans",
        json!({"name": "throttle-plan", "limits": [{"name": "per-second", "max": 5, "window_seconds": 1, "burst": 10}]}),
    )
    .await;
    let acme = json!({"name": "acme", "plan_id": plan["id"]});
    let tenant = create(setup, "/v1/tenants", acme).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let uri = format!("/v1/tenants/{tenant}/tokens");
    let token = create(setup, &uri, json!({"name": "ci"})).await;
    (tenant, token["token"].as_str().unwrap().to_owned())
}

async fn admin_token_is_limited_after_its_burst_and_other_tokens_are_not(backend: Backend) {
    let state = test_state(backend).await;
    let (tenant, tenant_token) = tenant_with_token(&app(state.clone())).await;
    let app = app(state.with_throttle(tiny(Some(3), None)));

    for _ in 0..3 {
        let r = get(&app, "/v1/plans", Some(ADMIN)).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let r = get(&app, "/v1/plans", Some(ADMIN)).await;
    // One a minute: the next one is 60 s away.
    assert_throttled(&r, 60, "per-token");
    // Still limited on any other admin route.
    assert_throttled(&get(&app, "/v1/tenants", Some(ADMIN)).await, 60, "token");

    // The tenant's token has its own bucket.
    let own = format!("/v1/tenants/{tenant}");
    for _ in 0..3 {
        let r = get(&app, &own, Some(&tenant_token)).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    assert_throttled(&get(&app, &own, Some(&tenant_token)).await, 60, "token");

    // Health checks are never limited.
    for _ in 0..10 {
        assert_eq!(get(&app, "/healthz", None).await.status, StatusCode::OK);
    }
}

async fn wrong_and_missing_tokens_are_limited_per_client_address(backend: Backend) {
    let state = test_state(backend).await;
    let app = app(state.with_throttle(tiny(None, Some(3))))
        .layer(MockConnectInfo(SocketAddr::from(GUESSER)));

    // Every guess is a new token, so only the per-address limit can stop them.
    for (i, token) in [
        Some("guess-0000000000001"),
        None,
        Some("guess-0000000000002"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = get(&app, "/v1/plans", token).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "request {i}: {:?}",
            r.body
        );
    }
    let r = get(&app, "/v1/plans", Some("guess-0000000000003")).await;
    assert_throttled(&r, 60, "client address");
    // Refused before authentication: the right token from that address waits too,
    assert_throttled(
        &get(&app, "/v1/plans", Some(ADMIN)).await,
        60,
        "client address",
    );
    // and so does the public catalog.
    assert_throttled(&get(&app, "/v1/catalog", None).await, 60, "client address");

    // Another address is unaffected (a ConnectInfo of its own wins over the mock).
    let elsewhere = SocketAddr::from(SOMEONE_ELSE);
    let r = get_from(&app, "/v1/plans", Some("guess-0000000000004"), elsewhere).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    let r = get_from(&app, "/v1/catalog", None, elsewhere).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = get_from(&app, "/v1/plans", Some(ADMIN), elsewhere).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

async fn the_envoys_endpoints_are_never_limited(backend: Backend) {
    let state = test_state(backend).await;
    let app = app(state.with_throttle(tiny(Some(1), Some(1))))
        .layer(MockConnectInfo(SocketAddr::from(GUESSER)));

    // Use up both the address's and the admin token's allowance.
    assert_eq!(
        get(&app, "/v1/plans", Some(ADMIN)).await.status,
        StatusCode::OK
    );
    assert_throttled(&get(&app, "/v1/plans", Some(ADMIN)).await, 60, "");

    for i in 0..20 {
        let r = get(&app, "/v1/sync?since=0", Some(SYNC)).await;
        assert_eq!(r.status, StatusCode::OK, "poll {i}: {:?}", r.body);
        let batch = json!({"batch_id": format!("batch-{i}")}).to_string();
        let r = send(&app, Method::POST, "/v1/usage", Some(SYNC), Some(&batch)).await;
        assert!(r.status.is_success(), "usage {i}: {:?}", r.body);
    }
    // A wrong token on the feed is refused as unauthorized, not throttled.
    let r = get(&app, "/v1/sync?since=0", Some("guess-0000000000001")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
}

async fn without_a_client_address_only_the_per_token_limit_applies(backend: Backend) {
    let state = test_state(backend).await;
    // No ConnectInfo at all: the per-address limit of 1 cannot apply.
    let app = app(state.with_throttle(tiny(Some(2), Some(1))));

    for i in 0..5 {
        let r = get(&app, "/v1/plans", Some(&format!("guess-000000000000{i}"))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
        assert_eq!(get(&app, "/v1/catalog", None).await.status, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(
            get(&app, "/v1/plans", Some(ADMIN)).await.status,
            StatusCode::OK
        );
    }
    assert_throttled(&get(&app, "/v1/plans", Some(ADMIN)).await, 60, "per-token");
}

async fn limits_can_be_turned_off(backend: Backend) {
    let state = test_state(backend).await;
    let app = app(state.with_throttle(ThrottleConfig::off()))
        .layer(MockConnectInfo(SocketAddr::from(GUESSER)));
    for _ in 0..50 {
        assert_eq!(
            get(&app, "/v1/plans", Some(ADMIN)).await.status,
            StatusCode::OK
        );
    }
}

on_both_databases!(
    admin_token_is_limited_after_its_burst_and_other_tokens_are_not,
    wrong_and_missing_tokens_are_limited_per_client_address,
    the_envoys_endpoints_are_never_limited,
    without_a_client_address_only_the_per_token_limit_applies,
    limits_can_be_turned_off,
);
