//! The OpenAPI 3 document of the control plane's HTTP API, generated from the
//! code: each handler's `#[utoipa::path]`, gathered per resource by the
//! `Api` next to its router and listed once in `routes::RESOURCES`, and the `ToSchema` request and
//! response types (the wire types of `tollgate-core` with its `openapi`
//! feature). It exists so that clients, SDK generators and people get a
//! contract that cannot drift from what the router serves; `tests/openapi.rs`
//! checks the two against each other route by route.
//!
//! [`router`] serves it at `GET /openapi.json` and Swagger UI at `/docs`, both
//! without authentication (the API's shape is no secret, its data is). Swagger
//! UI's files are compiled into the binary (`utoipa-swagger-ui`'s `vendored`
//! feature): nothing is fetched from a CDN, at build time or in the browser.
//!
//! The error responses every handler shares (401, 403 for admin-only
//! operations, 413, 415, 429, 5XX) are reusable components defined in
//! `docs`, below the routes that refer to them; the ones specific to a
//! handler are written next to it.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::docs::{
    AdminOnly, ContentTooLarge, ServerError, Throttled, Unauthorized, UnsupportedMediaType,
};
use crate::error::Problem;
use crate::receipt::{self, Receipt};
use crate::routes;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// Where Swagger UI is served (`/docs` redirects to `/docs/`).
pub const DOCS_PATH: &str = "/docs";

const DESCRIPTION: &str = "\
The admin API of Tollgate, an API-key and rate-limit filter for Envoy: plans, tenants, \
API keys, tenant tokens and the audit log under `/v1`, plus the feeds the Envoys use \
(`/v1/sync`, `/v1/usage`).

**Authentication.** `Authorization: Bearer <token>`: the admin token may do everything; a \
tenant token (`tgt_…`) acts on its own tenant only (another tenant's resources answer 404, \
admin-only operations 403). The Envoys use the sync token. `/v1/catalog` and `/healthz` are public.

**Errors.** Every error is `application/problem+json` (the `Problem` schema) with a stable \
`code`. Besides the statuses listed per operation, any path answers `404 not_found` when \
there is no such endpoint and `405 method_not_allowed` for a method it does not serve.

**Lists** take `?limit=` (1–200, default 50) and `?after=<next_cursor>` and answer \
`{\"items\": [...], \"next_cursor\": \"...\" | null}`.";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tollgate control plane",
        version = env!("CARGO_PKG_VERSION"),
        description = DESCRIPTION,
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(
        schemas(Problem, Receipt),
        responses(
            Unauthorized,
            AdminOnly,
            ContentTooLarge,
            UnsupportedMediaType,
            Throttled,
            ServerError,
        ),
    ),
    modifiers(&SecuritySchemes),
)]
pub struct ApiDoc;

/// The whole document: what every resource of [`routes::RESOURCES`] documents,
/// under the API's description, shared components and security schemes.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for resource in &routes::RESOURCES {
        let api = (resource.api)();
        doc.merge(if resource.publishes {
            receipt::document_writes(api)
        } else {
            api
        });
    }
    doc
}

/// The bearer schemes operations refer to in their `security`.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, description) in [
            (
                "admin_token",
                "The admin token: every operation. Set with `CONTROL_PLANE_ADMIN_TOKEN`.",
            ),
            (
                "tenant_token",
                "A tenant token (`tgt_…`, from `POST /v1/tenants/{tenant_id}/tokens`): its own tenant only.",
            ),
            (
                "sync_token",
                "The sync token the Envoys use: `/v1/sync` and `/v1/usage` only.",
            ),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(description))
                        .build(),
                ),
            );
        }
    }
}

/// The document and Swagger UI, to merge at the top level of the app, outside `/v1`.
pub fn router<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    SwaggerUi::new(DOCS_PATH)
        .url(OPENAPI_PATH, document())
        .into()
}
