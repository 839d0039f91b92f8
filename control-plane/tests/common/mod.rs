//! What the integration tests share: the two databases a test runs on, the
//! app they drive with `oneshot`, one request and its answer, and the
//! fixtures most tests start from.
//!
//! Each test file declares `pub mod common;` (`api/main.rs` with a `#[path]`
//! to this file): as public items of the test crate, helpers one file does
//! not use are not reported as dead code there.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::Arc;

use tollgate_control_plane::clock::{Clock, Now, SetClock};
use tollgate_control_plane::egress::Targets;
use tollgate_control_plane::sealing::Sealer;
use tollgate_control_plane::{app, db, store, AppState};
use tollgate_core::wire::SyncResponse;
use tower::ServiceExt;

pub const ADMIN: &str = "admin-token-for-tests";
pub const SYNC: &str = "sync-token-for-tests";
/// The leak-report token every test's control plane takes.
pub const LEAK_REPORTER: &str = "leak-report-token-for-tests";

/// The instant every test's control plane is at unless a test sets its own:
/// mid-month and mid-hour, so no test straddles an hour, a day or a quota
/// period, whenever it runs.
pub const NOW: &str = "2026-11-18T12:34:56.789Z";

/// [`NOW`] in Unix milliseconds.
pub fn now_ms() -> u64 {
    SetClock::at_rfc3339(NOW).now().unix_ms()
}

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named test once per backend, as `<name>::sqlite` and `<name>::postgres`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )*};
}

/// A new, empty database on the test PostgreSQL server, named after the test file.
pub async fn fresh_postgres() -> db::Db {
    let url = std::env::var("TOLLGATE_TEST_POSTGRES_URL").expect(
        "TOLLGATE_TEST_POSTGRES_URL must name a PostgreSQL server: run `cargo xtask test`, \
         or start one with `cargo xtask postgres` and export what it prints",
    );
    let server = db::connect(&url).await.unwrap();
    let name = format!(
        "{}_{}",
        env!("CARGO_CRATE_NAME"),
        db::new_id("t").to_lowercase()
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&server)
        .await
        .unwrap();
    server.close().await;
    let (base, _) = url.rsplit_once('/').unwrap();
    db::connect(&format!("{base}/{name}")).await.unwrap()
}

/// A migrated, empty database (SQLite: private and in memory) and its state,
/// at [`NOW`].
pub async fn test_state(backend: Backend) -> AppState {
    test_state_at(backend, Arc::new(SetClock::at_rfc3339(NOW))).await
}

/// The same, reading time from `clock`, which the test moves.
pub async fn test_state_at(backend: Backend, clock: Arc<SetClock>) -> AppState {
    let pool = empty_database(backend).await;
    db::migrate(&pool).await.unwrap();
    state_over(pool, clock)
}

/// A database with nothing in it, not even the schema (SQLite: private and in memory).
pub async fn empty_database(backend: Backend) -> db::Db {
    match backend {
        Backend::Sqlite => db::connect_memory().await.unwrap(),
        Backend::Postgres => fresh_postgres().await,
    }
}

/// The state every test's control plane has, over a migrated `pool`.
pub fn state_over(pool: db::Db, clock: Arc<SetClock>) -> AppState {
    AppState::new(pool, ADMIN, SYNC, 0)
        .with_clock(clock)
        .with_leak_report_token(Some(LEAK_REPORTER))
        .with_sealer(Sealer::from_settings(Some(SECRETS_KEY), None).unwrap())
}

/// The key test states seal webhook secrets with, as a control plane
/// started with `CONTROL_PLANE_SECRETS_KEY` does.
pub const SECRETS_KEY: &str = "7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a";

/// `state` allowed to send webhooks to any address, as a control plane
/// started with `CONTROL_PLANE_WEBHOOK_ALLOW_PRIVATE_TARGETS=true`, and its
/// app: the tests' receivers listen on 127.0.0.1. Every other test runs with
/// the production default, which refuses that.
pub fn allowing_private_webhook_targets(state: AppState) -> (Router, AppState) {
    let state = state.with_webhook_targets(Targets::Any);
    (app(state.clone()), state)
}

pub async fn test_app(backend: Backend) -> (Router, AppState) {
    let state = test_state(backend).await;
    (app(state.clone()), state)
}

/// An app whose clock the test holds, set at `at` (RFC 3339).
pub async fn test_app_at(backend: Backend, at: &str) -> (Router, AppState, Arc<SetClock>) {
    let clock = Arc::new(SetClock::at_rfc3339(at));
    let state = test_state_at(backend, clock.clone()).await;
    (app(state.clone()), state, clock)
}

/// `ms` after the Unix epoch, as [`Now`].
pub fn at_ms(ms: u64) -> Now {
    Now::from_unix_ms(ms)
}

/// One answer.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body as JSON; `Null` when empty, a JSON string when it is not JSON.
    pub body: Value,
    pub bytes: Bytes,
}

impl Reply {
    pub fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }

    /// The body, which must be JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|e| {
            panic!(
                "{e}: {:?}",
                String::from_utf8_lossy(&self.bytes[..self.bytes.len().min(300)])
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// A request with an optional bearer token and an optional JSON body.
pub fn request<M>(method: M, uri: &str, token: Option<&str>, body: Option<&str>) -> Request<Body>
where
    Method: TryFrom<M>,
    <Method as TryFrom<M>>::Error: Into<axum::http::Error>,
{
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_owned())),
        None => req.body(Body::empty()),
    }
    .unwrap()
}

