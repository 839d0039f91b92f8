//! API keys: issued once in plaintext, stored only as SHA-256, pushed to every filter.
//!
//! A key may carry an expiry, scopes (method + path prefix), a client-IP
//! allow-list and overrides of its plan's limits and quota; the filter enforces
//! all of them. Rotation issues a successor with the same settings and lets the
//! old key live on for a grace period. Keys are also issued in bulk, up to
//! 10000 with the same settings in one transaction and one config version.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tollgate_core::config::KeyRecord;
use tollgate_core::key::{ApiKey, BODY_LEN};
use tollgate_core::wire::{WireKey, WireLimit, WireScope};

use crate::auth::Principal;
use crate::change::{snapshot, Change};
use crate::clock::Now;
use crate::db::{self, Tx};
use crate::docs::{
    ContentTooLarge, ServerError, Throttled, Unauthorized, UnsupportedMediaType, PROBLEM_JSON,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiQuery};
use crate::input::{check_path_prefixes, in_utc, not_null, nullable, validate_name};
use crate::paging::{cursor, page_limit, Page};
use crate::state::AppState;
use crate::store::audit::Entry;
use crate::store::keys::{self, Fresh, KeyRow, Shared};
pub use crate::store::keys::{KeySettings, KeyView};
use crate::store::tenants;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/tenants/{tenant_id}/keys",
            post(keys_create).get(keys_list),
        )
        .route("/tenants/{tenant_id}/keys/batch", post(keys_create_batch))
        .route(
            "/keys/{id}",
            get(keys_show).patch(keys_update).delete(keys_delete),
        )
        .route("/keys/{id}/rotate", post(keys_rotate))
}

/// This module's operations and tag in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(keys_create, keys_create_batch, keys_list, keys_show, keys_update, keys_delete, keys_rotate),
    tags((name = "keys", description = "API keys: the plaintext is shown once, at creation or rotation.")),
)]
pub struct Api;

/// Longest grace period a rotated key may keep working: 30 days.
pub const MAX_GRACE_SECONDS: u64 = 30 * 24 * 3600;

// No `#[serde(flatten)]` of KeySettings: serde cannot combine it with deny_unknown_fields.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// 1 to 200 characters.
    #[schema(example = "ci")]
    pub name: String,
    /// RFC 3339, in the future; after it the filter answers 401 `expired_api_key`.
    #[serde(default)]
    #[schema(format = DateTime, example = "2099-01-31T00:00:00Z")]
    pub expires_at: Option<String>,
    /// The key may only do what one of these permits; absent means everything.
    #[serde(default)]
    pub scopes: Option<Vec<WireScope>>,
    /// IPv4 / IPv6 CIDRs the key may be used from; absent means anywhere.
    #[serde(default)]
    #[schema(example = json!(["10.0.0.0/8", "2001:db8::/32"]))]
    pub allowed_cidrs: Option<Vec<String>>,
    /// Admin token only: replace the plan's limit of the same name, or add to them.
    #[serde(default)]
    pub limits: Option<Vec<WireLimit>>,
    /// Admin token only: replaces the plan's monthly quota for this key.
    #[serde(default)]
    pub monthly_quota: Option<u64>,
}

impl CreateKey {
    fn split(self) -> (String, KeySettings) {
        (
            self.name,
            KeySettings {
                expires_at: self.expires_at,
                scopes: self.scopes,
                allowed_cidrs: self.allowed_cidrs,
                limits: self.limits,
                monthly_quota: self.monthly_quota,
            },
        )
    }
}

/// Most keys one `POST /v1/tenants/{tenant_id}/keys/batch` issues.
pub const MAX_BATCH_KEYS: u64 = 10_000;

/// The name of keys issued in a batch whose body names none.
pub const DEFAULT_BATCH_NAME: &str = "batch";

