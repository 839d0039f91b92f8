//! The public catalog: plans marked `public`, without authentication, for pricing pages.
//! Listed smallest monthly quota first (unlimited last), the order a pricing page shows tiers in.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use tollgate_core::wire::{WireLimit, WireRouteCost};

use crate::docs::{ServerError, Throttled};
use crate::error::ApiResult;
use crate::state::AppState;
use crate::store::plans;

pub fn router() -> Router<AppState> {
    Router::new().route("/catalog", get(catalog_index))
}

/// This module's operations and tag in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(catalog_index),
    tags((name = "catalog", description = "Public plans, for pricing pages. No authentication.")),
)]
pub struct Api;

/// What a pricing page may show: no ids, no timestamps.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CatalogEntry {
    pub name: String,
    pub limits: Vec<WireLimit>,
    pub monthly_quota: Option<u64>,
    /// What matching requests cost, first match wins; others cost 1.
    pub route_costs: Vec<WireRouteCost>,
    pub max_api_keys: Option<u64>,
    pub max_users: Option<u64>,
    #[schema(value_type = Object)]
    pub metadata: Value,
}

/// The public plans, smallest monthly quota first (unlimited last).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Catalog {
    pub plans: Vec<CatalogEntry>,
}

/// List public plans
///
/// The plans marked `public`, for pricing pages. No authentication.
#[utoipa::path(
    get,
    path = "/v1/catalog",
    tag = "catalog",
    responses(
        (status = 200, description = "The public plans.", body = Catalog),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
)]
async fn catalog_index(State(state): State<AppState>) -> ApiResult<Json<Catalog>> {
    catalog(&state).await.map(Json)
}

/// The public plans: the API's catalog and the dashboard's tier comparison.
pub async fn catalog(state: &AppState) -> ApiResult<Catalog> {
    let rows = plans::public(&state.db).await?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        let view = row.view()?;
        entries.push(CatalogEntry {
            name: view.name,
            limits: view.limits,
            monthly_quota: view.monthly_quota,
            route_costs: view.route_costs,
            max_api_keys: view.max_api_keys,
            max_users: view.max_users,
            metadata: view.metadata,
        });
    }
    Ok(Catalog { plans: entries })
}
