//! Readiness: the process is up and its database answers.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::db;
use crate::error::ApiResult;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz))
}

async fn healthz(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let version = db::current_version(&state.db).await?;
    Ok(Json(json!({ "status": "ok", "config_version": version })))
}
