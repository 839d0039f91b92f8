//! API keys: issued once in plaintext and stored hashed, listed without
//! secrets, their settings validated, changed and cleared, rotation with a
//! grace period, and each change reaching the sync feed.

use std::time::Duration;

use crate::common::{
    admin, assert_problem, at_ms, key, now_ms, plan, send, sync, tenant, tenant_token, test_app,
    test_app_at, Backend, ADMIN,
};
use axum::http::{Method, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tollgate_control_plane::clock::Clock;
use tollgate_core::key::{ApiKey, KeyHash};

async fn keys_are_shown_once_and_stored_hashed(backend: Backend) {
    let (app, state) = test_app(backend).await;
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let (id, plaintext) = key(&app, &t).await;
    let parsed = ApiKey::parse(&plaintext).expect("issued keys are well-formed");
    let shown = admin(&app, Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.body["prefix"], parsed.display_prefix());
    assert_eq!(shown.body["active"], true);
    let text = shown.body.to_string();
    assert!(!text.contains(&plaintext));
    assert!(!text.contains(&parsed.hash().to_hex()));
    assert!(shown.body.get("key").is_none());
    let stored: String = sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE id = $1")
        .bind(&id)
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert_eq!(stored, KeyHash::of(plaintext.as_bytes()).to_hex());
    let everything: Vec<(String, String, String)> =
        sqlx::query_as("SELECT id, name, prefix FROM api_keys")
            .fetch_all(&state.db)
            .await
            .unwrap();
    assert!(everything.iter().all(|(a, b, c)| !a.contains(&plaintext)
        && !b.contains(&plaintext)
        && !c.contains(&plaintext)));
}

async fn key_lifecycle_reaches_the_sync_feed(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let (id, plaintext) = key(&app, &t).await;
    let hash = KeyHash::of(plaintext.as_bytes()).to_hex();

    let full = sync(&app, 0).await;
    assert_eq!(full.plans.len(), 1);
    assert_eq!(full.keys.len(), 1);
    assert_eq!(full.keys[0].hash, hash);
    assert_eq!(full.keys[0].plan_id, p);
    assert!(full.keys[0].active);
    let v1 = full.version;

    let nothing = sync(&app, v1).await;
    assert_eq!(
        (nothing.version, nothing.keys.len(), nothing.plans.len()),
        (v1, 0, 0)
    );

    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        Some(json!({"active": false})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["active"], false);
    let delta = sync(&app, v1).await;
    assert!(delta.version > v1);
    assert_eq!(delta.keys.len(), 1);
    assert!(!delta.keys[0].active);
    assert!(delta.plans.is_empty());

    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        Some(json!({})),
    )
    .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        Some(json!({"active": "no"})),
    )
    .await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");

    let r = admin(&app, Method::DELETE, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let gone = sync(&app, delta.version).await;
    assert_eq!(gone.deleted_keys, vec![hash]);
    assert!(gone.keys.is_empty());
    assert!(sync(&app, 0).await.keys.is_empty());
    let r = admin(&app, Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = admin(&app, Method::DELETE, &format!("/v1/keys/{id}"), None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        Some(json!({"active": true})),
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
}

async fn keys_list_filters_by_active_and_never_shows_secrets(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let mut plaintexts = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (id, key) = key(&app, &t).await;
        ids.push(id);
        plaintexts.push(key);
    }
    admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{}", ids[0]),
        Some(json!({"active": false})),
    )
    .await;
    admin(&app, Method::DELETE, &format!("/v1/keys/{}", ids[2]), None).await;
    let all = admin(&app, Method::GET, &format!("/v1/tenants/{t}/keys"), None).await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 2);
    let active = admin(
        &app,
        Method::GET,
        &format!("/v1/tenants/{t}/keys?active=true"),
        None,
    )
    .await;
    assert_eq!(active.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(active.body["items"][0]["id"], ids[1].as_str());
    let inactive = admin(
        &app,
        Method::GET,
        &format!("/v1/tenants/{t}/keys?active=false"),
        None,
    )
    .await;
    assert_eq!(inactive.body["items"][0]["id"], ids[0].as_str());
    let text = all.body.to_string();
    for plaintext in &plaintexts {
        assert!(!text.contains(plaintext.as_str()));
        assert!(!text.contains(&KeyHash::of(plaintext.as_bytes()).to_hex()));
    }
    let r = admin(&app, Method::GET, "/v1/tenants/tnt_nope/keys", None).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = admin(
        &app,
        Method::GET,
        &format!("/v1/tenants/{t}/keys?active=maybe"),
        None,
    )
    .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_query");
}

