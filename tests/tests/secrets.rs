//! Secrets never reach a log. One run issues every kind of secret Tollgate
//! has (API keys, a rotated key, tenant tokens, a webhook signing secret, a
//! dashboard session), uses each the way clients do (keys through Envoy in
//! each place a key is read, a key reported as leaked, the tenant token on
//! the admin API and the dashboard, quota alerts signed and delivered), and
//! sends wrong ones too; then every line every process wrote (the control
//! plane at `debug`, Envoy and the filter at `info`, as the harness runs
//! them) is searched for each plaintext: none may appear.

use std::time::Duration;

use axum::routing::post;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tollgate_e2e::harness::{eventually, Stack, ADMIN_TOKEN, SECRETS_KEY, SYNC_TOKEN};

/// A receiver on loopback that accepts every delivery; returns its port
/// and how many it got.
async fn receiver() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, got)
}

fn text(body: &Value, field: &str) -> String {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {body}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_any_log() {
    // The control plane's debug lines too: a secret must not reach a log
    // at any level. (Set before anything starts: no thread reads it yet.)
    std::env::set_var("RUST_LOG", "debug");
    let stack = Stack::start().await;
    let tenant = stack
        .tenant_on(json!({
            "limits": [{"name": "per-second", "max": 100, "window_seconds": 1}],
            "monthly_quota": 5
        }))
        .await;
    let (key_id, key) = stack.new_key(&tenant).await;
    let (_, leaked) = stack.new_key(&tenant).await;
    let (port, deliveries) = receiver().await;
    let hook = stack
        .admin(
            Method::PUT,
            &format!("/v1/tenants/{tenant}/webhook"),
            Some(json!({"url": format!("http://127.0.0.1:{port}/hook")})),
        )
        .await;
    assert_eq!(hook.status, StatusCode::OK, "{:?}", hook.body);
    let webhook_secret = text(&hook.body, "secret");
    let token = stack
        .admin(
            Method::POST,
            &format!("/v1/tenants/{tenant}/tokens"),
            Some(json!({"name": "portal"})),
        )
        .await;
    let tenant_token = text(&token.body, "token");

    // The key, in each place the filter reads one, until its quota of 5 is used.
    let through = |headers: Vec<(&'static str, String)>| {
        let stack = &stack;
        async move {
            let mut request = stack
                .client
                .get(format!("http://127.0.0.1:{}/anything", stack.envoy_port));
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request.send().await.expect("Envoy answers").status()
        }
    };
    eventually(Duration::from_secs(10), "the key is known", || async {
        (through(vec![("x-api-key", key.clone())]).await == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(
        through(vec![("authorization", format!("Bearer {key}"))]).await,
        StatusCode::OK
    );
    for _ in 0..6 {
        through(vec![("x-api-key", key.clone())]).await;
    }
    // Wrong ones: a key never issued, in the key's form, and text that is not a key.
    let unknown = "tg_AbCdEfGhIjKlMnOpQrStUvWxYz012345_0rOk6k".to_owned();
    assert_eq!(
        through(vec![("x-api-key", unknown.clone())]).await,
        StatusCode::UNAUTHORIZED
    );
    let garbage = "not-a-key-but-a-secret-all-the-same-9137".to_owned();
    assert_eq!(
        through(vec![("authorization", format!("Bearer {garbage}"))]).await,
        StatusCode::UNAUTHORIZED
    );

    // A key rotated, and its successor used.
    let rotated = stack
        .admin(
            Method::POST,
            &format!("/v1/keys/{key_id}/rotate"),
            Some(json!({})),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{:?}", rotated.body);
    let successor = text(&rotated.body, "key");
    eventually(
        Duration::from_secs(10),
        "the successor is known",
        || async {
            let status = through(vec![("x-api-key", successor.clone())]).await;
            (status != StatusCode::UNAUTHORIZED).then_some(())
        },
    )
    .await;

    // A key reported as leaked, then refused.
    let report = stack
        .admin(
            Method::POST,
            "/v1/leaked-keys",
            Some(json!([{"token": leaked, "type": "tollgate_api_key", "url": "https://example.com/x"}])),
        )
        .await;
    assert_eq!(report.status, StatusCode::OK, "{:?}", report.body);
    eventually(
        Duration::from_secs(10),
        "the leaked key is refused",
        || async {
            (through(vec![("x-api-key", leaked.clone())]).await == StatusCode::UNAUTHORIZED)
                .then_some(())
        },
    )
    .await;

    // The tenant token on the admin API, and a wrong admin token.
    let cp = format!("http://127.0.0.1:{}", stack.control_plane_port);
    let own = stack
        .client
        .get(format!("{cp}/v1/tenants/{tenant}"))
        .bearer_auth(&tenant_token)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    let wrong_admin = format!("{ADMIN_TOKEN}-but-wrong");
    let refused = stack
        .client
        .get(format!("{cp}/v1/plans"))
        .bearer_auth(&wrong_admin)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    // The dashboard: signing in with the tenant token gives a session cookie.
    // Without following the redirect, whose answer carries the cookie.
    let browser = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = browser
        .post(format!("{cp}/dashboard/login"))
        .header("origin", &cp)
        .form(&[("token", tenant_token.as_str())])
        .send()
        .await
        .unwrap();
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no session cookie: {}", signed_in.status()))
        .to_owned();
    let session = cookie
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .map(|(_, value)| value.to_owned())
        .expect("a cookie value");
    let page = browser
        .get(format!("{cp}/dashboard"))
        .header("cookie", cookie.split(';').next().unwrap_or_default())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);

    // The quota's alerts, signed with the webhook secret, delivered.
    eventually(
        Duration::from_secs(30),
        "both quota alerts delivered",
        || async { (deliveries.load(std::sync::atomic::Ordering::SeqCst) >= 2).then_some(()) },
    )
    .await;
    // Usage reported, and the logs written.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut logs = String::new();
    for entry in std::fs::read_dir(stack.dir.path()).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            logs.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    // Not vacuous: the logs are there, the control plane's debug lines too.
    assert!(logs.contains("admin action"), "{}", stack.logs());
    assert!(
        logs.contains("DEBUG") || logs.contains("\"debug\""),
        "{}",
        stack.logs()
    );
    let secrets = [
        ("API key", key.as_str()),
        ("leaked API key", leaked.as_str()),
        ("rotated key's successor", successor.as_str()),
        ("unknown key", unknown.as_str()),
        ("text sent as a key", garbage.as_str()),
        ("tenant token", tenant_token.as_str()),
        ("webhook secret", webhook_secret.as_str()),
        ("dashboard session", session.as_str()),
        ("admin token", ADMIN_TOKEN),
        ("wrong admin token", wrong_admin.as_str()),
        ("sync token", SYNC_TOKEN),
        ("secrets sealing key", SECRETS_KEY),
    ];
    let found: Vec<&str> = secrets
        .iter()
        .filter(|(_, secret)| logs.contains(secret))
        .map(|(what, _)| *what)
        .collect();
    assert!(found.is_empty(), "in the logs: {found:?}");
}
