//! gRPC calls through real Envoy (2 workers) over HTTP/2, with a real gRPC
//! client and a real gRPC upstream (PyPI `grpcio`, `tests/grpc/`): a call
//! is refused as gRPC, with a status a gRPC client reads right
//! (`UNAUTHENTICATED`, `RESOURCE_EXHAUSTED`, never `UNAVAILABLE` for a
//! limit, which clients retry at once), the stable code in its message and
//! the retry delay in its metadata; an admitted call reaches the upstream
//! and carries the rate-limit headers as metadata. Plain HTTP answers stay
//! problem+json.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tollgate_core::key::ApiKey;
use tollgate_e2e::harness::{assert_problem, env_path, eventually, free_port, Stack};

fn grpc_script(args: &[&str]) -> Command {
    let mut command = Command::new("python3");
    command
        .arg(env_path("TOLLGATE_GRPC_SCRIPT"))
        .args(args)
        .env("PYTHONPATH", env_path("TOLLGATE_GRPC_PYTHONPATH"));
    command
}

/// `n` calls through Envoy on `port` with `key` ("-": none), one JSON
/// object each: `code`, `details`, `initial` and `trailing` metadata, `reply`.
async fn calls(port: u16, key: &str, n: usize) -> Vec<Value> {
    let mut command = grpc_script(&["call", &port.to_string(), key, &n.to_string()]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the client ran")
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// The rendered bootstrap, its `upstream` cluster speaking HTTP/2 as gRPC needs.
fn with_http2_upstream(config: &str) -> String {
    let cluster = "  - name: upstream\n    type: STATIC\n";
    assert!(config.contains(cluster), "the template's upstream cluster");
    config.replacen(
        cluster,
        &format!(
            "{cluster}    typed_extension_protocol_options:\n      \
             envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \
             \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        \
             explicit_http_config: {{ http2_protocol_options: {{}} }}\n"
        ),
        1,
    )
}

fn assert_refused(call: &Value, status: &str, code: &str) {
    assert_eq!(call["code"], status, "{call}");
    let details = call["details"].as_str().unwrap_or_default();
    assert!(details.starts_with(&format!("{code}: ")), "{call}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_calls_are_refused_as_grpc_and_admitted_ones_carry_the_limits() {
    let mut stack = Stack::start_without_envoy().await;
    let upstream_port = free_port();
    let _upstream = stack.spawn_helper(
        "grpc-upstream",
        grpc_script(&["serve", &upstream_port.to_string()]),
    );
    eventually(
        Duration::from_secs(20),
        "the gRPC upstream listens",
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", upstream_port))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    let (port, admin_port) = (free_port(), free_port());
    let config = with_http2_upstream(&stack.envoy_config(
        port,
        admin_port,
        upstream_port,
        stack.control_plane_port,
    ));
    let path = stack.dir.path().join("envoy-grpc.yaml");
    std::fs::write(&path, config).expect("write the bootstrap");
    stack.add_envoy("envoy-grpc", &path, admin_port, &[]).await;

    let limit = json!({"name": "per-second", "max": 1, "window_seconds": 1, "burst": 2});
    let (key_id, key) = stack.tenant_with_key(limit).await;
    eventually(Duration::from_secs(10), "the key passes", || async {
        (calls(port, &key, 1).await[0]["code"] == "OK").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Admitted: the upstream's answer and metadata, and the limits' headers.
    let burst = calls(port, &key, 5).await;
    eprintln!("five calls at once: {burst:#?}");
    let ok: Vec<&Value> = burst.iter().filter(|c| c["code"] == "OK").collect();
    assert!((1..=3).contains(&ok.len()), "{burst:#?}");
    for call in &ok {
        assert!(
            call["reply"].as_str().unwrap().starts_with("hello "),
            "{call}"
        );
        assert_eq!(call["initial"]["echo"], "yes", "{call}");
        assert!(call["initial"].get("ratelimit").is_some(), "{call}");
        assert!(call["initial"].get("ratelimit-policy").is_some(), "{call}");
    }
    // Limited: RESOURCE_EXHAUSTED, not the UNAVAILABLE clients retry at once.
    let limited: Vec<&Value> = burst.iter().filter(|c| c["code"] != "OK").collect();
    assert!(!limited.is_empty(), "{burst:#?}");
    for call in limited {
        assert_refused(call, "RESOURCE_EXHAUSTED", "rate_limited");
        assert_eq!(call["trailing"]["retry-after"], "1", "{call}");
    }

    // Keys that are missing, unknown or deactivated: UNAUTHENTICATED.
    assert_refused(
        &calls(port, "-", 1).await[0],
        "UNAUTHENTICATED",
        "missing_api_key",
    );
    let unknown = ApiKey::from_body(&"Q".repeat(32)).unwrap();
    let call = &calls(port, unknown.expose(), 1).await[0];
    assert_refused(call, "UNAUTHENTICATED", "invalid_api_key");
    stack.deactivate(&key_id).await;
    eventually(Duration::from_secs(10), "the key is refused", || async {
        let call = calls(port, &key, 1).await.remove(0);
        (call["code"] != "OK").then_some(call)
    })
    .await;
    assert_refused(
        &calls(port, &key, 1).await[0],
        "UNAUTHENTICATED",
        "disabled_api_key",
    );

    // Plain HTTP through the same Envoy is answered as before.
    let plain = stack
        .client
        .get(format!("http://127.0.0.1:{port}/anything"))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("Envoy answers");
    let reply = tollgate_e2e::harness::Reply::read(plain).await;
    assert_problem(&reply, 401, "disabled_api_key");
}
