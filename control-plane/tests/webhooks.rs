//! Tenants' webhooks for quota alerts: setting, reading and removing them
//! through the API, the alerts usage reports queue, and their signed
//! delivery with retries to a small receiver on 127.0.0.1.
//!
//! Like the API tests (`tests/api/`), every test runs on SQLite and on the
//! PostgreSQL server named by `TOLLGATE_TEST_POSTGRES_URL` (`cargo xtask
//! test` starts one; `cargo xtask postgres` starts one by hand).

pub mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tollgate_control_plane::clock::Clock;

use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::routing::post;
use axum::Router;
use common::{
    admin, allowing_private_webhook_targets, assert_problem, create, key, last_audit, now_ms, send,
    tenant, tenant_token, test_app, test_app_at, test_state, Backend, Reply, ADMIN, NOW, SYNC,
};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tollgate_control_plane::egress::Targets;
use tollgate_control_plane::sealing::Sealer;
use tollgate_control_plane::webhooks::{self, MAX_ATTEMPTS};
use tollgate_control_plane::{db, store, AppState};

const HOOK: &str = "https://billing.example.com/hooks/tollgate";

/// A plan with a monthly quota of 10.
async fn quota_plan(app: &Router) -> String {
    let body = json!({"name": db::new_id("plan"), "limits": [], "monthly_quota": 10});
    let plan = create(app, "/v1/plans", body).await;
    plan["id"].as_str().unwrap().to_owned()
}

/// A tenant on a new plan with a monthly quota of 10.
async fn tenant_on_quota(app: &Router) -> String {
    tenant(app, &quota_plan(app).await).await
}

fn webhook_uri(tenant_id: &str) -> String {
    format!("/v1/tenants/{tenant_id}/webhook")
}

async fn put_webhook(app: &Router, tenant_id: &str, body: Value) -> Reply {
    admin(app, Method::PUT, &webhook_uri(tenant_id), Some(body)).await
}

