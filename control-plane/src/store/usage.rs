//! Usage as stored: counts per key, hour and outcome, the batches already
//! counted, and the quota ledger the Envoys' standings are read from.
//!
//! Each Envoy's leader sends what its workers counted, in batches that
//! keep their id across retries. A batch is applied in one transaction that
//! first records its id, so a batch that arrives twice (a lost answer, a
//! retry after a timeout) is counted once. Counts land per key, hour and
//! outcome, with the summed cost of what was let through; the key's
//! `last_used_at` moves forward to the minute, never to before the key's
//! `created_at`. It is kept in a narrow table of its own, `key_last_used`:
//! a batch moves it for nearly every key it names, and writing it into the
//! keys' own wide rows made most of a batch's writes.
//!
//! **Quota ledger.** The same transaction adds each key's cost to
//! `quota_counts`, per key, quota period (from the last use and the tenant's
//! billing anchor) and reporting Envoy. Every row it writes takes the next
//! value of one sequence, claimed while holding the sequence's row until
//! commit, so values become visible in order. The answer to every batch, a
//! [`UsageReceipt`], tells the reporter what the *other* Envoys used of each
//! key's quota in its current period, for keys whose rows changed after the
//! reporter's `standings_since`, one page at a time. Envoys report every
//! second even when idle, to hear the standings: an empty batch writes
//! nothing and costs one or two indexed reads.
//!
//! **Whose standings.** A reporter hears only of the keys it uses, so what
//! an Envoy writes into its shared data grows with its own traffic, not
//! with the fleet's (with every Envoy told of every key, each of N Envoys
//! wrote every key the others used: N² work, and a 100k-key burst on an
//! idle Envoy's main thread). It hears of a key when another reporter's
//! row changed and it has a row of its own for the key in a current
//! period, and once when it first counts the key in a period (its row's
//! `first_seq`): the receipt after an Envoy's first use of a key tells it
//! what the others used, however long ago. Until then the Envoy counts
//! the others' use as none, which is what the quota's exactness already
//! allows for: near its end a quota with a fleet-wide rate limit is
//! sliced, and a slice (sent to every Envoy) does not depend on standings;
//! far from it, a second of one Envoy's own use cannot reach the end, as
//! slicing starts five seconds of the whole fleet's rate before it. (A
//! quota without a fleet-wide rate limit is shared by standings alone and
//! may overshoot by what an Envoy admits before its next receipt, this
//! first one as any other.) A key whose quota is used up is told to every
//! reporter, so an Envoy that never used it refuses it from its first
//! request.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use tollgate_core::period::quota_period;
use tollgate_core::wire::{QuotaStanding, UsageBatch, UsageReceipt};

use crate::clock::Now;
use crate::db::{self, Db, Tx};
use crate::error::ApiResult;
use crate::shares::QuotaFacts;
use crate::store::{db_int, rows_per_statement, webhooks, Params};

/// Most keys one [`UsageReceipt`] carries standings for; `more` says another page waits.
pub const MAX_STANDINGS: usize = 10_000;

/// The outcome requests let through are counted under.
pub const ALLOWED: &str = "allowed";

