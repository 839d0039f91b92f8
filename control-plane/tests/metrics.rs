//! `GET /metrics` through `app(state).oneshot(..)` on an in-memory SQLite
//! database: requests by route template (never an id), the latency
//! histogram, usage batches, open long-polls, the config version, and the
//! optional metrics token.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tollgate_control_plane::{app, db, AppState};
use tower::ServiceExt;

const ADMIN: &str = "admin-token-for-tests";
const SYNC: &str = "sync-token-for-tests";
const METRICS: &str = "metrics-token-for-tests";

async fn test_state() -> AppState {
    let pool = db::connect_memory().await.unwrap();
    db::migrate(&pool).await.unwrap();
    AppState::new(pool, ADMIN, SYNC, 0)
}

/// Status, content type and body text of one request.
async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, String, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

async fn scrape(app: &Router, token: Option<&str>) -> String {
    let (status, content_type, text) = send(app, "GET", "/metrics", token, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    text
}

/// The value of the sample `series` (exactly as printed, labels included).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn counts_requests_by_route_template_and_reports_usage_and_version() {
    let app = app(test_state().await);

    let (status, _, _) = send(&app, "GET", "/v1/plans/plan_secret123", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = send(&app, "GET", "/v1/plans/plan_other456", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = send(
        &app,
        "POST",
        "/v1/plans",
        Some(ADMIN),
        Some(json!({"name": "Pro", "limits": []})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, _) = send(&app, "GET", "/tenant-acme/secret", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let batch = json!({
        "batch_id": "b-1",
        "keys": [{"key_id": "key_a", "allowed": 3, "denied": {"rate_limited": 2}}],
        "unattributed": {"missing_api_key": 4},
        "dropped": 1
    });
    for _ in 0..2 {
        // The second is a duplicate: not counted again.
        let (status, _, body) =
            send(&app, "POST", "/v1/usage", Some(SYNC), Some(batch.clone())).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let text = scrape(&app, None).await;
    let requests = "tollgate_control_plane_http_requests_total";
    let plan_404 =
        format!("{requests}{{route=\"/v1/plans/{{id}}\",method=\"GET\",status=\"404\"}}");
    assert_eq!(sample(&text, &plan_404), Some(2.0), "{text}");
    let created = format!("{requests}{{route=\"/v1/plans\",method=\"POST\",status=\"201\"}}");
    assert_eq!(sample(&text, &created), Some(1.0), "{text}");
    let unmatched = format!("{requests}{{route=\"unmatched\",method=\"GET\",status=\"404\"}}");
    assert_eq!(sample(&text, &unmatched), Some(1.0), "{text}");
    let usage = format!("{requests}{{route=\"/v1/usage\",method=\"POST\",status=\"200\"}}");
    assert_eq!(sample(&text, &usage), Some(2.0), "{text}");
    // Ids and raw paths never become labels.
    for secret in ["plan_secret123", "plan_other456", "tenant-acme", "key_a"] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }

    let histogram = "tollgate_control_plane_http_request_duration_seconds";
    let count = format!("{histogram}_count{{route=\"/v1/plans/{{id}}\",method=\"GET\"}}");
    assert_eq!(sample(&text, &count), Some(2.0), "{text}");
    let inf =
        format!("{histogram}_bucket{{route=\"/v1/plans/{{id}}\",method=\"GET\",le=\"+Inf\"}}");
    assert_eq!(sample(&text, &inf), Some(2.0), "{text}");
    assert!(text.contains(&format!("# TYPE {histogram} histogram")));

    for (series, n) in [
        ("tollgate_control_plane_usage_batches_total", 1.0),
        ("tollgate_control_plane_usage_batch_keys_total", 1.0),
        ("tollgate_control_plane_usage_requests_total", 9.0),
        ("tollgate_control_plane_usage_dropped_total", 1.0),
        ("tollgate_control_plane_sync_polls_open", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(n), "{series}\n{text}");
    }
    let (_, _, health) = send(&app, "GET", "/healthz", None, None).await;
    let version: Value = serde_json::from_str(&health).unwrap();
    let version = version["config_version"].as_f64().unwrap();
    assert!(version >= 1.0);
    assert_eq!(
        sample(&text, "tollgate_control_plane_config_version"),
        Some(version),
        "{text}"
    );
}

#[tokio::test]
async fn a_held_long_poll_is_an_open_poll_until_it_answers() {
    let app = app(test_state().await);
    let poll = tokio::spawn({
        let app = app.clone();
        async move {
            send(
                &app,
                "GET",
                "/v1/sync?since=0&wait_ms=30000",
                Some(SYNC),
                None,
            )
            .await
        }
    });
    let mut open = None;
    for _ in 0..250 {
        open = sample(
            &scrape(&app, None).await,
            "tollgate_control_plane_sync_polls_open",
        );
        if open == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open, Some(1.0));

    // A change answers it at once.
    let (status, _, body) = send(
        &app,
        "POST",
        "/v1/plans",
        Some(ADMIN),
        Some(json!({"name": "Pro", "limits": []})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, _) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the poll answers on a change")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let text = scrape(&app, None).await;
    assert_eq!(
        sample(&text, "tollgate_control_plane_sync_polls_open"),
        Some(0.0)
    );
}

#[tokio::test]
async fn with_a_metrics_token_only_that_token_may_scrape() {
    let app = app(test_state().await.with_metrics_token(Some(METRICS)));
    for token in [
        None,
        Some(ADMIN),
        Some(SYNC),
        Some("wrong-token-0123456789"),
    ] {
        let (status, content_type, body) = send(&app, "GET", "/metrics", token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(content_type, "application/problem+json");
        assert!(!body.contains("tollgate_control_plane"), "{body}");
    }
    let text = scrape(&app, Some(METRICS)).await;
    assert!(
        text.contains("tollgate_control_plane_config_version 0"),
        "{text}"
    );
}
