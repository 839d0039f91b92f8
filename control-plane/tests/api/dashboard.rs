//! The dashboard's pages and forms, driven like a browser would: a session
//! cookie from signing in, forms sent as `application/x-www-form-urlencoded`
//! with the Fetch Metadata a browser adds. Each test checks what the page
//! shows and what the database holds afterwards, on both databases.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::json;

use crate::common::*;

/// A browser's view of the dashboard: its cookie, if signed in (other
/// modules read pages through it too).
pub(crate) struct Browser {
    app: Router,
    cookie: Option<String>,
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Browser {
    fn new(app: &Router) -> Self {
        Self {
            app: app.clone(),
            cookie: None,
        }
    }

    /// Signed in with `token`; the sign-in must succeed.
    pub(crate) async fn signed_in(app: &Router, token: &str) -> Self {
        let mut browser = Self::new(app);
        let r = browser.post("/dashboard/login", &[("token", token)]).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
        assert_eq!(r.headers[header::LOCATION], "/dashboard");
        browser.keep_cookie(&r);
        assert!(browser.cookie.is_some(), "sign-in sets the session cookie");
        browser
    }

    fn keep_cookie(&mut self, r: &Reply) {
        if let Some(set) = r.headers.get(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let pair = set.split(';').next().unwrap().to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
    }

    fn request(&self, method: Method, uri: &str) -> axum::http::request::Builder {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "127.0.0.1:8080")
            .header("sec-fetch-site", "same-origin");
        if let Some(cookie) = &self.cookie {
            req = req.header(header::COOKIE, cookie);
        }
        req
    }

    pub(crate) async fn get(&self, uri: &str) -> Reply {
        let req = self.request(Method::GET, uri).body(Body::empty()).unwrap();
        respond(&self.app, req).await
    }

    async fn post(&self, uri: &str, pairs: &[(&str, &str)]) -> Reply {
        let req = self
            .request(Method::POST, uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form_encode(pairs)))
            .unwrap();
        respond(&self.app, req).await
    }
}

/// The tables a refused form must leave as they were.
const TABLES: [&str; 9] = [
    "plans",
    "tenants",
    "api_keys",
    "audit_log",
    "dashboard_sessions",
    "tenant_tokens",
    "webhooks",
    "webhook_events",
    "webhook_attempts",
];

fn assert_page(r: &Reply, status: StatusCode, contains: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert!(
        r.content_type().starts_with("text/html"),
        "{}",
        r.content_type()
    );
    assert!(
        r.text().contains(contains),
        "no {contains:?} in {}",
        r.text()
    );
}

fn assert_redirect(r: &Reply, to: &str) {
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(r.headers[header::LOCATION], to);
}

/// A form refused with the API's status and `code`, its field marked.
fn assert_refused(r: &Reply, status: StatusCode, code: &str) {
    assert_page(r, status, code);
    assert!(
        r.text().contains("aria-invalid=\"true\""),
        "{code}: the field is marked"
    );
}

/// The plaintext a page shows once, in its `<output id="{id}">`.
fn shown_once(r: &Reply, id: &str) -> String {
    let text = r.text();
    let start = text
        .find(&format!("<output id=\"{id}\""))
        .unwrap_or_else(|| panic!("no {id} in {text}"));
    text[start..]
        .split('>')
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap()
        .to_owned()
}

/// The newest entry of `action` was made by `who` through a dashboard session.
async fn assert_audited_from_dashboard(app: &Router, action: &str, who: &str) {
    let entry = last_audit(app, action).await;
    let actor = entry["actor"].as_str().unwrap_or_default();
    assert!(
        actor.starts_with(&format!("{who} via dashboard session ses_")),
        "{action}: {actor}"
    );
}

/// Counts use of the key as an Envoy reports it; `counts` is the batch's key entry.
async fn report(app: &Router, batch_id: &str, counts: serde_json::Value) {
    let batch = json!({"batch_id": batch_id, "keys": [counts]});
    let body = batch.to_string();
    let r = send(app, Method::POST, "/v1/usage", Some(SYNC), Some(&body)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

/// The `href` of the page's link marked `rel="next"`, as a browser follows it.
fn next_link(r: &Reply) -> Option<String> {
    let text = r.text();
    let end = text.find("\" rel=\"next\"")?;
    let start = text[..end].rfind("href=\"")? + "href=\"".len();
    Some(text[start..end].replace("&amp;", "&").replace("&#38;", "&"))
}

async fn signing_in_trades_the_token_for_a_session_cookie(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let anonymous = Browser::new(&app);
    assert_redirect(&anonymous.get("/dashboard").await, "/dashboard/login");
    assert_page(
        &anonymous.get("/dashboard/login").await,
        StatusCode::OK,
        "name=\"token\"",
    );

    let before = row_counts(&state, &TABLES).await;
    for token in ["", "wrong", "tgt_not-a-token", SYNC] {
        let r = anonymous
            .post("/dashboard/login", &[("token", token)])
            .await;
        assert_page(&r, StatusCode::UNAUTHORIZED, "role=\"alert\"");
        assert!(r.headers.get(header::SET_COOKIE).is_none());
    }
    assert_eq!(row_counts(&state, &TABLES).await, before, "nothing written");

    let r = anonymous
        .post("/dashboard/login", &[("token", ADMIN)])
        .await;
    assert_redirect(&r, "/dashboard");
    let set = r.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("__Host-tollgate_session="), "{set}");
    for attribute in [
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=43200",
    ] {
        assert!(set.contains(attribute), "{attribute} in {set}");
    }
    let secret = set.split(';').next().unwrap().split_once('=').unwrap().1;
    assert!(
        !secret.contains(ADMIN),
        "the cookie never carries the token"
    );
    let stored: Vec<String> = sqlx::query_scalar("SELECT secret_hash FROM dashboard_sessions")
        .fetch_all(&state.db)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], secret, "only the secret's hash is stored");

    let mut browser = Browser::new(&app);
    browser.keep_cookie(&r);
    assert_page(
        &browser.get("/dashboard").await,
        StatusCode::OK,
        "<h1>Overview</h1>",
    );
    let entry = last_audit(&app, "session.sign_in").await;
    let actor = entry["actor"].as_str().unwrap();
    assert!(
        actor.starts_with("admin via dashboard session ses_"),
        "{actor}"
    );

    // The cookie is the dashboard's only: the API still wants Authorization.
    let req = browser
        .request(Method::GET, "/v1/plans")
        .body(Body::empty())
        .unwrap();
    assert_problem(
        &respond(&app, req).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
}

