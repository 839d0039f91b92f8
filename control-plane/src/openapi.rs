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

use serde_json::{json, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::docs::{
    AdminOnly, ContentTooLarge, ServerError, Throttled, Unauthorized, UnsupportedMediaType,
};
use crate::error::Problem;
use crate::receipt::{self, Receipt};
use crate::{constraints, routes};

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
admin-only operations 403). The Envoys use the sync token; a secret scanner may use the \
leak-report token, for `POST /v1/leaked-keys` only. `/v1/catalog` and `/healthz` are public.

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
/// under the API's description, shared components and security schemes,
/// with the rules of what each accepts and the links between them. JSON
/// rather than utoipa's model, which has no room for some of the rules'
/// keywords (`propertyNames`, an object's `anyOf`).
pub fn document() -> Value {
    let mut doc = ApiDoc::openapi();
    for resource in &routes::RESOURCES {
        let api = (resource.api)();
        doc.merge(if resource.publishes {
            receipt::document_writes(api)
        } else {
            api
        });
    }
    let mut doc = serde_json::to_value(&doc).expect("the document is JSON");
    constraints::state_in(&mut doc);
    with_links(&mut doc);
    doc
}

/// `$response.body#/id`, the created resource's own id.
const ID: &str = "$response.body#/id";

/// The links from what creates a resource to what reads, changes or uses
/// it: (path, method, status, link, operation, parameters, request body
/// fields). With them a client, or a stateful test, walks from a new plan to
/// its tenants, their keys and tokens by the ids the answers carry.
#[allow(clippy::type_complexity)]
const LINKS: &[(
    &str,
    &str,
    &str,
    &str,
    &str,
    &[(&str, &str)],
    &[(&str, &str)],
)] = &[
    (
        "/v1/plans",
        "post",
        "201",
        "GetPlan",
        "plans_show",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/plans",
        "post",
        "201",
        "ChangePlan",
        "plans_update",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/plans",
        "post",
        "201",
        "DeletePlan",
        "plans_delete",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/plans",
        "post",
        "201",
        "CreateTenantOnPlan",
        "tenants_create",
        &[],
        &[("plan_id", ID)],
    ),
    (
        "/v1/plans",
        "post",
        "201",
        "ListTenantsOnPlan",
        "tenants_list",
        &[("plan_id", ID)],
        &[],
    ),
    (
        "/v1/plans",
        "post",
        "201",
        "OpenAnonymousAccess",
        "anonymous_replace",
        &[],
        &[("plan_id", ID)],
    ),
    (
        "/v1/plans",
        "post",
        "201",
        "GetPropagation",
        "propagation_of",
        &[("version", "$response.header.Tollgate-Config-Version")],
        &[],
    ),
    (
        "/v1/plans/{id}",
        "patch",
        "200",
        "GetPlan",
        "plans_show",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/tenants",
        "post",
        "201",
        "GetTenant",
        "tenants_show",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/tenants",
        "post",
        "201",
        "ChangeTenant",
        "tenants_update",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/tenants",
        "post",
        "201",
        "DeleteTenant",
        "tenants_delete",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/tenants",
        "post",
        "201",
        "GetTenantUsage",
        "tenant_usage",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/tenants",
        "post",
        "201",
        "GetPlanOfTenant",
        "plans_show",
        &[("id", "$response.body#/plan_id")],
        &[],
    ),
    (
        "/v1/tenants",
        "post",
        "201",
        "IssueKey",
        "keys_create",
        &[("tenant_id", ID)],
        &[],
    ),
    (
        "/v1/tenants",
        "post",
        "201",
        "IssueKeys",
        "keys_create_batch",
        &[("tenant_id", ID)],
        &[],
    ),
    (
        "/v1/tenants",
        "post",
        "201",
        "ListKeys",
        "keys_list",
        &[("tenant_id", ID)],
        &[],
    ),
    (
        "/v1/tenants",
        "post",
        "201",
        "IssueToken",
        "tokens_create",
        &[("tenant_id", ID)],
        &[],
    ),
    (
        "/v1/tenants",
        "post",
        "201",
        "ListTokens",
        "tokens_list",
        &[("tenant_id", ID)],
        &[],
    ),
    (
        "/v1/tenants",
        "post",
        "201",
        "SetWebhook",
        "webhook_set",
        &[("tenant_id", ID)],
        &[],
    ),
    (
        "/v1/tenants",
        "post",
        "201",
        "ListDeliveries",
        "deliveries_list",
        &[("tenant_id", ID)],
        &[],
    ),
    (
        "/v1/tenants",
        "post",
        "201",
        "AuditOfTenant",
        "audit_list",
        &[("tenant_id", ID)],
        &[],
    ),
    (
        "/v1/tenants/{id}",
        "patch",
        "200",
        "GetTenant",
        "tenants_show",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/tenants/{tenant_id}/webhook",
        "put",
        "200",
        "GetWebhook",
        "webhook_get",
        &[("tenant_id", "$response.body#/tenant_id")],
        &[],
    ),
    (
        "/v1/tenants/{tenant_id}/webhook",
        "put",
        "200",
        "DeleteWebhook",
        "webhook_delete",
        &[("tenant_id", "$response.body#/tenant_id")],
        &[],
    ),
    (
        "/v1/tenants/{tenant_id}/keys",
        "post",
        "201",
        "GetKey",
        "keys_show",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/tenants/{tenant_id}/keys",
        "post",
        "201",
        "ChangeKey",
        "keys_update",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/tenants/{tenant_id}/keys",
        "post",
        "201",
        "DeleteKey",
        "keys_delete",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/tenants/{tenant_id}/keys",
        "post",
        "201",
        "RotateKey",
        "keys_rotate",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/tenants/{tenant_id}/keys",
        "post",
        "201",
        "GetKeyUsage",
        "key_usage",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/tenants/{tenant_id}/keys/batch",
        "post",
        "201",
        "GetFirstKey",
        "keys_show",
        &[("id", "$response.body#/keys/0/id")],
        &[],
    ),
    (
        "/v1/keys/{id}",
        "patch",
        "200",
        "GetKey",
        "keys_show",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/keys/{id}/rotate",
        "post",
        "201",
        "GetSuccessor",
        "keys_show",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/keys/{id}/rotate",
        "post",
        "201",
        "RotateSuccessor",
        "keys_rotate",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/keys/{id}/rotate",
        "post",
        "201",
        "DeleteSuccessor",
        "keys_delete",
        &[("id", ID)],
        &[],
    ),
    (
        "/v1/tenants/{tenant_id}/tokens",
        "post",
        "201",
        "RevokeToken",
        "tokens_revoke",
        &[("tenant_id", "$response.body#/tenant_id"), ("id", ID)],
        &[],
    ),
];

