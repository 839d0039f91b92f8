//! Readiness: the process is up and its database answers.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::docs::ServerError;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::store::feed;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz))
}

/// This module's operations and tag in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(healthz),
    tags((name = "health", description = "Readiness.")),
)]
pub struct Api;

/// The answer of a ready control plane.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`: anything else is an error response.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// The latest committed config version.
    pub config_version: u64,
}

/// Readiness
///
/// The process is up and its database answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses(
        (status = 200, description = "Ready.", body = Health),
        (status = "5XX", response = ServerError),
    ),
)]
async fn healthz(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    let config_version = feed::current_version(&state.db).await?;
    Ok(Json(Health {
        status: "ok",
        config_version,
    }))
}