async fn every_page_is_sent_with_the_security_headers(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let browser = Browser::signed_in(&app, ADMIN).await;
    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let (key_id, _) = key(&app, &tenant_id).await;
    let pages = [
        "/dashboard".to_owned(),
        "/dashboard/login".to_owned(),
        "/dashboard/plans".to_owned(),
        "/dashboard/plans/new".to_owned(),
        format!("/dashboard/plans/{plan_id}"),
        "/dashboard/tenants".to_owned(),
        format!("/dashboard/tenants/{tenant_id}"),
        format!("/dashboard/keys/{key_id}"),
        format!("/dashboard/keys/{key_id}?granularity=day"),
        format!("/dashboard/tenants/{tenant_id}/tokens"),
        format!("/dashboard/tenants/{tenant_id}/webhook"),
        "/dashboard/anonymous".to_owned(),
        "/dashboard/audit".to_owned(),
        "/dashboard/pricing".to_owned(),
        "/dashboard/proxies".to_owned(),
        "/pricing".to_owned(),
        "/dashboard/keys/key_nope".to_owned(),
    ];
    for page in pages {
        let r = browser.get(&page).await;
        assert!(
            r.status == StatusCode::OK
                || r.status == StatusCode::SEE_OTHER
                || r.status == StatusCode::NOT_FOUND,
            "{page}: {}",
            r.status
        );
        let csp = r.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{page}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{page}: {csp}");
        assert_eq!(
            r.headers[header::X_CONTENT_TYPE_OPTIONS],
            "nosniff",
            "{page}"
        );
        assert_eq!(r.headers[header::REFERRER_POLICY], "same-origin", "{page}");
        assert_eq!(r.headers[header::CACHE_CONTROL], "no-store", "{page}");
        // No inline script anywhere: the CSP would refuse it.
        assert!(!r.text().contains("<script>"), "{page}");
        assert!(!r.text().contains(" onclick="), "{page}");
    }
    let missing = browser.get("/dashboard/keys/key_nope").await;
    assert_page(&missing, StatusCode::NOT_FOUND, "not_found");
}

