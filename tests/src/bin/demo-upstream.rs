//! The demo upstream: answers every request with what it received, as JSON
//! (`{"method", "path", "headers"}`), so a person or a test can see exactly
//! what Envoy forwarded — which identity headers were set, which were removed.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::Request;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Router;

fn addr_from_args() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:8000".to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs a value")?,
            "-h" | "--help" => {
                println!("demo-upstream [--addr 127.0.0.1:8000]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    addr.parse().map_err(|e| format!("--addr {addr}: {e}"))
}

async fn echo(request: Request) -> impl IntoResponse {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in request.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let body = serde_json::json!({
        "method": request.method().as_str(),
        "path": path,
        "headers": headers,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term => {} }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = match addr_from_args() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("demo-upstream: {e}");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo-upstream: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("demo-upstream listening on http://{addr}");
    let app = Router::new().fallback(echo);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await
    {
        eprintln!("demo-upstream: {e}");
        std::process::exit(1);
    }
}
