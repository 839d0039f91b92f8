//! The parts of the OpenAPI document every route shares: the error
//! responses (401, 403 for admin-only operations, 413, 415, 429, 5XX) as
//! reusable components, and the error media type. Below the routes, so a
//! route refers to them without depending on the document that lists it.

use utoipa::ToResponse;

use crate::error::Problem;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

// Reusable responses. Each wraps `Problem` only to name its body's schema;
// none is ever constructed.

/// `unauthorized`: no `Authorization: Bearer` token, or not a valid one.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"tollgate-admin\"`"))
)]
pub struct Unauthorized(pub Problem<'static>);

/// `forbidden`: this operation needs the admin token, and a tenant token was sent.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct AdminOnly(pub Problem<'static>);

/// `payload_too_large`: the body is larger than 64 KiB.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct ContentTooLarge(pub Problem<'static>);

/// `unsupported_media_type`: the body must be sent with `Content-Type: application/json`.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct UnsupportedMediaType(pub Problem<'static>);

/// `admin_rate_limited`: too many admin API requests with this token or from this client
/// address; retry after `Retry-After` seconds.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "Seconds until a request would pass."))
)]
pub struct Throttled(pub Problem<'static>);

/// `internal_error` (500, logged on the server), `busy` (503: the database is busy; retry shortly)
/// or `database_unavailable` (503: the database does not answer; retry shortly).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
pub struct ServerError(pub Problem<'static>);
