//! The config feed's store: the config version every change claims, and what
//! changed after a version, read for `GET /v1/sync`.
//!
//! The rows are read in one transaction with the version they add up to, so
//! an Envoy that applies the answer holds exactly that version.
//!
//! Keys are paged: an answer carries at most [`SYNC_PAGE_KEYS`] of them, in
//! `(version, key_hash)` order, and `next` when more follow; the caller asks
//! again with the same `since` and `after=<next>` until an answer without
//! `next`, whose `version` is the one the whole walk adds up to (see
//! [`changes_since`] for why that holds although the pages are read in
//! separate transactions).
//!
//! The database writes the keys' JSON, a page of them as one text, and it
//! goes into the answer as it is; only the rest of the answer, a few plans
//! at most, is serialised here. Both are exactly what serde would write for
//! the [`SyncResponse`](tollgate_core::wire::SyncResponse) the answer parses to.
//!
//! Each write transaction claims the next config version ([`claim_version`])
//! as its *first* statement. That takes SQLite's write lock, or PostgreSQL's
//! row lock, up front and serialises versions in commit order, so `since=N`
//! never skips a change. On PostgreSQL the same transaction queues a
//! `NOTIFY`, delivered on commit, which wakes the long-polls held by every
//! other replica.

use axum::http::StatusCode;
use tollgate_core::wire::{WireAnonymous, WirePlan};

use crate::db::{self, Db, Tx};
use crate::error::{ApiError, ApiResult};
use crate::store::{anonymous, plans};

/// The channel replicas `LISTEN` on; the payload is the committed version.
pub const CHANGES_CHANNEL: &str = "tollgate_config";

/// Most keys (changed and deleted) one answer carries; more follow in pages.
pub const SYNC_PAGE_KEYS: usize = 20_000;

/// The latest committed config version.
pub async fn current_version(db: &Db) -> Result<u64, sqlx::Error> {
    let v: i64 = sqlx::query_scalar("SELECT version FROM config_version WHERE id = 1")
        .fetch_one(db)
        .await?;
    Ok(u64::try_from(v).unwrap_or(0))
}

/// Claims the next config version for the change `tx` is, and on PostgreSQL
/// tells the other replicas of it when `tx` commits.
pub async fn claim_version(tx: &mut Tx, postgres: bool) -> Result<i64, sqlx::Error> {
    let version: i64 = sqlx::query_scalar(
        "UPDATE config_version SET version = version + 1 WHERE id = 1 RETURNING version",
    )
    .fetch_one(&mut **tx)
    .await?;
    if postgres {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGES_CHANNEL)
            .bind(version.to_string())
            .execute(&mut **tx)
            .await?;
    }
    Ok(version)
}

/// The form of a [`SyncCursor`], as the OpenAPI document states it.
pub const SYNC_CURSOR_PATTERN: &str = r"^[0-9]{1,18}\.[0-9a-f]{64}\.[0-9]{1,18}$";

/// Where a walk through the keys stopped: the `(version, key_hash)` of the
/// last key sent, and the version the walk's first page was read at
/// (`began`), written `<version>.<key_hash>.<began>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCursor {
    pub version: u64,
    pub key_hash: String,
    pub began: u64,
}

impl SyncCursor {
    /// 400 `invalid_query` unless `text` is a `next` this server could have sent.
    pub fn parse(text: &str) -> ApiResult<Self> {
        let invalid = || {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "after must be the next of a previous /v1/sync answer.",
            )
        };
        let mut parts = text.split('.');
        let (Some(version), Some(key_hash), Some(began), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        // Versions are BIGINT columns: 18 digits always fit, and are what
        // the OpenAPI document's pattern allows.
        let number = |text: &str| {
            let digits =
                !text.is_empty() && text.len() <= 18 && text.bytes().all(|b| b.is_ascii_digit());
            digits
                .then(|| text.parse::<u64>().ok())
                .flatten()
                .ok_or_else(invalid)
        };
        let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
        if key_hash.len() != 64 || !key_hash.bytes().all(hex) {
            return Err(invalid());
        }
        Ok(Self {
            version: number(version)?,
            key_hash: key_hash.to_owned(),
            began: number(began)?,
        })
    }
}