/// `count` keys with the same settings: `count`, and the fields of
/// `CreateKey`, where `name` may be left out.
// Read through `TryFrom`, as `CreateKey` plus `count`: serde's `flatten`
// would lose `deny_unknown_fields`. Its schema is derived from `CreateKey`'s
// the same way (below), so the two cannot drift apart.
#[derive(Debug, Deserialize)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
pub struct CreateKeys {
    pub count: u64,
    pub key: CreateKey,
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for CreateKeys {
    type Error = serde_json::Error;

    fn try_from(
        mut body: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, serde_json::Error> {
        use serde::de::Error as _;
        let count = body
            .remove("count")
            .ok_or_else(|| serde_json::Error::missing_field("count"))?;
        let count = serde_json::from_value(count)
            .map_err(|e| serde_json::Error::custom(format!("count: {e}")))?;
        body.entry("name")
            .or_insert_with(|| DEFAULT_BATCH_NAME.into());
        let key = serde_json::from_value(serde_json::Value::Object(body))?;
        Ok(Self { count, key })
    }
}

impl utoipa::PartialSchema for CreateKeys {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
        use utoipa::openapi::RefOr;
        let mut schema = <CreateKey as utoipa::PartialSchema>::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            object.description = Some(
                "`count` keys with the same settings: `count`, and the fields of `CreateKey`, \
                 where `name` may be left out."
                    .into(),
            );
            object.required.retain(|field| field != "name");
            object.required.insert(0, "count".into());
            if let Some(RefOr::T(Schema::Object(name))) = object.properties.get_mut("name") {
                name.description = Some(format!(
                    "1 to 200 characters; `{DEFAULT_BATCH_NAME}` when absent."
                ));
            }
            let count = ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(1))
                .maximum(Some(MAX_BATCH_KEYS))
                .description(Some("How many keys to issue, 1 to 10000."))
                .examples([1000]);
            object.properties.insert("count".into(), count.into());
        }
        schema
    }
}

impl utoipa::ToSchema for CreateKeys {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <CreateKey as utoipa::ToSchema>::schemas(schemas);
    }
}

/// Absent fields stay as they are; `null` clears an optional setting (and
/// is refused for `active` and `name`). At least one field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct UpdateKey {
    /// `false` deactivates the key: within a second Envoy answers 401 `disabled_api_key`.
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = bool)]
    pub active: Option<bool>,
    #[serde(default, deserialize_with = "not_null")]
    #[schema(value_type = String)]
    pub name: Option<String>,
    /// RFC 3339; a new one must be in the future.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, format = DateTime, example = "2099-01-31T00:00:00Z")]
    pub expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Vec<WireScope>>)]
    pub scopes: Option<Option<Vec<WireScope>>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Vec<String>>)]
    pub allowed_cidrs: Option<Option<Vec<String>>>,
    /// Admin token only.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Vec<WireLimit>>)]
    pub limits: Option<Option<Vec<WireLimit>>>,
    /// Admin token only.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u64>)]
    pub monthly_quota: Option<Option<u64>>,
}

impl UpdateKey {
    fn is_empty(&self) -> bool {
        self.active.is_none()
            && self.name.is_none()
            && self.expires_at.is_none()
            && self.scopes.is_none()
            && self.allowed_cidrs.is_none()
            && self.limits.is_none()
            && self.monthly_quota.is_none()
    }
}

/// Limits and quota overrides raise what a key may do beyond its plan, so
/// only the admin sets them; a tenant may narrow its keys (expiry, scopes,
/// addresses) but not widen them.
fn require_admin_for_overrides(principal: &Principal, sets_overrides: bool) -> ApiResult<()> {
    if sets_overrides && !principal.is_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Overriding a key's limits or monthly_quota needs the admin token.",
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working, at most 30 days (2592000); 0 (the default) ends it now.
    #[serde(default)]
    #[schema(maximum = 2592000)]
    pub grace_seconds: u64,
}

/// The one response that carries the plaintext.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssuedKey {
    #[serde(flatten)]
    pub view: KeyView,
    /// The plaintext key, `tg_<32 base62>_<6 base62>`: shown here and nowhere else, ever.
    pub key: String,
}

/// The answer to a batch: each key with its plaintext, shown here and nowhere else, ever.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssuedKeys {
    /// One per key issued.
    pub keys: Vec<IssuedKey>,
}

/// Settings checked the way every filter will check them, plus the expiry
/// parsed: (RFC 3339 in UTC, Unix ms).
struct Checked {
    expires: Option<(String, i64)>,
}

