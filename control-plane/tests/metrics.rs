//! `GET /metrics` through `app(state).oneshot(..)`: requests by route
//! template (never an id), the latency histogram, usage batches, open
//! long-polls, the config version, and the optional metrics token.
//!
//! Every test runs on SQLite and on the PostgreSQL server named by
//! `TOLLGATE_TEST_POSTGRES_URL`.

pub mod common;

use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use common::{send, test_state, Backend, Reply, ADMIN, SYNC};
use serde_json::{json, Value};
use tollgate_control_plane::app;

const METRICS: &str = "metrics-token-for-tests";

/// A request with a JSON body.
async fn post(app: &Router, uri: &str, token: &str, body: &Value) -> Reply {
    send(app, "POST", uri, Some(token), Some(&body.to_string())).await
}

async fn scrape(app: &Router, token: Option<&str>) -> String {
    let r = send(app, "GET", "/metrics", token, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.content_type(), "text/plain; version=0.0.4; charset=utf-8");
    r.text()
}

/// The value of the sample `series` (exactly as printed, labels included).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn counts_requests_by_route_template_and_reports_usage_and_version(backend: Backend) {
    let app = app(test_state(backend).await);

    let r = send(&app, "GET", "/v1/plans/plan_secret123", Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send(&app, "GET", "/v1/plans/plan_other456", Some(ADMIN), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = post(
        &app,
        "/v1/plans",
        ADMIN,
        &json!({"name": "Pro", "limits": []}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = send(&app, "GET", "/tenant-acme/secret", None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let batch = json!({
        "batch_id": "b-1",
        "keys": [{"key_id": "key_a", "allowed": 3, "denied": {"rate_limited": 2}}],
        "unattributed": {"missing_api_key": 4},
        "dropped": 1
    });
    for _ in 0..2 {
        // The second is a duplicate: not counted again.
        let r = post(&app, "/v1/usage", SYNC, &batch).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
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
    let health = send(&app, "GET", "/healthz", None, None).await.json();
    let version = health["config_version"].as_f64().unwrap();
    assert!(version >= 1.0);
    assert_eq!(
        sample(&text, "tollgate_control_plane_config_version"),
        Some(version),
        "{text}"
    );
}

async fn a_held_long_poll_is_an_open_poll_until_it_answers(backend: Backend) {
    let app = app(test_state(backend).await);
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
    let r = post(
        &app,
        "/v1/plans",
        ADMIN,
        &json!({"name": "Pro", "limits": []}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the poll answers on a change")
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let text = scrape(&app, None).await;
    assert_eq!(
        sample(&text, "tollgate_control_plane_sync_polls_open"),
        Some(0.0)
    );
}

async fn with_a_metrics_token_only_that_token_may_scrape(backend: Backend) {
    let app = app(test_state(backend).await.with_metrics_token(Some(METRICS)));
    for token in [
        None,
        Some(ADMIN),
        Some(SYNC),
        Some("wrong-token-0123456789"),
    ] {
        let r = send(&app, "GET", "/metrics", token, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(r.content_type(), "application/problem+json");
        assert!(!r.text().contains("tollgate_control_plane"), "{}", r.text());
    }
    let text = scrape(&app, Some(METRICS)).await;
    assert!(
        text.contains("tollgate_control_plane_config_version 0"),
        "{text}"
    );
}

on_both_databases!(
    counts_requests_by_route_template_and_reports_usage_and_version,
    a_held_long_poll_is_an_open_poll_until_it_answers,
    with_a_metrics_token_only_that_token_may_scrape,
);