impl std::fmt::Display for SyncCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.version, self.key_hash, self.began)
    }
}

/// Separate the rows of the page query's text, and the fields of a row. No
/// JSON text holds a raw control character (they are escaped in strings and
/// are not whitespace), so nothing in a field needs escaping.
const ROW_SEP: char = '\u{1e}';
const FIELD_SEP: char = '\u{1f}';

/// The query for one page of keys: those past the cursor (past `since` on
/// the first page) in `(version, key_hash)` order, a range scan of the index
/// of that name, at most `$3` of them.
///
/// It answers a single text rather than a row per key: decoding 20 000 rows
/// one by one through sqlx's `Any` driver and serialising them again cost
/// several times what reading them does, so the database writes the JSON.
/// A row is `<version>␟<key_hash as a JSON string>␟<the rest of the key's
/// JSON>`, the rest being what follows `{"hash":<key_hash>` in what serde
/// writes for a [`WireKey`](tollgate_core::wire::WireKey) (its fields in its
/// order, absent ones left out, the JSON columns as stored: serde wrote them,
/// and the database checks that they still parse), or empty for a
/// tombstone. Rows are joined by ␞; no text at all when none match.
///
/// The rows are joined in the order the inner query reads them, which both
/// databases keep although neither promises to: an aggregate's own `ORDER
/// BY` sorts the page again, which made a page take from half as long again
/// (PostgreSQL) to nearly twice as long (SQLite). With `ordered` it is
/// there, for when a page is seen to have come out of order.
fn key_page_sql(postgres: bool, after: bool, ordered: bool) -> String {
    // What the two databases spell differently.
    let quote = |column: &str| {
        if postgres {
            format!("to_json({column})")
        } else {
            format!("json_quote({column})")
        }
    };
    let json = |column: &str| {
        if postgres {
            format!("{column}::json")
        } else {
            format!("json({column})")
        }
    };
    let (join, chr) = if postgres {
        ("string_agg", "chr")
    } else {
        ("group_concat", "char")
    };
    let (row_sep, field_sep) = (u32::from(ROW_SEP), u32::from(FIELD_SEP));
    let order = if ordered {
        " ORDER BY version, key_hash"
    } else {
        ""
    };
    let (hash, id) = (quote("k.key_hash"), quote("k.id"));
    // The tenant's part of each key's JSON. PostgreSQL writes it once per
    // tenant of the page: its Memoize keeps what a LATERAL subquery answered
    // (OFFSET 0 stops the planner from merging the subquery into the join,
    // which would write it for every key). SQLite has neither; it merges the
    // subquery into the join.
    let tenant = format!(
        r#"concat(',"tenant_id":', {}, ',"plan_id":', {}) AS fields,
           CASE WHEN t.billing_anchor_day BETWEEN 0 AND 255
                THEN ',"billing_anchor_day":' || t.billing_anchor_day END AS anchor"#,
        quote("t.id"),
        quote("t.plan_id"),
    );
    let tenant = if postgres {
        format!("JOIN LATERAL (SELECT {tenant} FROM tenants t WHERE t.id = k.tenant_id OFFSET 0) t ON TRUE")
    } else {
        format!("JOIN (SELECT t.id, {tenant} FROM tenants t) t ON t.id = k.tenant_id")
    };
    let (scopes, allowed_cidrs, limits) =
        (json("k.scopes"), json("k.allowed_cidrs"), json("k.limits"));
    // Row values alone, not `version > $1 AND (version, key_hash) > (…)`:
    // given both, SQLite seeks on `version > $1` and filters the rest.
    let range = if after {
        "(k.version, k.key_hash) > ($4, $5)"
    } else {
        "k.version > $1"
    };
    // concat() skips NULLs, and `'…' || NULL` is NULL: that is how absent
    // fields are left out. The CASEs keep what fits the field's type, as
    // decoding into a WireKey did.
    format!(
        r#"SELECT {join}(concat(version, {chr}({field_sep}), hash, {chr}({field_sep}), rest),
                         {chr}({row_sep}){order})
           FROM (SELECT k.version, k.key_hash, {hash} AS hash,
                        CASE WHEN k.deleted_at IS NULL THEN concat(
                            ',"id":', {id}, t.fields,
                            ',"active":', CASE WHEN k.active THEN 'true' ELSE 'false' END,
                            CASE WHEN k.expires_at_ms >= 0
                                 THEN ',"expires_at_ms":' || k.expires_at_ms END,
                            ',"scopes":' || {scopes},
                            ',"allowed_cidrs":' || {allowed_cidrs},
                            ',"limits":' || {limits},
                            CASE WHEN k.monthly_quota >= 0
                                 THEN ',"monthly_quota":' || k.monthly_quota END,
                            t.anchor, '}}')
                        ELSE '' END AS rest
                 FROM api_keys k {tenant}
                 WHERE {range} AND (k.deleted_at IS NULL OR k.version > $2)
                 ORDER BY k.version, k.key_hash
                 LIMIT $3) page"#
    )
}

