//! How long a cold Envoy's full walk of `/v1/sync` takes the control plane
//! with many keys. By default it walks 25 000 keys (two pages), which
//! `cargo xtask test` runs on both databases; for the million-key figure,
//! which takes minutes of loading:
//!
//! ```text
//! TOLLGATE_SYNC_SCALE_KEYS=1000000 cargo test --release -p tollgate-control-plane --test sync_scale -- --nocapture
//! ```
//!
//! `TOLLGATE_SYNC_SCALE_KEYS` sets the number of keys (default 25000).
//! `TOLLGATE_SYNC_SCALE_URL` names a database to keep between runs (a
//! `sqlite://` file or a `postgres://` database that exists): it is loaded
//! only when it holds fewer keys than asked for, so a later run times the
//! walk alone. Without it, `sqlite` loads a fresh file under the temporary
//! directory and `postgres` a fresh database on `TOLLGATE_TEST_POSTGRES_URL`.
//!
//! The keys are issued through the batch endpoint, as an operator would;
//! one batch in ten carries every optional setting so the JSON columns are
//! exercised too. The walk's time is the server's: each request through the
//! router with its whole body collected, not the client's parsing, which is
//! done afterwards to check that every key arrived exactly once. The
//! SHA-256 it prints covers every answer's bytes: two builds walking the
//! same kept database must print the same one.

pub mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use axum::Router;
use common::{admin, create, request, Backend, ADMIN, SYNC};
use http_body_util::BodyExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use tollgate_control_plane::{app, db, AppState};
use tollgate_core::wire::SyncResponse;
use tower::ServiceExt;

const BATCH: usize = 10_000;
const TENANTS: usize = 10;

fn wanted_keys() -> usize {
    std::env::var("TOLLGATE_SYNC_SCALE_KEYS")
        .ok()
        .map(|n| n.parse().expect("TOLLGATE_SYNC_SCALE_KEYS is a number"))
        .unwrap_or(25_000)
}

/// The database, and the SQLite file to delete afterwards when it is a fresh one.
async fn database(backend: Backend) -> (db::Db, Option<PathBuf>) {
    if let Ok(url) = std::env::var("TOLLGATE_SYNC_SCALE_URL") {
        return (db::connect(&url).await.unwrap(), None);
    }
    match backend {
        Backend::Sqlite => {
            let path = std::env::temp_dir().join(format!("{}.db", db::new_id("sync_scale")));
            let url = format!("sqlite://{}", path.display());
            (db::connect(&url).await.unwrap(), Some(path))
        }
        Backend::Postgres => (common::fresh_postgres().await, None),
    }
}

async fn live_keys(state: &AppState) -> usize {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE deleted_at IS NULL")
        .fetch_one(&state.db)
        .await
        .unwrap();
    usize::try_from(n).unwrap()
}

/// Issues keys until `wanted` are live, spread over a few tenants.
async fn load(app: &Router, state: &AppState, wanted: usize) {
    let have = live_keys(state).await;
    if have >= wanted {
        println!("{have} keys already loaded");
        return;
    }
    let started = Instant::now();
    let limits = json!([{"name": "per-second", "max": 100, "window_seconds": 1}]);
    let plan = create(
        app,
        "/v1/plans",
        json!({"name": db::new_id("plan"), "limits": limits}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut tenants = Vec::new();
    for n in 0..TENANTS {
        // Some tenants bill from an anchor day, which every one of their keys carries.
        let anchor = (n % 3 == 0).then_some(n + 1);
        let body =
            json!({"name": db::new_id("tenant"), "plan_id": plan, "billing_anchor_day": anchor});
        tenants.push(
            create(app, "/v1/tenants", body).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut issued = have;
    let mut batch = 0;
    while issued < wanted {
        let count = (wanted - issued).min(BATCH);
        let body = if batch % 10 == 9 {
            json!({
                "count": count,
                "name": "scale-full",
                "expires_at": "2099-01-01T00:00:00Z",
                "scopes": [{"methods": ["GET", "HEAD"], "path_prefix": "/v1/"}, {"path_prefix": "/public"}],
                "allowed_cidrs": ["10.0.0.0/8", "2001:db8::/32"],
                "limits": [{"name": "per-second", "max": 50, "window_seconds": 1, "burst": 80},
                           {"name": "shared", "max": 1000, "window_seconds": 60, "scope": "tenant"}],
                "monthly_quota": 1_000_000
            })
        } else {
            json!({"count": count, "name": "scale"})
        };
        let uri = format!("/v1/tenants/{}/keys/batch", tenants[batch % TENANTS]);
        let r = admin(app, Method::POST, &uri, Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        issued += count;
        batch += 1;
    }
    println!(
        "loaded {} keys in {:.1} s",
        issued - have,
        started.elapsed().as_secs_f64()
    );
}

/// One page through the router, and how long the server took to answer it in full.
async fn page(app: &Router, after: Option<&str>) -> (Bytes, Duration) {
    let after = after.map(|a| format!("&after={a}")).unwrap_or_default();
    let uri = format!("/v1/sync?since=0{after}");
    let started = Instant::now();
    let res = app
        .clone()
        .oneshot(request(Method::GET, &uri, Some(SYNC), None))
        .await
        .unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let took = started.elapsed();
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    (bytes, took)
}

async fn full_walk(backend: Backend) {
    let wanted = wanted_keys();
    let (pool, fresh_file) = database(backend).await;
    let state = AppState::new(pool, ADMIN, SYNC, 0);
    db::migrate(&state.db).await.unwrap();
    let app = app(state.clone());
    load(&app, &state, wanted).await;
    let live = live_keys(&state).await;

    let mut served = Duration::ZERO;
    let mut parsing = Duration::ZERO;
    let mut slowest = Duration::ZERO;
    let mut bytes = 0;
    let mut digest = Sha256::new();
    let mut seen = HashSet::with_capacity(live);
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let (body, took) = page(&app, after.as_deref()).await;
        served += took;
        slowest = slowest.max(took);
        bytes += body.len();
        pages += 1;
        digest.update(&body);
        let started = Instant::now();
        let answer: SyncResponse = serde_json::from_slice(&body).unwrap();
        parsing += started.elapsed();
        // What the filter would apply is what serde writes back: the same bytes.
        if pages == 1 {
            assert_eq!(serde_json::to_vec(&answer).unwrap(), body);
        }
        for key in answer.keys {
            assert!(seen.insert(key.hash), "a key sent twice");
        }
        after = answer.next;
        if after.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), live, "every live key once");
    println!(
        "{backend:?}: {live} keys in {pages} pages, {:.1} MB: served in {:.2} s \
         (slowest page {:.0} ms); parsing them took the client {:.2} s; sha256 {}",
        bytes as f64 / 1e6,
        served.as_secs_f64(),
        slowest.as_secs_f64() * 1e3,
        parsing.as_secs_f64(),
        hex::encode(digest.finalize()),
    );
    state.db.close().await;
    if let Some(path) = fresh_file {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    full_walk(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    full_walk(Backend::Postgres).await
}