fn parse_expiry(text: &str) -> ApiResult<(String, i64)> {
    let at = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        ApiError::invalid(
            "invalid_expiry",
            format!("expires_at must be an RFC 3339 time like 2027-01-31T00:00:00Z: {e}"),
        )
    })?;
    if at.unix_timestamp() < 0 {
        return Err(ApiError::invalid(
            "invalid_expiry",
            "expires_at must be after 1970.",
        ));
    }
    // Past the year 9999 in UTC it reads as that year's last second, the
    // latest RFC 3339 writes: never, in practice.
    let utc = in_utc(at)?;
    let ms = i64::try_from(utc.unix_timestamp_nanos() / 1_000_000).map_err(ApiError::internal)?;
    let shown = utc.format(&Rfc3339).map_err(ApiError::internal)?;
    Ok((shown, ms))
}

fn check(settings: &KeySettings) -> ApiResult<Checked> {
    let expires = settings
        .expires_at
        .as_deref()
        .map(parse_expiry)
        .transpose()?;
    if settings
        .monthly_quota
        .is_some_and(|q| i64::try_from(q).is_err())
    {
        return Err(ApiError::invalid(
            "invalid_key",
            "monthly_quota is too large.",
        ));
    }
    KeyRecord::try_from(&WireKey {
        hash: "0".repeat(64),
        id: "key".into(),
        tenant_id: "tenant".into(),
        plan_id: "plan".into(),
        active: true,
        expires_at_ms: None,
        scopes: settings.scopes.clone(),
        allowed_cidrs: settings.allowed_cidrs.clone(),
        limits: settings.limits.clone(),
        monthly_quota: settings.monthly_quota,
        billing_anchor_day: None,
    })
    .map_err(|e| ApiError::invalid("invalid_key", e.0))?;
    let scopes = settings.scopes.iter().flatten();
    check_path_prefixes(scopes.map(|s| s.path_prefix.as_deref()))
        .map_err(|e| ApiError::invalid("invalid_key", format!("scope: {e}")))?;
    Ok(Checked { expires })
}

/// What a new key, one or a batch, must pass before anything is written:
/// overrides only from the admin, a valid name, settings every filter will
/// accept, and an expiry (if any) in the future.
fn check_new(
    principal: &Principal,
    name: &str,
    settings: &KeySettings,
    now: Now,
) -> ApiResult<Checked> {
    require_admin_for_overrides(
        principal,
        settings.limits.is_some() || settings.monthly_quota.is_some(),
    )?;
    validate_name("name", name)?;
    let checked = check(settings)?;
    if checked.expires.as_ref().is_some_and(|e| e.1 <= now.db_ms()) {
        return Err(ApiError::invalid(
            "invalid_expiry",
            "expires_at must be in the future.",
        ));
    }
    Ok(checked)
}

/// In the change's transaction: 404 unless the tenant exists, 409
/// `key_limit_reached` when `adding` more keys would exceed its plan's `max_api_keys`.
async fn check_allowance(tx: &mut Tx, tenant_id: &str, adding: i64) -> ApiResult<()> {
    let max_api_keys = keys::allowance(tx, tenant_id).await?;
    let Some(max_api_keys) = max_api_keys else {
        return Err(ApiError::not_found("tenant", tenant_id));
    };
    if let Some(max) = max_api_keys {
        let count = keys::count_of_tenant(tx, tenant_id).await?;
        if count.saturating_add(adding) > max {
            let more = if adding > 1 {
                format!(
                    "; {adding} more would make {}",
                    count.saturating_add(adding)
                )
            } else {
                String::new()
            };
            return Err(ApiError::conflict(
                "key_limit_reached",
                format!("The tenant's plan allows {max} API keys and it has {count}{more}."),
            ));
        }
    }
    Ok(())
}

