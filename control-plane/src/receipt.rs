//! Receipts: every write that changes the config answers with the version it
//! created (`Tollgate-Config-Version`), and with `?wait_for_propagation=<d>`
//! answers only once every live proxy has applied it, or `d` has passed.
//!
//! One middleware around the admin routes does it for every write, so no
//! handler has to: `Change::commit` leaves the version it committed in a
//! task-local ([`COMMITTED`]) that this middleware reads once the handler is
//! done. The wait wakes on the poll that acknowledges the version
//! (`fleet::Registry::acks`), whichever replica recorded it (another one's
//! arrives by `NOTIFY`, see `replicas`), and also looks again every
//! [`RECHECK_MS`], in case a notification was lost with its connection.
//!
//! The version also goes into the body ([`Receipt`]): `config_version` is
//! added to a JSON object answer, and with the parameter `propagation`
//! (`fleet::Propagation`) too. A `204 No Content` stays one without the
//! parameter (the header carries the version); with it, it becomes `200` with
//! `{"config_version": …, "propagation": …}`. The change is committed before
//! any waiting, whatever the outcome. [`document_writes`] says the same in
//! the OpenAPI document, once for every write of the resources that publish.

use std::cell::Cell;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};
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

/// What every config-changing write's answer carries besides its own fields.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Receipt {
    /// The config version the write committed, as in `Tollgate-Config-Version`.
    #[schema(minimum = 1)]
    pub config_version: u64,
    /// Only with `?wait_for_propagation=`: how far the version had reached
    /// when the answer left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation: Option<Propagation>,
}

/// What `wait_for_propagation` may be: whole seconds (`s`) or milliseconds
/// (`ms`), without leading zeros, at most 30 s; exactly what [`parse_wait`] takes.
pub const WAIT_PATTERN: &str =
    "^((0|[1-9]|[12][0-9]|30)s|(0|[1-9][0-9]{0,3}|[12][0-9]{4}|30000)ms)$";

/// `wait_for_propagation` as given: `250ms`, `5s`…, at most 30 s.
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
    let (digits, unit_ms) = match text.strip_suffix("ms") {
        Some(digits) => (digits, 1),
        None => (text.strip_suffix('s').ok_or_else(bad)?, 1000),
    };
    let well_formed = !digits.is_empty()
        && digits.len() <= 5
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !well_formed {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let wait = Duration::from_millis(n * unit_ms);
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
    let reached = match wait {
        None => None,
        Some(wait) => match wait_for(&state, version, wait).await {
            Ok(reached) => Some(reached),
            Err(e) => {
                // The change is committed: say so rather than fail the answer.
                tracing::warn!(error = e.detail, "cannot read the propagation of a change");
                None
            }
        },
    };
    with_receipt(
        response,
        Receipt {
            config_version: version,
            propagation: reached,
        },
    )
    .await
}

/// `response` with the receipt's fields in its JSON object body; a 204
/// gets a body (and becomes a 200) only when there is a propagation to tell.
async fn with_receipt(response: Response, receipt: Receipt) -> Response {
    let Ok(Value::Object(fields)) = serde_json::to_value(&receipt) else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    if parts.status == StatusCode::NO_CONTENT {
        if receipt.propagation.is_none() {
            return Response::from_parts(parts, body);
        }
        parts.status = StatusCode::OK;
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::from(Value::Object(fields).to_string()));
    }
    let json = parts.status.is_success()
        && parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !json {
        return Response::from_parts(parts, body);
    }
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&bytes) {
        object.extend(fields);
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::from(Value::Object(object).to_string()));
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// Documents receipts on every write (POST, PUT, PATCH, DELETE) of `api`, a
/// resource whose writes all publish a config version: the parameter, the
/// header, [`Receipt`]'s fields in each JSON answer, and the `200` a `204`
/// becomes with the parameter. Done on the document's JSON rather than in
/// each handler's annotation so that no write can be left out.
pub fn document_writes(api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let Ok(mut doc) = serde_json::to_value(&api) else {
        return api;
    };
    let receipt = json!({"$ref": "#/components/schemas/Receipt"});
    let version_header = json!({
        "description": "The config version the write committed.",
        "schema": {"type": "integer", "format": "int64", "minimum": 1}
    });
    let parameter = json!({
        "name": WAIT_PARAM,
        "in": "query",
        "required": false,
        "description": "Answer only once every live proxy has applied the change (or after this \
            long: `500ms`, `5s`…, at most `30s`), with `propagation` in the answer. The change \
            is committed either way.",
        "schema": {"type": "string", "pattern": WAIT_PATTERN}
    });
    let bad_wait = "`invalid_wait_for_propagation`: not a duration of that form, or over 30s.";
    let paths = doc
        .get_mut("paths")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut());
    for item in paths {
        for method in ["post", "put", "patch", "delete"] {
            let Some(operation) = item.get_mut(method).and_then(Value::as_object_mut) else {
                continue;
            };
            let parameters = operation.entry("parameters").or_insert_with(|| json!([]));
            if let Some(list) = parameters.as_array_mut() {
                list.push(parameter.clone());
            }
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            let refused = responses.entry("400").or_insert_with(|| {
                json!({
                    "description": "",
                    "content": {"application/problem+json": {
                        "schema": {"$ref": "#/components/schemas/Problem"}
                    }}
                })
            });
            let said = refused["description"].as_str().unwrap_or_default();
            refused["description"] = json!(if said.is_empty() {
                bad_wait.to_owned()
            } else {
                format!("{said} {bad_wait}")
            });
            let mut waited = None;
            for (status, response) in responses.iter_mut() {
                if !status.starts_with('2') {
                    continue;
                }
                response["headers"]["Tollgate-Config-Version"] = version_header.clone();
                if status == "204" {
                    waited = Some(json!({
                        "description": "With `wait_for_propagation`: the version, and how far it reached.",
                        "headers": {"Tollgate-Config-Version": version_header.clone()},
                        "content": {"application/json": {"schema": receipt.clone()}}
                    }));
                }
                if let Some(schema) = response
                    .get_mut("content")
                    .and_then(|c| c.get_mut("application/json"))
                    .and_then(|c| c.get_mut("schema"))
                {
                    *schema = json!({"allOf": [schema.take(), receipt.clone()]});
                }
            }
            if let Some(waited) = waited {
                responses.entry("200").or_insert(waited);
            }
        }
    }
    serde_json::from_value(doc).unwrap_or(api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_durations_of_at_most_thirty_seconds() {
        assert_eq!(parse_wait("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_wait("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_wait("30s").unwrap(), MAX_WAIT);
        assert_eq!(parse_wait("0ms").unwrap(), Duration::ZERO);
        assert_eq!(parse_wait("30000ms").unwrap(), MAX_WAIT);
        for bad in [
            "31s", "5", "soon", "", "-1s", "05s", "1m", "1 s", "30001ms", "5sec", "s", "ms", "+5s",
        ] {
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
        let uri: Uri = "/v1/keys/k?wait_for_propagation=1%30s".parse().unwrap();
        assert_eq!(take_wait(&uri).unwrap().0, Some(Duration::from_secs(10)));
        let uri: Uri = "/v1/keys/k".parse().unwrap();
        assert_eq!(take_wait(&uri).unwrap(), (None, None));
    }
}
