//! The control plane over HTTPS, end to end: Envoy rendered from the shipped
//! template's TLS block syncs and reports over TLS and checks the control
//! plane's certificate (an Envoy trusting another CA, or expecting another
//! name, gets nothing), plain HTTP gets no answer, and renewed certificate
//! files are served without a restart while a broken pair is refused.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tollgate_e2e::harness::{eventually, free_port, Stack};
use tollgate_e2e::tls::{TestCa, CONTROL_PLANE_NAME};
use tollgate_e2e::ControlPlaneTls;

/// The `ssl.*` counters of the Envoy whose admin port is `admin_port`, for
/// its cluster to the control plane.
async fn control_plane_tls_stats(stack: &Stack, admin_port: u16) -> BTreeMap<String, u64> {
    let prefix = "cluster.tollgate_control_plane.ssl.";
    let text = stack
        .envoy_stats_text(admin_port, r"^cluster\.tollgate_control_plane\.ssl\.")
        .await;
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(": ")?;
            Some((
                name.strip_prefix(prefix)?.to_owned(),
                value.trim().parse().ok()?,
            ))
        })
        .collect()
}

/// The certificate the control plane serves a new connection, DER.
async fn served_certificate(stack: &Stack) -> Vec<u8> {
    let tls = stack.tls.as_ref().expect("the stack serves HTTPS");
    // A client of its own: a pooled connection would show the certificate
    // of its own handshake, however old.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(tls.ca.pem().as_bytes()).unwrap())
        .tls_info(true)
        .build()
        .unwrap();
    let response = client
        .get(stack.control_plane_url(stack.control_plane_port, "/healthz"))
        .send()
        .await
        .expect("the control plane answers over HTTPS");
    assert_eq!(response.status(), StatusCode::OK);
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("TLS info");
    info.peer_certificate().expect("a certificate").to_vec()
}

/// Starts one more Envoy in front of the stack's upstream whose cluster to
/// the control plane checks `tls`; returns its listener and admin ports.
async fn envoy_checking(stack: &mut Stack, name: &str, tls: ControlPlaneTls) -> (u16, u16) {
    let (port, admin_port) = (free_port(), free_port());
    let config = stack.envoy_config_with_tls(
        port,
        admin_port,
        stack.upstream_port,
        stack.control_plane_port,
        Some(tls),
    );
    let path = stack.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, config).unwrap();
    stack.add_envoy(name, &path, admin_port, &[]).await;
    (port, admin_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_syncs_and_reports_over_tls_checking_the_control_planes_certificate() {
    let mut stack = Stack::start_with_tls().await;
    let tenant = stack
        .tenant_on_plan(json!({"name": "per-second", "max": 1000, "window_seconds": 1}))
        .await;
    let (key_id, key) = stack.new_key(&tenant).await;

    // The key reached Envoy over TLS...
    stack.until_status(&key, 200, Duration::from_secs(5)).await;
    for _ in 0..9 {
        assert_eq!(stack.get_with_key(&key).await.status, StatusCode::OK);
    }
    // ...and its use came back over it: exactly the ten admitted.
    stack.until_used(&key_id, 10, Duration::from_secs(10)).await;
    let stats = control_plane_tls_stats(&stack, stack.envoy_admin_port).await;
    assert!(stats["handshake"] >= 1, "{stats:?}");
    assert_eq!(stats["connection_error"], 0, "{stats:?}");
    assert_eq!(stats["fail_verify_error"], 0, "{stats:?}");
    assert_eq!(stats["fail_verify_san"], 0, "{stats:?}");

    // Plain HTTP to the control plane's port gets no HTTP answer: the sync
    // token is never taken in clear.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", stack.control_plane_port))
            .await
            .unwrap();
        plain
            .write_all(b"GET /v1/sync HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer))
            .await
            .expect("the connection is closed within 10 s");
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }

    // An Envoy that trusts another CA: every handshake fails verification,
    // so it never has config.
    let other = TestCa::new("not the control plane's CA");
    let other_ca = stack.dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.pem()).unwrap();
    let (port, admin_port) = envoy_checking(
        &mut stack,
        "envoy-other-ca",
        ControlPlaneTls {
            name: CONTROL_PLANE_NAME.to_owned(),
            ca_file: other_ca.display().to_string(),
        },
    )
    .await;
    eventually(Duration::from_secs(10), "a failed verification", || async {
        (control_plane_tls_stats(&stack, admin_port).await["fail_verify_error"] >= 1).then_some(())
    })
    .await;
    assert_eq!(
        stack.status_through(port, &key).await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // One that trusts the right CA but expects another name: the same.
    let ca_file = stack.tls.as_ref().unwrap().ca_file.display().to_string();
    let (port, admin_port) = envoy_checking(
        &mut stack,
        "envoy-other-name",
        ControlPlaneTls {
            name: "tollgate.example.com".to_owned(),
            ca_file,
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "a name that does not match",
        || async {
            (control_plane_tls_stats(&stack, admin_port).await["fail_verify_san"] >= 1)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        stack.status_through(port, &key).await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // A renewal: new files are served to new connections within seconds,
    // without a restart, and Envoy goes on syncing.
    let first = served_certificate(&stack).await;
    let renewed = stack.tls.as_ref().unwrap().renew();
    assert_ne!(first, renewed);
    eventually(
        Duration::from_secs(5),
        "the renewed certificate",
        || async { (served_certificate(&stack).await == renewed).then_some(()) },
    )
    .await;
    let (_, second_key) = stack.new_key(&tenant).await;
    stack
        .until_status(&second_key, 200, Duration::from_secs(5))
        .await;

    // A broken pair (a new certificate, the old key) is refused, and the
    // renewed certificate stays.
    let tls = stack.tls.as_ref().unwrap();
    let (stray, _) = tls.ca.issue(&[CONTROL_PLANE_NAME]);
    std::fs::write(&tls.cert_file, stray.pem()).unwrap();
    eventually(Duration::from_secs(5), "the refusal in the log", || async {
        stack
            .log("control-plane")
            .contains("do not load; the current pair stays")
            .then_some(())
    })
    .await;
    assert_eq!(served_certificate(&stack).await, renewed);
    let (_, third_key) = stack.new_key(&tenant).await;
    stack
        .until_status(&third_key, 200, Duration::from_secs(5))
        .await;
}
