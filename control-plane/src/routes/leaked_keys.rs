//! Reports of leaked API keys. A secret scanner that finds a Tollgate key in
//! public (GitHub's secret scanning partner program sends exactly this
//! shape), or an admin, reports it here, and every reported key that is ours
//! and still active is deactivated at once, as `PATCH /v1/keys/{id}` with
//! `active: false` would do it: the same write, under a new config version
//! that every Envoy enforces within a second, with an audit entry per key.
//!
//! The answer labels each token, in the order reported, the way GitHub's
//! false-positive feedback does, but names it by its SHA-256 (GitHub's
//! `token_hash`), never by its plaintext (`token_raw`): a token that is not
//! ours may be someone else's live secret, and an answer may be logged
//! anywhere on its way back.
//!
//! A report is one transaction: every live key it names is deactivated, or
//! none is. A repeated report finds them inactive and writes nothing.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tollgate_core::key::ApiKey;

use crate::auth::{bearer, Reporter};
use crate::change::{snapshot, Change};
use crate::docs::{ServerError, Throttled, Unauthorized, UnsupportedMediaType, PROBLEM_JSON};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::ApiJsonArray;
use crate::leak_signatures::{KEY_ID_HEADER, SIGNATURE_HEADER};
use crate::state::AppState;
use crate::store::audit::Entry;
use crate::store::keys;

/// Most tokens one report may carry.
pub const MAX_TOKENS: usize = 1000;
/// Largest report body: 1000 tokens with GitHub's URLs fit several times over.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Longest `type`, `url` or `source` the audit log keeps; longer ones are
/// cut rather than refused, since refusing the report would leave its keys live.
const MAX_NOTE_CHARS: usize = 2048;
/// The audit log's action for a key deactivated by a report.
pub const ACTION: &str = "key.leak_report";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/leaked-keys", post(leaked_keys_report))
        // Inside the app's 64 KiB default, which it replaces for this route only.
        .route_layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// This module's operation and tag in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(leaked_keys_report),
    components(schemas(LeakedToken, Verdict, Label)),
    tags((name = "leaked-keys", description = "Reports of leaked keys from secret scanners (GitHub's secret scanning partner format): live keys are deactivated at once.")),
)]
pub struct Api;

/// One leaked token, as GitHub's secret scanning reports it. Fields a
/// scanner may add later are ignored rather than refused: refusing the
/// report would leave its keys live.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LeakedToken {
    /// The plaintext as found; a key looks like `tg_<32 base62>_<6 base62>`.
    #[schema(example = "tg_AbCdEfGhIjKlMnOpQrStUvWxYz012345_0a1B2c")]
    pub token: String,
    /// The scanner's name for the kind of secret, echoed as `token_type`.
    #[serde(rename = "type")]
    #[schema(example = "tollgate_api_key")]
    pub token_type: String,
    /// Where it was found.
    #[serde(default)]
    #[schema(
        example = "https://github.com/octocat/Hello-World/blob/12345600b9cbe38a219f39a9941c9319b600c002/foo/bar.txt"
    )]
    pub url: Option<String>,
    /// What it was found in (GitHub: `content`, `commit`, `issue_comment`, …).
    #[serde(default)]
    #[schema(example = "content")]
    pub source: Option<String>,
}

impl LeakedToken {
    /// What the audit log keeps of the report: its `type`, `url` and
    /// `source`, each cut to a bounded length, and never the token, even
    /// where a field repeats it.
    fn note(&self) -> Value {
        let clean = |text: &str| -> String {
            let text = if self.token.is_empty() {
                text.to_owned()
            } else {
                text.replace(self.token.as_str(), "[redacted]")
            };
            text.chars().take(MAX_NOTE_CHARS).collect()
        };
        json!({
            "type": clean(&self.token_type),
            "url": self.url.as_deref().map(clean),
            "source": self.source.as_deref().map(clean),
        })
    }
}