async fn key_settings_are_validated_stored_and_pushed(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let uri = format!("/v1/tenants/{t}/keys");
    let r = admin(
        &app,
        Method::POST,
        &uri,
        Some(json!({
            "name": "scoped",
            "expires_at": "2999-01-31T10:00:00+02:00",
            "scopes": [{"methods": ["get"], "path_prefix": "/read"}],
            "allowed_cidrs": ["10.0.0.0/8", "::1"],
            "limits": [{"name": "per-second", "max": 1, "window_seconds": 1}],
            "monthly_quota": 77
        })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["expires_at"], "2999-01-31T08:00:00Z");
    assert_eq!(r.body["scopes"][0]["path_prefix"], "/read");
    assert_eq!(r.body["allowed_cidrs"][1], "::1");
    assert_eq!(r.body["monthly_quota"], 77);
    let id = r.body["id"].as_str().unwrap();
    let shown = admin(&app, Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(shown.body["limits"][0]["name"], "per-second");

    let pushed = sync(&app, 0).await;
    let k = &pushed.keys[0];
    assert_eq!(k.expires_at_ms, Some(32_474_764_800_000));
    assert_eq!(k.allowed_cidrs.as_ref().unwrap().len(), 2);
    assert_eq!(k.monthly_quota, Some(77));
    assert_eq!(k.limits.as_ref().unwrap()[0].max, 1);

    let before = db_keys(&app, &t).await;
    for (body, code) in [
        (
            json!({"name": "x", "expires_at": "tomorrow"}),
            "invalid_expiry",
        ),
        (
            json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
            "invalid_expiry",
        ),
        (
            json!({"name": "x", "scopes": [{"methods": ["G E T"]}]}),
            "invalid_key",
        ),
        (
            json!({"name": "x", "scopes": [{"path_prefix": "no-slash"}]}),
            "invalid_key",
        ),
        (
            json!({"name": "x", "allowed_cidrs": ["10.0.0.0/40"]}),
            "invalid_key",
        ),
        (
            json!({"name": "x", "allowed_cidrs": ["example.com"]}),
            "invalid_key",
        ),
        (
            json!({"name": "x", "limits": [{"name": "a", "max": 0, "window_seconds": 1}]}),
            "invalid_plan",
        ),
        (json!({"name": "x", "monthly_quota": 0}), "invalid_key"),
        (
            json!({"name": "x", "scopes": [{"verbs": ["GET"]}]}),
            "invalid_body",
        ),
        (json!({"name": "x", "bogus": true}), "invalid_body"),
    ] {
        let r = admin(&app, Method::POST, &uri, Some(body.clone())).await;
        let expected = if code == "invalid_plan" {
            "invalid_key"
        } else {
            code
        };
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, expected);
    }
    assert_eq!(
        db_keys(&app, &t).await,
        before,
        "no rejected key was written"
    );
}

async fn db_keys(app: &Router, tenant: &str) -> usize {
    admin(
        app,
        Method::GET,
        &format!("/v1/tenants/{tenant}/keys"),
        None,
    )
    .await
    .body["items"]
        .as_array()
        .unwrap()
        .len()
}

async fn rotation_issues_a_twin_and_ends_the_old_key_after_the_grace(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let p = plan(&app, Some(1)).await;
    let t = tenant(&app, &p).await;
    let r = admin(
        &app,
        Method::POST,
        &format!("/v1/tenants/{t}/keys"),
        Some(json!({
            "name": "svc", "scopes": [{"methods": ["GET"]}]
        })),
    )
    .await;
    let old_id = r.body["id"].as_str().unwrap().to_owned();
    let old_key = r.body["key"].as_str().unwrap().to_owned();
    let v0 = sync(&app, 0).await.version;

    let started_ms = now_ms();
    // The plan allows one key: rotation is not blocked by that.
    let r = admin(
        &app,
        Method::POST,
        &format!("/v1/keys/{old_id}/rotate"),
        Some(json!({"grace_seconds": 60})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let new_key = r.body["key"].as_str().unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(r.body["rotated_from"], old_id.as_str());
    assert_eq!(r.body["name"], "svc");
    assert_eq!(r.body["scopes"][0]["methods"][0], "GET");
    assert_eq!(r.body["expires_at"], Value::Null);

    let delta = sync(&app, v0).await;
    assert_eq!(delta.keys.len(), 2);
    let old = delta
        .keys
        .iter()
        .find(|k| k.hash == KeyHash::of(old_key.as_bytes()).to_hex())
        .unwrap();
    let end = old.expires_at_ms.unwrap();
    assert!(
        end >= started_ms + 59_000 && end <= started_ms + 61_000 + 5_000,
        "{end} vs {started_ms}"
    );
    let new = delta
        .keys
        .iter()
        .find(|k| k.hash == KeyHash::of(new_key.as_bytes()).to_hex())
        .unwrap();
    assert_eq!(new.expires_at_ms, None);

    for (body, status, code) in [
        (
            json!({"grace_seconds": -1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"grace_seconds": 999999999}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ] {
        let r = admin(
            &app,
            Method::POST,
            &format!("/v1/keys/{old_id}/rotate"),
            Some(body),
        )
        .await;
        assert_problem(&r, status, code);
    }
    let r = admin(
        &app,
        Method::POST,
        "/v1/keys/key_nope/rotate",
        Some(json!({})),
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
}

async fn key_settings_can_be_changed_and_cleared_with_patch(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let (key_id, plaintext) = key(&app, &tenant_id).await;
    let hash = KeyHash::of(plaintext.as_bytes()).to_hex();
    let before = sync(&app, 0).await.version;

    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{key_id}"),
        Some(json!({
            "expires_at": "2999-01-01T01:00:00+01:00",
            "scopes": [{"methods": ["GET"], "path_prefix": "/read"}],
            "allowed_cidrs": ["10.0.0.0/8", "2001:db8::/32"],
            "limits": [{"name": "per-second", "max": 50, "window_seconds": 1}],
            "monthly_quota": 123
        })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["expires_at"], "2999-01-01T00:00:00Z");
    assert_eq!(r.body["monthly_quota"], 123);
    assert_eq!(r.body["name"], "ci");
    assert_eq!(r.body["active"], true);
    let delta = sync(&app, before).await;
    let pushed = delta.keys.iter().find(|k| k.hash == hash).unwrap();
    assert_eq!(pushed.monthly_quota, Some(123));
    assert_eq!(pushed.expires_at_ms, Some(32_472_144_000_000));
    assert_eq!(pushed.allowed_cidrs.as_ref().unwrap().len(), 2);
    assert_eq!(pushed.scopes.as_ref().unwrap().len(), 1);
    assert_eq!(pushed.limits.as_ref().unwrap()[0].max, 50);

    // null clears; absent fields stay.
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{key_id}"),
        Some(json!({"scopes": null, "expires_at": null, "monthly_quota": null})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body["scopes"].is_null() && r.body["expires_at"].is_null());
    assert!(r.body["monthly_quota"].is_null());
    assert_eq!(
        r.body["allowed_cidrs"],
        json!(["10.0.0.0/8", "2001:db8::/32"])
    );
    let pushed = sync(&app, before).await;
    let pushed = pushed.keys.iter().find(|k| k.hash == hash).unwrap();
    assert!(pushed.scopes.is_none() && pushed.expires_at_ms.is_none());

    // Bad settings are refused whole: nothing changes.
    let settled = admin(&app, Method::GET, &format!("/v1/keys/{key_id}"), None).await;
    for (body, code) in [
        (json!({"allowed_cidrs": ["10.0.0.0/33"]}), "invalid_key"),
        (
            json!({"name": "ok", "scopes": [{"methods": ["GET"], "path_prefix": "no-slash"}]}),
            "invalid_key",
        ),
        (
            json!({"expires_at": "2000-01-01T00:00:00Z"}),
            "invalid_expiry",
        ),
        (json!({"expires_at": "soon"}), "invalid_expiry"),
        (
            json!({"limits": [{"name": "x", "max": 0, "window_seconds": 1}]}),
            "invalid_key",
        ),
        (
            json!({"monthly_quota": 9_223_372_036_854_775_808u64}),
            "invalid_key",
        ),
        (json!({}), "invalid_body"),
    ] {
        let r = admin(
            &app,
            Method::PATCH,
            &format!("/v1/keys/{key_id}"),
            Some(body.clone()),
        )
        .await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    for (body, code) in [
        (r#"{"scopes": "all"}"#, "invalid_body"),
        (r#"{"sneaky": true}"#, "invalid_body"),
        (r#"{"active": "#, "malformed_json"),
    ] {
        let r = send(
            &app,
            Method::PATCH,
            &format!("/v1/keys/{key_id}"),
            Some(ADMIN),
            Some(body),
        )
        .await;
        assert!(r.status.is_client_error(), "{body}: {:?}", r.body);
        assert_eq!(r.body["code"], code, "{body}: {:?}", r.body);
    }
    let after = admin(&app, Method::GET, &format!("/v1/keys/{key_id}"), None).await;
    assert_eq!(after.body, settled.body);

    // A tenant may narrow its own keys but not raise their limits.
    let token = tenant_token(&app, &tenant_id).await;
    let narrow = send(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{key_id}"),
        Some(&token),
        Some(r#"{"scopes": [{"path_prefix": "/read"}]}"#),
    )
    .await;
    assert_eq!(narrow.status, StatusCode::OK, "{:?}", narrow.body);
    for body in [
        r#"{"limits": [{"name": "per-second", "max": 100000, "window_seconds": 1}]}"#,
        r#"{"monthly_quota": 100000000}"#,
    ] {
        let widen = send(
            &app,
            Method::PATCH,
            &format!("/v1/keys/{key_id}"),
            Some(&token),
            Some(body),
        )
        .await;
        assert_problem(&widen, StatusCode::FORBIDDEN, "forbidden");
        let create = send(
            &app,
            Method::POST,
            &format!("/v1/tenants/{tenant_id}/keys"),
            Some(&token),
            Some(&body.replacen('{', r#"{"name": "wide", "#, 1)),
        )
        .await;
        assert_problem(&create, StatusCode::FORBIDDEN, "forbidden");
    }
}

/// "In the future" is the state's clock: an expiry at this very millisecond
/// is refused, one a millisecond later is taken, and the same holds for a
/// PATCH once the clock has moved on.
async fn an_expiry_must_be_after_now_to_the_millisecond(backend: Backend) {
    let (app, _state, clock) = test_app_at(backend, "2026-11-30T23:59:59.999Z").await;
    let plan_id = plan(&app, None).await;
    let tenant_id = tenant(&app, &plan_id).await;
    let uri = format!("/v1/tenants/{tenant_id}/keys");
    let at = |expires_at: &str| json!({"name": "edge", "expires_at": expires_at}).to_string();
    let now = send(
        &app,
        Method::POST,
        &uri,
        Some(ADMIN),
        Some(&at("2026-11-30T23:59:59.999Z")),
    )
    .await;
    assert_problem(&now, StatusCode::UNPROCESSABLE_ENTITY, "invalid_expiry");
    let next = send(
        &app,
        Method::POST,
        &uri,
        Some(ADMIN),
        Some(&at("2026-12-01T00:00:00Z")),
    )
    .await;
    assert_eq!(next.status, StatusCode::CREATED, "{:?}", next.body);
    assert_eq!(next.body["expires_at"], "2026-12-01T00:00:00Z");

    let key_uri = format!("/v1/keys/{}", next.body["id"].as_str().unwrap());
    let later = json!({"expires_at": "2026-12-01T00:00:01Z"}).to_string();
    clock.advance(Duration::from_millis(1_001));
    let r = send(&app, Method::PATCH, &key_uri, Some(ADMIN), Some(&later)).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_expiry");
    clock.set(at_ms(clock.now().unix_ms() - 1));
    let r = send(&app, Method::PATCH, &key_uri, Some(ADMIN), Some(&later)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

on_both_databases!(
    an_expiry_must_be_after_now_to_the_millisecond,
    keys_are_shown_once_and_stored_hashed,
    key_lifecycle_reaches_the_sync_feed,
    keys_list_filters_by_active_and_never_shows_secrets,
    key_settings_are_validated_stored_and_pushed,
    rotation_issues_a_twin_and_ends_the_old_key_after_the_grace,
    key_settings_can_be_changed_and_cleared_with_patch,
);