async fn a_session_ends_at_expiry_at_sign_out_and_with_its_token(backend: Backend) {
    let (app, state, clock) = test_app_at(backend, NOW).await;
    let admin_browser = Browser::signed_in(&app, ADMIN).await;
    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let token = tenant_token(&app, &tenant_id).await;
    let tenant_browser = Browser::signed_in(&app, &token).await;
    assert_page(
        &tenant_browser.get("/dashboard").await,
        StatusCode::OK,
        "Overview",
    );

    // Expiry: 12 hours to the millisecond.
    clock.advance(Duration::from_millis(12 * 3600 * 1000 - 1));
    assert_page(
        &admin_browser.get("/dashboard").await,
        StatusCode::OK,
        "Overview",
    );
    clock.advance(Duration::from_millis(1));
    let r = admin_browser.get("/dashboard").await;
    assert_redirect(&r, "/dashboard/login");
    assert!(
        r.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0"),
        "the dead cookie is cleared"
    );

    // Revoking the tenant token ends the sessions signed in with it.
    let mut tenant_browser = Browser::signed_in(&app, &token).await;
    let tokens = admin(
        &app,
        Method::GET,
        &format!("/v1/tenants/{tenant_id}/tokens"),
        None,
    )
    .await;
    let token_id = tokens.body["items"][0]["id"].as_str().unwrap().to_owned();
    let r = admin(
        &app,
        Method::DELETE,
        &format!("/v1/tenants/{tenant_id}/tokens/{token_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_redirect(&tenant_browser.get("/dashboard").await, "/dashboard/login");

    // So does deleting the tenant, whose tokens are then no one's.
    let token = tenant_token(&app, &tenant_id).await;
    let deleted_tenant = Browser::signed_in(&app, &token).await;
    let r = admin(
        &app,
        Method::DELETE,
        &format!("/v1/tenants/{tenant_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_redirect(&deleted_tenant.get("/dashboard").await, "/dashboard/login");

    // Sign-out: the session is gone from the database, for every replica.
    let admin_browser = Browser::signed_in(&app, ADMIN).await;
    let r = admin_browser.post("/dashboard/logout", &[]).await;
    assert_redirect(&r, "/dashboard/login");
    assert_redirect(&admin_browser.get("/dashboard").await, "/dashboard/login");
    let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dashboard_sessions")
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert_eq!(
        live, 0,
        "expired, revoked, deleted and signed-out sessions are all gone"
    );
    let entry = last_audit(&app, "session.sign_out").await;
    assert!(entry["actor"]
        .as_str()
        .unwrap()
        .starts_with("admin via dashboard session"));
    tenant_browser.cookie = None;
}

async fn cross_site_forms_are_refused_and_change_nothing(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let browser = Browser::signed_in(&app, ADMIN).await;
    let before = row_counts(&state, &TABLES).await;
    let form = form_encode(&[
        ("name", "Evil"),
        ("limit_name", "m"),
        ("limit_max", "1"),
        ("limit_window", "60"),
    ]);
    let forged = |site: Option<&str>, origin: Option<&str>| {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri("/dashboard/plans")
            .header(header::HOST, "127.0.0.1:8080")
            .header(header::COOKIE, browser.cookie.clone().unwrap())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(site) = site {
            req = req.header("sec-fetch-site", site);
        }
        if let Some(origin) = origin {
            req = req.header(header::ORIGIN, origin);
        }
        req.body(Body::from(form.clone())).unwrap()
    };
    for (site, origin) in [
        (Some("cross-site"), None),
        (Some("same-site"), Some("http://127.0.0.1:8080")),
        (None, Some("http://evil.example")),
        (None, Some("null")),
    ] {
        let r = respond(&app, forged(site, origin)).await;
        assert_page(&r, StatusCode::FORBIDDEN, "cross_site_request");
    }
    // Sign-in too: no one else's page can sign a browser in.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/dashboard/login")
        .header("sec-fetch-site", "cross-site")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form_encode(&[("token", ADMIN)])))
        .unwrap();
    assert_page(
        &respond(&app, req).await,
        StatusCode::FORBIDDEN,
        "cross_site_request",
    );
    assert_eq!(row_counts(&state, &TABLES).await, before, "nothing written");
    // The same form from our own page goes through.
    let r = respond(&app, forged(Some("same-origin"), None)).await;
    assert_redirect(&r, "/dashboard/plans");
}

async fn plans_are_created_edited_and_deleted_through_the_forms(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let browser = Browser::signed_in(&app, ADMIN).await;
    assert_page(
        &browser.get("/dashboard/plans").await,
        StatusCode::OK,
        "No plans yet",
    );
    let good = [
        ("name", "Pro"),
        ("limit_name", "per_minute"),
        ("limit_max", "100"),
        ("limit_window", "60"),
        ("limit_burst", "20"),
        ("limit_scope", "key"),
        ("limit_name", ""),
        ("limit_max", ""),
        ("limit_window", ""),
        ("limit_burst", ""),
        ("limit_scope", "key"),
        ("monthly_quota", "10 000"),
        ("cost_methods", "post"),
        ("cost_prefix", "/v1/reports"),
        ("cost_value", "5"),
        ("max_api_keys", "3"),
        ("max_users", ""),
        (
            "metadata",
            r#"{"price": "$49/month", "features": ["Email support"]}"#,
        ),
        ("public", "on"),
    ];

    // A bad value shows the field's error and writes nothing.
    let before = row_counts(&state, &TABLES).await;
    for (field, value, code) in [
        ("limit_max", "ten", "invalid_plan"),
        ("monthly_quota", "-5", "invalid_plan"),
        ("metadata", "{not json", "invalid_plan"),
        ("metadata", "[1]", "invalid_plan"),
        ("name", " ", "invalid_name"),
        ("limit_window", "0", "invalid_plan"),
    ] {
        let mut form = good.to_vec();
        if let Some(slot) = form.iter_mut().find(|(n, _)| *n == field) {
            slot.1 = value;
        }
        let r = browser.post("/dashboard/plans", &form).await;
        assert_page(&r, StatusCode::UNPROCESSABLE_ENTITY, code);
        assert!(
            r.text().contains("aria-invalid=\"true\""),
            "{field}: the field is marked"
        );
        assert!(
            r.text().contains(value.trim()),
            "{field}: the form comes back as typed"
        );
    }
    assert_eq!(row_counts(&state, &TABLES).await, before, "nothing written");

    let r = browser.post("/dashboard/plans", &good).await;
    assert_redirect(&r, "/dashboard/plans");
    let plans = admin(&app, Method::GET, "/v1/plans", None).await;
    let created = &plans.body["items"][0];
    assert_eq!(created["name"], "Pro");
    assert_eq!(
        created["limits"],
        json!([{"name": "per_minute", "max": 100, "window_seconds": 60, "burst": 20}])
    );
    assert_eq!(created["monthly_quota"], 10_000);
    assert_eq!(
        created["route_costs"],
        json!([{"methods": ["POST"], "path_prefix": "/v1/reports", "cost": 5}])
    );
    assert_eq!(created["max_api_keys"], 3);
    assert_eq!(created["public"], true);
    assert_eq!(created["metadata"]["price"], "$49/month");
    let entry = last_audit(&app, "plan.create").await;
    assert!(entry["actor"]
        .as_str()
        .unwrap()
        .starts_with("admin via dashboard session"));
    let plan_id = created["id"].as_str().unwrap().to_owned();

    let list = browser.get("/dashboard/plans").await;
    assert_page(&list, StatusCode::OK, "100 per minute, burst 20");
    assert!(list.text().contains("$49/month"));
    // The same name again is refused on the form, not on an error page.
    let r = browser.post("/dashboard/plans", &good).await;
    assert_page(&r, StatusCode::CONFLICT, "plan_name_taken");

    // Editing replaces every field with the form's.
    let edit = browser.get(&format!("/dashboard/plans/{plan_id}")).await;
    assert_page(&edit, StatusCode::OK, "value=\"per_minute\"");
    let mut changed = good.to_vec();
    changed[2] = ("limit_max", "200");
    changed[11] = ("monthly_quota", "");
    // The first limit now holds on each Envoy, not across the fleet.
    changed.extend([("limit_reach", "envoy"), ("limit_reach", "fleet")]);
    let r = browser
        .post(&format!("/dashboard/plans/{plan_id}"), &changed)
        .await;
    assert_redirect(&r, "/dashboard/plans");
    let plan = admin(&app, Method::GET, &format!("/v1/plans/{plan_id}"), None).await;
    assert_eq!(plan.body["limits"][0]["max"], 200);
    assert_eq!(plan.body["limits"][0]["per_envoy"], true);
    assert!(plan.body["monthly_quota"].is_null(), "blank is unlimited");
    let list = browser.get("/dashboard/plans").await;
    assert_page(&list, StatusCode::OK, "burst 20, on each Envoy");
    let edit = browser.get(&format!("/dashboard/plans/{plan_id}")).await;
    assert_page(&edit, StatusCode::OK, "value=\"envoy\" selected");

    // In use: the reason is shown on the list, and the plan stays.
    let tenant_id = tenant(&app, &plan_id).await;
    let r = browser
        .post(&format!("/dashboard/plans/{plan_id}/delete"), &[])
        .await;
    assert_page(&r, StatusCode::CONFLICT, "plan_in_use");
    assert!(
        r.text().contains("<h1>Plans</h1>"),
        "the list, not an error page"
    );
    let r = admin(
        &app,
        Method::DELETE,
        &format!("/v1/tenants/{tenant_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = browser
        .post(&format!("/dashboard/plans/{plan_id}/delete"), &[])
        .await;
    assert_redirect(&r, "/dashboard/plans");
    let r = admin(&app, Method::GET, &format!("/v1/plans/{plan_id}"), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
}

async fn tenants_and_keys_are_managed_through_the_forms(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let browser = Browser::signed_in(&app, ADMIN).await;
    let plan_id = plan(&app, Some(2)).await;
    let r = browser
        .post(
            "/dashboard/tenants",
            &[
                ("name", "acme"),
                ("plan_id", &plan_id),
                ("billing_anchor_day", "40"),
            ],
        )
        .await;
    assert_page(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_billing_anchor_day",
    );
    assert!(
        r.text().contains("value=\"acme\""),
        "the form comes back as typed"
    );
    let r = browser
        .post(
            "/dashboard/tenants",
            &[
                ("name", "acme"),
                ("plan_id", &plan_id),
                ("billing_anchor_day", "15"),
            ],
        )
        .await;
    let location = r.headers[header::LOCATION].to_str().unwrap().to_owned();
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let tenant_id = location.rsplit('/').next().unwrap().to_owned();
    let page = browser.get(&location).await;
    assert_page(&page, StatusCode::OK, "No keys yet");

    // Issuing a key: the plaintext is in that answer and nowhere else.
    let r = browser
        .post(
            &format!("/dashboard/tenants/{tenant_id}/keys"),
            &[
                ("name", "production"),
                ("expires_at", "2030-01-01T00:00"),
                ("scopes", "GET /v1"),
                ("allowed_cidrs", ""),
            ],
        )
        .await;
    assert_page(&r, StatusCode::CREATED, "it will never be shown again");
    let key = shown_once(&r, "shown-once");
    assert!(key.starts_with("tg_"), "{key}");
    assert!(
        !browser.get(&location).await.text().contains(&key),
        "shown once"
    );
    let keys = admin(
        &app,
        Method::GET,
        &format!("/v1/tenants/{tenant_id}/keys"),
        None,
    )
    .await;
    let issued = &keys.body["items"][0];
    assert_eq!(issued["expires_at"], "2030-01-01T00:00:00Z");
    assert_eq!(
        issued["scopes"],
        json!([{"methods": ["GET"], "path_prefix": "/v1"}])
    );
    let key_id = issued["id"].as_str().unwrap().to_owned();

    // A bad key form writes nothing and says which field.
    let before = row_counts(&state, &TABLES).await;
    let r = browser
        .post(
            &format!("/dashboard/tenants/{tenant_id}/keys"),
            &[
                ("name", "x"),
                ("expires_at", "2001-01-01T00:00"),
                ("scopes", ""),
                ("allowed_cidrs", ""),
            ],
        )
        .await;
    assert_page(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_expiry");
    let r = browser
        .post(
            &format!("/dashboard/tenants/{tenant_id}/keys"),
            &[
                ("name", "x"),
                ("expires_at", ""),
                ("scopes", ""),
                ("allowed_cidrs", "10.0.0.0/99"),
            ],
        )
        .await;
    assert_page(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_key");
    assert_eq!(row_counts(&state, &TABLES).await, before, "nothing written");

    // Deactivating in the page is what the Envoys are told.
    let version = version(&state).await;
    let r = browser
        .post(
            &format!("/dashboard/keys/{key_id}/active"),
            &[("active", "false")],
        )
        .await;
    assert_redirect(&r, &format!("/dashboard/keys/{key_id}"));
    let feed = sync(&app, version).await;
    assert!(
        feed.keys.iter().any(|k| k.id == key_id && !k.active),
        "{feed:?}"
    );
    let page = browser.get(&format!("/dashboard/keys/{key_id}")).await;
    assert_page(&page, StatusCode::OK, "badge deactivated");
    let filtered = browser
        .get(&format!(
            "/dashboard/tenants/{tenant_id}?status=deactivated"
        ))
        .await;
    assert_page(&filtered, StatusCode::OK, "production");
    let filtered = browser
        .get(&format!("/dashboard/tenants/{tenant_id}?status=active"))
        .await;
    assert_page(&filtered, StatusCode::OK, "No key is in this state");
    let entry = last_audit(&app, "key.update").await;
    assert!(entry["actor"]
        .as_str()
        .unwrap()
        .contains("via dashboard session"));

    // Rotating shows the successor's plaintext once; the old key is rotating.
    let r = browser
        .post(
            &format!("/dashboard/keys/{key_id}/rotate"),
            &[("grace_seconds", "3600")],
        )
        .await;
    assert_page(&r, StatusCode::CREATED, "it will never be shown again");
    let page = browser.get(&format!("/dashboard/keys/{key_id}")).await;
    assert_page(&page, StatusCode::OK, "Rotating until");
    let r = browser
        .post(
            &format!("/dashboard/keys/{key_id}/rotate"),
            &[("grace_seconds", "5")],
        )
        .await;
    assert_page(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_form");

    // The quota bar follows what the Envoys report.
    let counts = json!({"key_id": key_id, "allowed": 7, "cost": 7, "denied": {"rate_limited": 2}});
    report(&app, "u-1", counts).await;
    let page = browser.get(&format!("/dashboard/keys/{key_id}")).await;
    assert_page(&page, StatusCode::OK, "<span id=\"quota-used\">7</span>");
    assert!(page.text().contains("<svg class=\"chart\""), "the chart");
    assert!(
        page.text().contains(": 2 rate_limited</title>"),
        "refusals stacked by reason"
    );
    assert!(
        page.text().contains("rate_limited 2"),
        "the table of the chart"
    );

    // Deleting the tenant wants its name typed.
    let r = browser
        .post(
            &format!("/dashboard/tenants/{tenant_id}/delete"),
            &[("confirm_name", "acm")],
        )
        .await;
    assert_page(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "confirmation_mismatch",
    );
    assert_eq!(
        admin(&app, Method::GET, &format!("/v1/tenants/{tenant_id}"), None)
            .await
            .status,
        StatusCode::OK
    );
    let r = browser
        .post(
            &format!("/dashboard/tenants/{tenant_id}/delete"),
            &[("confirm_name", "acme")],
        )
        .await;
    assert_redirect(&r, "/dashboard/tenants");
    assert_eq!(
        admin(&app, Method::GET, &format!("/v1/tenants/{tenant_id}"), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

async fn a_tenant_sees_only_its_own_and_no_admin_actions(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let plan_id = plan(&app, None).await;
    let own = tenant(&app, &plan_id).await;
    let other = tenant(&app, &plan_id).await;
    let (own_key, _) = key(&app, &own).await;
    let (other_key, _) = key(&app, &other).await;
    let token = tenant_token(&app, &own).await;
    let browser = Browser::signed_in(&app, &token).await;

    let page = browser.get(&format!("/dashboard/tenants/{own}")).await;
    assert_page(&page, StatusCode::OK, "Issue a key");
    assert!(!page.text().contains("Delete tenant"), "no admin action");
    assert!(!page.text().contains("name=\"plan_id\""), "no plan change");
    assert_page(
        &browser.get(&format!("/dashboard/keys/{own_key}")).await,
        StatusCode::OK,
        "Deactivate",
    );
    let overview = browser.get("/dashboard").await;
    assert_page(&overview, StatusCode::OK, "your plan");
    assert!(
        !overview.text().contains("/dashboard/plans\""),
        "no plans link"
    );

    for page in [
        format!("/dashboard/tenants/{other}"),
        format!("/dashboard/keys/{other_key}"),
    ] {
        assert_page(
            &browser.get(&page).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    for page in [
        "/dashboard/plans",
        "/dashboard/tenants",
        "/dashboard/plans/new",
        "/dashboard/anonymous",
    ] {
        assert_page(&browser.get(page).await, StatusCode::FORBIDDEN, "forbidden");
    }

    // Forged admin forms are refused and change nothing.
    let before = row_counts(&state, &TABLES).await;
    let forged: [(String, Vec<(&str, &str)>); 6] = [
        ("/dashboard/plans".into(), vec![("name", "Free")]),
        (
            "/dashboard/tenants".into(),
            vec![("name", "x"), ("plan_id", &plan_id)],
        ),
        (format!("/dashboard/tenants/{own}/delete"), vec![]),
        (format!("/dashboard/plans/{plan_id}/delete"), vec![]),
        (
            format!("/dashboard/tenants/{other}/keys"),
            vec![("name", "x")],
        ),
        (
            format!("/dashboard/keys/{other_key}/active"),
            vec![("active", "false")],
        ),
    ];
    for (uri, form) in forged {
        let r = browser.post(&uri, &form).await;
        assert!(
            r.status == StatusCode::FORBIDDEN || r.status == StatusCode::NOT_FOUND,
            "{uri}: {}",
            r.status
        );
    }
    let r = browser
        .post(
            &format!("/dashboard/tenants/{own}"),
            &[("name", "renamed"), ("plan_id", "plan_x")],
        )
        .await;
    assert_page(&r, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(row_counts(&state, &TABLES).await, before, "nothing written");

    // What it may do, it does, as itself through the dashboard.
    let r = browser
        .post(
            &format!("/dashboard/tenants/{own}/keys"),
            &[("name", "mine")],
        )
        .await;
    assert_page(&r, StatusCode::CREATED, "never be shown again");
    let entry = last_audit(&app, "key.create").await;
    let actor = entry["actor"].as_str().unwrap();
    assert!(
        actor.starts_with(&format!("tenant:{own} via dashboard session ses_")),
        "{actor}"
    );
}

async fn the_tier_comparison_is_public_and_lists_public_plans_only(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let anonymous = Browser::new(&app);
    assert_page(
        &anonymous.get("/pricing").await,
        StatusCode::OK,
        "No public plans yet",
    );
    create(
        &app,
        "/v1/plans",
        json!({"name": "Starter", "limits": [], "monthly_quota": 1000, "public": true, "metadata": {"price": "$0"}}),
    )
    .await;
    create(
        &app,
        "/v1/plans",
        json!({"name": "Secret", "limits": [], "public": false}),
    )
    .await;
    let page = anonymous.get("/pricing").await;
    assert_page(&page, StatusCode::OK, "Starter");
    assert!(page.text().contains("$0"));
    assert!(!page.text().contains("Secret"));
    // Signed out, the signed-in comparison is behind sign-in.
    assert_redirect(
        &anonymous.get("/dashboard/pricing").await,
        "/dashboard/login",
    );
}

async fn forms_in_other_encodings_get_a_clear_error_page(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let browser = Browser::signed_in(&app, ADMIN).await;
    let before = row_counts(&state, &TABLES).await;
    let req = browser
        .request(Method::POST, "/dashboard/plans")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let r = respond(&app, req).await;
    assert_page(
        &r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    for nowhere in ["/dashboard/nope", "/dashboard/plans/plan_x/nope"] {
        let r = browser.get(nowhere).await;
        assert_page(
            &r,
            StatusCode::NOT_FOUND,
            "There is no such page in the dashboard.",
        );
        assert!(r.headers.contains_key(header::CONTENT_SECURITY_POLICY));
    }
    assert_eq!(row_counts(&state, &TABLES).await, before);
}

async fn tenant_tokens_are_issued_once_and_revoked_through_the_forms(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let browser = Browser::signed_in(&app, ADMIN).await;
    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let uri = format!("/dashboard/tenants/{tenant_id}/tokens");
    assert_page(&browser.get(&uri).await, StatusCode::OK, "No tokens yet");
    let tenant_page = browser
        .get(&format!("/dashboard/tenants/{tenant_id}"))
        .await;
    assert!(tenant_page.text().contains(&uri), "linked from the tenant");

    let before = row_counts(&state, &TABLES).await;
    let long = "n".repeat(201);
    for name in [" ", long.as_str()] {
        let r = browser.post(&uri, &[("name", name)]).await;
        assert_refused(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_name");
    }
    assert_eq!(row_counts(&state, &TABLES).await, before, "nothing written");

    let r = browser.post(&uri, &[("name", "billing portal")]).await;
    assert_page(&r, StatusCode::CREATED, "it will never be shown again");
    let token = shown_once(&r, "shown-once");
    assert!(token.starts_with("tgt_"), "{token}");
    assert_audited_from_dashboard(&app, "token.create", "admin").await;
    let list = browser.get(&uri).await;
    assert_page(&list, StatusCode::OK, "billing portal");
    assert!(!list.text().contains(&token), "shown once");
    let tokens = admin(
        &app,
        Method::GET,
        &format!("/v1/tenants/{tenant_id}/tokens"),
        None,
    )
    .await;
    let token_id = tokens.body["items"][0]["id"].as_str().unwrap().to_owned();
    let revoke = format!("{uri}/{token_id}/revoke");

    // The token signs its tenant in, and the tenant reaches none of this.
    let tenant_browser = Browser::signed_in(&app, &token).await;
    let own_page = tenant_browser
        .get(&format!("/dashboard/tenants/{tenant_id}"))
        .await;
    assert!(
        !own_page.text().contains(&uri),
        "no tokens link for a tenant"
    );
    assert_page(
        &tenant_browser.get(&uri).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let before = row_counts(&state, &TABLES).await;
    for (target, form) in [(&uri, vec![("name", "mine")]), (&revoke, vec![])] {
        let r = tenant_browser.post(target, &form).await;
        assert_page(&r, StatusCode::FORBIDDEN, "forbidden");
    }
    assert_eq!(row_counts(&state, &TABLES).await, before, "nothing written");

    // Revoking ends the token and the sessions signed in with it.
    assert_redirect(&browser.post(&revoke, &[]).await, &uri);
    assert_audited_from_dashboard(&app, "token.revoke", "admin").await;
    let list = browser.get(&uri).await;
    assert_page(&list, StatusCode::OK, "Revoked");
    assert!(!list.text().contains(&revoke), "no revoke button any more");
    assert_redirect(&tenant_browser.get("/dashboard").await, "/dashboard/login");
    assert_page(
        &browser.post(&revoke, &[]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_page(
        &browser.get("/dashboard/tenants/ten_nope/tokens").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

/// A webhook receiver on 127.0.0.1 that answers every alert 500.
async fn failing_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = || async { StatusCode::INTERNAL_SERVER_ERROR };
    let receiver = Router::new().route("/hook", axum::routing::post(answer));
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    format!("http://{addr}/hook")
}

async fn the_webhook_is_set_rotated_removed_and_its_deliveries_shown(backend: Backend) {
    // Its receiver listens on 127.0.0.1.
    let (app, state) = allowing_private_webhook_targets(test_state(backend).await);
    let browser = Browser::signed_in(&app, ADMIN).await;
    let metered = json!({"name": "Metered", "limits": [], "monthly_quota": 10});
    let plan_id = create(&app, "/v1/plans", metered).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tenant_id = tenant(&app, &plan_id).await;
    let (key_id, _) = key(&app, &tenant_id).await;
    let uri = format!("/dashboard/tenants/{tenant_id}/webhook");
    assert_page(&browser.get(&uri).await, StatusCode::OK, "No webhook");

    let before = row_counts(&state, &TABLES).await;
    for bad in [
        "ftp://example.com/hook",
        "not a url",
        "https://user:pw@example.com/",
    ] {
        let r = browser.post(&uri, &[("url", bad)]).await;
        assert_refused(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_webhook_url");
    }
    let r = browser.post(&uri, &[("url", "not a url")]).await;
    assert!(r.text().contains("value=\"not a url\""), "as typed");
    assert_eq!(row_counts(&state, &TABLES).await, before, "nothing written");

    // Created: the signing secret is in this answer only.
    let url = failing_receiver().await;
    let r = browser.post(&uri, &[("url", &url)]).await;
    assert_page(&r, StatusCode::OK, "it will never be shown again");
    let secret = shown_once(&r, "shown-once");
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(
        crate::common::stored_secret(&state, &tenant_id).await,
        secret
    );
    assert_audited_from_dashboard(&app, "webhook.create", "admin").await;
    let page = browser.get(&uri).await;
    assert_page(&page, StatusCode::OK, &url);
    assert!(!page.text().contains(&secret), "shown once");

    // A new URL keeps the secret; rotating issues another, shown once.
    let moved = format!("{url}/v2");
    assert_redirect(&browser.post(&uri, &[("url", &moved)]).await, &uri);
    assert_audited_from_dashboard(&app, "webhook.update", "admin").await;
    assert_eq!(
        crate::common::stored_secret(&state, &tenant_id).await,
        secret
    );
    let r = browser
        .post(&uri, &[("url", &url), ("rotate_secret", "on")])
        .await;
    let rotated = shown_once(&r, "shown-once");
    assert_ne!(rotated, secret);
    assert_eq!(
        crate::common::stored_secret(&state, &tenant_id).await,
        rotated
    );

    // An alert, and every attempt to deliver it: the receiver answers 500.
    report(
        &app,
        "u-1",
        json!({"key_id": key_id, "allowed": 8, "cost": 8}),
    )
    .await;
    assert_page(&browser.get(&uri).await, StatusCode::OK, "not tried yet");
    let client =
        tollgate_control_plane::webhooks::client(tollgate_control_plane::egress::Targets::Any)
            .unwrap();
    let sent = tollgate_control_plane::webhooks::deliver_due(&state, &client)
        .await
        .unwrap();
    assert_eq!(sent, 1);
    let page = browser.get(&uri).await;
    assert_page(&page, StatusCode::OK, "80% of quota");
    for shown in ["<strong>500</strong>", "pending", "1 attempts", &key_id] {
        assert!(page.text().contains(shown), "{shown} in {}", page.text());
    }
    let delivered = browser.get(&format!("{uri}?status=delivered")).await;
    assert_page(&delivered, StatusCode::OK, "No alert is in this state");
    let bad = browser.get(&format!("{uri}?status=lost")).await;
    assert_page(&bad, StatusCode::BAD_REQUEST, "invalid_query");

    // The tenant reads its own, without the forms, and cannot forge them.
    let token = tenant_token(&app, &tenant_id).await;
    let tenant_browser = Browser::signed_in(&app, &token).await;
    let page = tenant_browser.get(&uri).await;
    assert_page(&page, StatusCode::OK, "<strong>500</strong>");
    assert!(!page.text().contains("name=\"url\""), "no URL form");
    assert!(!page.text().contains("Remove webhook"), "no removal");
    let other = tenant(&app, &plan_id).await;
    let before = row_counts(&state, &TABLES).await;
    let r = tenant_browser
        .post(&uri, &[("url", "https://evil.example/")])
        .await;
    assert_page(&r, StatusCode::FORBIDDEN, "forbidden");
    let r = tenant_browser.post(&format!("{uri}/delete"), &[]).await;
    assert_page(&r, StatusCode::FORBIDDEN, "forbidden");
    let r = tenant_browser
        .get(&format!("/dashboard/tenants/{other}/webhook"))
        .await;
    assert_page(&r, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(row_counts(&state, &TABLES).await, before, "nothing written");

    assert_redirect(&browser.post(&format!("{uri}/delete"), &[]).await, &uri);
    assert_audited_from_dashboard(&app, "webhook.delete", "admin").await;
    assert_page(&browser.get(&uri).await, StatusCode::OK, "No webhook");
    let r = browser.post(&format!("{uri}/delete"), &[]).await;
    assert_page(&r, StatusCode::NOT_FOUND, "not_found");
}

async fn anonymous_access_is_shown_and_replaced_through_the_form(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let browser = Browser::signed_in(&app, ADMIN).await;
    let plan_id = plan(&app, None).await;
    let uri = "/dashboard/anonymous";
    assert_page(
        &browser.get(uri).await,
        StatusCode::OK,
        "Off: every request needs a key",
    );

    let before = (row_counts(&state, &TABLES).await, version(&state).await);
    let too_many = (0..33)
        .map(|i| format!("GET /v1/r{i}"))
        .collect::<Vec<_>>()
        .join("\n");
    for (routes, plan, code) in [
        ("GET /v1/public", "", "invalid_anonymous_access"),
        ("GET /v1/public", "plan_nope", "plan_not_found"),
        (
            too_many.as_str(),
            plan_id.as_str(),
            "invalid_anonymous_access",
        ),
    ] {
        let r = browser
            .post(uri, &[("routes", routes), ("plan_id", plan)])
            .await;
        assert_refused(&r, StatusCode::UNPROCESSABLE_ENTITY, code);
        assert!(r.text().contains("GET /v1/"), "{code}: the routes as typed");
    }
    let after = (row_counts(&state, &TABLES).await, version(&state).await);
    assert_eq!(after, before, "nothing written, nothing published");

    let routes = "GET,head /v1/public\n/v1/docs";
    let r = browser
        .post(uri, &[("routes", routes), ("plan_id", &plan_id)])
        .await;
    assert_redirect(&r, uri);
    assert_audited_from_dashboard(&app, "anonymous_access.update", "admin").await;
    assert!(version(&state).await > before.1, "published to the Envoys");
    let set = admin(&app, Method::GET, "/v1/anonymous-access", None).await;
    assert_eq!(
        set.body["routes"],
        json!([{"methods": ["GET", "HEAD"], "path_prefix": "/v1/public"}, {"path_prefix": "/v1/docs"}])
    );
    assert_eq!(set.body["plan_id"], plan_id.as_str());
    let page = browser.get(uri).await;
    assert_page(&page, StatusCode::OK, "GET, HEAD");
    assert!(page
        .text()
        .contains("GET,HEAD /v1/public\n/v1/docs</textarea>"));

    // Admin only, as in the API.
    let token = tenant_token(&app, &tenant(&app, &plan_id).await).await;
    let tenant_browser = Browser::signed_in(&app, &token).await;
    assert!(
        !tenant_browser.get("/dashboard").await.text().contains(uri),
        "no link"
    );
    let before = row_counts(&state, &TABLES).await;
    assert_page(
        &tenant_browser.get(uri).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let r = tenant_browser
        .post(uri, &[("routes", ""), ("plan_id", "")])
        .await;
    assert_page(&r, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(row_counts(&state, &TABLES).await, before, "nothing written");

    let r = browser.post(uri, &[("routes", ""), ("plan_id", "")]).await;
    assert_redirect(&r, uri);
    assert_page(
        &browser.get(uri).await,
        StatusCode::OK,
        "Off: every request needs a key",
    );
}

async fn the_audit_log_is_filtered_and_paged_with_before_and_after(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let plan_id = plan(&app, None).await;
    let own = tenant(&app, &plan_id).await;
    let other = tenant(&app, &plan_id).await;
    let (key_id, _) = key(&app, &own).await;
    let rename = json!({"name": "renamed-tenant"});
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/tenants/{own}"),
        Some(rename),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let browser = Browser::signed_in(&app, ADMIN).await;

    let page = browser.get("/dashboard/audit").await;
    assert_page(&page, StatusCode::OK, "<code>plan.create</code>");
    let text = page.text();
    let at = |action: &str| text.find(&format!("<code>{action}</code>")).unwrap();
    assert!(at("session.sign_in") < at("tenant.update"), "newest first");
    assert!(at("tenant.update") < at("key.create"));
    assert!(at("key.create") < at("plan.create"));
    assert!(text.contains("<details>"), "before and after");
    assert!(text.contains("<pre>{\n  "), "as indented JSON");
    assert!(text.contains("renamed-tenant"));

    // Filters: the API's own, sent as a GET form.
    let filtered = browser
        .get("/dashboard/audit?action=tenant.create&actor=")
        .await;
    assert_page(&filtered, StatusCode::OK, &other);
    assert!(!filtered.text().contains("<code>plan.create</code>"));
    let uri = format!("/dashboard/audit?resource_type=key&resource_id={key_id}");
    let by_key = browser.get(&uri).await;
    assert_page(&by_key, StatusCode::OK, "<code>key.create</code>");
    assert!(!by_key.text().contains("<code>tenant.create</code>"));
    assert!(
        by_key.text().contains("<option value=\"key\" selected>"),
        "kept"
    );
    let later = browser.get("/dashboard/audit?since=2099-01-01T00:00").await;
    assert_page(&later, StatusCode::OK, "No entry matches these filters");
    let r = browser.get("/dashboard/audit?since=yesterday").await;
    assert_refused(&r, StatusCode::BAD_REQUEST, "invalid_query");

    // Paging with the API's cursor, the filters kept.
    let first = browser.get("/dashboard/audit?limit=2").await;
    assert_eq!(first.text().matches("<th scope=\"row\">").count(), 2);
    let next = next_link(&first).expect("a link to older entries");
    assert!(next.contains("limit=2") && next.contains(".aud_"), "{next}");
    let second = browser.get(&next).await;
    assert_page(&second, StatusCode::OK, "<code>key.create</code>");
    assert!(!second.text().contains("<code>session.sign_in</code>"));
    assert!(second.text().contains("Newest entries"));

    // A tenant sees its own tenant's trail, and cannot ask for another's.
    let token = tenant_token(&app, &own).await;
    let tenant_browser = Browser::signed_in(&app, &token).await;
    let page = tenant_browser.get("/dashboard/audit").await;
    assert_page(&page, StatusCode::OK, "<code>key.create</code>");
    assert!(!page.text().contains(&other), "not another tenant's");
    assert!(!page.text().contains("<code>plan.create</code>"));
    assert!(
        !page.text().contains("name=\"tenant_id\""),
        "no tenant filter"
    );
    let r = tenant_browser
        .get(&format!("/dashboard/audit?tenant_id={other}"))
        .await;
    assert_page(&r, StatusCode::NOT_FOUND, "not_found");
}

async fn the_proxies_page_shows_the_fleet_and_how_far_a_change_reached(backend: Backend) {
    let (app, _state) = test_app(backend).await;
    let browser = Browser::signed_in(&app, ADMIN).await;
    let page = browser.get("/dashboard/proxies").await;
    assert_page(&page, StatusCode::OK, "No proxy has polled yet");
    assert_page(&page, StatusCode::OK, "applied on <strong>0 of 0</strong>");

    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let (key_id, _) = key(&app, &tenant_id).await;
    let current = version(&_state).await;
    poll(&app, "inst-a", "edge-a", Some(current)).await;
    poll(&app, "inst-b", "edge-b", Some(current - 1)).await;
    let page = browser.get("/dashboard/proxies").await;
    assert_page(&page, StatusCode::OK, "edge-a");
    assert!(page.text().contains("badge proxy-live"), "{}", page.text());
    assert!(page.text().contains("1 behind"), "edge-b lags one version");
    assert!(
        page.text().contains("applied on <strong>1 of 2</strong>"),
        "{}",
        page.text()
    );
    assert!(page.text().contains("not yet on edge-b (live)"));

    // After a change in the dashboard, the key's page says where it stands.
    let r = browser
        .post(
            &format!("/dashboard/keys/{key_id}/active"),
            &[("active", "false")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let after = version(&_state).await;
    let page = browser.get(&format!("/dashboard/keys/{key_id}")).await;
    assert_page(
        &page,
        StatusCode::OK,
        &format!("Config v{after} is applied on <strong>0 of 2</strong>"),
    );
    poll(&app, "inst-a", "edge-a", Some(after)).await;
    poll(&app, "inst-b", "edge-b", Some(after)).await;
    let page = browser.get(&format!("/dashboard/keys/{key_id}")).await;
    assert_page(&page, StatusCode::OK, "applied on <strong>2 of 2</strong>");

    // The fleet is the admin's: a tenant sees neither the page nor the line.
    let token = tenant_token(&app, &tenant_id).await;
    let tenant_browser = Browser::signed_in(&app, &token).await;
    assert_page(
        &tenant_browser.get("/dashboard/proxies").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let own = tenant_browser
        .get(&format!("/dashboard/keys/{key_id}"))
        .await;
    assert_page(&own, StatusCode::OK, "Settings");
    assert!(!own.text().contains("id=\"reach\""));
}

on_both_databases!(
    the_proxies_page_shows_the_fleet_and_how_far_a_change_reached,
    signing_in_trades_the_token_for_a_session_cookie,
    every_page_is_sent_with_the_security_headers,
    a_session_ends_at_expiry_at_sign_out_and_with_its_token,
    cross_site_forms_are_refused_and_change_nothing,
    plans_are_created_edited_and_deleted_through_the_forms,
    tenants_and_keys_are_managed_through_the_forms,
    a_tenant_sees_only_its_own_and_no_admin_actions,
    the_tier_comparison_is_public_and_lists_public_plans_only,
    forms_in_other_encodings_get_a_clear_error_page,
    tenant_tokens_are_issued_once_and_revoked_through_the_forms,
    the_webhook_is_set_rotated_removed_and_its_deliveries_shown,
    anonymous_access_is_shown_and_replaced_through_the_form,
    the_audit_log_is_filtered_and_paged_with_before_and_after,
);