/// One row of the page query's text.
struct KeyRow<'a> {
    version: u64,
    /// As a JSON string.
    hash: &'a str,
    /// Empty for a tombstone.
    rest: &'a str,
}

/// The rows of the page query's text, in its order.
fn key_rows(text: &str) -> impl Iterator<Item = Result<KeyRow<'_>, ApiError>> {
    text.split(ROW_SEP)
        .filter(|row| !row.is_empty())
        .map(|row| {
            let mut fields = row.splitn(3, FIELD_SEP);
            match (fields.next(), fields.next(), fields.next()) {
                (Some(version), Some(hash), Some(rest)) => Ok(KeyRow {
                    version: version.parse().map_err(ApiError::internal)?,
                    hash,
                    rest,
                }),
                _ => Err(ApiError::internal(
                    "the sync page query answered a row without its three fields",
                )),
            }
        })
}

/// Whether the rows come in `(version, key_hash)` order, the hashes compared
/// as bytes (quoted, which keeps their order). They are lower-case hex, which
/// collations order as bytes too; a database that ordered them otherwise
/// would only have every page read again, sorted by itself.
fn in_page_order(text: &str) -> Result<bool, ApiError> {
    let mut previous: Option<(u64, &str)> = None;
    for row in key_rows(text) {
        let row = row?;
        if previous.is_some_and(|previous| previous >= (row.version, row.hash)) {
            return Ok(false);
        }
        previous = Some((row.version, row.hash));
    }
    Ok(true)
}

/// One page of keys, out of the page query's text.
#[derive(Debug, Default, PartialEq)]
struct KeyPage<'a> {
    /// Each live key's hash (a JSON string) and the rest of its JSON.
    keys: Vec<(&'a str, &'a str)>,
    /// Each tombstone's hash, a JSON string.
    deleted_keys: Vec<&'a str>,
    /// When more follow: the `(version, key_hash)` of the page's last key.
    last: Option<(u64, String)>,
}

impl<'a> KeyPage<'a> {
    /// The first `page` rows of `text`, and the last of them when `text`
    /// holds more (the query reads one row past a page to learn that).
    fn split(text: &'a str, page: usize) -> Result<Self, ApiError> {
        let mut split = Self::default();
        let mut last = None;
        for (n, row) in key_rows(text).enumerate() {
            if n == page {
                if let Some((version, hash)) = last {
                    let hash = serde_json::from_str(hash).map_err(ApiError::internal)?;
                    split.last = Some((version, hash));
                }
                break;
            }
            let row = row?;
            if row.rest.is_empty() {
                split.deleted_keys.push(row.hash);
            } else {
                split.keys.push((row.hash, row.rest));
            }
            last = Some((row.version, row.hash));
        }
        Ok(split)
    }
}

