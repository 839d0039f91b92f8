//! `GET /healthz`, which anyone may call.

use crate::common::{send, test_app, Backend};
use axum::http::{Method, StatusCode};

async fn healthz_answers(backend: Backend) {
    let (app, _) = test_app(backend).await;
    let r = send(&app, Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "ok");
}

on_both_databases!(healthz_answers,);