/// RFC 3339 of `ms` truncated to `step` (an hour for counts, a minute for last use).
pub fn truncated(ms: u64, step: Duration) -> String {
    let step_ms = u64::try_from(step.as_millis()).unwrap_or(1).max(1);
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(ms - ms % step_ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

pub const HOUR: Duration = Duration::from_secs(3600);
pub const DAY: Duration = Duration::from_secs(24 * 3600);
const MINUTE: Duration = Duration::from_secs(60);

/// A key's cost in one quota period, for the ledger.
struct LedgerEntry {
    key_id: String,
    key_hash: String,
    period_start_ms: i64,
    cost: i64,
}

pub fn anchor(day: Option<i64>) -> Option<u8> {
    day.and_then(|d| u8::try_from(d).ok())
}

/// The `seq` of a ledger row this batch changed, until it is stamped (PostgreSQL).
const UNSTAMPED: i64 = -1;

/// Ledger rows one stamping statement carries, at three parameters a row
/// and three more: within PostgreSQL's 65,535 parameters.
const STAMPS_PER_STATEMENT: usize = 20_000;

/// Attempts at counting a batch whose transaction was rolled back by the
/// database (a deadlock with another writer): it is counted whole or not.
const APPLY_ATTEMPTS: usize = 3;

/// What a batch says of one key, its entries (should it name the key twice) added up.
#[derive(Default)]
struct Reported<'a> {
    /// Requests by outcome: `allowed` and each refusal code.
    counts: BTreeMap<&'a str, u64>,
    cost: u64,
    last_used_ms: Option<u64>,
}

/// What counting needs of a key as stored; absent for a key the store does
/// not know (deleted keys keep their row, so they are known).
#[derive(sqlx::FromRow)]
struct KeyFacts {
    id: String,
    tenant_id: String,
    key_hash: String,
    created_at: String,
    billing_anchor_day: Option<i64>,
    quota: Option<i64>,
    has_webhook: i64,
}

/// The facts of `ids`, in a few statements.
async fn key_facts(
    tx: &mut Tx,
    ids: &[&str],
    postgres: bool,
) -> Result<HashMap<String, KeyFacts>, sqlx::Error> {
    let mut facts = HashMap::with_capacity(ids.len());
    for part in ids.chunks(rows_per_statement(postgres, 1)) {
        let sql = format!(
            "SELECT k.id, k.tenant_id, k.key_hash, k.created_at, t.billing_anchor_day,
                    COALESCE(k.monthly_quota, p.monthly_quota) AS quota,
                    CAST(CASE WHEN EXISTS (SELECT 1 FROM webhooks w WHERE w.tenant_id = t.id)
                         THEN 1 ELSE 0 END AS BIGINT) AS has_webhook
             FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
             LEFT JOIN plans p ON p.id = t.plan_id
             WHERE k.id IN ({})",
            Params::new(postgres).list(part.len())
        );
        let mut select = sqlx::query_as::<_, KeyFacts>(&sql);
        for id in part {
            select = select.bind(*id);
        }
        for row in select.fetch_all(&mut **tx).await? {
            facts.insert(row.id.clone(), row);
        }
    }
    Ok(facts)
}

/// Counts `batch` unless it was counted before; whether it was new.
pub async fn apply(db: &Db, batch: &UsageBatch, at: Now) -> ApiResult<bool> {
    let mut attempt = 1;
    loop {
        match apply_once(db, batch, at).await {
            Err(e) if e.is_rolled_back() && attempt < APPLY_ATTEMPTS => attempt += 1,
            done => return done,
        }
    }
}

async fn apply_once(db: &Db, batch: &UsageBatch, at: Now) -> ApiResult<bool> {
    let now = at.unix_ms();
    let hour = truncated(now, HOUR);
    let mut tx = db.begin().await?;
    let first_time = sqlx::query("INSERT INTO usage_batches (id, received_at) VALUES ($1, $2)")
        .bind(&batch.batch_id)
        .bind(at.rfc3339())
        .execute(&mut *tx)
        .await;
    match first_time {
        // Dropping `tx` rolls back; on PostgreSQL the failed insert ended it anyway.
        Err(e) if db::is_unique_violation(&e) => return Ok(false),
        other => {
            other?;
        }
    }
    // By key, so every batch writes shared rows in one order (two batches
    // taking the same rows' locks in opposite orders would deadlock); the
    // refusals that name no key come first, under key "".
    let mut reported: BTreeMap<&str, Reported> = BTreeMap::new();
    for usage in &batch.keys {
        let key = reported.entry(usage.key_id.as_str()).or_default();
        add_to(&mut key.counts, ALLOWED, usage.allowed);
        for (code, n) in &usage.denied {
            add_to(&mut key.counts, code, *n);
        }
        key.cost = key.cost.saturating_add(usage.cost);
        // A filter's clock may run ahead; never record a use in the future.
        if let Some(last) = usage.last_used_ms.map(|last| last.min(now)) {
            key.last_used_ms = Some(key.last_used_ms.map_or(last, |seen| seen.max(last)));
        }
    }
    for (code, n) in &batch.unattributed {
        add_to(&mut reported.entry("").or_default().counts, code, *n);
    }
    let ids: Vec<&str> = reported
        .keys()
        .copied()
        .filter(|id| !id.is_empty())
        .collect();
    let postgres = db::is_postgres(db);
    let facts = key_facts(&mut tx, &ids, postgres).await?;

    // Counts per key, hour and outcome; the tenant is the store's (tombstones
    // keep it), not the report's.
    let hourly: Vec<(&str, Option<&str>, &str, u64, u64)> = reported
        .iter()
        .flat_map(|(key_id, key)| {
            let tenant = facts.get(*key_id).map(|f| f.tenant_id.as_str());
            key.counts.iter().filter_map(move |(outcome, count)| {
                let cost = if *outcome == ALLOWED { key.cost } else { 0 };
                (*count > 0 || cost > 0).then_some((*key_id, tenant, *outcome, *count, cost))
            })
        })
        .collect();
    for part in hourly.chunks(rows_per_statement(postgres, 6)) {
        let sql = format!(
            "INSERT INTO usage_hourly (key_id, tenant_id, hour, outcome, count, cost) VALUES {}
             ON CONFLICT (key_id, hour, outcome) DO UPDATE
             SET count = usage_hourly.count + excluded.count, cost = usage_hourly.cost + excluded.cost",
            Params::new(postgres).rows(part.len(), 6, "")
        );
        let mut insert = sqlx::query(&sql);
        for (key_id, tenant_id, outcome, count, cost) in part {
            insert = insert
                .bind(*key_id)
                .bind(*tenant_id)
                .bind(&hour)
                .bind(*outcome)
                .bind(db_int(*count))
                .bind(db_int(*cost));
        }
        insert.execute(&mut *tx).await?;
    }

    // Last use, to the minute: truncated, a use in the minute the key was
    // created would show as before its creation; it shows as the creation.
    let last_used: Vec<(&str, String)> = reported
        .iter()
        .filter_map(|(key_id, key)| {
            let created_at = &facts.get(*key_id)?.created_at;
            let minute = truncated(key.last_used_ms?, MINUTE);
            Some((*key_id, minute.max(created_at.clone())))
        })
        .collect();
    for part in last_used.chunks(rows_per_statement(postgres, 2)) {
        let sql = format!(
            "INSERT INTO key_last_used (key_id, last_used_at) VALUES {}
             ON CONFLICT (key_id) DO UPDATE SET last_used_at = excluded.last_used_at
             WHERE key_last_used.last_used_at < excluded.last_used_at",
            Params::new(postgres).rows(part.len(), 2, "")
        );
        let mut upsert = sqlx::query(&sql);
        for (key_id, at) in part {
            upsert = upsert.bind(*key_id).bind(at);
        }
        upsert.execute(&mut *tx).await?;
    }

    // The ledger's counts. The period is the tenant's as it is now; unknown
    // keys have no quota.
    let ledger: Vec<LedgerEntry> = reported
        .iter()
        .filter(|(_, key)| key.cost > 0)
        .filter_map(|(key_id, key)| {
            let facts = facts.get(*key_id)?;
            let period = quota_period(
                key.last_used_ms.unwrap_or(now),
                anchor(facts.billing_anchor_day),
            );
            Some(LedgerEntry {
                key_id: (*key_id).to_owned(),
                key_hash: facts.key_hash.clone(),
                period_start_ms: db_int(period.start_ms),
                cost: db_int(key.cost),
            })
        })
        .collect();
    // Every batch of every Envoy takes the sequence's one row and holds it
    // until it commits. On SQLite this transaction already holds the
    // database's one write lock (taken by the batch id), so claiming the
    // sequence now holds up nobody, and the rows are written with their
    // numbers. On PostgreSQL it is claimed last, so few statements run while
    // it is held: the rows are written marked as this batch's (`seq` =
    // UNSTAMPED: only this transaction sees them, and a reporter has one
    // batch counted at a time, its batch id being unique), then stamped.
    let stamp_last = postgres;
    let mut numbered = if stamp_last || ledger.is_empty() {
        None
    } else {
        Some(claim(&mut tx, ledger.len()).await?)
    };
    for part in ledger.chunks(rows_per_statement(postgres, 7)) {
        let sql = format!(
            "INSERT INTO quota_counts
               (key_id, key_hash, period_start_ms, used, reporter_id, seq, first_seq)
             VALUES {}
             ON CONFLICT (key_id, period_start_ms, reporter_id) DO UPDATE
             SET used = quota_counts.used + excluded.used, seq = excluded.seq",
            Params::new(postgres).rows(part.len(), 7, "")
        );
        let mut insert = sqlx::query(&sql);
        for entry in part {
            // The reporter, and the `seq` twice: a new row's first write is this one.
            let seq = numbered
                .as_mut()
                .and_then(Iterator::next)
                .unwrap_or(UNSTAMPED);
            insert = insert
                .bind(&entry.key_id)
                .bind(&entry.key_hash)
                .bind(entry.period_start_ms)
                .bind(entry.cost)
                .bind(&batch.reporter_id)
                .bind(seq)
                .bind(seq);
        }
        insert.execute(&mut *tx).await?;
    }

    // Quota alerts join the same transaction: they exist exactly when the usage does.
    let alerting: Vec<webhooks::Counted> = ledger
        .iter()
        .filter_map(|entry| {
            let facts = facts.get(&entry.key_id)?;
            (facts.has_webhook != 0).then_some(())?;
            Some(webhooks::Counted {
                key_id: &entry.key_id,
                tenant_id: &facts.tenant_id,
                quota: facts.quota?,
                anchor: anchor(facts.billing_anchor_day),
                period_start_ms: entry.period_start_ms,
            })
        })
        .collect();
    webhooks::enqueue_quota_alerts(&mut tx, &alerting, postgres, at).await?;

    if stamp_last && !ledger.is_empty() {
        // Last, the sequence moved on by the ledger's rows, and those rows
        // stamped with its numbers. Each statement finds all of this
        // reporter's unstamped rows to join them with its own, so a batch
        // is stamped in as few statements as PostgreSQL's parameters allow:
        // at 500 rows a statement, 20 statements each found all 10,000 rows
        // of a batch, 28 µs per key of PostgreSQL's time (2026-12-07).
        let mut seqs = claim(&mut tx, ledger.len()).await?;
        for part in ledger.chunks(STAMPS_PER_STATEMENT) {
            let mut params = Params::new(postgres);
            let (first_unstamped, values) = (params.next(), params.rows(part.len(), 3, ""));
            let (reporter, unstamped) = (params.next(), params.next());
            let sql = format!(
                "UPDATE quota_counts
                 SET seq = v.column3,
                     first_seq = CASE WHEN first_seq = {first_unstamped} THEN v.column3 ELSE first_seq END
                 FROM (VALUES {values}) AS v
                 WHERE quota_counts.reporter_id = {reporter} AND quota_counts.seq = {unstamped}
                   AND quota_counts.key_id = v.column1
                   AND quota_counts.period_start_ms = v.column2"
            );
            let mut stamp = sqlx::query(&sql).bind(UNSTAMPED);
            for (entry, seq) in part.iter().zip(seqs.by_ref()) {
                stamp = stamp
                    .bind(&entry.key_id)
                    .bind(entry.period_start_ms)
                    .bind(seq);
            }
            stamp = stamp.bind(&batch.reporter_id).bind(UNSTAMPED);
            stamp.execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    Ok(true)
}

/// The next `rows` numbers of the quota ledger's sequence, its row held until commit.
async fn claim(tx: &mut Tx, rows: usize) -> Result<std::ops::RangeFrom<i64>, sqlx::Error> {
    let rows = i64::try_from(rows).unwrap_or(i64::MAX);
    let last: i64 =
        sqlx::query_scalar("UPDATE quota_seq SET seq = seq + $1 WHERE id = 1 RETURNING seq")
            .bind(rows)
            .fetch_one(&mut **tx)
            .await?;
    Ok(last - rows + 1..)
}

/// Adds `n` to `counts[outcome]`, saturating.
fn add_to<'a>(counts: &mut BTreeMap<&'a str, u64>, outcome: &'a str, n: u64) {
    let count = counts.entry(outcome).or_default();
    *count = count.saturating_add(n);
}

/// The earliest start of a current quota period, over every anchor day: no
/// ledger row from before it can count towards any key's standing.
pub fn earliest_current_start(now: u64) -> u64 {
    (1..=31u8)
        .map(|day| quota_period(now, Some(day)).start_ms)
        .min()
        .unwrap_or(0)
}

#[derive(sqlx::FromRow)]
struct StandingRow {
    key_id: String,
    key_hash: String,
    last_seq: i64,
    period_start_ms: Option<i64>,
    used: Option<i64>,
    billing_anchor_day: Option<i64>,
}

/// What reporters other than `reporter_id` used of each key's quota in its
/// current period, for the keys `reporter_id` should hear of (see the
/// module docs) whose ledger rows changed after `since`.
pub async fn receipt(
    db: &Db,
    page: usize,
    reporter_id: &str,
    since: u64,
    now: u64,
) -> ApiResult<UsageReceipt> {
    // The head first: every row at or below it is committed (see the module
    // docs), so reading rows after it can miss none of them.
    let head: i64 = sqlx::query_scalar("SELECT seq FROM quota_seq WHERE id = 1")
        .fetch_one(db)
        .await?;
    let since_db = i64::try_from(since).unwrap_or(i64::MAX);
    let cursor = u64::try_from(head).unwrap_or(0);
    if head <= since_db {
        return Ok(UsageReceipt {
            standings: Vec::new(),
            cursor,
            more: false,
            leases: None,
        });
    }
    let page = page.max(1);
    // `$5`, the earliest start of any current period, stands for "this
    // period" where the key's own is not at hand: a row of an earlier
    // period it lets in costs a standing more, never a wrong one (each
    // figure below is summed over the key's own current period). A first
    // use no other reporter shares would be a standing of none, which is
    // left out below anyway: it is left out here, where it costs an index
    // probe instead of its joins (most of a receipt's cost when an Envoy
    // first uses thousands of keys a second that no other Envoy uses).
    let rows = sqlx::query_as::<_, StandingRow>(
        "SELECT p.key_id, p.key_hash, p.last_seq, c.period_start_ms, c.used, t.billing_anchor_day
         FROM (SELECT key_id, MAX(key_hash) AS key_hash, MAX(seq) AS last_seq
               FROM (SELECT o.key_id, o.key_hash, o.seq FROM quota_counts o
                     WHERE o.seq > $1 AND o.seq <= $2 AND o.reporter_id <> $3
                       AND (EXISTS (SELECT 1 FROM quota_counts m
                                    WHERE m.key_id = o.key_id AND m.reporter_id = $3
                                      AND m.period_start_ms >= $5)
                            OR (SELECT SUM(a.used) FROM quota_counts a
                                WHERE a.key_id = o.key_id AND a.period_start_ms >= $5)
                               >= (SELECT COALESCE(qk.monthly_quota, qp.monthly_quota)
                                   FROM api_keys qk JOIN tenants qt ON qt.id = qk.tenant_id
                                   LEFT JOIN plans qp ON qp.id = qt.plan_id
                                   WHERE qk.id = o.key_id))
                     UNION ALL
                     SELECT f.key_id, f.key_hash, f.first_seq FROM quota_counts f
                     WHERE f.reporter_id = $3 AND f.first_seq > $1 AND f.first_seq <= $2
                       AND EXISTS (SELECT 1 FROM quota_counts x
                                   WHERE x.key_id = f.key_id AND x.reporter_id <> $3
                                     AND x.period_start_ms >= $5)) changed
               GROUP BY key_id ORDER BY MAX(seq) LIMIT $4) p
         LEFT JOIN quota_counts c
                ON c.key_id = p.key_id AND c.reporter_id <> $3 AND c.period_start_ms >= $5
         LEFT JOIN api_keys k ON k.id = p.key_id
         LEFT JOIN tenants t ON t.id = k.tenant_id
         ORDER BY p.last_seq",
    )
    .bind(since_db)
    .bind(head)
    .bind(reporter_id)
    .bind(i64::try_from(page + 1).unwrap_or(i64::MAX))
    .bind(db_int(earliest_current_start(now)))
    .fetch_all(db)
    .await?;
    // Rows come grouped by key, keys in the order of their newest change;
    // each key's figure is for its current period, whatever period changed.
    struct Standing {
        key_id: String,
        last_seq: i64,
        standing: QuotaStanding,
    }
    let mut standings: Vec<Standing> = Vec::new();
    for row in rows {
        if standings.last().is_none_or(|s| s.key_id != row.key_id) {
            let period = quota_period(now, anchor(row.billing_anchor_day));
            standings.push(Standing {
                key_id: row.key_id.clone(),
                last_seq: row.last_seq,
                standing: QuotaStanding {
                    key_hash: row.key_hash.clone(),
                    period_start_ms: period.start_ms,
                    others_used: 0,
                },
            });
        }
        let Some(s) = standings.last_mut() else {
            continue;
        };
        if row.period_start_ms == Some(db_int(s.standing.period_start_ms)) {
            let used = row.used.and_then(|u| u64::try_from(u).ok()).unwrap_or(0);
            s.standing.others_used = s.standing.others_used.saturating_add(used);
        }
    }
    let more = standings.len() > page;
    standings.truncate(page);
    // A full page covers up to its newest key's change; the rest, up to the head.
    let cursor = match standings.last() {
        Some(last) if more => u64::try_from(last.last_seq).unwrap_or(0),
        _ => cursor,
    };
    Ok(UsageReceipt {
        // None used by the others this period: the reporter already counts
        // it so (a first use of a key nobody else used, or another
        // period's change).
        standings: standings
            .into_iter()
            .map(|s| s.standing)
            .filter(|s| s.others_used > 0)
            .collect(),
        cursor,
        more,
        leases: None,
    })
}

/// What counts against a key's quota: its own and its plan's quota, and its
/// tenant's billing anchor; `None` for no such key (or a deleted one).
#[derive(sqlx::FromRow)]
pub struct KeyQuota {
    pub tenant_id: String,
    pub own_quota: Option<i64>,
    pub plan_quota: Option<i64>,
    pub billing_anchor_day: Option<i64>,
}

pub async fn key_quota(db: &Db, key_id: &str) -> Result<Option<KeyQuota>, sqlx::Error> {
    sqlx::query_as(
        "SELECT k.tenant_id, k.monthly_quota AS own_quota, p.monthly_quota AS plan_quota,
                t.billing_anchor_day
         FROM api_keys k JOIN tenants t ON t.id = k.tenant_id JOIN plans p ON p.id = t.plan_id
         WHERE k.id = $1 AND k.deleted_at IS NULL",
    )
    .bind(key_id)
    .fetch_optional(db)
    .await
}

/// What the share allocator needs of a key's quota to slice it (see
/// `crate::shares`): the quota, its current period, and what each Envoy
/// counted of it; `None` for a key without a quota (or no such key).
pub async fn quota_facts(
    db: &Db,
    key_id: &str,
    now: u64,
) -> Result<Option<QuotaFacts>, sqlx::Error> {
    let key: Option<(String, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT k.key_hash, COALESCE(k.monthly_quota, p.monthly_quota), t.billing_anchor_day
         FROM api_keys k JOIN tenants t ON t.id = k.tenant_id JOIN plans p ON p.id = t.plan_id
         WHERE k.id = $1 AND k.deleted_at IS NULL",
    )
    .bind(key_id)
    .fetch_optional(db)
    .await?;
    let Some((key_hash, Some(quota), anchor_day)) = key else {
        return Ok(None);
    };
    let period = quota_period(now, anchor(anchor_day));
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT reporter_id, used FROM quota_counts WHERE key_id = $1 AND period_start_ms = $2",
    )
    .bind(key_id)
    .bind(db_int(period.start_ms))
    .fetch_all(db)
    .await?;
    let used_by: std::collections::HashMap<String, u64> = rows
        .into_iter()
        .map(|(reporter, used)| (reporter, u64::try_from(used).unwrap_or(0)))
        .collect();
    Ok(Some(QuotaFacts {
        key_id: key_id.to_owned(),
        key_hash,
        period_start_ms: period.start_ms,
        period_end_ms: period.end_ms,
        quota: u64::try_from(quota).unwrap_or(0),
        used: used_by.values().sum(),
        used_by,
    }))
}

/// The start of the UTC day of `at` (RFC 3339 UTC, as every hour and day is written).
pub fn day_of(at: &str) -> String {
    format!("{}T00:00:00Z", at.get(..10).unwrap_or(at))
}

// Every read of usage below reads the hourly counts and the days rolled up
// (`store::retention`) together: a day is in one table or the other, or,
// while a rollup is under way or after a late report, in part in each; the
// union counts each request once either way. A rolled-up day counts whole
// when it overlaps the span asked for: the callers ask from midnights (the
// starts of days, months and quota periods), where that is exact.

/// The cost the key was let through for from `from` to `to` (exclusive;
/// both RFC 3339 of whole hours, of whole days where usage is rolled up).
pub async fn cost_between(db: &Db, key_id: &str, from: &str, to: &str) -> Result<u64, sqlx::Error> {
    // SUM of BIGINT is NUMERIC on PostgreSQL, which the Any driver cannot read.
    let used: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(SUM(cost) AS BIGINT) FROM (
           SELECT cost FROM usage_hourly
           WHERE key_id = $1 AND outcome = 'allowed' AND hour >= $2 AND hour < $3
           UNION ALL
           SELECT cost FROM usage_daily
           WHERE key_id = $1 AND outcome = 'allowed' AND day >= $4 AND day < $3
         ) u",
    )
    .bind(key_id)
    .bind(from)
    .bind(to)
    .bind(day_of(from))
    .fetch_one(db)
    .await?;
    Ok(used.and_then(|u| u64::try_from(u).ok()).unwrap_or(0))
}

