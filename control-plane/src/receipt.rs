//! Receipts: every write that changes the config answers with the version it
//! created (`Tollgate-Config-Version`), and with `?wait_for_propagation=<d>`
//! answers only once every live proxy has applied it, or `d` has passed.
//!
//! One middleware around the admin routes does it for every write, so no
//! handler has to: `Change::commit` leaves the version it committed in a
//! task-local ([`COMMITTED`]) that this middleware reads once the handler is
//! done. The wait wakes on the poll that acknowledges the version
//! (`fleet::Registry::acks`), and also looks again every
//! [`RECHECK_MS`]: a proxy that polls another replica is recorded there,
//! in the database, without waking this one.
//!
//! With the parameter, the answer carries `propagation` (`fleet::Propagation`):
//! added to a JSON object body, and a `204 No Content` becomes `200` with
//! `{"propagation": …}` as its body, only when the parameter was given. The
//! change is committed before any waiting, whatever the outcome.

use std::cell::Cell;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::time::Instant;

use crate::change::COMMITTED;
use crate::error::{ApiError, ApiResult};
use crate::fleet::Propagation;
use crate::state::AppState;
use crate::store::feed;

/// The header every config-changing write answers with.
pub const VERSION_HEADER: &str = "tollgate-config-version";
/// The query parameter asking a write to wait for its propagation.
pub const WAIT_PARAM: &str = "wait_for_propagation";
/// The longest a write may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting write looks again without being woken.
pub const RECHECK_MS: u64 = 500;
/// Largest answer body the middleware rewrites (admin answers are small).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// `wait_for_propagation` as given: `250ms`, `5s`, `1m`…, at most 30 s.
pub fn parse_wait(text: &str) -> ApiResult<Duration> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_wait_for_propagation",
            format!(
                "{WAIT_PARAM} must be a duration such as 500ms or 5s, at most 30s; got {text:?}."
            ),
        )
    };
    let wait = humantime::parse_duration(text.trim()).map_err(|_| bad())?;
    if wait > MAX_WAIT {
        return Err(bad());
    }
    Ok(wait)
}

/// The request's `wait_for_propagation`, and its URI without it (handlers
/// refuse parameters they do not know).
fn take_wait(uri: &Uri) -> ApiResult<(Option<Duration>, Option<Uri>)> {
    let Some(query) = uri.query() else {
        return Ok((None, None));
    };
    let mut wait = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == WAIT_PARAM {
            let value = percent_decode(value);
            wait = Some(parse_wait(&value)?);
        } else {
            kept.push(pair);
        }
    }
    if wait.is_none() {
        return Ok((None, None));
    }
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let uri = path_and_query
        .parse::<Uri>()
        .map_err(|e| ApiError::internal(format!("rebuilding the URI: {e}")))?;
    Ok((wait, Some(uri)))
}

/// Enough of percent-decoding for a duration (`%20`, `+`).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 2;
                } else {
                    out.push(b);
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How far `version` has reached, now.
pub async fn propagation(state: &AppState, version: u64) -> ApiResult<Propagation> {
    let current = feed::current_version(&state.db).await?;
    let proxies = state.fleet.list(&state.db, current, state.now()).await?;
    Ok(Propagation::of(version, &proxies))
}

/// Waits until every live proxy has applied `version`, or `wait` passed.
pub async fn wait_for(state: &AppState, version: u64, wait: Duration) -> ApiResult<Propagation> {
    let started = Instant::now();
    let deadline = started + wait;
    let mut acks = state.fleet.acks();
    loop {
        // Marked seen before looking, so an acknowledgement landing while
        // the database is read still wakes the next wait.
        acks.borrow_and_update();
        let mut reached = propagation(state, version).await?;
        let now = Instant::now();
        if reached.complete || now >= deadline {
            reached.waited_ms = u64::try_from(now.duration_since(started).as_millis()).unwrap_or(0);
            return Ok(reached);
        }
        let recheck = (now + Duration::from_millis(RECHECK_MS)).min(deadline);
        tokio::select! {
            _ = acks.changed() => {}
            () = tokio::time::sleep_until(recheck) => {}
        }
    }
}

/// Around the admin routes: the version header, and the wait when asked.
pub async fn receipts(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let write = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let mut wait = None;
    if write {
        match take_wait(request.uri()) {
            Ok((asked, uri)) => {
                wait = asked;
                if let Some(uri) = uri {
                    *request.uri_mut() = uri;
                }
            }
            Err(e) => return e.into_response(),
        }
    }
    let (mut response, committed) = COMMITTED
        .scope(Cell::new(None), async {
            let response = next.run(request).await;
            (response, COMMITTED.with(Cell::get))
        })
        .await;
    let Some(version) = committed.and_then(|v| u64::try_from(v).ok()) else {
        return response;
    };
    if let Ok(value) = HeaderValue::from_str(&version.to_string()) {
        response.headers_mut().insert(VERSION_HEADER, value);
    }
    let Some(wait) = wait else {
        return response;
    };
    match wait_for(&state, version, wait).await {
        Ok(reached) => with_propagation(response, &reached).await,
        Err(e) => {
            // The change is committed: say so rather than fail the answer.
            tracing::warn!(error = e.detail, "cannot read the propagation of a change");
            response
        }
    }
}

/// `response` with `propagation` in its JSON body (a 204 becomes a 200).
async fn with_propagation(response: Response, reached: &Propagation) -> Response {
    let Ok(propagation) = serde_json::to_value(reached) else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    if parts.status == StatusCode::NO_CONTENT {
        parts.status = StatusCode::OK;
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        parts.headers.remove(header::CONTENT_LENGTH);
        let body = serde_json::json!({ "propagation": propagation }).to_string();
        return Response::from_parts(parts, Body::from(body));
    }
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if json {
        if let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&bytes) {
            object.insert("propagation".to_owned(), propagation);
            parts.headers.remove(header::CONTENT_LENGTH);
            return Response::from_parts(parts, Body::from(Value::Object(object).to_string()));
        }
    }
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_durations_of_at_most_thirty_seconds() {
        assert_eq!(parse_wait("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_wait("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_wait("30s").unwrap(), MAX_WAIT);
        for bad in ["31s", "5", "soon", "", "-1s"] {
            assert_eq!(
                parse_wait(bad).unwrap_err().code,
                "invalid_wait_for_propagation"
            );
        }
    }

    #[test]
    fn the_parameter_is_taken_out_of_the_query() {
        let uri: Uri = "/v1/keys/k?wait_for_propagation=5s&x=1".parse().unwrap();
        let (wait, uri) = take_wait(&uri).unwrap();
        assert_eq!(wait, Some(Duration::from_secs(5)));
        assert_eq!(uri.unwrap().to_string(), "/v1/keys/k?x=1");
        let uri: Uri = "/v1/keys/k?wait_for_propagation=1%20s".parse().unwrap();
        assert_eq!(take_wait(&uri).unwrap().0, Some(Duration::from_secs(1)));
        let uri: Uri = "/v1/keys/k".parse().unwrap();
        assert_eq!(take_wait(&uri).unwrap(), (None, None));
    }
}
