//! `GET /metrics`: the Prometheus exposition of [`Metrics`](super::Metrics),
//! open unless `--metrics-token` is set. Apart from the registry, which the
//! state holds, because the endpoint reads the state.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::auth;
use crate::error::ApiError;
use crate::metrics::{CONTENT_TYPE, METRICS_PATH};
use crate::state::AppState;

/// `GET /metrics`, merged at the top level of the app.
pub fn router() -> Router<AppState> {
    Router::new().route(METRICS_PATH, get(metrics))
}

async fn metrics(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    if let Some(token) = &state.metrics_token {
        auth::check(request.headers(), token)?;
    }
    let current = *state.versions.borrow();
    let mut body = state.metrics.render(current);
    // The registry is in the database, so every replica reports the whole fleet.
    let proxies = state.fleet.list(&state.db, current, state.now()).await?;
    crate::fleet::render_metrics(&mut body, &proxies);
    state.leasing.render_metrics(&mut body);
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body,
    )
        .into_response())
}