/// Whether a reported token was a key of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// A key this control plane issued: now inactive, whether this report
    /// deactivated it or it already was (deleted keys included).
    TruePositive,
    /// Anything else: not a well-formed key, or one never issued here.
    FalsePositive,
}

/// The verdict on one reported token, as GitHub's false-positive feedback
/// takes it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Verdict {
    /// SHA-256 of the token as reported, lower-case hex: GitHub's
    /// `token_hash`. The plaintext is never sent back.
    #[schema(example = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")]
    pub token_hash: String,
    /// The report's `type`, as sent.
    #[schema(example = "tollgate_api_key")]
    pub token_type: String,
    pub label: Label,
}

/// Report leaked keys
///
/// Takes a JSON array of up to 1000 `{"token", "type", "url"?, "source"?}`,
/// as GitHub's secret scanning partner program sends it. Every token that is
/// a live, active key is deactivated in one transaction, exactly as `PATCH
/// /v1/keys/{id}` with `{"active": false}` does: every Envoy answers 401
/// `disabled_api_key` within about a second, and the audit log records
/// `key.leak_report` with the report's `type`, `url` and `source` (never the
/// token). The answer labels each token in order, by its SHA-256. Reporting
/// the same keys again changes nothing. No receipt: the answer is a list.
///
/// Besides a bearer token, a report may come signed as GitHub signs them:
/// `Github-Public-Key-Identifier` and `Github-Public-Key-Signature` (base64
/// ECDSA P-256 SHA-256 over the body), checked against the keys of
/// `CONTROL_PLANE_LEAK_REPORT_KEYS_FILE`; a signature that does not verify is 401.
#[utoipa::path(
    post,
    path = "/v1/leaked-keys",
    tag = "leaked-keys",
    request_body = Vec<LeakedToken>,
    responses(
        (status = 200, description = "One verdict per reported token, in the order reported.", body = Vec<Verdict>),
        (status = 400, description = "`malformed_json`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: a tenant token was sent.", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "`payload_too_large`: the body is larger than 1 MiB.", body = Problem, content_type = PROBLEM_JSON),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_body` (not an array of `{token, type, url?, source?}` with string values) or `too_many_items` (more than 1000).",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = []), ("leak_report_token" = [])),
)]
async fn leaked_keys_report(
    State(state): State<AppState>,
    request: Request,
) -> ApiResult<Json<Vec<Verdict>>> {
    let (mut parts, body) = request.into_parts();
    let signature = signed_by(&parts.headers);
    let (reporter, body) = match signature {
        // A token wins: a signature is only looked at on a request without one.
        Some((key_id, signature)) if bearer(&parts.headers).is_none() => {
            let keys = state.leak_report_keys.as_ref().ok_or_else(|| {
                ApiError::unauthorized(
                    "Signed reports are not taken here: no keys are configured \
                     (CONTROL_PLANE_LEAK_REPORT_KEYS_FILE).",
                )
            })?;
            // Read only for a caller who signs, and no further than a report may go.
            let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
                .await
                .map_err(|_| ApiError::payload_too_large())?;
            keys.verify(&key_id, &signature, &bytes)
                .map_err(ApiError::unauthorized)?;
            (Reporter::SignedScanner, Body::from(bytes))
        }
        _ => (
            Reporter::from_request_parts(&mut parts, &state).await?,
            body,
        ),
    };
    let request = Request::from_parts(parts, body);
    let ApiJsonArray(tokens) =
        ApiJsonArray::<LeakedToken, MAX_TOKENS>::from_request(request, &state).await?;
    report(&state, reporter, &tokens).await.map(Json)
}

/// A signed report's key identifier and signature, when it has both headers.
fn signed_by(headers: &HeaderMap) -> Option<(String, String)> {
    let text = |name| headers.get(name)?.to_str().ok().map(str::to_owned);
    Some((text(KEY_ID_HEADER)?, text(SIGNATURE_HEADER)?))
}

/// Deactivates every live key among `tokens` as `reporter`; the verdict on
/// each token, in order.
pub async fn report(
    state: &AppState,
    reporter: Reporter,
    tokens: &[LeakedToken],
) -> ApiResult<Vec<Verdict>> {
    // Only a well-formed key can be ours; its hash is the only form stored.
    let hashes: Vec<Option<String>> = tokens
        .iter()
        .map(|t| ApiKey::parse(&t.token).ok().map(|key| key.hash().to_hex()))
        .collect();
    let mut wanted: Vec<String> = hashes.iter().flatten().cloned().collect();
    wanted.sort();
    wanted.dedup();
    // Read first, outside any transaction, so that a report of nothing live
    // (a repeat, or only false positives) claims no config version.
    let known: BTreeMap<String, bool> = keys::activity_by_hashes(&state.db, &wanted)
        .await?
        .into_iter()
        .map(|(hash, active)| (hash, active != 0))
        .collect();
    let active: Vec<String> = known
        .iter()
        .filter(|(_, active)| **active)
        .map(|(hash, _)| hash.clone())
        .collect();
    if !active.is_empty() {
        deactivate(state, reporter, tokens, &hashes, &active).await?;
    }
    Ok(tokens
        .iter()
        .zip(&hashes)
        .map(|(token, hash)| Verdict {
            token_hash: hex::encode(Sha256::digest(token.token.as_bytes())),
            token_type: token.token_type.clone(),
            label: if hash.as_ref().is_some_and(|h| known.contains_key(h)) {
                Label::TruePositive
            } else {
                Label::FalsePositive
            },
        })
        .collect())
}

/// In one change: deactivates each key among `active` (hashes) that is
/// still active when the change reads it, and audits each with the first
/// report that named it. A change that found none left to deactivate (a
/// concurrent report, or an admin, was first) is rolled back, so it claims
/// no version and writes no entry.
async fn deactivate(
    state: &AppState,
    reporter: Reporter,
    tokens: &[LeakedToken],
    hashes: &[Option<String>],
    active: &[String],
) -> ApiResult<()> {
    let now = state.now();
    let mut change = Change::begin(state, reporter.label(), now).await?;
    let version = change.version();
    let mut deactivated = 0usize;
    let postgres = crate::db::is_postgres(&state.db);
    for found in keys::live_by_hashes(change.tx(), active, postgres).await? {
        let current = found.key;
        if current.active == 0 {
            continue;
        }
        let before = snapshot(&current.clone().view()?)?;
        // The very write of `PATCH /v1/keys/{id}` with `active: false`:
        // every other field as it is.
        let settings = current.settings()?;
        let expires = match (&current.expires_at, current.expires_at_ms) {
            (Some(text), Some(ms)) => Some((text.clone(), ms)),
            _ => None,
        };
        let fields = keys::Update {
            active: false,
            name: &current.name,
            settings: &settings,
            expires: &expires,
        };
        keys::update(change.tx(), &current.id, &fields, version, &now.rfc3339()).await?;
        let updated = keys::find(&mut **change.tx(), &current.id)
            .await?
            .ok_or_else(|| ApiError::internal("a deactivated key vanished"))?
            .view()?;
        let reported = tokens
            .iter()
            .zip(hashes)
            .find(|(_, hash)| hash.as_deref() == Some(found.key_hash.as_str()))
            .map(|(token, _)| token)
            .ok_or_else(|| ApiError::internal("a found key no token named"))?;
        let mut after = snapshot(&updated)?;
        if let Some(Value::Object(fields)) = &mut after {
            fields.insert("leak_report".to_owned(), reported.note());
        }
        change
            .audit(Entry {
                action: ACTION,
                resource_id: &current.id,
                tenant_id: Some(&updated.tenant_id),
                before,
                after,
            })
            .await?;
        deactivated += 1;
    }
    if deactivated == 0 {
        return Ok(());
    }
    change.commit().await
}
