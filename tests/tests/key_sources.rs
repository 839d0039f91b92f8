//! Where the key is read from, as the plugin configuration says: header
//! names, `Authorization: Bearer`, an opt-in query parameter and an opt-in
//! cookie, each end to end in real Envoy, and the key taken off the request
//! before it goes upstream whichever place it came in.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tollgate_e2e::harness::{plugin_config_with_api_key, Reply, Stack};

const BOUND: Duration = Duration::from_secs(5);

fn upstream_saw<'a>(reply: &'a Reply, header: &str) -> Option<&'a str> {
    reply.body["headers"][header].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_are_read_from_every_configured_place_and_never_go_upstream() {
    let stack = Stack::start_with_plugin_config(plugin_config_with_api_key(json!({
        "headers": ["x-api-key", "x-partner-key"],
        "bearer": true,
        "query": "api_key",
        "cookie": "tg_key",
    })))
    .await;
    let (_, key) = stack
        .tenant_with_key(json!({"name": "per-hour", "max": 100, "window_seconds": 3600}))
        .await;
    stack.until_status(&key, 200, BOUND).await;

    // A second configured header.
    let r = stack.get("/h", &[("x-partner-key", &key)]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(upstream_saw(&r, "x-partner-key"), None);
    assert!(upstream_saw(&r, "x-api-key-id").is_some());

    // Bearer, when another scheme's credential is not in the way.
    let bearer = format!("Bearer {key}");
    let r = stack.get("/b", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(upstream_saw(&r, "authorization"), None);

    // The query parameter: cut out of the path, the rest kept in order.
    let r = stack
        .get(&format!("/things?a=1&api_key={key}&b=%20"), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["path"], "/things?a=1&b=%20");
    assert!(r.header("ratelimit").is_some());
    let r = stack.get(&format!("/only?api_key={key}"), &[]).await;
    assert_eq!(r.body["path"], "/only");

    // The cookie: taken out of Cookie, the other cookies kept.
    let cookie = format!("theme=dark; tg_key={key}; lang=en");
    let r = stack.get("/c", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(upstream_saw(&r, "cookie"), Some("theme=dark; lang=en"));
    let only = format!("tg_key={key}");
    let r = stack.get("/c", &[("cookie", &only)]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(upstream_saw(&r, "cookie"), None);

    // A key in a header wins; the upstream's own bearer token stays, and
    // no place that carried a key reaches the upstream.
    let r = stack
        .get(
            &format!("/mixed?api_key={key}"),
            &[
                ("x-api-key", &key),
                ("authorization", "Bearer the-upstreams-own-token"),
                ("cookie", &only),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        upstream_saw(&r, "authorization"),
        Some("Bearer the-upstreams-own-token")
    );
    assert_eq!(upstream_saw(&r, "x-api-key"), None);
    assert_eq!(upstream_saw(&r, "cookie"), None);
    assert_eq!(r.body["path"], "/mixed");

    // A bad key in the first place is refused, not looked past.
    let r = stack
        .get(&format!("/?api_key={key}"), &[("x-api-key", "tg_nope")])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    assert_eq!(r.body["code"], "invalid_api_key");

    // No key anywhere: the refusal says where this gateway reads keys.
    let r = stack.get("/", &[("cookie", "theme=dark")]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    assert_eq!(r.body["code"], "missing_api_key");
    assert_eq!(
        r.body["detail"],
        "Send your API key in the x-api-key header, the x-partner-key header, \
         as Authorization: Bearer <key>, the api_key query parameter or the tg_key cookie."
    );
}
