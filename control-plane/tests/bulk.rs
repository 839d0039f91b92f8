//! Loading many keys: issuing them in batches, and the sync feed walking
//! them in pages. Every test runs on SQLite and on PostgreSQL.

pub mod common;

use std::collections::{BTreeMap, BTreeSet};

use axum::http::{header, Method, StatusCode};
use axum::Router;
use common::{
    admin, assert_problem, create, key, last_audit, send, tenant, tenant_token, test_state,
    version, Backend, Reply, SYNC,
};
use serde_json::{json, Value};
use tollgate_control_plane::{app, db, AppState};
use tollgate_core::key::{ApiKey, KeyHash};
use tollgate_core::wire::SyncResponse;

/// A new private plan allowing `max_api_keys` keys per tenant.
async fn plan(app: &Router, max_api_keys: Option<u64>) -> String {
    let body = json!({"name": db::new_id("plan"), "limits": [], "max_api_keys": max_api_keys});
    create(app, "/v1/plans", body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn batch(app: &Router, token: &str, tenant_id: &str, body: Value) -> Reply {
    let uri = format!("/v1/tenants/{tenant_id}/keys/batch");
    send(
        app,
        Method::POST,
        &uri,
        Some(token),
        Some(&body.to_string()),
    )
    .await
}

/// Every table a refused batch must leave alone, and the config version.
async fn written(state: &AppState) -> Vec<i64> {
    let mut counts = common::row_counts(state, &["api_keys", "audit_log"]).await;
    counts.push(i64::try_from(version(state).await).unwrap());
    counts
}

/// The tenant's key ids, through the key list.
async fn listed(app: &Router, tenant_id: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut after = String::new();
    loop {
        let uri = format!("/v1/tenants/{tenant_id}/keys?limit=200{after}");
        let r = admin(app, Method::GET, &uri, None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        for item in r.body["items"].as_array().unwrap() {
            assert!(item.get("key").is_none(), "the list never shows plaintext");
            ids.insert(item["id"].as_str().unwrap().to_owned());
        }
        match r.body["next_cursor"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return ids,
        }
    }
}

async fn sync_page(app: &Router, since: u64, after: Option<&str>) -> SyncResponse {
    let after = after.map(|a| format!("&after={a}")).unwrap_or_default();
    let r = send(
        app,
        Method::GET,
        &format!("/v1/sync?since={since}{after}"),
        Some(SYNC),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    serde_json::from_value(r.body).unwrap()
}

async fn batch_issues_every_key_in_one_version(backend: Backend) {
    let state = test_state(backend).await;
    let app = app(state.clone());
    let p = plan(&app, Some(30)).await;
    let t = tenant(&app, &p).await;
    let before = version(&state).await;

    let r = batch(
        &app,
        common::ADMIN,
        &t,
        json!({
            "count": 25,
            "name": "bulk",
            "expires_at": "2099-01-01T00:00:00Z",
            "scopes": [{"methods": ["GET"], "path_prefix": "/v1"}],
            "monthly_quota": 500
        }),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let keys = r.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 25);
    assert_eq!(version(&state).await, before + 1, "one config version");

    let mut issued = BTreeMap::new();
    for k in keys {
        let plaintext = k["key"].as_str().unwrap();
        let parsed = ApiKey::parse(plaintext).expect("issued keys are well-formed");
        assert_eq!(k["prefix"], parsed.display_prefix());
        assert_eq!(k["tenant_id"], t.as_str());
        assert_eq!(k["name"], "bulk");
        assert_eq!(k["active"], true);
        assert_eq!(k["expires_at"], "2099-01-01T00:00:00Z");
        assert_eq!(k["monthly_quota"], 500);
        assert_eq!(k["scopes"][0]["path_prefix"], "/v1");
        let id = k["id"].as_str().unwrap().to_owned();
        let hash = KeyHash::of(plaintext.as_bytes()).to_hex();
        assert!(issued.insert(id, hash).is_none(), "ids are distinct");
    }
    let hashes: BTreeSet<&String> = issued.values().collect();
    assert_eq!(hashes.len(), 25, "keys are distinct");

    // Each is listed, and each reaches the filters, under its own hash.
    assert_eq!(
        listed(&app, &t).await,
        issued.keys().cloned().collect::<BTreeSet<_>>()
    );
    let delta = sync_page(&app, before, None).await;
    assert_eq!(delta.version, before + 1);
    assert_eq!(delta.next, None);
    let synced: BTreeMap<String, String> = delta
        .keys
        .iter()
        .map(|k| {
            assert!(k.active);
            assert_eq!(k.plan_id, p);
            assert_eq!(k.monthly_quota, Some(500));
            (k.id.clone(), k.hash.clone())
        })
        .collect();
    assert_eq!(synced, issued);
    // Stored hashed, never in plaintext.
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE key_hash = $1")
        .bind(issued.values().next().unwrap())
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert_eq!(stored, 1);

    // One audit entry, naming every key.
    let entry = last_audit(&app, "key.batch_create").await;
    assert_eq!(entry["actor"], "admin");
    assert_eq!(entry["resource_type"], "key");
    assert_eq!(entry["tenant_id"], t.as_str());
    assert_eq!(entry["after"]["count"], 25);
    assert_eq!(entry["after"]["name"], "bulk");
    let audited: BTreeSet<String> = entry["after"]["key_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(audited, issued.keys().cloned().collect::<BTreeSet<_>>());
    assert!(
        !entry.to_string().contains("tg_"),
        "no plaintext in the audit"
    );
    let batches: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'key.batch_create'")
            .fetch_one(&state.db)
            .await
            .unwrap();
    assert_eq!(batches, 1);
}

/// More keys than one INSERT statement holds: several statements, one transaction.
async fn a_large_batch_spans_several_statements(backend: Backend) {
    let state = test_state(backend).await;
    let app = app(state.clone());
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let before = version(&state).await;
    let r = batch(
        &app,
        common::ADMIN,
        &t,
        json!({"count": 4321, "name": "load"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.text());
    let keys = r.body["keys"].as_array().unwrap();
    let plaintexts: BTreeSet<&str> = keys.iter().map(|k| k["key"].as_str().unwrap()).collect();
    let ids: BTreeSet<&str> = keys.iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!((plaintexts.len(), ids.len()), (4321, 4321));
    assert_eq!(version(&state).await, before + 1);
    let rows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE tenant_id = $1 AND version = $2")
            .bind(&t)
            .bind(i64::try_from(before + 1).unwrap())
            .fetch_one(&state.db)
            .await
            .unwrap();
    assert_eq!(rows, 4321);
}

async fn a_refused_batch_writes_nothing(backend: Backend) {
    let state = test_state(backend).await;
    let app = app(state.clone());
    let p = plan(&app, Some(5)).await;
    let t = tenant(&app, &p).await;
    key(&app, &t).await;
    let a = common::ADMIN;
    let nothing = written(&state).await;

    for count in [json!(0), json!(10_001), json!(u64::MAX)] {
        let r = batch(&app, a, &t, json!({"count": count, "name": "n"})).await;
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_count");
    }
    for body in [
        json!({"name": "n"}),
        json!({"count": -1, "name": "n"}),
        json!({"count": "3", "name": "n"}),
        json!({"count": 1, "name": null}),
        json!({"count": 1, "name": "n", "plan": "gold"}),
        json!({"count": 1, "name": "n", "scopes": "all"}),
    ] {
        let r = batch(&app, a, &t, body.clone()).await;
        assert_eq!(r.body["code"], "invalid_body", "{body}: {:?}", r.body);
        assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    }
    let r = batch(&app, a, &t, json!({"count": 2, "name": " "})).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_name");
    let past = json!({"count": 2, "name": "n", "expires_at": "2001-01-01T00:00:00Z"});
    let r = batch(&app, a, &t, past).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_expiry");
    let bad_cidr = json!({"count": 2, "name": "n", "allowed_cidrs": ["10.0.0.0/99"]});
    let r = batch(&app, a, &t, bad_cidr).await;
    assert_problem(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_key");
    let r = batch(&app, a, "tnt_unknown", json!({"count": 1, "name": "n"})).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    // One key and five more is one too many: none of the five is issued.
    let r = batch(&app, a, &t, json!({"count": 5, "name": "n"})).await;
    assert_problem(&r, StatusCode::CONFLICT, "key_limit_reached");
    assert_eq!(written(&state).await, nothing);

    // Exactly up to the allowance is fine; then not one more.
    let r = batch(&app, a, &t, json!({"count": 4, "name": "n"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let full = written(&state).await;
    let r = batch(&app, a, &t, json!({"count": 1, "name": "n"})).await;
    assert_problem(&r, StatusCode::CONFLICT, "key_limit_reached");
    assert_eq!(written(&state).await, full);
}

async fn a_tenant_token_batches_like_it_creates(backend: Backend) {
    let state = test_state(backend).await;
    let app = app(state.clone());
    let p = plan(&app, None).await;
    let mine = tenant(&app, &p).await;
    let other = tenant(&app, &p).await;
    let token = tenant_token(&app, &mine).await;
    let nothing = written(&state).await;

    // What a tenant may not do with one key, it may not do with many.
    for overrides in [
        json!({"count": 2, "name": "n", "monthly_quota": 1}),
        json!({"count": 2, "name": "n", "limits": [{"name": "x", "max": 1, "window_seconds": 1}]}),
    ] {
        let r = batch(&app, &token, &mine, overrides.clone()).await;
        assert_problem(&r, StatusCode::FORBIDDEN, "forbidden");
        let uri = format!("/v1/tenants/{mine}/keys");
        let mut single = overrides;
        single.as_object_mut().unwrap().remove("count");
        let r = send(
            &app,
            Method::POST,
            &uri,
            Some(&token),
            Some(&single.to_string()),
        )
        .await;
        assert_problem(&r, StatusCode::FORBIDDEN, "forbidden");
    }
    let r = batch(&app, &token, &other, json!({"count": 2, "name": "n"})).await;
    assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    let r = batch(&app, "not-a-token", &mine, json!({"count": 2, "name": "n"})).await;
    assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(written(&state).await, nothing);

    let narrow = json!({"count": 3, "name": "portal", "allowed_cidrs": ["10.0.0.0/8"]});
    let r = batch(&app, &token, &mine, narrow).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["keys"].as_array().unwrap().len(), 3);
    // Without a name, keys are named `batch`.
    let r = batch(&app, &token, &mine, json!({"count": 2})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    for k in r.body["keys"].as_array().unwrap() {
        assert_eq!(k["name"], "batch");
    }
    assert_eq!(listed(&app, &mine).await.len(), 5);
    let entry = last_audit(&app, "key.batch_create").await;
    assert_eq!(entry["actor"], format!("tenant:{mine}"));
}

/// Walks the feed from `since` to the end: the pages, in order.
async fn walk(app: &Router, since: u64) -> Vec<SyncResponse> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = sync_page(app, since, after.as_deref()).await;
        after = page.next.clone();
        pages.push(page);
        if after.is_none() {
            return pages;
        }
        assert!(pages.len() < 100, "the walk does not end");
    }
}

async fn the_feed_pages_through_every_key_once(backend: Backend) {
    let state = test_state(backend).await.with_sync_page(7);
    let app = app(state.clone());
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    // 20 keys in one version, then 5 more one at a time, and one deleted.
    let r = batch(&app, common::ADMIN, &t, json!({"count": 20, "name": "n"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let mut live: BTreeMap<String, String> = r.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let plaintext = k["key"].as_str().unwrap();
            (
                KeyHash::of(plaintext.as_bytes()).to_hex(),
                k["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for _ in 0..5 {
        let (id, plaintext) = key(&app, &t).await;
        live.insert(KeyHash::of(plaintext.as_bytes()).to_hex(), id);
    }
    let (gone_id, gone) = key(&app, &t).await;
    let r = admin(&app, Method::DELETE, &format!("/v1/keys/{gone_id}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let gone = KeyHash::of(gone.as_bytes()).to_hex();

    // A full snapshot: 25 keys in pages of 7, each once, in (version, hash) order.
    let pages = walk(&app, 0).await;
    assert_eq!(pages.len(), 4);
    let mut seen = Vec::new();
    for page in &pages {
        assert!(page.keys.len() <= 7);
        assert_eq!(page.plans.len(), 1, "every page carries the plans");
        assert!(page.anonymous.is_some(), "and anonymous access");
        assert!(page.deleted_keys.is_empty(), "a snapshot deletes nothing");
        seen.extend(page.keys.iter().map(|k| k.hash.clone()));
    }
    assert_eq!(
        pages.iter().map(|p| p.keys.len()).collect::<Vec<_>>(),
        [7, 7, 7, 4]
    );
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no key twice");
    assert_eq!(unique, live.keys().collect::<BTreeSet<_>>());
    assert!(!unique.contains(&gone));
    assert_eq!(pages.last().unwrap().version, version(&state).await);

    // A delta walks the same way, tombstones included.
    let v = version(&state).await;
    let r = batch(&app, common::ADMIN, &t, json!({"count": 9, "name": "m"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let (removed_id, removed) = key(&app, &t).await;
    let r = admin(
        &app,
        Method::DELETE,
        &format!("/v1/keys/{removed_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let pages = walk(&app, v).await;
    let keys: usize = pages.iter().map(|p| p.keys.len()).sum();
    let deleted: Vec<&String> = pages.iter().flat_map(|p| &p.deleted_keys).collect();
    assert_eq!(keys, 9);
    assert_eq!(
        deleted,
        [&KeyHash::of(removed.as_bytes()).to_hex()],
        "the deletion, once"
    );
    assert_eq!(pages.len(), 2);
    assert!(pages.iter().all(|p| p.plans.is_empty()));
    assert_eq!(pages.last().unwrap().version, version(&state).await);
}

async fn changes_made_during_a_walk_reach_it(backend: Backend) {
    let state = test_state(backend).await.with_sync_page(5);
    let app = app(state.clone());
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let r = batch(&app, common::ADMIN, &t, json!({"count": 12, "name": "n"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let by_hash: BTreeMap<String, String> = r.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let plaintext = k["key"].as_str().unwrap();
            (
                KeyHash::of(plaintext.as_bytes()).to_hex(),
                k["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();

    // What a filter would hold, applying each page as it comes.
    let mut held: BTreeMap<String, bool> = BTreeMap::new();
    let apply = |held: &mut BTreeMap<String, bool>, page: &SyncResponse| {
        for k in &page.keys {
            held.insert(k.hash.clone(), k.active);
        }
        for h in &page.deleted_keys {
            held.remove(h);
        }
    };
    let first = sync_page(&app, 0, None).await;
    assert_eq!(first.keys.len(), 5);
    let next = first.next.clone().expect("more follow");
    apply(&mut held, &first);

    // Behind the cursor: one key deactivated, one deleted; and a new key.
    let (paused_hash, deleted_hash) = (first.keys[0].hash.clone(), first.keys[1].hash.clone());
    let paused = &by_hash[&paused_hash];
    let r = admin(
        &app,
        Method::PATCH,
        &format!("/v1/keys/{paused}"),
        Some(json!({"active": false})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let deleted = &by_hash[&deleted_hash];
    let r = admin(&app, Method::DELETE, &format!("/v1/keys/{deleted}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let (_, added) = key(&app, &t).await;
    let added = KeyHash::of(added.as_bytes()).to_hex();

    let mut after = Some(next);
    let mut last = first;
    while let Some(cursor) = after {
        last = sync_page(&app, 0, Some(&cursor)).await;
        apply(&mut held, &last);
        after = last.next.clone();
    }
    assert_eq!(last.version, version(&state).await);
    assert_eq!(held.get(&paused_hash), Some(&false), "seen deactivated");
    assert!(!held.contains_key(&deleted_hash), "seen deleted");
    assert_eq!(held.get(&added), Some(&true));
    assert_eq!(held.len(), 12, "11 of the batch and the new one");
    assert_eq!(held.values().filter(|active| **active).count(), 11);
}

async fn a_malformed_cursor_is_a_bad_query(backend: Backend) {
    let state = test_state(backend).await.with_sync_page(2);
    let app = app(state.clone());
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let r = batch(&app, common::ADMIN, &t, json!({"count": 3, "name": "n"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let next = sync_page(&app, 0, None).await.next.expect("more follow");
    let hash = "a".repeat(64);
    for after in [
        String::new(),
        "x".into(),
        "1".into(),
        format!("1.{hash}"),
        format!("x.{hash}.1"),
        format!("1.{hash}.x"),
        format!("-1.{hash}.1"),
        format!("1.{}.1", "A".repeat(64)),
        format!("1.{}.1", "a".repeat(63)),
        format!("1.{hash}.1.1"),
        format!("99999999999999999999.{hash}.1"),
        format!("{next}x"),
    ] {
        let r = send(
            &app,
            Method::GET,
            &format!("/v1/sync?since=0&after={after}"),
            Some(SYNC),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{after:?}: {:?}", r.body);
        assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_query");
    }
    // A well-formed cursor past everything: the end of the walk.
    let end = sync_page(&app, 0, Some(&format!("99.{hash}.1"))).await;
    assert!(end.keys.is_empty() && end.next.is_none());
    assert_eq!(end.version, version(&state).await);
}

/// One answer of the feed, parsed, and its bytes.
async fn raw_page(app: &Router, since: u64, after: Option<&str>) -> (SyncResponse, Vec<u8>) {
    let after = after.map(|a| format!("&after={a}")).unwrap_or_default();
    let uri = format!("/v1/sync?since={since}{after}");
    let r = send(app, Method::GET, &uri, Some(SYNC), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.content_type(), "application/json");
    (serde_json::from_slice(&r.bytes).unwrap(), r.bytes.to_vec())
}

/// The database writes the keys' JSON, and each answer is still exactly
/// what serde writes for the `SyncResponse` it parses to: the wire types'
/// field order, absent fields left out, numbers, booleans and nested JSON
/// as such, strings escaped alike.
async fn every_answer_is_what_serde_writes(backend: Backend) {
    let state = test_state(backend).await.with_sync_page(3);
    let app = app(state.clone());
    // Quotes, a backslash and a non-ASCII letter in the plan's name: JSON
    // escapes them (or not), and none may leak into the page's framing.
    let body = json!({
        "name": format!("caf\u{e9} \"q\" \\ {}", db::new_id("plan")),
        "limits": [{"name": "per-second", "max": 5, "window_seconds": 1}],
        "monthly_quota": 1000,
        "route_costs": [{"methods": ["POST"], "path_prefix": "/heavy", "cost": 5}]
    });
    let p = create(&app, "/v1/plans", body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = json!({"name": db::new_id("acme"), "plan_id": p, "billing_anchor_day": 15});
    let anchored = create(&app, "/v1/tenants", body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let plain = tenant(&app, &p).await;
    // Quotes and a backslash in a prefix too (a prefix is visible ASCII,
    // as request paths are: no control character reaches the feed).
    let odd_prefix = "/v1/\"q\"\\caf%C3%A9";
    let every_setting = json!({
        "count": 2,
        "name": "full",
        "expires_at": "2099-01-01T00:00:00Z",
        "scopes": [{"methods": ["GET", "HEAD"], "path_prefix": odd_prefix}, {}],
        "allowed_cidrs": ["10.0.0.0/8", "2001:db8::/32"],
        "limits": [
            {"name": "per-second", "max": 2, "window_seconds": 1, "burst": 4},
            {"name": "shared", "max": 100, "window_seconds": 60, "scope": "tenant"}
        ],
        "monthly_quota": 500
    });
    let r = batch(&app, common::ADMIN, &anchored, every_setting).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = batch(&app, common::ADMIN, &plain, json!({"count": 3})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let ids: Vec<&str> = r.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    let before = version(&state).await;
    let uri = format!("/v1/keys/{}", ids[0]);
    let r = admin(&app, Method::PATCH, &uri, Some(json!({"active": false}))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = admin(&app, Method::DELETE, &format!("/v1/keys/{}", ids[1]), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let open = json!({"routes": [{"methods": ["GET"], "path_prefix": "/public"}], "plan_id": p});
    let r = admin(&app, Method::PUT, "/v1/anonymous-access", Some(open)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    let mut keys = Vec::new();
    let mut deleted = Vec::new();
    for since in [0, before] {
        let mut after: Option<String> = None;
        loop {
            let (page, bytes) = raw_page(&app, since, after.as_deref()).await;
            assert_eq!(
                String::from_utf8(serde_json::to_vec(&page).unwrap()).unwrap(),
                String::from_utf8(bytes).unwrap()
            );
            keys.extend(page.keys);
            deleted.extend(page.deleted_keys);
            after = page.next;
            if after.is_none() {
                break;
            }
        }
    }
    // The snapshot's four live keys and the delta's paused one; the delta's tombstone.
    assert_eq!(keys.len(), 5);
    assert_eq!(deleted.len(), 1);
    let full = keys.iter().find(|k| k.tenant_id == anchored).unwrap();
    assert_eq!(full.billing_anchor_day, Some(15));
    assert_eq!(full.monthly_quota, Some(500));
    assert_eq!(full.expires_at_ms, Some(4_070_908_800_000));
    assert_eq!(
        full.scopes.as_ref().unwrap()[0].path_prefix.as_deref(),
        Some(odd_prefix)
    );
    assert_eq!(full.limits.as_ref().unwrap()[1].burst, None);
    let bare = keys.iter().find(|k| k.id == ids[2]).unwrap();
    assert!(bare.active && bare.plan_id == p);
    assert_eq!(
        (
            bare.expires_at_ms,
            bare.monthly_quota,
            bare.billing_anchor_day
        ),
        (None, None, None)
    );
    assert!(bare.scopes.is_none() && bare.allowed_cidrs.is_none() && bare.limits.is_none());
    assert!(keys.iter().any(|k| k.id == ids[0] && !k.active));
}

on_both_databases!(
    batch_issues_every_key_in_one_version,
    a_large_batch_spans_several_statements,
    a_refused_batch_writes_nothing,
    a_tenant_token_batches_like_it_creates,
    the_feed_pages_through_every_key_once,
    changes_made_during_a_walk_reach_it,
    a_malformed_cursor_is_a_bad_query,
    every_answer_is_what_serde_writes,
    the_batch_body_is_documented_as_create_key_plus_count,
);

/// The batch body is documented as what it is: `CreateKey`'s fields, `name`
/// optional, and `count`.
async fn the_batch_body_is_documented_as_create_key_plus_count(backend: Backend) {
    let (app, _) = common::test_app(backend).await;
    let r = send(&app, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let schemas = &r.body["components"]["schemas"];
    let (single, batch) = (&schemas["CreateKey"], &schemas["CreateKeys"]);
    let fields = |schema: &Value| -> BTreeSet<String> {
        schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let mut expected = fields(single);
    expected.insert("count".into());
    assert_eq!(fields(batch), expected);
    assert_eq!(batch["required"], json!(["count"]));
    assert_eq!(batch["properties"]["count"]["maximum"], 10000);
    assert_eq!(batch["properties"]["count"]["minimum"], 1);
    assert_eq!(
        batch["properties"]["scopes"], single["properties"]["scopes"],
        "the same settings"
    );
    let op = &r.body["paths"]["/v1/tenants/{tenant_id}/keys/batch"]["post"];
    assert_eq!(
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CreateKeys"
    );
}
