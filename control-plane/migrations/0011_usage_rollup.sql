-- Usage that no longer grows without end (`store::retention`): hourly counts
-- old enough are rolled up into one row per key, day and outcome, and
-- deleted after an optional retention; quota ledger rows of Envoys silent
-- for long are folded into one row per key and period.

-- The same counts as usage_hourly, per UTC day: `day` is RFC 3339 UTC, the
-- start of the day (`2026-11-18T00:00:00Z`), the form of usage_hourly.hour,
-- so one text comparison orders hours and days alike.
CREATE TABLE usage_daily (
    key_id TEXT NOT NULL,
    tenant_id TEXT,
    day TEXT NOT NULL,
    outcome TEXT NOT NULL,
    count BIGINT NOT NULL,
    cost BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day, outcome)
);
CREATE INDEX usage_daily_tenant ON usage_daily (tenant_id, day);
-- Retention finds the oldest days, and the admin's totals read all tenants' days.
CREATE INDEX usage_daily_day ON usage_daily (day);
-- The rollup finds the oldest hours a chunk at a time.
CREATE INDEX usage_hourly_hour ON usage_hourly (hour);

-- When each reporter (an Envoy process) was last heard from, on any usage
-- report, heartbeats included: written by each replica at most every hour
-- per reporter, so a reporter silent past the batch-id window is known to
-- be, and only then are its ledger rows folded.
CREATE TABLE quota_reporters (
    reporter_id TEXT PRIMARY KEY,
    last_seen_ms BIGINT NOT NULL
);
CREATE INDEX quota_reporters_last_seen ON quota_reporters (last_seen_ms);
-- The fold finds a silent reporter's rows a chunk at a time.
CREATE INDEX quota_counts_reporter ON quota_counts (reporter_id);