/// Sets the webhook; answers the body, which must carry a new secret exactly when `issued`.
async fn set_webhook(app: &Router, tenant_id: &str, body: Value, issued: bool) -> Value {
    let r = put_webhook(app, tenant_id, body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(r.body["tenant_id"], tenant_id);
    assert_eq!(r.body.get("secret").is_some(), issued, "{:?}", r.body);
    if issued {
        let secret = r.body["secret"].as_str().unwrap();
        let random = secret.strip_prefix("whsec_").expect(secret);
        assert_eq!(random.len(), 40, "{secret}");
        assert!(
            random.chars().all(|c| c.is_ascii_alphanumeric()),
            "{secret}"
        );
    }
    r.body
}

/// Rows of the webhook tables and the audit log: what a refused request must not touch.
async fn row_counts(state: &AppState) -> Vec<i64> {
    let tables = [
        "webhooks",
        "webhook_events",
        "webhook_attempts",
        "audit_log",
    ];
    common::row_counts(state, &tables).await
}

/// A page of the tenant's delivery log, read with `token`; must be 200.
async fn deliveries(app: &Router, token: &str, tenant_id: &str, query: &str) -> Value {
    let uri = format!("/v1/tenants/{tenant_id}/webhook-deliveries{query}");
    let r = send(app, Method::GET, &uri, Some(token), None).await;
    assert_eq!(r.status, StatusCode::OK, "{uri}: {:?}", r.body);
    r.body
}

/// The events of a delivery log page.
fn items(page: &Value) -> &Vec<Value> {
    page["items"].as_array().unwrap()
}

/// Reports `cost` for the key in a batch of its own.
async fn report(app: &Router, batch_id: &str, reporter_id: &str, key_id: &str, cost: u64) {
    let batch = json!({
        "batch_id": batch_id,
        "reporter_id": reporter_id,
        "keys": [{"key_id": key_id, "allowed": cost, "cost": cost}],
    });
    let body = batch.to_string();
    let r = send(app, Method::POST, "/v1/usage", Some(SYNC), Some(&body)).await;
    assert_eq!(r.status, StatusCode::OK, "{batch}: {:?}", r.body);
}

/// `(threshold, used)` of each event in the log, newest first.
async fn alerts(app: &Router, tenant_id: &str) -> Vec<(i64, i64)> {
    let page = deliveries(app, ADMIN, tenant_id, "").await;
    items(&page)
        .iter()
        .map(|e| {
            assert_eq!(e["event_type"], "quota.threshold", "{e}");
            assert_eq!(e["payload"]["data"]["threshold"], e["threshold"], "{e}");
            (
                e["threshold"].as_i64().unwrap(),
                e["payload"]["data"]["used"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn webhook_put_issues_the_secret_once_and_rotates_it_on_request(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let tenant_id = tenant_on_quota(&app).await;
    let r = admin(&app, Method::GET, &webhook_uri(&tenant_id), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");

    let created = set_webhook(&app, &tenant_id, json!({"url": HOOK}), true).await;
    assert_eq!(created["url"], HOOK);
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(common::stored_secret(&state, &tenant_id).await, secret);
    let entry = last_audit(&app, "webhook.create").await;
    assert_eq!(entry["tenant_id"], tenant_id.as_str());
    assert_eq!(entry["resource_id"], tenant_id.as_str());
    assert_eq!(entry["before"], Value::Null);
    assert_eq!(entry["after"]["url"], HOOK);

    // Read back, never with the secret.
    let shown = admin(&app, Method::GET, &webhook_uri(&tenant_id), None).await;
    assert_eq!(shown.status, StatusCode::OK, "{:?}", shown.body);
    assert_eq!(shown.body["url"], HOOK);
    assert_eq!(shown.body["created_at"], created["created_at"]);
    assert!(shown.body.get("secret").is_none(), "{:?}", shown.body);
    assert!(!shown.text().contains(&secret));

    // A new URL keeps the secret; rotate_secret: false is the same.
    let moved = "http://billing.internal:8080/alerts?source=tollgate";
    let mut previous = HOOK;
    for body in [
        json!({"url": moved}),
        json!({"url": moved, "rotate_secret": false}),
    ] {
        let updated = set_webhook(&app, &tenant_id, body, false).await;
        assert_eq!(updated["url"], moved);
        assert_eq!(updated["created_at"], created["created_at"]);
        assert_eq!(common::stored_secret(&state, &tenant_id).await, secret);
        let entry = last_audit(&app, "webhook.update").await;
        assert_eq!(entry["before"]["url"], previous);
        assert_eq!(entry["after"]["url"], moved);
        assert_eq!(entry["after"]["created_at"], created["created_at"]);
        previous = moved;
    }

    // Rotation issues a new one, which replaces the old at once.
    let rotated = set_webhook(
        &app,
        &tenant_id,
        json!({"url": HOOK, "rotate_secret": true}),
        true,
    )
    .await;
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert_eq!(common::stored_secret(&state, &tenant_id).await, new_secret);
    let shown = admin(&app, Method::GET, &webhook_uri(&tenant_id), None).await;
    assert_eq!(shown.body["url"], HOOK);
    assert!(shown.body.get("secret").is_none(), "{:?}", shown.body);

    // No audit entry carries a secret.
    let audit = admin(&app, Method::GET, "/v1/audit?limit=200", None).await;
    assert_eq!(audit.status, StatusCode::OK);
    let actions: Vec<&str> = items(&audit.body)
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("webhook."))
        .collect();
    assert_eq!(
        actions,
        [
            "webhook.update",
            "webhook.update",
            "webhook.update",
            "webhook.create"
        ]
    );
    for s in [&secret, &new_secret] {
        assert!(!audit.text().contains(s.as_str()), "{}", audit.text());
    }
    assert!(!audit.text().contains("whsec_"), "{}", audit.text());
}

/// Every kind of bad PUT, each refused with its problem; nothing is written.
async fn refuse_all(app: &Router, state: &AppState, tenant_id: &str) {
    let uri = webhook_uri(tenant_id);
    let before = row_counts(state).await;
    let long = format!("https://example.com/{}", "a".repeat(2048));
    for url in [
        "ftp://example.com/hook",
        "/hooks/tollgate",
        "example.com/hooks/tollgate",
        "https://user:pass@example.com/hook",
        "https://user@example.com/hook",
        "mailto:billing@example.com",
        "http://",
        "",
        long.as_str(),
    ] {
        for rotate_secret in [false, true] {
            let body = json!({"url": url, "rotate_secret": rotate_secret});
            let r = admin(app, Method::PUT, &uri, Some(body)).await;
            assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_webhook_url");
        }
    }
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    for (body, status, code) in [
        ("{}", unprocessable, "invalid_body"),
        (r#"{"rotate_secret": true}"#, unprocessable, "invalid_body"),
        (
            r#"{"url": "https://example.com/", "extra": 1}"#,
            unprocessable,
            "invalid_body",
        ),
        (r#"{"url": 5}"#, unprocessable, "invalid_body"),
        (r#"{"url": null}"#, unprocessable, "invalid_body"),
        (
            r#"{"url": "https://example.com/", "rotate_secret": "yes"}"#,
            unprocessable,
            "invalid_body",
        ),
        (r#"["https://example.com/"]"#, unprocessable, "invalid_body"),
        ("{", StatusCode::BAD_REQUEST, "malformed_json"),
        ("not json", StatusCode::BAD_REQUEST, "malformed_json"),
    ] {
        let r = send(app, Method::PUT, &uri, Some(ADMIN), Some(body)).await;
        assert_problem(&r, status, code);
    }
    assert_eq!(row_counts(state).await, before);
}

async fn bad_urls_and_bodies_are_refused_and_write_nothing(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let tenant_id = tenant_on_quota(&app).await;
    let uri = webhook_uri(&tenant_id);

    // With no webhook yet: none is created.
    assert_eq!(row_counts(&state).await[0], 0);
    refuse_all(&app, &state, &tenant_id).await;
    let r = admin(&app, Method::GET, &uri, None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");

    // The longest URL allowed is fine.
    let longest = format!("https://example.com/{}", "a".repeat(2048 - 20));
    assert_eq!(longest.len(), 2048);
    set_webhook(&app, &tenant_id, json!({"url": longest}), true).await;
    let secret = common::stored_secret(&state, &tenant_id).await;

    // With one: it stays as it was, secret included.
    refuse_all(&app, &state, &tenant_id).await;
    let shown = admin(&app, Method::GET, &uri, None).await;
    assert_eq!(shown.body["url"], longest.as_str());
    assert_eq!(common::stored_secret(&state, &tenant_id).await, secret);
}

async fn tenant_tokens_read_their_own_webhook_but_never_change_it(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let own = tenant_on_quota(&app).await;
    let other = tenant_on_quota(&app).await;
    let secret = set_webhook(&app, &own, json!({"url": HOOK}), true).await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    set_webhook(&app, &other, json!({"url": HOOK}), true).await;
    let token = tenant_token(&app, &own).await;
    let body = json!({"url": "http://169.254.169.254/latest", "rotate_secret": true}).to_string();

    // Only the admin sets or removes it, the tenant's own included.
    for tenant_id in [&own, &other] {
        let uri = webhook_uri(tenant_id);
        let r = send(&app, Method::PUT, &uri, Some(&token), Some(&body)).await;
        assert_problem(&r, StatusCode::FORBIDDEN, "forbidden");
        let r = send(&app, Method::DELETE, &uri, Some(&token), None).await;
        assert_problem(&r, StatusCode::FORBIDDEN, "forbidden");
    }

    // Its own: readable, without the secret.
    let r = send(&app, Method::GET, &webhook_uri(&own), Some(&token), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["url"], HOOK);
    assert!(r.body.get("secret").is_none(), "{:?}", r.body);
    assert!(!r.text().contains(&secret));
    let page = deliveries(&app, &token, &own, "").await;
    assert_eq!(page, json!({"items": [], "next_cursor": null}));

    // Another tenant's does not exist for it.
    let r = send(&app, Method::GET, &webhook_uri(&other), Some(&token), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let uri = format!("/v1/tenants/{other}/webhook-deliveries");
    let r = send(&app, Method::GET, &uri, Some(&token), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");

    // Nothing changed.
    let r = admin(&app, Method::GET, &webhook_uri(&own), None).await;
    assert_eq!(r.body["url"], HOOK);
    let r = admin(&app, Method::GET, "/v1/audit?action=webhook.update", None).await;
    assert_eq!(r.body["items"], json!([]));
}

async fn delete_removes_the_webhook_and_unknown_tenants_have_none(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let tenant_id = tenant_on_quota(&app).await;
    let uri = webhook_uri(&tenant_id);
    let r = admin(&app, Method::DELETE, &uri, None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let secret = set_webhook(&app, &tenant_id, json!({"url": HOOK}), true).await["secret"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = admin(&app, Method::DELETE, &uri, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    assert!(r.bytes.is_empty());
    let r = admin(&app, Method::GET, &uri, None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = admin(&app, Method::DELETE, &uri, None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let entry = last_audit(&app, "webhook.delete").await;
    assert_eq!(entry["tenant_id"], tenant_id.as_str());
    assert_eq!(entry["before"]["url"], HOOK);
    assert_eq!(entry["after"], Value::Null);
    assert!(!entry.to_string().contains(&secret), "{entry}");

    // Set again: a new webhook, with a new secret.
    let again = set_webhook(&app, &tenant_id, json!({"url": HOOK}), true).await;
    assert_ne!(again["secret"], secret.as_str());
    assert_eq!(
        last_audit(&app, "webhook.create").await["before"],
        Value::Null
    );

    let unknown = "tnt_nope";
    for (method, body) in [
        (Method::GET, None),
        (Method::PUT, Some(json!({"url": HOOK}))),
        (Method::DELETE, None),
    ] {
        let r = admin(&app, method, &webhook_uri(unknown), body).await;
        assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    }
    let uri = format!("/v1/tenants/{unknown}/webhook-deliveries");
    let r = admin(&app, Method::GET, &uri, None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
}

async fn two_first_puts_at_once_are_a_create_and_an_update(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let tenant_id = tenant_on_quota(&app).await;
    let moved = "https://billing.example.com/hooks/other";
    let (a, b) = tokio::join!(
        put_webhook(&app, &tenant_id, json!({"url": HOOK})),
        put_webhook(&app, &tenant_id, json!({"url": moved}))
    );
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(b.status, StatusCode::OK, "{:?}", b.body);
    // One created it and holds the secret; the other changed its URL.
    let (created, updated) = if a.body.get("secret").is_some() {
        (a, b)
    } else {
        (b, a)
    };
    assert!(updated.body.get("secret").is_none(), "{:?}", updated.body);
    assert_eq!(
        common::stored_secret(&state, &tenant_id).await,
        created.body["secret"].as_str().unwrap()
    );
    let shown = admin(&app, Method::GET, &webhook_uri(&tenant_id), None).await;
    assert_eq!(shown.body["url"], updated.body["url"]);
    let entry = last_audit(&app, "webhook.update").await;
    assert_eq!(entry["before"]["url"], created.body["url"]);
    assert_eq!(entry["after"]["url"], updated.body["url"]);
    let r = admin(&app, Method::GET, "/v1/audit?action=webhook.create", None).await;
    assert_eq!(items(&r.body).len(), 1);
}

async fn quota_alerts_fire_once_at_80_and_at_100_percent(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let plan_id = quota_plan(&app).await;
    let tenant_id = tenant(&app, &plan_id).await;
    set_webhook(&app, &tenant_id, json!({"url": HOOK}), true).await;
    let (key_id, _) = key(&app, &tenant_id).await;
    // A tenant on the same plan without a webhook: never an event.
    let silent = tenant(&app, &plan_id).await;
    let (silent_key, _) = key(&app, &silent).await;

    report(&app, "b-1", "envoy-a", &key_id, 7).await;
    report(&app, "s-1", "envoy-a", &silent_key, 9).await;
    assert_eq!(alerts(&app, &tenant_id).await, Vec::<(i64, i64)>::new());

    // 8 of 10: 80 %.
    report(&app, "b-2", "envoy-a", &key_id, 1).await;
    assert_eq!(alerts(&app, &tenant_id).await, [(80, 8)]);

    // Another Envoy's 5 more: 13 of 10, past 100 %; 80 % is not raised again.
    report(&app, "b-3", "envoy-b", &key_id, 5).await;
    report(&app, "s-2", "envoy-b", &silent_key, 5).await;
    assert_eq!(alerts(&app, &tenant_id).await, [(100, 13), (80, 8)]);

    // A retried batch counts nothing and raises nothing.
    report(&app, "b-3", "envoy-b", &key_id, 5).await;
    report(&app, "b-4", "envoy-a", &key_id, 1).await;
    assert_eq!(alerts(&app, &tenant_id).await, [(100, 13), (80, 8)]);
    let usage = admin(&app, Method::GET, &format!("/v1/keys/{key_id}/usage"), None).await;
    assert_eq!(usage.body["used"], 14, "{:?}", usage.body);

    assert_eq!(
        deliveries(&app, ADMIN, &silent, "").await["items"],
        json!([])
    );
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_events")
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert_eq!(events, 2);

    // What each event says, as it will be sent.
    let page = deliveries(&app, ADMIN, &tenant_id, "").await;
    let newest = &items(&page)[0];
    assert_eq!(newest["key_id"], key_id.as_str());
    assert_eq!(newest["status"], "pending");
    assert_eq!(newest["attempts"], 0);
    assert_eq!(newest["delivered_at"], Value::Null);
    assert_eq!(newest["attempt_log"], json!([]));
    let payload = &newest["payload"];
    assert_eq!(payload["id"], newest["id"]);
    assert_eq!(payload["type"], "quota.threshold");
    let data = &payload["data"];
    assert_eq!(data["tenant_id"], tenant_id.as_str());
    assert_eq!(data["key_id"], key_id.as_str());
    assert_eq!(
        (&data["threshold"], &data["quota"]),
        (&json!(100), &json!(10))
    );
    let usage = admin(&app, Method::GET, &format!("/v1/keys/{key_id}/usage"), None).await;
    assert_eq!(data["period_start"], usage.body["period_start"]);
    assert_eq!(data["period_end"], usage.body["period_end"]);

    // Newest first, a page at a time.
    let first = deliveries(&app, ADMIN, &tenant_id, "?limit=1").await;
    assert_eq!(items(&first).len(), 1);
    assert_eq!(items(&first)[0]["threshold"], 100);
    let cursor = first["next_cursor"].as_str().unwrap();
    // The position of the last event sent: its time and id.
    let last = items(&first)[0]["id"].as_str().unwrap();
    assert!(cursor.ends_with(&format!(".{last}")), "{cursor}");
    let second = deliveries(&app, ADMIN, &tenant_id, &format!("?limit=1&after={cursor}")).await;
    assert_eq!(items(&second).len(), 1);
    assert_eq!(items(&second)[0]["threshold"], 80);
    assert_eq!(second["next_cursor"], Value::Null);

    // Bad queries are problems like everywhere else.
    let base = format!("/v1/tenants/{tenant_id}/webhook-deliveries");
    for (query, code) in [
        ("?status=sent", "invalid_query"),
        ("?status=", "invalid_query"),
        ("?limit=0", "invalid_query"),
        ("?limit=201", "invalid_query"),
        ("?limit=many", "invalid_query"),
        ("?bogus=1", "invalid_query"),
        ("?after=evt_nope", "invalid_cursor"),
    ] {
        let r = admin(&app, Method::GET, &format!("{base}{query}"), None).await;
        assert_problem(&r, StatusCode::BAD_REQUEST, code);
    }
    // A cursor is a position, not an event: another tenant's names no
    // event here, and tells nothing of it (no lookup, no existence check).
    let silent_base = format!("/v1/tenants/{silent}/webhook-deliveries");
    let r = admin(
        &app,
        Method::GET,
        &format!("{silent_base}?after={cursor}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["items"], json!([]));
}

/// What the receiver was sent.
struct Received {
    headers: HeaderMap,
    body: String,
}

type Inbox = Arc<Mutex<Vec<Received>>>;

/// Records each request; answers 500 to the first, 204 to the rest.
async fn receive(State(inbox): State<Inbox>, headers: HeaderMap, body: String) -> StatusCode {
    let mut inbox = inbox.lock().unwrap();
    inbox.push(Received { headers, body });
    if inbox.len() == 1 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

/// A receiver on a free port of 127.0.0.1: its URL and what it was sent.
async fn receiver() -> (String, Inbox) {
    let inbox = Inbox::default();
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(inbox.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook?tenant=acme"), inbox)
}

/// Checks `Tollgate-Signature: t=<unix>,v1=<hex>` over `"<t>.<body>"` with
/// `secret`, signed within the minute before `now_ms`.
fn signed_with(received: &Received, secret: &str, now_ms: u64) -> bool {
    let header = received.headers["tollgate-signature"].to_str().unwrap();
    let (t, v1) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .unwrap_or_else(|| panic!("{header}"));
    let t: i64 = t.parse().unwrap();
    let now = i64::try_from(now_ms / 1000).unwrap();
    assert!((now - 60..=now).contains(&t), "{header}");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", received.body).as_bytes());
    mac.verify_slice(&hex::decode(v1).unwrap()).is_ok()
}

/// Makes every pending event due now, instead of waiting out its backoff.
async fn make_due(state: &AppState) {
    sqlx::query("UPDATE webhook_events SET next_attempt_at_ms = 0 WHERE status = 'pending'")
        .execute(&state.db)
        .await
        .unwrap();
}

async fn deliveries_are_signed_retried_and_logged(backend: Backend) {
    let (_, state, clock) = test_app_at(backend, NOW).await;
    let (app, state) = allowing_private_webhook_targets(state);
    let (url, inbox) = receiver().await;
    let client = webhooks::client(Targets::Any).unwrap();
    let tenant_id = tenant_on_quota(&app).await;
    let (key_id, _) = key(&app, &tenant_id).await;
    let old = set_webhook(&app, &tenant_id, json!({"url": url}), true).await;
    let rotate = json!({"url": url, "rotate_secret": true});
    let secret = set_webhook(&app, &tenant_id, rotate, true).await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = tenant_token(&app, &tenant_id).await;

    assert_eq!(webhooks::deliver_due(&state, &client).await.unwrap(), 0);
    report(&app, "b-1", "envoy-a", &key_id, 8).await;

    // The first attempt is answered 500: pending, to be retried after a second.
    let sent_after = i64::try_from(now_ms()).unwrap();
    assert_eq!(webhooks::deliver_due(&state, &client).await.unwrap(), 1);
    let sent_before = i64::try_from(now_ms()).unwrap();
    let page = deliveries(&app, &token, &tenant_id, "").await;
    assert_eq!(items(&page).len(), 1);
    let event = &items(&page)[0];
    assert_eq!(event["status"], "pending");
    assert_eq!(event["attempts"], 1);
    assert_eq!(event["delivered_at"], Value::Null);
    let log = event["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["status_code"], 500);
    assert_eq!(log[0]["url"], url.as_str());
    assert!(log[0]["error"].as_str().is_some_and(|e| e.contains("500")));
    assert!(log[0]["duration_ms"].as_i64().is_some_and(|d| d >= 0));
    // The first retry is due a second after the attempt.
    let due_at: i64 = sqlx::query_scalar("SELECT next_attempt_at_ms FROM webhook_events")
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert!(
        (sent_after + 1000..=sent_before + 1000).contains(&due_at),
        "{sent_after} {due_at} {sent_before}"
    );
    assert_eq!(inbox.lock().unwrap().len(), 1);
    let pending = deliveries(&app, &token, &tenant_id, "?status=pending").await;
    assert_eq!(items(&pending).len(), 1);
    for status in ["delivered", "failed"] {
        let none = deliveries(&app, &token, &tenant_id, &format!("?status={status}")).await;
        assert_eq!(none["items"], json!([]), "{status}");
    }

    // The retry is answered 204: delivered, after two attempts. Not due
    // 999 ms after the first, due a second after it.
    clock.advance(Duration::from_millis(999));
    assert_eq!(webhooks::deliver_due(&state, &client).await.unwrap(), 0);
    clock.advance(Duration::from_millis(1));
    assert_eq!(webhooks::deliver_due(&state, &client).await.unwrap(), 1);
    assert_eq!(webhooks::deliver_due(&state, &client).await.unwrap(), 0);
    let page = deliveries(&app, &token, &tenant_id, "?status=delivered").await;
    assert_eq!(items(&page).len(), 1);
    let event = &items(&page)[0];
    assert_eq!(event["status"], "delivered");
    assert_eq!(event["attempts"], 2);
    assert!(event["delivered_at"].is_string(), "{event}");
    let log = event["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["status_code"], 500);
    assert_eq!(log[1]["status_code"], 204);
    assert_eq!(log[1]["error"], Value::Null);
    let pending = deliveries(&app, &token, &tenant_id, "?status=pending").await;
    assert_eq!(pending["items"], json!([]));

    // Both requests: the same body, as logged, signed with the current secret only.
    let inbox = inbox.lock().unwrap();
    assert_eq!(inbox.len(), 2);
    for received in inbox.iter() {
        assert_eq!(received.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            received.headers["tollgate-event-id"],
            event["id"].as_str().unwrap()
        );
        let body: Value = serde_json::from_str(&received.body).unwrap();
        assert_eq!(body, event["payload"]);
        assert_eq!(body["data"]["threshold"], 80);
        assert_eq!(body["data"]["used"], 8);
        let now_ms = clock.now().unix_ms();
        assert!(
            signed_with(received, &secret, now_ms),
            "{:?}",
            received.headers
        );
        assert!(!signed_with(
            received,
            old["secret"].as_str().unwrap(),
            now_ms
        ));
    }
    assert_eq!(inbox[0].body, inbox[1].body);
}

async fn an_event_fails_after_its_last_attempt_or_when_the_webhook_is_gone(backend: Backend) {
    let (app, state) = allowing_private_webhook_targets(test_state(backend).await);
    let client = webhooks::client(Targets::Any).unwrap();
    let tenant_id = tenant_on_quota(&app).await;
    let (key_id, _) = key(&app, &tenant_id).await;
    // Nothing listens there: every attempt fails without an HTTP answer.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", listener.local_addr().unwrap())
    };
    set_webhook(&app, &tenant_id, json!({"url": closed}), true).await;
    report(&app, "b-1", "envoy-a", &key_id, 8).await;
    for attempt in 1..=MAX_ATTEMPTS {
        make_due(&state).await;
        assert_eq!(webhooks::deliver_due(&state, &client).await.unwrap(), 1);
        let page = deliveries(&app, ADMIN, &tenant_id, "").await;
        let event = &items(&page)[0];
        assert_eq!(event["attempts"], attempt);
        let last = &event["attempt_log"][usize::try_from(attempt - 1).unwrap()];
        assert_eq!(last["status_code"], Value::Null, "{last}");
        assert_eq!(last["error"], "could not connect", "{last}");
        let status = if attempt < MAX_ATTEMPTS {
            "pending"
        } else {
            "failed"
        };
        assert_eq!(event["status"], status);
    }
    make_due(&state).await;
    assert_eq!(webhooks::deliver_due(&state, &client).await.unwrap(), 0);
    let failed = deliveries(&app, ADMIN, &tenant_id, "?status=failed").await;
    assert_eq!(items(&failed).len(), 1);

    // An event queued before the webhook was removed fails on its next attempt.
    report(&app, "b-2", "envoy-a", &key_id, 2).await;
    let r = admin(&app, Method::DELETE, &webhook_uri(&tenant_id), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(webhooks::deliver_due(&state, &client).await.unwrap(), 1);
    let page = deliveries(&app, ADMIN, &tenant_id, "?status=failed").await;
    let newest = &items(&page)[0];
    assert_eq!(newest["threshold"], 100);
    assert_eq!(newest["attempts"], 1);
    assert_eq!(newest["attempt_log"][0]["status_code"], Value::Null);
}

/// Hosts that are internal as written, in the notations people (and
/// attackers) write them in.
const INTERNAL: &[&str] = &[
    "http://127.0.0.1:8080/hook",
    "http://2130706433/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://0.0.0.0/hook",
    "http://10.0.0.1/hook",
    "http://172.16.0.1/hook",
    "http://192.168.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/hook",
    "http://[fd00::1]/hook",
    "http://[fe80::1]/hook",
    "http://224.0.0.1/hook",
    "http://255.255.255.255/hook",
    "http://localhost:8080/hook",
    "http://alerts.localhost/hook",
];

async fn internal_targets_are_refused_unless_allowed(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let tenant_id = tenant_on_quota(&app).await;
    let before = row_counts(&state).await;
    for url in INTERNAL {
        for rotate_secret in [false, true] {
            let body = json!({"url": url, "rotate_secret": rotate_secret});
            let r = put_webhook(&app, &tenant_id, body).await;
            assert_problem(
                &r,
                StatusCode::UNPROCESSABLE_ENTITY,
                "webhook_target_forbidden",
            );
            let detail = r.body["detail"].as_str().unwrap();
            assert!(
                detail.contains("CONTROL_PLANE_WEBHOOK_ALLOW_PRIVATE_TARGETS"),
                "{url}: {detail}"
            );
        }
    }
    assert_eq!(row_counts(&state).await, before, "nothing written");
    let r = admin(&app, Method::GET, &webhook_uri(&tenant_id), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");

    // Public addresses just past the edges pass; a name is judged by what
    // it resolves to when an alert is sent, not here.
    let mut issued = true;
    for url in [
        "http://172.15.255.255/hook",
        "http://172.32.0.0/hook",
        "http://[2001:4860:4860::8888]/hook",
        "http://billing.internal:8080/hook",
        HOOK,
    ] {
        let set = set_webhook(&app, &tenant_id, json!({"url": url}), issued).await;
        assert_eq!(set["url"], url);
        issued = false;
    }

    // Allowed, every one is taken.
    let (app, _) = allowing_private_webhook_targets(state);
    for url in INTERNAL {
        let set = set_webhook(&app, &tenant_id, json!({"url": url}), false).await;
        assert_eq!(set["url"], *url);
    }
}

/// One delivery pass with `client`: how many events it attempted.
async fn deliver(state: &AppState, client: &webhooks::Client) -> usize {
    webhooks::deliver_due(state, client).await.unwrap()
}

/// The newest event's attempt `n` (from 0), and the event.
async fn attempt(app: &Router, tenant_id: &str, n: usize) -> (Value, Value) {
    let page = deliveries(app, ADMIN, tenant_id, "").await;
    let event = items(&page)[0].clone();
    (event["attempt_log"][n].clone(), event)
}

async fn a_name_resolving_to_loopback_is_refused_at_delivery_unless_allowed(backend: Backend) {
    // The URLs are set while internal targets are allowed: as on a control
    // plane restarted without the switch, or a name that resolved to a
    // public address when it was set (DNS rebinding).
    let (_, state, clock) = test_app_at(backend, NOW).await;
    let (app, state) = allowing_private_webhook_targets(state);
    let (by_address, inbox) = receiver().await;
    // `localhost` resolves from the hosts file, without DNS.
    let by_name = by_address.replace("127.0.0.1", "localhost");
    let guarded = webhooks::client(Targets::PublicOnly).unwrap();
    let open = webhooks::client(Targets::Any).unwrap();
    let tenant_id = tenant_on_quota(&app).await;
    let (key_id, _) = key(&app, &tenant_id).await;
    set_webhook(&app, &tenant_id, json!({"url": by_name}), true).await;
    report(&app, "b-1", "envoy-a", &key_id, 8).await;

    // Refused when the name resolves: a failed attempt, with the reason.
    assert_eq!(deliver(&state, &guarded).await, 1);
    let (first, event) = attempt(&app, &tenant_id, 0).await;
    assert_eq!(event["status"], "pending", "{event}");
    assert_eq!(first["status_code"], Value::Null, "{first}");
    assert_eq!(first["url"], by_name.as_str());
    let error = first["error"].as_str().unwrap();
    assert!(
        error.starts_with("refused: localhost resolves to "),
        "{error}"
    );
    assert!(error.contains("a loopback address"), "{error}");
    assert!(
        error.contains("CONTROL_PLANE_WEBHOOK_ALLOW_PRIVATE_TARGETS"),
        "{error}"
    );
    assert!(inbox.lock().unwrap().is_empty(), "nothing was sent");

    // An address as host never reaches the resolver: refused before it.
    set_webhook(&app, &tenant_id, json!({"url": by_address}), false).await;
    // A second apart, so that the log lists the attempts in order.
    clock.advance(Duration::from_secs(1));
    make_due(&state).await;
    assert_eq!(deliver(&state, &guarded).await, 1);
    let (second, _) = attempt(&app, &tenant_id, 1).await;
    assert_eq!(second["status_code"], Value::Null, "{second}");
    let error = second["error"].as_str().unwrap();
    assert!(
        error.starts_with("refused: 127.0.0.1 is a loopback address"),
        "{error}"
    );
    assert!(inbox.lock().unwrap().is_empty(), "nothing was sent");

    // Allowed: the same name is delivered to (the receiver answers its
    // first request 500, the next 204).
    set_webhook(&app, &tenant_id, json!({"url": by_name}), false).await;
    for (n, code) in [(2, 500), (3, 204)] {
        clock.advance(Duration::from_secs(1));
        make_due(&state).await;
        assert_eq!(deliver(&state, &open).await, 1);
        let (answered, _) = attempt(&app, &tenant_id, n).await;
        assert_eq!(answered["status_code"], code, "{answered}");
    }
    let (_, event) = attempt(&app, &tenant_id, 0).await;
    assert_eq!(event["status"], "delivered", "{event}");
    assert_eq!(inbox.lock().unwrap().len(), 2);
}

/// Usage that arrives after its period ended (an Envoy that was cut off over
/// the month's end) completes that period: its alert is for that period.
async fn late_usage_alerts_for_the_period_it_was_counted_in(backend: Backend) {
    let (app, _state) = test_app(backend).await;
    let plan_id = quota_plan(&app).await;
    let tenant_id = tenant(&app, &plan_id).await;
    set_webhook(&app, &tenant_id, json!({"url": HOOK}), true).await;
    let (key_id, _) = key(&app, &tenant_id).await;
    let this = tollgate_core::period::quota_period(now_ms(), None);
    let last = tollgate_core::period::quota_period(this.start_ms - 1, None);
    let batch = json!({
        "batch_id": "late-1",
        "reporter_id": "envoy-a",
        "keys": [{"key_id": key_id, "allowed": 9, "cost": 9, "last_used_ms": this.start_ms - 1}],
    });
    let r = send(
        &app,
        Method::POST,
        "/v1/usage",
        Some(SYNC),
        Some(&batch.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let page = deliveries(&app, ADMIN, &tenant_id, "").await;
    let events = items(&page);
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["threshold"], 80);
    let start =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(last.start_ms) * 1_000_000)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
    assert_eq!(events[0]["payload"]["data"]["period_start"], start.as_str());
}

/// Signing secrets are stored sealed; a rotation opens them with the old
/// key and seals them under the new one; with the old key dropped too soon,
/// the start is refused, naming the tenant and the key. Secrets stored in
/// clear (before sealing existed) are sealed at the first start with a key.
async fn signing_secrets_are_sealed_at_rest_and_resealed_on_rotation(backend: Backend) {
    const NEW_KEY: &str = "4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b";
    let (app, state) = test_app(backend).await;
    let tenant_id = tenant_on_quota(&app).await;
    let set = set_webhook(&app, &tenant_id, json!({"url": HOOK}), true).await;
    let secret = set["secret"].as_str().unwrap().to_owned();
    let sealed = common::stored_as_is(&state, &tenant_id).await;
    assert!(sealed.starts_with("sealed:v1:"), "{sealed}");
    assert!(!sealed.contains(&secret) && !sealed.contains(&secret["whsec_".len()..]));
    let first = Sealer::from_settings(Some(common::SECRETS_KEY), None).unwrap();
    assert_eq!(first.open(&sealed, &tenant_id).unwrap(), secret);
    assert_eq!(store::webhooks::reseal(&state.db, &first).await.unwrap(), 0);

    let rotating = Sealer::from_settings(Some(NEW_KEY), Some(common::SECRETS_KEY)).unwrap();
    assert_eq!(
        store::webhooks::reseal(&state.db, &rotating).await.unwrap(),
        1
    );
    let resealed = common::stored_as_is(&state, &tenant_id).await;
    assert_ne!(resealed, sealed);
    let rotated = Sealer::from_settings(Some(NEW_KEY), None).unwrap();
    assert_eq!(rotated.open(&resealed, &tenant_id).unwrap(), secret);
    assert_eq!(
        store::webhooks::reseal(&state.db, &rotated).await.unwrap(),
        0
    );

    // Back on the first key alone: what the new one sealed does not open.
    let refused = store::webhooks::reseal(&state.db, &first)
        .await
        .unwrap_err();
    assert!(refused.contains(&tenant_id), "{refused}");
    assert!(
        refused.contains("CONTROL_PLANE_SECRETS_OLD_KEYS"),
        "{refused}"
    );
    assert_eq!(
        common::stored_as_is(&state, &tenant_id).await,
        resealed,
        "nothing written"
    );

    let clear = "whsec_0123456789abcdefghijklmnopqrstuvwxyzABCD";
    sqlx::query("UPDATE webhooks SET secret = $1 WHERE tenant_id = $2")
        .bind(clear)
        .bind(&tenant_id)
        .execute(&state.db)
        .await
        .unwrap();
    assert_eq!(
        store::webhooks::reseal(&state.db, &rotated).await.unwrap(),
        1
    );
    let sealed_now = common::stored_as_is(&state, &tenant_id).await;
    assert!(sealed_now.starts_with("sealed:v1:"));
    assert_eq!(rotated.open(&sealed_now, &tenant_id).unwrap(), clear);
}

on_both_databases!(
    webhook_put_issues_the_secret_once_and_rotates_it_on_request,
    late_usage_alerts_for_the_period_it_was_counted_in,
    bad_urls_and_bodies_are_refused_and_write_nothing,
    tenant_tokens_read_their_own_webhook_but_never_change_it,
    delete_removes_the_webhook_and_unknown_tenants_have_none,
    two_first_puts_at_once_are_a_create_and_an_update,
    quota_alerts_fire_once_at_80_and_at_100_percent,
    deliveries_are_signed_retried_and_logged,
    an_event_fails_after_its_last_attempt_or_when_the_webhook_is_gone,
    internal_targets_are_refused_unless_allowed,
    a_name_resolving_to_loopback_is_refused_at_delivery_unless_allowed,
    signing_secrets_are_sealed_at_rest_and_resealed_on_rotation,
);
