//! The one error type of the API: every failure leaves as `application/problem+json`
//! with a stable `code`. Internal details are logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Sent as `Retry-After` (whole seconds) when set.
    pub retry_after_s: Option<u64>,
    /// The database rolled the transaction back whole (a deadlock or a
    /// serialization failure): trying it again at once is safe.
    rolled_back: bool,
}

/// An error body (RFC 9457 problem details), sent as `application/problem+json`.
// The OpenAPI document's `Problem` schema is derived from this very struct.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct Problem<'a> {
    /// `urn:tollgate:problem:<code>`.
    #[serde(rename = "type")]
    #[schema(example = "urn:tollgate:problem:not_found")]
    pub kind: String,
    /// The HTTP status's reason phrase.
    #[schema(example = "Not Found")]
    pub title: &'a str,
    /// The HTTP status code, repeated.
    #[schema(example = 404)]
    pub status: u16,
    /// What went wrong, for people.
    #[schema(example = "No plan with id \"plan_x\".")]
    pub detail: &'a str,
    /// What went wrong, for programs: stable, lower-case, e.g. `invalid_body`, `plan_in_use`.
    #[schema(example = "not_found")]
    pub code: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            retry_after_s: None,
            rolled_back: false,
        }
    }

    /// Adds `Retry-After: <seconds>` to the response.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("No {what} with id {id:?}."),
        )
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    /// `413 payload_too_large`: the body is over what the route takes.
    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "The body is larger than this endpoint accepts.",
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// The database does not answer (stopped, restarting, unreachable).
    pub fn database_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "The database does not answer; retry shortly.",
        )
        .with_retry_after(2)
    }

    /// Logs the cause; the client only learns that something went wrong on our side.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Something went wrong on our side; it has been logged.",
        )
    }
}

impl ApiError {
    /// A transaction rolled back whole, which may succeed if tried again at once.
    pub fn is_rolled_back(&self) -> bool {
        self.rolled_back
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // Every connection of the pool stayed busy for its whole wait: an
        // overload to say so, with a time to retry, not a fault of ours.
        if matches!(e, sqlx::Error::PoolTimedOut) {
            tracing::warn!("no database connection came free in time; the client may retry");
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "The database is busy; retry shortly.",
            )
            .with_retry_after(1);
        }
        // The connection failed under the query, or the server said it is
        // going away or not up yet (SQLSTATE class 08, 57P01–57P03).
        if matches!(
            e,
            sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
        ) || matches!(&e, sqlx::Error::Database(db) if db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
        })) {
            tracing::warn!(error = %e, "the database connection failed; the client may retry");
            return Self::database_unavailable();
        }
        if let sqlx::Error::Database(db) = &e {
            // SQLite's lock, and PostgreSQL's deadlock and serialization
            // failure (the transaction was rolled back whole, so trying
            // again is safe): the client is told so rather than of a fault.
            if db.message().contains("database is locked") {
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "The database is busy; retry shortly.",
                )
                .with_retry_after(1);
            }
            if matches!(db.code().as_deref(), Some("40P01" | "40001")) {
                tracing::warn!(error = %e, "a transaction was rolled back; the client may retry");
                let mut rolled_back = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "The database rolled the change back to resolve a conflict; retry it.",
                )
                .with_retry_after(1);
                rolled_back.rolled_back = true;
                return rolled_back;
            }
        }
        Self::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = serde_json::to_vec(&Problem {
            kind: format!("urn:tollgate:problem:{}", self.code),
            title,
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
        })
        .unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tollgate-admin\""),
            );
        }
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_fails_under_a_query_is_the_database_unavailable_not_our_fault() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        for e in [sqlx::Error::Io(reset), sqlx::Error::PoolClosed] {
            let error = ApiError::from(e);
            assert_eq!(
                (error.status, error.code, error.retry_after_s),
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    Some(2)
                )
            );
        }
        // A pool that stays busy is an overload, not an outage.
        let busy = ApiError::from(sqlx::Error::PoolTimedOut);
        assert_eq!(
            (busy.status, busy.code),
            (StatusCode::SERVICE_UNAVAILABLE, "busy")
        );
        let other = ApiError::from(sqlx::Error::RowNotFound);
        assert_eq!(other.code, "internal_error");
    }
}
