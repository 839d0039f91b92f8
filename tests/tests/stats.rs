//! Observability in real Envoy (2 workers): the filter's stats at Envoy's
//! admin `/stats/prometheus` count every request once under its outcome
//! (summed over the workers), show the applied config version and a small
//! sync age, and count sync and usage-report failures while the control
//! plane is away; the control plane's own `/metrics` agrees on the version,
//! holds the Envoy's long-poll and counts the usage it was sent.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tollgate_e2e::harness::{eventually, Stack};

/// Config and usage travel in well under a second; generous for a loaded machine.
const BOUND: Duration = Duration::from_secs(10);

/// `name{labels} value` for each sample of a Prometheus text exposition;
/// Envoy's `name{}` is stored as `name`.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let series = series.strip_suffix("{}").unwrap_or(series);
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(stack: &Stack, url: String) -> BTreeMap<String, f64> {
    let response = stack.client.get(&url).send().await.expect("metrics answer");
    assert_eq!(response.status(), StatusCode::OK, "{url}");
    parse(&response.text().await.expect("a metrics body"))
}

async fn envoy_stats(stack: &Stack) -> BTreeMap<String, f64> {
    let url = format!(
        "http://127.0.0.1:{}/stats/prometheus",
        stack.envoy_admin_port
    );
    scrape(stack, url).await
}

async fn control_plane_metrics(stack: &Stack) -> BTreeMap<String, f64> {
    let url = format!("http://127.0.0.1:{}/metrics", stack.control_plane_port);
    scrape(stack, url).await
}

