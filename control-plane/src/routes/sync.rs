//! The config feed: `GET /v1/sync?since=N&wait_ms=M`, long-polled by each Envoy's leading root context.
//!
//! Answers at once when something changed after version `since`, otherwise
//! holds the request until a change is committed or `wait_ms` passes. What
//! an answer holds, and how a walk through many keys is paged, is the feed's
//! store (`store::feed`).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tollgate_core::wire::SyncResponse;

use crate::auth::SyncCaller;
use crate::docs::{ServerError, Unauthorized, PROBLEM_JSON};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::ApiQuery;
use crate::fleet::ProxyHeaders;
use crate::state::AppState;
use crate::store::feed::{self, SyncCursor};

/// Longest a poll may be held open.
pub const MAX_WAIT_MS: u64 = 60_000;

pub fn router() -> Router<AppState> {
    Router::new().route("/sync", get(sync_poll))
}

/// This module's operations and tag in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(sync_poll),
    tags((name = "sync", description = "The config feed every Envoy long-polls (sync token).")),
)]
pub struct Api;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SyncParams {
    /// The version the caller holds; 0 (the default) asks for everything.
    #[serde(default)]
    pub since: u64,
    /// How long to hold the request when nothing changed after `since`, at most 60000; 0 (the default) answers at once.
    #[serde(default)]
    #[param(maximum = 60000)]
    pub wait_ms: u64,
    /// The `next` of the previous answer, to read the next page of the same
    /// `since`. Such a request is answered at once (`wait_ms` is ignored).
    #[serde(default)]
    pub after: Option<String>,
}

/// Config changes since a version
///
/// Long-polled by each Envoy's leader: answers at once when something
/// changed after `since`, otherwise when a change is committed or `wait_ms`
/// has passed (then with nothing new). At most 20000 keys an answer: when
/// `next` is present, ask again with the same `since` and `after=<next>`,
/// and hold `version` as applied only once an answer without `next` arrived.
/// The `Tollgate-Proxy-*` headers name the Envoy in the proxy registry
/// (`GET /v1/proxies`); without them the poll is served all the same.
#[utoipa::path(
    get,
    path = "/v1/sync",
    tag = "sync",
    params(SyncParams, ProxyHeaders),
    responses(
        (status = 200, description = "What changed after `since`, and the version it adds up to.", body = SyncResponse),
        (status = 400, description = "`invalid_query` (unknown parameter, not a number, `wait_ms` over 60000, an `after` that is no `next`).",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = "5XX", response = ServerError),
    ),
    security(("sync_token" = [])),
)]
async fn sync_poll(
    _caller: SyncCaller,
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<SyncParams>,
) -> ApiResult<Response> {
    if params.wait_ms > MAX_WAIT_MS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("wait_ms must be at most {MAX_WAIT_MS}."),
        ));
    }
    let after = params.after.as_deref().map(SyncCursor::parse).transpose()?;
    // Before the poll is held: its applied version is what a write waiting
    // for propagation waits for.
    state.fleet.record(&state.db, &headers, state.now()).await;
    // A later page of a walk answers at once: its first page already found changes.
    if params.wait_ms > 0 && after.is_none() {
        let _held = state.metrics.poll_held();
        let mut versions = state.versions.subscribe();
        let mut shutting_down = state.shutting_down.subscribe();
        let since = params.since;
        let _ = tokio::time::timeout(Duration::from_millis(params.wait_ms), async {
            tokio::select! {
                _ = versions.wait_for(|v| *v > since) => {}
                _ = shutting_down.wait_for(|down| *down) => {}
            }
        })
        .await;
    }
    let body =
        feed::changes_since(&state.db, state.sync_page, params.since, after.as_ref()).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}