/// Generates `count` keys that share everything in `shared` and writes
/// them in `change`: their ids and plaintexts, for the one response that shows them.
async fn issue(change: &mut Change, shared: &Shared<'_>, count: usize) -> ApiResult<Vec<Fresh>> {
    let fresh = (0..count)
        .map(|_| {
            Ok(Fresh {
                id: db::new_id("key"),
                key: ApiKey::from_body(&Alphanumeric.sample_string(&mut rand::rng(), BODY_LEN))
                    .map_err(ApiError::internal)?,
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let (version, now) = (change.version(), change.now().rfc3339());
    keys::insert(change.tx(), version, shared, &fresh, &now).await?;
    Ok(fresh)
}

/// The one key [`issue`] issued.
fn only(mut fresh: Vec<Fresh>) -> ApiResult<Fresh> {
    fresh
        .pop()
        .ok_or_else(|| ApiError::internal("no key issued"))
}

fn issued(issued: IssuedKey) -> Response {
    let location = format!("/v1/keys/{}", issued.view.id);
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        Json(issued),
    )
        .into_response()
}

fn issued_key(view: KeyView, key: &ApiKey) -> IssuedKey {
    IssuedKey {
        view,
        key: key.expose().to_owned(),
    }
}

/// Issue a key
///
/// The plaintext `key` is in this response only. The plan's `max_api_keys` is enforced.
/// A tenant token may issue keys for its own tenant, without `limits` or `monthly_quota`.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant_id}/keys",
    tag = "keys",
    params(("tenant_id" = String, Path, description = "Tenant id.")),
    request_body = CreateKey,
    responses(
        (status = 201, description = "Issued.", body = IssuedKey,
            headers(
                ("Location" = String, description = "`/v1/keys/{id}`"),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
        (status = 400, description = "`malformed_json`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: a tenant token set `limits` or `monthly_quota`.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "`not_found`: no such tenant, or another tenant's.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "`key_limit_reached`: the plan's `max_api_keys`.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = ContentTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_body`, `invalid_name`, `invalid_expiry` or `invalid_key` (scopes, CIDRs, limits).",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = []), ("tenant_token" = [])),
)]
async fn keys_create(
    principal: Principal,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    ApiJson(input): ApiJson<CreateKey>,
) -> ApiResult<Response> {
    create(&state, &principal, &tenant_id, input)
        .await
        .map(issued)
}

/// Issues a key for `tenant_id` as `principal`: the API's and the dashboard's
/// one way. The answer is the only place its plaintext ever appears.
pub async fn create(
    state: &AppState,
    principal: &Principal,
    tenant_id: &str,
    input: CreateKey,
) -> ApiResult<IssuedKey> {
    if !principal.sees(tenant_id) {
        return Err(ApiError::not_found("tenant", tenant_id));
    }
    let now = state.now();
    let (name, settings) = input.split();
    let checked = check_new(principal, &name, &settings, now)?;

    let mut change = Change::begin(state, principal.label(), now).await?;
    check_allowance(change.tx(), tenant_id, 1).await?;
    let shared = Shared {
        tenant_id,
        name: &name,
        settings: &settings,
        expires: &checked.expires,
        rotated_from: None,
    };
    let Fresh { id, key } = only(issue(&mut change, &shared, 1).await?)?;
    let view = keys::find(&mut **change.tx(), &id)
        .await?
        .ok_or_else(|| ApiError::internal("inserted key not found"))?
        .view()?;
    change
        .audit(Entry {
            action: "key.create",
            resource_id: &id,
            tenant_id: Some(tenant_id),
            before: None,
            after: snapshot(&view)?,
        })
        .await?;
    change.commit().await?;
    Ok(issued_key(view, &key))
}

/// Issue keys in bulk
///
/// `count` keys (1 to 10000) with the same name (`batch` when absent) and
/// settings, all or none, in one config version: every Envoy learns of them together. The plaintext
/// keys are in this response only. The plan's `max_api_keys` counts all of
/// them. A tenant token may issue keys for its own tenant, without `limits`
/// or `monthly_quota`. One audit entry (`key.batch_create`) lists the ids.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant_id}/keys/batch",
    tag = "keys",
    params(("tenant_id" = String, Path, description = "Tenant id.")),
    request_body = CreateKeys,
    responses(
        (status = 201, description = "Issued, every one.", body = IssuedKeys,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 400, description = "`malformed_json`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: a tenant token set `limits` or `monthly_quota`.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "`not_found`: no such tenant, or another tenant's.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "`key_limit_reached`: the plan's `max_api_keys` would be exceeded; nothing is issued.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = ContentTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_count` (not 1 to 10000), `invalid_body`, `invalid_name`, `invalid_expiry` or `invalid_key` (scopes, CIDRs, limits).",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = []), ("tenant_token" = [])),
)]
async fn keys_create_batch(
    principal: Principal,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    ApiJson(input): ApiJson<CreateKeys>,
) -> ApiResult<Response> {
    if !principal.sees(&tenant_id) {
        return Err(ApiError::not_found("tenant", &tenant_id));
    }
    if !(1..=MAX_BATCH_KEYS).contains(&input.count) {
        return Err(ApiError::invalid(
            "invalid_count",
            format!("count must be between 1 and {MAX_BATCH_KEYS}."),
        ));
    }
    // At most MAX_BATCH_KEYS, so both conversions hold.
    let count = usize::try_from(input.count).map_err(ApiError::internal)?;
    let adding = i64::try_from(input.count).map_err(ApiError::internal)?;
    let now = state.now();
    let (name, settings) = input.key.split();
    let checked = check_new(&principal, &name, &settings, now)?;

    let mut change = Change::begin(&state, principal.label(), now).await?;
    let version = change.version();
    check_allowance(change.tx(), &tenant_id, adding).await?;
    let shared = Shared {
        tenant_id: &tenant_id,
        name: &name,
        settings: &settings,
        expires: &checked.expires,
        rotated_from: None,
    };
    let fresh = issue(&mut change, &shared, count).await?;
    // Read back as stored, like a single key: every key of this version is one of ours.
    let mut rows: std::collections::HashMap<String, KeyRow> =
        keys::of_version(change.tx(), version, &tenant_id)
            .await?
            .into_iter()
            .map(|row| (row.id.clone(), row))
            .collect();
    let keys = fresh
        .iter()
        .map(|f| {
            let row = rows
                .remove(&f.id)
                .ok_or_else(|| ApiError::internal("inserted key not found"))?;
            Ok(issued_key(row.view()?, &f.key))
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let batch_id = db::new_id("batch");
    change
        .audit(Entry {
            action: "key.batch_create",
            resource_id: &batch_id,
            tenant_id: Some(&tenant_id),
            before: None,
            after: Some(serde_json::json!({
                "count": count,
                "key_ids": fresh.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
                "name": name,
                "expires_at": checked.expires.as_ref().map(|e| e.0.as_str()),
                "scopes": settings.scopes,
                "allowed_cidrs": settings.allowed_cidrs,
                "limits": settings.limits,
                "monthly_quota": settings.monthly_quota,
            })),
        })
        .await?;
    change.commit().await?;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(IssuedKeys { keys }),
    )
        .into_response())
}

/// 404 unless the key exists and belongs to a tenant the caller may see.
async fn visible_key(state: &AppState, principal: &Principal, id: &str) -> ApiResult<()> {
    match keys::find(&state.db, id).await? {
        Some(key) if principal.sees(&key.tenant_id) => Ok(()),
        _ => Err(ApiError::not_found("API key", id)),
    }
}

/// Get a key
#[utoipa::path(
    get,
    path = "/v1/keys/{id}",
    tag = "keys",
    params(("id" = String, Path, description = "Key id.")),
    responses(
        (status = 200, description = "The key's metadata.", body = KeyView),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: no such key, or another tenant's.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = []), ("tenant_token" = [])),
)]
async fn keys_show(
    principal: Principal,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyView>> {
    visible_key(&state, &principal, &id).await?;
    let row = keys::find(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key", &id))?;
    Ok(Json(row.view()?))
}

/// Change a key
///
/// Every Envoy enforces the change within about a second.
#[utoipa::path(
    patch,
    path = "/v1/keys/{id}",
    tag = "keys",
    params(("id" = String, Path, description = "Key id.")),
    request_body = UpdateKey,
    responses(
        (status = 200, description = "The key as changed.", body = KeyView),
        (status = 400, description = "`malformed_json`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: a tenant token set `limits` or `monthly_quota`.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "`not_found`: no such key, or another tenant's.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = ContentTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_body` (including nothing to change or a `null` where none is allowed), \
            `invalid_name`, `invalid_expiry` or `invalid_key`.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = []), ("tenant_token" = [])),
)]
async fn keys_update(
    principal: Principal,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<UpdateKey>,
) -> ApiResult<Json<KeyView>> {
    update(&state, &principal, &id, input).await.map(Json)
}

/// Changes key `id` as `principal`; only the admin may override its limits or quota.
pub async fn update(
    state: &AppState,
    principal: &Principal,
    id: &str,
    input: UpdateKey,
) -> ApiResult<KeyView> {
    visible_key(state, principal, id).await?;
    if input.is_empty() {
        return Err(ApiError::invalid(
            "invalid_body",
            "Nothing to change: send at least one of active, name, expires_at, scopes, \
             allowed_cidrs, limits, monthly_quota.",
        ));
    }
    require_admin_for_overrides(
        principal,
        input.limits.is_some() || input.monthly_quota.is_some(),
    )?;
    if let Some(name) = &input.name {
        validate_name("name", name)?;
    }
    let now = state.now();
    let mut change = Change::begin(state, principal.label(), now).await?;
    let version = change.version();
    let Some(current) = keys::find(&mut **change.tx(), id).await? else {
        return Err(ApiError::not_found("API key", id));
    };
    let current_settings = current.settings()?;
    let new_expiry = matches!(input.expires_at, Some(Some(_)));
    let settings = KeySettings {
        expires_at: input.expires_at.unwrap_or(current_settings.expires_at),
        scopes: input.scopes.unwrap_or(current_settings.scopes),
        allowed_cidrs: input
            .allowed_cidrs
            .unwrap_or(current_settings.allowed_cidrs),
        limits: input.limits.unwrap_or(current_settings.limits),
        monthly_quota: input
            .monthly_quota
            .unwrap_or(current_settings.monthly_quota),
    };
    let checked = check(&settings)?;
    if new_expiry && checked.expires.as_ref().is_some_and(|e| e.1 <= now.db_ms()) {
        return Err(ApiError::invalid(
            "invalid_expiry",
            "expires_at must be in the future.",
        ));
    }
    let active = input.active.unwrap_or(current.active != 0);
    let name = input.name.unwrap_or_else(|| current.name.clone());
    let fields = keys::Update {
        active,
        name: &name,
        settings: &settings,
        expires: &checked.expires,
    };
    keys::update(change.tx(), id, &fields, version, &now.rfc3339()).await?;
    let updated = keys::find(&mut **change.tx(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key", id))?
        .view()?;
    change
        .audit(Entry {
            action: "key.update",
            resource_id: id,
            tenant_id: Some(&updated.tenant_id),
            before: snapshot(&current.clone().view()?)?,
            after: snapshot(&updated)?,
        })
        .await?;
    change.commit().await?;
    Ok(updated)
}

/// Delete a key
///
/// Every Envoy refuses it within about a second (401 `invalid_api_key`).
#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    tag = "keys",
    params(("id" = String, Path, description = "Key id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: no such key, or another tenant's.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = []), ("tenant_token" = [])),
)]
async fn keys_delete(
    principal: Principal,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    delete(&state, &principal, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes key `id` as `principal`: every Envoy refuses it within about a second.
pub async fn delete(state: &AppState, principal: &Principal, id: &str) -> ApiResult<()> {
    visible_key(state, principal, id).await?;
    let now = state.now();
    let mut change = Change::begin(state, principal.label(), now).await?;
    let version = change.version();
    let Some(current) = keys::find(&mut **change.tx(), id).await? else {
        return Err(ApiError::not_found("API key", id));
    };
    // A tombstone, not a DELETE: filters learn of deletions from the version feed.
    if !keys::delete(change.tx(), id, version, &now.rfc3339()).await? {
        return Err(ApiError::not_found("API key", id));
    }
    change
        .audit(Entry {
            action: "key.delete",
            resource_id: id,
            tenant_id: Some(&current.tenant_id),
            before: snapshot(&current.clone().view()?)?,
            after: None,
        })
        .await?;
    change.commit().await?;
    Ok(())
}

/// Rotate a key
///
/// Issues a successor with the same tenant, name and settings. The old key
/// keeps working for `grace_seconds` (never longer than it would have), then
/// every filter refuses it as expired. The tenant's key allowance does not
/// block a rotation: the old key is on its way out.
#[utoipa::path(
    post,
    path = "/v1/keys/{id}/rotate",
    tag = "keys",
    params(("id" = String, Path, description = "Id of the key to rotate.")),
    request_body = RotateKey,
    responses(
        (status = 201, description = "The successor, with its plaintext `key`.", body = IssuedKey,
            headers(
                ("Location" = String, description = "`/v1/keys/{id}` of the successor"),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
        (status = 400, description = "`malformed_json`.", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: no such key, or another tenant's.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 413, response = ContentTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_body`, e.g. `grace_seconds` over 30 days.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = []), ("tenant_token" = [])),
)]
async fn keys_rotate(
    principal: Principal,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<RotateKey>,
) -> ApiResult<Response> {
    rotate(&state, &principal, &id, input).await.map(issued)
}

/// Rotates key `id` as `principal`: the successor, with its plaintext.
pub async fn rotate(
    state: &AppState,
    principal: &Principal,
    id: &str,
    input: RotateKey,
) -> ApiResult<IssuedKey> {
    visible_key(state, principal, id).await?;
    if input.grace_seconds > MAX_GRACE_SECONDS {
        return Err(ApiError::invalid(
            "invalid_body",
            format!("grace_seconds must be at most {MAX_GRACE_SECONDS}."),
        ));
    }
    let now = state.now();
    let mut change = Change::begin(state, principal.label(), now).await?;
    let version = change.version();
    let Some(old) = keys::find(&mut **change.tx(), id).await? else {
        return Err(ApiError::not_found("API key", id));
    };
    let settings = old.settings()?;
    let expires = match (&old.expires_at, old.expires_at_ms) {
        (Some(text), Some(ms)) => Some((text.clone(), ms)),
        _ => None,
    };
    let shared = Shared {
        tenant_id: &old.tenant_id,
        name: &old.name,
        settings: &settings,
        expires: &expires,
        rotated_from: Some(id),
    };
    let Fresh { id: new_id, key } = only(issue(&mut change, &shared, 1).await?)?;

    let grace_ms = i64::try_from(input.grace_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    let end_ms = now.db_ms().saturating_add(grace_ms);
    let end_ms = old.expires_at_ms.map_or(end_ms, |e| e.min(end_ms));
    let end = OffsetDateTime::from_unix_timestamp_nanos(i128::from(end_ms) * 1_000_000)
        .map_err(ApiError::internal)?
        .format(&Rfc3339)
        .map_err(ApiError::internal)?;
    keys::end_at(change.tx(), id, (&end, end_ms), version, &now.rfc3339()).await?;
    let view = keys::find(&mut **change.tx(), &new_id)
        .await?
        .ok_or_else(|| ApiError::internal("rotated key not found"))?
        .view()?;
    let old_after = keys::find(&mut **change.tx(), id)
        .await?
        .ok_or_else(|| ApiError::internal("rotated key not found"))?
        .view()?;
    change
        .audit(Entry {
            action: "key.rotate",
            resource_id: id,
            tenant_id: Some(&old.tenant_id),
            before: snapshot(&old.clone().view()?)?,
            after: snapshot(&old_after)?,
        })
        .await?;
    change
        .audit(Entry {
            action: "key.create",
            resource_id: &new_id,
            tenant_id: Some(&old.tenant_id),
            before: None,
            after: snapshot(&view)?,
        })
        .await?;
    change.commit().await?;
    Ok(issued_key(view, &key))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListKeys {
    /// Page size, 1 to 200; default 50.
    #[serde(default)]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub after: Option<String>,
    /// Only active (`true`) or only deactivated (`false`) keys.
    #[serde(default)]
    pub active: Option<bool>,
}

/// List a tenant's keys
///
/// Metadata only: never the plaintext or the hash. In creation order, one page at a time.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant_id}/keys",
    tag = "keys",
    params(("tenant_id" = String, Path, description = "Tenant id."), ListKeys),
    responses(
        (status = 200, description = "One page of keys.", body = Page<KeyView>),
        (status = 400, description = "`invalid_query` (unknown parameter, bad `limit` or `active`) or `invalid_cursor`.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: no such tenant, or another tenant's.",
            body = Problem, content_type = PROBLEM_JSON),
        (status = 429, response = Throttled),
        (status = "5XX", response = ServerError),
    ),
    security(("admin_token" = []), ("tenant_token" = [])),
)]
async fn keys_list(
    principal: Principal,
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    ApiQuery(query): ApiQuery<ListKeys>,
) -> ApiResult<Json<Page<KeyView>>> {
    if !principal.sees(&tenant_id) {
        return Err(ApiError::not_found("tenant", &tenant_id));
    }
    let limit = page_limit(query.limit)?;
    if !tenants::exists(&state.db, &tenant_id).await? {
        return Err(ApiError::not_found("tenant", &tenant_id));
    }
    let after = cursor(query.after.as_deref())?;
    let rows = keys::list(
        &state.db,
        &tenant_id,
        query.active,
        after.as_ref(),
        limit + 1,
    )
    .await?;
    let views = rows
        .into_iter()
        .map(KeyRow::view)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(Page::from_rows(views, limit, |k| {
        (&k.created_at, &k.id)
    })))
}