/// The answer as serde writes a [`SyncResponse`] (its fields in its order,
/// `anonymous` and `next` left out when absent), but with the keys spliced
/// in as the database wrote them rather than parsed and written again.
fn answer_body(
    version: u64,
    plans: &[WirePlan],
    keys: &KeyPage<'_>,
    deleted_plans: &[String],
    anonymous: Option<&WireAnonymous>,
    next: Option<&str>,
) -> Result<Vec<u8>, serde_json::Error> {
    let size: usize = keys
        .keys
        .iter()
        .map(|(hash, rest)| hash.len() + rest.len() + 10)
        .chain(keys.deleted_keys.iter().map(|hash| hash.len() + 1))
        .sum();
    let mut body = Vec::with_capacity(size + 4096);
    body.extend_from_slice(b"{\"version\":");
    serde_json::to_writer(&mut body, &version)?;
    body.extend_from_slice(b",\"plans\":");
    serde_json::to_writer(&mut body, plans)?;
    body.extend_from_slice(b",\"keys\":[");
    for (n, (hash, rest)) in keys.keys.iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"hash\":");
        body.extend_from_slice(hash.as_bytes());
        body.extend_from_slice(rest.as_bytes());
    }
    body.extend_from_slice(b"],\"deleted_keys\":[");
    for (n, hash) in keys.deleted_keys.iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(hash.as_bytes());
    }
    body.extend_from_slice(b"],\"deleted_plans\":");
    serde_json::to_writer(&mut body, deleted_plans)?;
    if let Some(anonymous) = anonymous {
        body.extend_from_slice(b",\"anonymous\":");
        serde_json::to_writer(&mut body, anonymous)?;
    }
    if let Some(next) = next {
        body.extend_from_slice(b",\"next\":");
        serde_json::to_writer(&mut body, next)?;
    }
    body.push(b'}');
    Ok(body)
}

/// The page query's text (see [`key_page_sql`]), empty when no key matched.
async fn read_key_page(
    tx: &mut db::Tx,
    sql: &str,
    (since, deleted_after, limit): (i64, i64, i64),
    after: Option<&SyncCursor>,
) -> Result<String, sqlx::Error> {
    let mut query = sqlx::query_scalar::<_, Option<String>>(sql)
        .bind(since)
        .bind(deleted_after)
        .bind(limit);
    if let Some(cursor) = after {
        query = query
            .bind(i64::try_from(cursor.version).unwrap_or(i64::MAX))
            .bind(cursor.key_hash.as_str());
    }
    Ok(query.fetch_one(&mut **tx).await?.unwrap_or_default())
}

