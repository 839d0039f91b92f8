//! The Envoys' sync feed itself: a long-poll answered as soon as something
//! changes, and bad queries refused. (What each resource's changes put on the
//! feed is tested with that resource.)

use crate::common::{assert_problem, key, plan, send, sync, tenant, test_app, Backend, SYNC};
use axum::http::{Method, StatusCode};
use tollgate_core::wire::SyncResponse;

async fn a_long_poll_returns_as_soon_as_something_changes(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let p = plan(&app, None).await;
    let t = tenant(&app, &p).await;
    let v = sync(&app, 0).await.version;
    let poller = {
        let app = app.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = send(
                &app,
                Method::GET,
                &format!("/v1/sync?since={v}&wait_ms=30000"),
                Some(SYNC),
                None,
            )
            .await;
            (
                r.status,
                serde_json::from_value::<SyncResponse>(r.body).unwrap(),
                started.elapsed(),
            )
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    key(&app, &t).await;
    let (status, delta, elapsed) = poller.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(delta.keys.len(), 1);
    assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");
}

async fn sync_rejects_bad_queries(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let r = send(&app, Method::GET, "/v1/sync?since=abc", Some(SYNC), None).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_query");
    let r = send(
        &app,
        Method::GET,
        "/v1/sync?wait_ms=999999",
        Some(SYNC),
        None,
    )
    .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_query");
    let r = send(&app, Method::GET, "/v1/sync?bogus=1", Some(SYNC), None).await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_query");
}

on_both_databases!(
    a_long_poll_returns_as_soon_as_something_changes,
    sync_rejects_bad_queries,
);