/// One hour (or, rolled up, one day) of one key's counts: (key_id, start,
/// outcome, count, cost); the key id is empty for refusals that named no
/// known key.
pub type HourRow = (String, String, String, i64, i64);

/// The tenant's counts from `from_hour` to `to` (exclusive), by key, start
/// and outcome: an hour's where they are hourly, a whole day's (starting
/// at its midnight) where the day is rolled up and overlaps the span.
pub async fn tenant_hours(
    db: &Db,
    tenant_id: &str,
    from_hour: &str,
    to: &str,
) -> Result<Vec<HourRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT key_id, hour, outcome, count, cost FROM usage_hourly
         WHERE tenant_id = $1 AND hour >= $2 AND hour < $3
         UNION ALL
         SELECT key_id, day, outcome, count, cost FROM usage_daily
         WHERE tenant_id = $1 AND day >= $4 AND day < $3
         ORDER BY 1, 2, 3",
    )
    .bind(tenant_id)
    .bind(from_hour)
    .bind(to)
    .bind(day_of(from_hour))
    .fetch_all(db)
    .await
}

/// Requests by outcome (`allowed` or a refusal's code) from `from_hour` on,
/// of one tenant or of all.
pub async fn outcome_totals(
    db: &Db,
    tenant_id: Option<&str>,
    from_hour: &str,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT outcome, CAST(SUM(count) AS BIGINT) FROM (
           SELECT outcome, count FROM usage_hourly
           WHERE hour >= $2 AND ($1 IS NULL OR tenant_id = $1)
           UNION ALL
           SELECT outcome, count FROM usage_daily
           WHERE day >= $3 AND ($1 IS NULL OR tenant_id = $1)
         ) u
         GROUP BY outcome ORDER BY outcome",
    )
    .bind(tenant_id)
    .bind(from_hour)
    .bind(day_of(from_hour))
    .fetch_all(db)
    .await
}