/// `req` through the app, and all of its answer.
pub async fn respond(app: &Router, req: Request<Body>) -> Reply {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Reply {
        status,
        headers,
        body,
        bytes,
    }
}

pub async fn send<M>(
    app: &Router,
    method: M,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Reply
where
    Method: TryFrom<M>,
    <Method as TryFrom<M>>::Error: Into<axum::http::Error>,
{
    respond(app, request(method, uri, token, body)).await
}

/// `batch` reported to `POST /v1/usage` as an Envoy does, with the sync token.
pub async fn report_usage(app: &Router, batch: &Value) -> Reply {
    send(
        app,
        Method::POST,
        "/v1/usage",
        Some(SYNC),
        Some(&batch.to_string()),
    )
    .await
}

/// A request with the admin token.
pub async fn admin(app: &Router, method: Method, uri: &str, body: Option<Value>) -> Reply {
    let body = body.map(|b| b.to_string());
    send(app, method, uri, Some(ADMIN), body.as_deref()).await
}

/// `reply` is a problem+json of `status` with the stable `code`.
pub fn assert_problem(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(reply.content_type(), "application/problem+json");
    assert_eq!(reply.body["code"], code, "{:?}", reply.body);
    assert_eq!(reply.body["status"], status.as_u16());
    assert!(reply.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

/// POSTs `body` to `uri` as the admin; it must be created.
pub async fn create(app: &Router, uri: &str, body: Value) -> Value {
    let r = admin(app, Method::POST, uri, Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{uri}: {:?}", r.body);
    r.body
}

/// A new private plan: five a second with a burst of ten.
pub async fn plan(app: &Router, max_api_keys: Option<u64>) -> String {
    let body = json!({"name": format!("plan-{}", db::new_id("x")), "limits": [{"name": "per-second", "max": 5, "window_seconds": 1, "burst": 10}], "max_api_keys": max_api_keys});
    create(app, "/v1/plans", body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A new tenant on the plan.
pub async fn tenant(app: &Router, plan_id: &str) -> String {
    let body = json!({"name": db::new_id("acme"), "plan_id": plan_id});
    create(app, "/v1/tenants", body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A new key of the tenant: (id, plaintext).
pub async fn key(app: &Router, tenant_id: &str) -> (String, String) {
    let uri = format!("/v1/tenants/{tenant_id}/keys");
    let body = create(app, &uri, json!({"name": "ci"})).await;
    (
        body["id"].as_str().unwrap().to_owned(),
        body["key"].as_str().unwrap().to_owned(),
    )
}

/// A new token of the tenant, to call the API as the tenant.
pub async fn tenant_token(app: &Router, tenant_id: &str) -> String {
    let uri = format!("/v1/tenants/{tenant_id}/tokens");
    let body = create(app, &uri, json!({"name": "portal"})).await;
    body["token"].as_str().unwrap().to_owned()
}

/// The sync feed since `since`, as an Envoy reads it.
pub async fn sync(app: &Router, since: u64) -> SyncResponse {
    let uri = format!("/v1/sync?since={since}");
    let r = send(app, Method::GET, &uri, Some(SYNC), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    serde_json::from_value(r.body).unwrap()
}

/// The configuration version.
pub async fn version(state: &AppState) -> u64 {
    store::feed::current_version(&state.db).await.unwrap()
}

/// The number of rows of each table.
pub async fn row_counts(state: &AppState, tables: &[&str]) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in tables {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&state.db)
            .await
            .unwrap();
        counts.push(n);
    }
    counts
}

/// The newest audit entry of `action`.
pub async fn last_audit(app: &Router, action: &str) -> Value {
    let uri = format!("/v1/audit?action={action}");
    let r = admin(app, Method::GET, &uri, None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body["items"][0].clone()
}

/// A sync poll from the proxy `instance` on node `node` that has applied `applied`.
pub async fn poll(app: &Router, instance: &str, node: &str, applied: Option<u64>) -> Reply {
    let since = applied.unwrap_or(0);
    let mut req = Request::get(format!("/v1/sync?since={since}"))
        .header(header::AUTHORIZATION, format!("Bearer {SYNC}"))
        .header("tollgate-proxy-instance", instance)
        .header("tollgate-proxy-node", node)
        .header("tollgate-proxy-cluster", "edge")
        .header("tollgate-proxy-build", "0.1.0+abc");
    if let Some(v) = applied {
        req = req.header("tollgate-proxy-applied-version", v.to_string());
    }
    let r = respond(app, req.body(Body::empty()).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r
}

/// The tenant's webhook secret column as it is: sealed (see `sealing`).
pub async fn stored_as_is(state: &AppState, tenant_id: &str) -> String {
    sqlx::query_scalar("SELECT secret FROM webhooks WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_one(&state.db)
        .await
        .unwrap()
}

/// The tenant's webhook secret as stored, opened with the state's key.
pub async fn stored_secret(state: &AppState, tenant_id: &str) -> String {
    let stored = stored_as_is(state, tenant_id).await;
    state.sealer.open(&stored, tenant_id).unwrap()
}
