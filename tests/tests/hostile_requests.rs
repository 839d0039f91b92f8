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