/// The cost each tenant's keys were let through for from `from_hour` on.
pub async fn cost_by_tenant(db: &Db, from_hour: &str) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant_id, CAST(SUM(cost) AS BIGINT) FROM (
           SELECT tenant_id, cost FROM usage_hourly
           WHERE outcome = 'allowed' AND hour >= $1 AND tenant_id IS NOT NULL
           UNION ALL
           SELECT tenant_id, cost FROM usage_daily
           WHERE outcome = 'allowed' AND day >= $2 AND tenant_id IS NOT NULL
         ) u
         GROUP BY tenant_id",
    )
    .bind(from_hour)
    .bind(day_of(from_hour))
    .fetch_all(db)
    .await
}

/// The cost each of the tenant's keys was let through for from `from_hour` on.
pub async fn cost_by_key(
    db: &Db,
    tenant_id: &str,
    from_hour: &str,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT key_id, CAST(SUM(cost) AS BIGINT) FROM (
           SELECT key_id, cost FROM usage_hourly
           WHERE outcome = 'allowed' AND hour >= $2 AND tenant_id = $1
           UNION ALL
           SELECT key_id, cost FROM usage_daily
           WHERE outcome = 'allowed' AND day >= $3 AND tenant_id = $1
         ) u
         GROUP BY key_id",
    )
    .bind(tenant_id)
    .bind(from_hour)
    .bind(day_of(from_hour))
    .fetch_all(db)
    .await
}
