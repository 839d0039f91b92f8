//! Leak reports (`POST /v1/leaked-keys`): a live key reported is
//! deactivated as `PATCH` would, audited without its plaintext and
//! published under a new config version; inactive, deleted, unknown and
//! malformed tokens are labelled without writing anything; the leak-report
//! token opens this endpoint and nothing else; bad bodies write nothing.

use axum::http::{Method, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tollgate_core::key::{ApiKey, KeyHash};

use crate::common::{
    admin, assert_problem, key, last_audit, plan, request, respond, row_counts, send, sync, tenant,
    tenant_token, test_app, test_state, version, Backend, Reply, ADMIN, LEAK_REPORTER, SYNC,
};

const URI: &str = "/v1/leaked-keys";
const FOUND_AT: &str =
    "https://github.com/octocat/Hello-World/blob/12345600b9cbe38a219f39a9941c9319b600c002/foo/bar.txt";

/// What a report must leave alone when it is refused or finds nothing live.
const TABLES: [&str; 2] = ["audit_log", "api_keys"];

/// One report of `tokens` as GitHub sends it, with `token`.
async fn report(app: &Router, token: Option<&str>, tokens: &[&str]) -> Reply {
    let body: Vec<Value> = tokens
        .iter()
        .map(|t| json!({"token": t, "type": "tollgate_api_key", "url": FOUND_AT, "source": "content"}))
        .collect();
    let body = Value::Array(body).to_string();
    send(app, Method::POST, URI, token, Some(&body)).await
}

/// The labels of a 200 answer, in order, after checking each names its
/// token by SHA-256 and never by plaintext.
fn labels(reply: &Reply, tokens: &[&str]) -> Vec<String> {
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.content_type(), "application/json");
    let verdicts = reply.body.as_array().unwrap();
    assert_eq!(verdicts.len(), tokens.len(), "{:?}", reply.body);
    for (verdict, token) in verdicts.iter().zip(tokens) {
        let mut fields: Vec<&str> = verdict
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(fields, ["label", "token_hash", "token_type"], "{verdict}");
        assert_eq!(
            verdict["token_hash"],
            KeyHash::of(token.as_bytes()).to_hex(),
            "{verdict}"
        );
        assert_eq!(verdict["token_type"], "tollgate_api_key");
        if !token.is_empty() {
            assert!(!reply.text().contains(token), "{}", reply.text());
        }
    }
    verdicts
        .iter()
        .map(|v| v["label"].as_str().unwrap().to_owned())
        .collect()
}