/// `doc` with [`LINKS`] in its responses; a link to an operation or from a
/// response the document lacks panics, so no test passes with one.
fn with_links(doc: &mut Value) {
    let operation_ids: Vec<String> = doc["paths"]
        .as_object()
        .into_iter()
        .flat_map(|paths| paths.values())
        .filter_map(Value::as_object)
        .flat_map(|item| item.values())
        .filter_map(|op| op["operationId"].as_str().map(str::to_owned))
        .collect();
    for (path, method, status, name, target, parameters, body) in LINKS {
        assert!(
            operation_ids.iter().any(|id| id == target),
            "a link to {target}, which the document lacks"
        );
        let response = &mut doc["paths"][path][method]["responses"][status];
        assert!(
            response.is_object(),
            "a link from {method} {path} {status}, which the document lacks"
        );
        let mut link = json!({"operationId": target});
        if !parameters.is_empty() {
            link["parameters"] = parameters
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
        }
        if !body.is_empty() {
            link["requestBody"] = body
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
        }
        response["links"][name] = link;
    }
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
            (
                "leak_report_token",
                "A secret scanner's token: `POST /v1/leaked-keys` only. Set with \
                 `CONTROL_PLANE_LEAK_REPORT_TOKEN`.",
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
        .external_url_unchecked(OPENAPI_PATH, document())
        .into()
}