/// What changed after `since`, from `after` on (the first page when `None`):
/// at most `page` keys, with `next` when more follow, as the JSON
/// of a [`SyncResponse`].
///
/// Each page is read in its own transaction, so a walk of several pages is no
/// snapshot; it does not need to be. Versions are claimed in commit order
/// ([`claim_version`] takes the version row's lock first), so when a page
/// is read every committed change has a version at most that of the newest
/// commit, and every later commit gets a higher one. A key changed (or
/// deleted) after the walk passed it therefore moves to a `(version,
/// key_hash)` position ahead of the cursor, and the walk reaches it again
/// before it ends. The last page reads `version` (W) first, in the same
/// transaction as its rows, as a single answer does: every change up to W is
/// committed and visible to it. So a walk from `since` = V that ends with W
/// has seen every key row whose version is in (V, W], each in its state as
/// of W or later; rows newer than W that it happened to see are harmless, as
/// the next walk from W sends them again.
///
/// A full snapshot (`since` = 0) leaves out tombstones, but not those of keys
/// deleted after its first page was read (version `began`, carried in the
/// cursor): such a key may have been sent on an earlier page. Deleted plans
/// likewise. Plans, deleted plans and anonymous access are few and ride on
/// every page, so a filter has the plans before the keys that refer to them.
pub async fn changes_since(
    db: &Db,
    page: usize,
    since: u64,
    after: Option<&SyncCursor>,
) -> Result<Vec<u8>, ApiError> {
    let mut tx = db.begin().await?;
    let version: i64 = sqlx::query_scalar("SELECT version FROM config_version WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    let version = u64::try_from(version).unwrap_or(0);
    // A filter ahead of us means our database was replaced: send everything.
    let since = if since > version {
        tracing::warn!(
            since,
            version,
            "sync client is ahead of the database; sending a full snapshot"
        );
        0
    } else {
        since
    };
    // A cursor is past `since` (it names a key changed after it) unless it
    // belongs to another walk, which then starts over.
    let after = after.filter(|cursor| cursor.version > since);
    let began = after.map_or(version, |cursor| cursor.began);
    let since_db = i64::try_from(since).unwrap_or(i64::MAX);
    // Tombstones newer than this are sent: all of a delta's; a snapshot's
    // only when they came after its walk began.
    let deleted_after = i64::try_from(if since == 0 { began } else { since }).unwrap_or(i64::MAX);
    let plans = plans::changed_since(&mut tx, since_db).await?;
    let deleted_plans = plans::deleted_since(&mut tx, deleted_after).await?;
    let page = page.max(1);
    let postgres = db::is_postgres(db);
    let binds = (
        since_db,
        deleted_after,
        i64::try_from(page).unwrap_or(i64::MAX).saturating_add(1),
    );
    let sql = key_page_sql(postgres, after.is_some(), false);
    let mut rows = read_key_page(&mut tx, &sql, binds, after).await?;
    if !in_page_order(&rows)? {
        tracing::warn!("sync page rows came out of order; reading them again, sorted");
        let sql = key_page_sql(postgres, after.is_some(), true);
        rows = read_key_page(&mut tx, &sql, binds, after).await?;
    }
    // Anonymous access when it changed, and always in a full snapshot (even
    // when it is off), so a filter never keeps access that was turned off.
    let anonymous = match anonymous::read(&mut *tx).await? {
        (wire, changed_in) if since == 0 || changed_in > since_db => Some(wire),
        _ => None,
    };
    tx.commit().await?;

    let keys = KeyPage::split(&rows, page)?;
    let next = keys.last.as_ref().map(|(version, key_hash)| {
        SyncCursor {
            version: *version,
            key_hash: key_hash.clone(),
            began,
        }
        .to_string()
    });
    let plans = plans
        .iter()
        .map(plans::PlanRow::wire)
        .collect::<Result<Vec<_>, _>>()?;
    answer_body(
        version,
        &plans,
        &keys,
        &deleted_plans,
        anonymous.as_ref(),
        next.as_deref(),
    )
    .map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::wire::{SyncResponse, WireKey, WireScope};

    fn row(version: u64, hash: &str, rest: &str) -> String {
        format!("{version}{FIELD_SEP}\"{hash}\"{FIELD_SEP}{rest}")
    }

    fn text(rows: &[String]) -> String {
        rows.join(&ROW_SEP.to_string())
    }

    #[test]
    fn a_page_splits_into_keys_tombstones_and_where_the_next_begins() {
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let rows = text(&[
            row(3, &a, r#","id":"k1"}"#),
            row(3, &b, ""),
            row(4, &c, r#","id":"k3"}"#),
        ]);
        assert!(in_page_order(&rows).unwrap());
        let (qa, qb, qc) = (format!("\"{a}\""), format!("\"{b}\""), format!("\"{c}\""));

        let page = KeyPage::split(&rows, 2).unwrap();
        assert_eq!(page.keys, vec![(qa.as_str(), r#","id":"k1"}"#)]);
        assert_eq!(page.deleted_keys, vec![qb.as_str()]);
        assert_eq!(page.last, Some((3, b.clone())), "the last row sent");

        let whole = KeyPage::split(&rows, 3).unwrap();
        assert_eq!(whole.keys.len(), 2);
        assert_eq!(whole.keys[1], (qc.as_str(), r#","id":"k3"}"#));
        assert_eq!(whole.last, None, "nothing follows");

        assert_eq!(KeyPage::split("", 3).unwrap(), KeyPage::default());
        assert!(in_page_order("").unwrap());
    }

    #[test]
    fn rows_out_of_order_or_malformed_are_noticed() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        for rows in [
            [row(3, &b, ""), row(3, &a, "")],
            [row(4, &a, ""), row(3, &b, "")],
            [row(3, &a, ""), row(3, &a, "")],
        ] {
            assert!(!in_page_order(&text(&rows)).unwrap(), "{rows:?}");
        }
        let malformed = format!("3{FIELD_SEP}\"{a}\"");
        assert!(in_page_order(&malformed).is_err());
        assert!(KeyPage::split(&malformed, 5).is_err());
        assert!(in_page_order(&row(0, &a, "").replacen('0', "x", 1)).is_err());
    }

    #[test]
    fn the_answer_is_what_serde_writes_for_a_sync_response() {
        let scoped = WireKey {
            hash: "a".repeat(64),
            id: "key_1".into(),
            tenant_id: "tenant_1".into(),
            plan_id: "plan_1".into(),
            active: true,
            expires_at_ms: Some(1),
            scopes: Some(vec![WireScope::default()]),
            allowed_cidrs: Some(vec!["10.0.0.0/8".into()]),
            limits: Some(Vec::new()),
            monthly_quota: Some(2),
            billing_anchor_day: Some(3),
        };
        let bare = WireKey {
            hash: "b".repeat(64),
            ..WireKey::default()
        };
        let plan = WirePlan {
            id: "plan_1".into(),
            name: "Pro".into(),
            limits: Vec::new(),
            monthly_quota: None,
            route_costs: Vec::new(),
        };
        for (anonymous, next) in [
            (None, None),
            (Some(WireAnonymous::default()), Some("1.x.2".to_owned())),
        ] {
            let response = SyncResponse {
                version: 7,
                plans: vec![plan.clone()],
                keys: vec![scoped.clone(), bare.clone()],
                deleted_keys: vec!["c".repeat(64)],
                deleted_plans: vec!["plan_0".into()],
                anonymous,
                next,
            };
            let written: Vec<String> = response
                .keys
                .iter()
                .map(|key| serde_json::to_string(key).unwrap())
                .collect();
            let quoted: Vec<String> = response
                .keys
                .iter()
                .chain([&WireKey {
                    hash: "c".repeat(64),
                    ..WireKey::default()
                }])
                .map(|key| serde_json::to_string(&key.hash).unwrap())
                .collect();
            let page = KeyPage {
                keys: written
                    .iter()
                    .zip(&quoted)
                    .map(|(json, hash)| {
                        let head = format!("{{\"hash\":{hash}");
                        (hash.as_str(), json.strip_prefix(head.as_str()).unwrap())
                    })
                    .collect(),
                deleted_keys: vec![quoted[2].as_str()],
                last: None,
            };
            let body = answer_body(
                response.version,
                &response.plans,
                &page,
                &response.deleted_plans,
                response.anonymous.as_ref(),
                response.next.as_deref(),
            )
            .unwrap();
            assert_eq!(
                String::from_utf8(body).unwrap(),
                serde_json::to_string(&response).unwrap()
            );
        }
    }

    /// The sorted query, read only when a page came out of order, reads
    /// exactly what the other one does.
    #[tokio::test]
    async fn the_sorted_page_query_reads_what_the_other_does() {
        let pool = db::connect_memory().await.unwrap();
        db::migrate(&pool).await.unwrap();
        sqlx::query(
            "INSERT INTO plans (id, name, limits, metadata, public, created_at, updated_at, version)
             VALUES ('plan_1', 'p', '[]', '{}', TRUE, 't', 't', 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO tenants (id, name, plan_id, created_at, updated_at, billing_anchor_day)
             VALUES ('tenant_1', 't', 'plan_1', 't', 't', 15)",
        )
        .execute(&pool)
        .await
        .unwrap();
        for n in 0..9_i64 {
            sqlx::query(
                "INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, active, created_at,
                                       updated_at, version, scopes, deleted_at)
                 VALUES ($1, 'tenant_1', 'k', 'p', $2, $3, 't', 't', $4, $5, $6)",
            )
            .bind(format!("key_{n}"))
            .bind(format!("{:x}", (n * 7) % 9).repeat(64))
            .bind(n % 2 == 0)
            .bind(2 + n % 3)
            .bind((n % 3 == 0).then_some(r#"[{"path_prefix":"/v1"}]"#))
            .bind((n == 4).then_some("t"))
            .execute(&pool)
            .await
            .unwrap();
        }
        let mut tx = pool.begin().await.unwrap();
        let binds = (0, 0, 4);
        let cursor = SyncCursor {
            version: 3,
            key_hash: "0".repeat(64),
            began: 9,
        };
        for after in [None, Some(&cursor)] {
            let plain = key_page_sql(false, after.is_some(), false);
            let sorted = key_page_sql(false, after.is_some(), true);
            let plain = read_key_page(&mut tx, &plain, binds, after).await.unwrap();
            let sorted = read_key_page(&mut tx, &sorted, binds, after).await.unwrap();
            assert!(in_page_order(&plain).unwrap());
            assert_eq!(plain, sorted);
            assert_eq!(key_rows(&plain).count(), 4);
        }
    }
}