/// Whether key `id` is active, as the admin reads it.
async fn active(app: &Router, id: &str) -> bool {
    let r = admin(app, Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body["active"].as_bool().unwrap()
}

/// The whole audit log, as text.
async fn audit_text(app: &Router) -> String {
    let r = admin(app, Method::GET, "/v1/audit?limit=200", None).await;
    assert_eq!(r.status, StatusCode::OK);
    r.text()
}

/// A well-formed key that was never issued.
fn unknown_key() -> String {
    ApiKey::from_body("Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp")
        .unwrap()
        .expose()
        .to_owned()
}

async fn a_live_key_reported_is_deactivated_audited_and_published(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let (id, plaintext) = key(&app, &t).await;
    let (bystander, _) = key(&app, &t).await;
    let before = version(&state).await;

    // The report repeats the token in its url: the audit log keeps neither.
    let body = json!([{
        "token": plaintext,
        "type": "tollgate_api_key",
        "url": format!("https://paste.example.com/raw?text={plaintext}"),
        "source": "content",
    }])
    .to_string();
    let r = send(&app, Method::POST, URI, Some(LEAK_REPORTER), Some(&body)).await;
    assert_eq!(labels(&r, &[plaintext.as_str()]), ["true_positive"]);

    // Deactivated, and only it, as PATCH would: one new config version,
    // which the Envoys' feed carries.
    assert!(!active(&app, &id).await);
    assert!(active(&app, &bystander).await);
    assert_eq!(version(&state).await, before + 1);
    let feed = sync(&app, before).await;
    let hash = KeyHash::of(plaintext.as_bytes()).to_hex();
    let pushed: Vec<_> = feed.keys.iter().filter(|k| k.hash == hash).collect();
    assert_eq!(pushed.len(), 1, "{:?}", feed.keys);
    assert!(!pushed[0].active);
    assert_eq!(feed.keys.len(), 1, "only the reported key changed");

    // Audited as a leak report, by the scanner, with where it was found.
    let entry = last_audit(&app, "key.leak_report").await;
    assert_eq!(entry["actor"], "leak_reporter");
    assert_eq!(entry["resource_type"], "key");
    assert_eq!(entry["resource_id"], id.as_str());
    assert_eq!(entry["tenant_id"], t.as_str());
    assert_eq!(entry["before"]["active"], true);
    assert_eq!(entry["after"]["active"], false);
    assert_eq!(
        entry["after"]["leak_report"],
        json!({
            "type": "tollgate_api_key",
            "url": "https://paste.example.com/raw?text=[redacted]",
            "source": "content",
        })
    );
    let audit = audit_text(&app).await;
    assert!(!audit.contains(&plaintext), "{audit}");
    assert!(!audit.contains(&hash), "{audit}");

    // The same report again: the same answer, nothing written.
    let counts = row_counts(&state, &TABLES).await;
    let r = report(&app, Some(LEAK_REPORTER), &[plaintext.as_str()]).await;
    assert_eq!(labels(&r, &[plaintext.as_str()]), ["true_positive"]);
    assert_eq!(version(&state).await, before + 1);
    assert_eq!(row_counts(&state, &TABLES).await, counts);
    assert!(!active(&app, &id).await);

    // The admin token reports too, under its own name.
    let (other, other_plaintext) = key(&app, &t).await;
    let r = report(&app, Some(ADMIN), &[other_plaintext.as_str()]).await;
    assert_eq!(labels(&r, &[other_plaintext.as_str()]), ["true_positive"]);
    assert!(!active(&app, &other).await);
    let entry = last_audit(&app, "key.leak_report").await;
    assert_eq!(entry["actor"], "admin");
    assert_eq!(entry["resource_id"], other.as_str());
    assert_eq!(entry["after"]["leak_report"]["url"], FOUND_AT);
}

async fn inactive_deleted_unknown_and_malformed_tokens_are_labelled_in_order(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let (inactive, inactive_key) = key(&app, &t).await;
    let (deleted, deleted_key) = key(&app, &t).await;
    let (live, live_key) = key(&app, &t).await;
    let off = json!({"active": false});
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{inactive}"),
        Some(off),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = admin(&app, Method::DELETE, &format!("/v1/keys/{deleted}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let unknown = unknown_key();
    // One character changed: the checksum no longer matches.
    let mut typo = live_key.clone();
    typo.replace_range(5..6, if &typo[5..6] == "a" { "b" } else { "a" });
    let tokens = [
        inactive_key.as_str(),
        "tg_short",
        live_key.as_str(),
        unknown.as_str(),
        typo.as_str(),
        deleted_key.as_str(),
        "ghp_notoursatall0123456789abcdefghijkl",
        "",
        live_key.as_str(),
    ];

    let before = version(&state).await;
    let r = report(&app, Some(LEAK_REPORTER), &tokens).await;
    assert_eq!(
        labels(&r, &tokens),
        [
            "true_positive",
            "false_positive",
            "true_positive",
            "false_positive",
            "false_positive",
            "true_positive",
            "false_positive",
            "false_positive",
            "true_positive",
        ]
    );
    // Only the live key was written: once, though reported twice.
    assert!(!active(&app, &live).await);
    assert!(!active(&app, &inactive).await);
    assert_eq!(version(&state).await, before + 1);
    let r = admin(&app, Method::GET, "/v1/audit?action=key.leak_report", None).await;
    let entries = r.body["items"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{:?}", r.body);
    assert_eq!(entries[0]["resource_id"], live.as_str());
    let r = admin(&app, Method::GET, &format!("/v1/keys/{deleted}"), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");

    // Nothing live among them: no version, no entry, no write.
    let counts = row_counts(&state, &TABLES).await;
    let quiet = [inactive_key.as_str(), unknown.as_str(), "tg_short"];
    let r = report(&app, Some(ADMIN), &quiet).await;
    assert_eq!(
        labels(&r, &quiet),
        ["true_positive", "false_positive", "false_positive"]
    );
    assert_eq!(version(&state).await, before + 1);
    assert_eq!(row_counts(&state, &TABLES).await, counts);

    // An empty report is answered with an empty list.
    let r = send(&app, Method::POST, URI, Some(LEAK_REPORTER), Some("[]")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!([]));
    let audit = audit_text(&app).await;
    for plaintext in [&inactive_key, &deleted_key, &live_key] {
        assert!(!audit.contains(plaintext.as_str()), "{audit}");
    }
}

async fn the_leak_report_token_opens_this_endpoint_and_nothing_else(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let (id, plaintext) = key(&app, &t).await;
    let tenant_only = tenant_token(&app, &t).await;
    let counts = row_counts(&state, &TABLES).await;
    let before = version(&state).await;

    // Refused before the body is read: no token, a wrong one, the Envoys'
    // one, a tenant's (its own key included).
    for (token, status, code) in [
        (None, StatusCode::UNAUTHORIZED, "unauthorized"),
        (
            Some("not-a-token-at-all"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (Some(SYNC), StatusCode::UNAUTHORIZED, "unauthorized"),
        (
            Some(tenant_only.as_str()),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
    ] {
        let r = report(&app, token, &[plaintext.as_str()]).await;
        assert_problem(&r, status, code);
        let r = send(&app, Method::POST, URI, token, Some("not json")).await;
        assert_problem(&r, status, code);
    }
    assert!(active(&app, &id).await);
    assert_eq!(row_counts(&state, &TABLES).await, counts);
    assert_eq!(version(&state).await, before);

    // Everywhere else, the leak-report token is no token at all.
    let key_uri = format!("/v1/keys/{id}");
    for (method, uri, body) in [
        (Method::GET, "/v1/plans", None),
        (Method::GET, key_uri.as_str(), None),
        (
            Method::PATCH,
            key_uri.as_str(),
            Some(r#"{"active": false}"#),
        ),
        (Method::GET, "/v1/audit", None),
        (Method::GET, "/v1/sync?since=0", None),
    ] {
        let r = send(&app, method.clone(), uri, Some(LEAK_REPORTER), body).await;
        assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    assert!(active(&app, &id).await);

    // A control plane without one configured takes only the admin token.
    let state = test_state(backend).await.with_leak_report_token(None);
    let app = tollgate_control_plane::app(state);
    let r = report(&app, Some(LEAK_REPORTER), &[plaintext.as_str()]).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = report(&app, Some(ADMIN), &[plaintext.as_str()]).await;
    assert_eq!(labels(&r, &[plaintext.as_str()]), ["false_positive"]);
}

async fn bad_bodies_are_refused_and_write_nothing(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let (id, plaintext) = key(&app, &t).await;
    let counts = row_counts(&state, &TABLES).await;
    let before = version(&state).await;
    let one = |item: Value| Value::Array(vec![item]).to_string();
    let many = |n: usize| {
        let item = json!({"token": plaintext, "type": "tollgate_api_key"});
        Value::Array(vec![item; n]).to_string()
    };
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    for (body, status, code) in [
        (
            json!({"token": plaintext, "type": "x"}).to_string(),
            unprocessable,
            "invalid_body",
        ),
        (json!(plaintext).to_string(), unprocessable, "invalid_body"),
        (one(json!({"type": "x"})), unprocessable, "invalid_body"),
        (
            one(json!({"token": plaintext})),
            unprocessable,
            "invalid_body",
        ),
        (
            one(json!({"token": 5, "type": "x"})),
            unprocessable,
            "invalid_body",
        ),
        (
            one(json!({"token": plaintext, "type": "x", "url": 5})),
            unprocessable,
            "invalid_body",
        ),
        (one(json!(plaintext)), unprocessable, "invalid_body"),
        (many(1001), unprocessable, "too_many_items"),
        ("[".to_owned(), StatusCode::BAD_REQUEST, "malformed_json"),
        (
            format!(
                "[{{\"token\": \"{plaintext}\", \"type\": \"x\", \"url\": \"{}\"}}]",
                "a".repeat(1 << 20)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ] {
        let r = send(&app, Method::POST, URI, Some(LEAK_REPORTER), Some(&body)).await;
        assert_problem(&r, status, code);
        assert!(!r.text().contains(&plaintext), "{}", r.text());
    }
    let r = send(&app, Method::POST, URI, Some(LEAK_REPORTER), None).await;
    assert_problem(
        &r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    assert!(active(&app, &id).await);
    assert_eq!(row_counts(&state, &TABLES).await, counts);
    assert_eq!(version(&state).await, before);

    // 1000 items, well past the 64 KiB other bodies may have, are taken;
    // so are fields a scanner may add, and a null url.
    let r = send(
        &app,
        Method::POST,
        URI,
        Some(LEAK_REPORTER),
        Some(&many(1000)),
    )
    .await;
    let tokens = vec![plaintext.as_str(); 1000];
    assert!(labels(&r, &tokens).iter().all(|l| l == "true_positive"));
    assert!(!active(&app, &id).await);
    let (other, other_plaintext) = key(&app, &t).await;
    let body = one(json!({"token": other_plaintext, "type": "x", "url": null, "found_at": 1}));
    let r = send(&app, Method::POST, URI, Some(LEAK_REPORTER), Some(&body)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body[0]["label"], "true_positive");
    assert!(!active(&app, &other).await);
    let entry = last_audit(&app, "key.leak_report").await;
    assert_eq!(
        entry["after"]["leak_report"],
        json!({"type": "x", "url": null, "source": null})
    );
}

/// A report as GitHub's secret scanning sends it: no token, the body signed
/// (ECDSA P-256) with a key the control plane was given. Only a signature
/// over exactly this body, by a configured key, lets it in.
async fn a_report_signed_by_a_configured_key_is_taken_without_a_token(backend: Backend) {
    use base64::Engine;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    use tollgate_control_plane::leak_signatures::{spki_pem, VerificationKeys};

    let rng = SystemRandom::new();
    let new_pair = || {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap()
    };
    let (github, stranger) = (new_pair(), new_pair());
    let published = json!({"public_keys": [{"key_identifier": "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c",
        "key": spki_pem(github.public_key().as_ref()), "is_current": true}]});
    let keys = VerificationKeys::from_document(&published.to_string()).unwrap();
    let key_id = published["public_keys"][0]["key_identifier"]
        .as_str()
        .unwrap();

    let unsigned_state = test_state(backend).await;
    let state = unsigned_state.clone().with_leak_report_keys(Some(keys));
    let (app, unsigned_app) = (
        tollgate_control_plane::app(state.clone()),
        tollgate_control_plane::app(unsigned_state),
    );
    let t = tenant(&app, &plan(&app, None).await).await;
    let (id, plaintext) = key(&app, &t).await;
    let body = json!([{"token": plaintext, "type": "tollgate_api_key", "url": FOUND_AT, "source": "content"}]).to_string();
    let signed = |pair: &EcdsaKeyPair, text: &str| {
        let signature = pair.sign(&rng, text.as_bytes()).unwrap();
        base64::engine::general_purpose::STANDARD.encode(signature.as_ref())
    };
    let post = |id: &str, signature: String, text: &str| {
        let mut req = request(Method::POST, URI, None, Some(text));
        req.headers_mut()
            .insert("Github-Public-Key-Identifier", id.parse().unwrap());
        req.headers_mut()
            .insert("Github-Public-Key-Signature", signature.parse().unwrap());
        req
    };

    let counts = row_counts(&state, &TABLES).await;
    for (what, req) in [
        (
            "another key's signature",
            post(key_id, signed(&stranger, &body), &body),
        ),
        (
            "a signature over another body",
            post(key_id, signed(&github, "[]"), &body),
        ),
        (
            "a key that is not configured",
            post("0123", signed(&github, &body), &body),
        ),
        ("not base64", post(key_id, "%%%".into(), &body)),
    ] {
        let r = respond(&app, req).await;
        assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(
            r.body["detail"].as_str().unwrap().contains("signature") || what.contains("configured"),
            "{what}: {:?}",
            r.body
        );
    }
    // Without keys configured, a signed report is not taken at all.
    let r = respond(&unsigned_app, post(key_id, signed(&github, &body), &body)).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(r.body["detail"]
        .as_str()
        .unwrap()
        .contains("CONTROL_PLANE_LEAK_REPORT_KEYS_FILE"));
    assert_eq!(row_counts(&state, &TABLES).await, counts, "nothing written");
    assert!(active(&app, &id).await);

    let r = respond(&app, post(key_id, signed(&github, &body), &body)).await;
    assert_eq!(labels(&r, &[plaintext.as_str()]), ["true_positive"]);
    assert!(!active(&app, &id).await);
    let entry = last_audit(&app, "key.leak_report").await;
    assert_eq!(entry["actor"], "signed_leak_reporter");
    assert_eq!(entry["resource_id"], id.as_str());
    // The signature opens this endpoint only.
    let mut req = request(Method::GET, "/v1/plans", None, None);
    req.headers_mut()
        .insert("Github-Public-Key-Identifier", key_id.parse().unwrap());
    req.headers_mut().insert(
        "Github-Public-Key-Signature",
        signed(&github, "").parse().unwrap(),
    );
    assert_problem(
        &respond(&app, req).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
}

on_both_databases!(
    a_live_key_reported_is_deactivated_audited_and_published,
    inactive_deleted_unknown_and_malformed_tokens_are_labelled_in_order,
    the_leak_report_token_opens_this_endpoint_and_nothing_else,
    bad_bodies_are_refused_and_write_nothing,
    a_report_signed_by_a_configured_key_is_taken_without_a_token,
);
