//! Hostile request shapes through real Envoy (2 workers): each gets the
//! answer the README's table documents, never a 5xx from the filter, a
//! panic or a crashed VM. The requests are written as raw bytes, so they
//! can hold what no HTTP client sends.

use serde_json::{json, Value};
use tollgate_e2e::harness::Stack;

/// One shape: its name, its header lines, and the status and `code` it
/// must get (`None`: Envoy answers itself, before any filter runs).
struct Shape {
    name: &'static str,
    headers: Vec<Vec<u8>>,
    status: u16,
    code: Option<&'static str>,
}

fn line(name: &str, value: &[u8]) -> Vec<u8> {
    [name.as_bytes(), b": ", value, b"\r\n"].concat()
}

fn shape(
    name: &'static str,
    headers: Vec<Vec<u8>>,
    status: u16,
    code: Option<&'static str>,
) -> Shape {
    Shape {
        name,
        headers,
        status,
        code,
    }
}

fn shapes(key: &str) -> Vec<Shape> {
    let key = key.as_bytes();
    let bearer = |token: &[u8]| line("authorization", &[b"Bearer ", token].concat());
    let mut not_utf8 = key.to_vec();
    not_utf8[10] = 0xff;
    // The first, then `n - 1` copies of the key.
    let repeated = |first: &[u8], n: usize| {
        let mut lines = vec![line("x-api-key", first)];
        lines.extend((1..n).map(|_| line("x-api-key", key)));
        lines
    };
    vec![
        shape("the key", vec![line("x-api-key", key)], 200, None),
        shape(
            "the header name in capitals",
            vec![line("X-API-KEY", key)],
            200,
            None,
        ),
        shape(
            "a byte that is not UTF-8",
            vec![line("x-api-key", &not_utf8)],
            401,
            Some("invalid_api_key"),
        ),
        shape(
            "NUL bytes",
            vec![line("x-api-key", &[key, b"\0\0"].concat())],
            400,
            None,
        ),
        shape(
            "an 8 KiB key",
            vec![line("x-api-key", &[b'A'; 8 * 1024])],
            401,
            Some("invalid_api_key"),
        ),
        shape(
            "a 64 KiB key",
            vec![line("x-api-key", &[b'A'; 64 * 1024])],
            431,
            None,
        ),
        // Envoy takes at most 100 headers (`max_headers_count`), host included.
        shape("x-api-key 100 times", repeated(key, 100), 431, None),
        shape("the key 90 times", repeated(key, 90), 200, None),
        shape(
            "a bad key, then the key 89 times",
            repeated(b"not-a-key", 90),
            401,
            Some("invalid_api_key"),
        ),
        shape(
            "the key in x-api-key and a bad one as a bearer",
            vec![line("x-api-key", key), bearer(b"not-a-key")],
            200,
            None,
        ),
        shape(
            "a bad key in x-api-key and the key as a bearer",
            vec![line("x-api-key", b"not-a-key"), bearer(key)],
            401,
            Some("invalid_api_key"),
        ),
        shape(
            "bearer in lower case",
            vec![line("authorization", &[b"bearer ", key].concat())],
            200,
            None,
        ),
        shape(
            "spaces around the token",
            vec![line(
                "authorization",
                &[b"Bearer    ", key, b"   "].concat(),
            )],
            200,
            None,
        ),
        shape(
            "spaces around the key",
            vec![line("x-api-key", &[b"   ", key, b"   "].concat())],
            200,
            None,
        ),
        shape(
            "a space inside the key",
            vec![line("x-api-key", &[&key[..10], b" ", &key[10..]].concat())],
            401,
            Some("invalid_api_key"),
        ),
        shape(
            "Basic credentials",
            vec![line("authorization", b"Basic dXNlcjpwYXNz")],
            401,
            Some("missing_api_key"),
        ),
        shape(
            "Bearer with no token",
            vec![line("authorization", b"Bearer")],
            401,
            Some("missing_api_key"),
        ),
        shape(
            "an empty x-api-key",
            vec![line("x-api-key", b"")],
            401,
            Some("missing_api_key"),
        ),
        shape(
            "an empty x-api-key and the key as a bearer",
            vec![line("x-api-key", b""), bearer(key)],
            200,
            None,
        ),
        shape(
            "an empty authorization",
            vec![line("authorization", b"")],
            401,
            Some("missing_api_key"),
        ),
        shape("no key at all", vec![], 401, Some("missing_api_key")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_hostile_shape_gets_its_documented_answer_and_no_vm_crashes() {
    let stack = Stack::start().await;
    let limit = json!({"name": "per-second", "max": 1000, "window_seconds": 1});
    let (_, key) = stack.tenant_with_key(limit).await;
    stack
        .until_status(&key, 200, std::time::Duration::from_secs(10))
        .await;
    let mut wrong = Vec::new();
    // Twice over, so both workers see every shape.
    for _ in 0..2 {
        for s in shapes(&key) {
            let head = [
                b"GET /anything HTTP/1.1\r\nhost: api\r\n".as_slice(),
                &s.headers.concat(),
            ]
            .concat();
            let (status, body) = stack.raw_request(&head).await;
            let code = body.get("code").and_then(Value::as_str);
            let code_ok = match (s.status, s.code) {
                (200, _) => true,
                (_, Some(expected)) => code == Some(expected),
                // Envoy's own answer carries no problem body of ours.
                (_, None) => code.is_none(),
            };
            if status != s.status || !code_ok {
                wrong.push(format!("{}: {status} {body}", s.name));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The VMs are alive and well: the key still passes on both workers,
    // and no panic or trap reached Envoy's log.
    for _ in 0..4 {
        assert_eq!(stack.get_with_key(&key).await.status, 200);
    }
    let logs = stack.logs();
    for sign in ["panicked", "Uncaught", "wasm trap", "Function: proxy_on"] {
        assert!(!logs.contains(sign), "{sign} in the logs:\n{logs}");
    }
}

/// The control plane's own limits on a request, at its real listener (the
/// oneshot tests do not go through one): a request head over hyper's
/// buffer (about 400 KiB) or with more than 100 header lines is `431`, a
/// body over the route's limit `413 payload_too_large`, and the server
/// answers the next request as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_bounds_request_heads_and_bodies() {
    use tollgate_e2e::harness::{ADMIN_TOKEN, SYNC_TOKEN};
    let stack = Stack::start_without_envoy().await;
    let port = stack.control_plane_port;
    let admin =
        format!("GET /v1/plans HTTP/1.1\r\nhost: cp\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n");

    let big = [
        admin.as_bytes(),
        &line("x-padding", &vec![b'a'; 500 * 1024]),
    ]
    .concat();
    assert_eq!(
        stack.raw_request_to(port, &big).await.0,
        431,
        "a 500 KiB header"
    );
    let many: Vec<u8> = (0..200)
        .flat_map(|i| line(&format!("x-h{i}"), b"1"))
        .collect();
    let many = [admin.as_bytes(), &many].concat();
    assert_eq!(
        stack.raw_request_to(port, &many).await.0,
        431,
        "200 header lines"
    );

    for (path, token, limit) in [
        ("/v1/plans", ADMIN_TOKEN, 64 * 1024),
        ("/v1/leaked-keys", ADMIN_TOKEN, 1024 * 1024),
        ("/v1/usage", SYNC_TOKEN, 16 * 1024 * 1024),
    ] {
        let body = vec![b' '; limit + 1];
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: cp\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        // What `raw_request_to` adds (a header line and a blank line) comes
        // after the body here, past what the answer waits for.
        let request = [head.as_bytes(), &body].concat();
        let (status, answer) = stack.raw_request_to(port, &request).await;
        assert_eq!(status, 413, "{path}: {answer}");
        assert_eq!(answer["code"], "payload_too_large", "{path}: {answer}");
    }
    let (status, _) = stack.raw_request_to(port, admin.as_bytes()).await;
    assert_eq!(status, 200, "answers as before");
}