fn value(stats: &BTreeMap<String, f64>, series: &str) -> f64 {
    *stats
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in {stats:#?}"))
}

fn denied(reason: &str) -> String {
    format!("tollgate_requests_denied_total{{reason=\"{reason}\"}}")
}

async fn config_version(stack: &Stack) -> f64 {
    let health = stack.admin(Method::GET, "/healthz", None).await;
    assert_eq!(health.status, StatusCode::OK, "{:?}", health.body);
    health.body["config_version"].as_u64().expect("a version") as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoy_stats_count_every_request_and_show_sync_health() {
    let mut stack = Stack::start().await;

    // A key with a burst of 3 an hour, one scoped elsewhere, one disabled,
    // and an anonymous route.
    let (key_id, key) = stack
        .tenant_with_key(json!({"name": "per-hour", "max": 1, "window_seconds": 3600, "burst": 3}))
        .await;
    let shown = stack
        .admin(Method::GET, &format!("/v1/keys/{key_id}"), None)
        .await;
    let tenant_id = shown.body["tenant_id"].as_str().unwrap().to_owned();
    let scoped = stack
        .admin(
            Method::POST,
            &format!("/v1/tenants/{tenant_id}/keys"),
            Some(json!({"name": "scoped", "scopes": [{"path_prefix": "/elsewhere"}]})),
        )
        .await;
    assert_eq!(scoped.status, StatusCode::CREATED, "{:?}", scoped.body);
    let scoped_key = scoped.body["key"].as_str().unwrap().to_owned();
    let (disabled_id, disabled_key) = stack.new_key(&tenant_id).await;
    stack.deactivate(&disabled_id).await;
    let tenant = stack
        .admin(Method::GET, &format!("/v1/tenants/{tenant_id}"), None)
        .await;
    let plan_id = tenant.body["plan_id"].clone();
    let anonymous = stack
        .admin(
            Method::PUT,
            "/v1/anonymous-access",
            Some(json!({
                "routes": [{"methods": ["GET"], "path_prefix": "/public"}],
                "plan_id": plan_id
            })),
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::OK, "{:?}", anonymous.body);

    // Envoy holds the control plane's version before any request is sent.
    let version = config_version(&stack).await;
    eventually(BOUND, "Envoy's config version gauge", || async {
        (value(&envoy_stats(&stack).await, "tollgate_config_version") == version).then_some(())
    })
    .await;
    let before = envoy_stats(&stack).await;
    assert!(value(&before, "tollgate_sync_age_seconds") <= 1.0);
    assert_eq!(value(&before, "tollgate_requests_allowed_total"), 0.0);

    // A new connection per request, so both workers take requests.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(BOUND)
        .build()
        .unwrap();
    let send = |path: &'static str, key: Option<String>| {
        let mut request = fresh.get(stack.envoy_url(path));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        async move {
            request
                .send()
                .await
                .expect("Envoy answers")
                .status()
                .as_u16()
        }
    };
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(send("/anything", Some(key.clone())).await);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    for _ in 0..2 {
        assert_eq!(send("/anything", None).await, 401);
    }
    assert_eq!(send("/anything", Some("tg_not-a-key".into())).await, 401);
    assert_eq!(send("/anything", Some(scoped_key)).await, 403);
    assert_eq!(send("/anything", Some(disabled_key)).await, 401);
    assert_eq!(send("/public/page", None).await, 200);

    // Counted once each, summed over both workers' VMs, and handed to
    // Envoy on each worker's next tick (every 250 ms).
    let expected = [
        ("tollgate_requests_allowed_total".to_owned(), 3.0),
        ("tollgate_requests_anonymous_total".to_owned(), 1.0),
        (denied("rate_limited"), 2.0),
        (denied("missing_api_key"), 2.0),
        (denied("invalid_api_key"), 1.0),
        (denied("forbidden"), 1.0),
        (denied("disabled_api_key"), 1.0),
        (denied("expired_api_key"), 0.0),
        (denied("quota_exceeded"), 0.0),
        (denied("config_unavailable"), 0.0),
        (denied("config_stale"), 0.0),
    ];
    let (stats, _) = eventually(BOUND, "every request counted", || async {
        let stats = envoy_stats(&stack).await;
        let counted = expected
            .iter()
            .all(|(series, n)| value(&stats, series) >= *n);
        counted.then_some(stats)
    })
    .await;
    for (series, n) in &expected {
        assert_eq!(value(&stats, series), *n, "{series}");
    }
    assert_eq!(value(&stats, "tollgate_config_version"), version);
    assert!(value(&stats, "tollgate_sync_age_seconds") <= 1.0);
    assert_eq!(value(&stats, "tollgate_usage_dropped_total"), 0.0);

    // The control plane: same version, the Envoy's long-poll held open, and
    // every one of those requests reported to it.
    let sent: f64 = expected.iter().map(|(_, n)| n).sum();
    let cp = eventually(BOUND, "the control plane's metrics", || async {
        let m = control_plane_metrics(&stack).await;
        (value(&m, "tollgate_control_plane_sync_polls_open") == 1.0
            && value(&m, "tollgate_control_plane_usage_requests_total") == sent)
            .then_some(m)
    })
    .await
    .0;
    assert_eq!(value(&cp, "tollgate_control_plane_config_version"), version);
    assert!(value(&cp, "tollgate_control_plane_usage_batches_total") >= 1.0);
    let polls = "tollgate_control_plane_http_requests_total{route=\"/v1/sync\",method=\"GET\",status=\"200\"}";
    assert!(value(&cp, polls) >= 1.0);

    // Control plane away: failures are counted and the sync age grows.
    let sync_failures = value(&stats, "tollgate_sync_failures_total");
    let report_failures = value(&stats, "tollgate_usage_report_failures_total");
    stack.stop_control_plane();
    eventually(BOUND, "failures counted and a growing sync age", || async {
        let s = envoy_stats(&stack).await;
        (value(&s, "tollgate_sync_failures_total") > sync_failures
            && value(&s, "tollgate_usage_report_failures_total") > report_failures
            && value(&s, "tollgate_sync_age_seconds") >= 2.0)
            .then_some(())
    })
    .await;
    stack.start_control_plane().await;
    eventually(BOUND, "the sync age back to small", || async {
        (value(&envoy_stats(&stack).await, "tollgate_sync_age_seconds") <= 1.0).then_some(())
    })
    .await;

    // Nothing was counted twice meanwhile.
    let after = envoy_stats(&stack).await;
    for (series, n) in &expected {
        assert_eq!(value(&after, series), *n, "{series}");
    }
    assert_eq!(value(&after, "tollgate_config_version"), version);
}
