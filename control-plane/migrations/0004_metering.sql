-- Metering: what requests cost, when a tenant's quota period starts, keyless
-- access, and the per-Envoy quota ledger behind the standings each usage
-- report is answered with.

-- Per-route costs of a plan (JSON array of WireRouteCost, first match wins).
ALTER TABLE plans ADD COLUMN route_costs TEXT NOT NULL DEFAULT '[]';

-- Quota periods start on this day of the month (1-31); NULL: calendar months.
ALTER TABLE tenants ADD COLUMN billing_anchor_day BIGINT;

-- The summed cost of the requests let through ('allowed' rows only).
ALTER TABLE usage_hourly ADD COLUMN cost BIGINT NOT NULL DEFAULT 0;
-- Before route costs, every request cost 1.
UPDATE usage_hourly SET cost = count WHERE outcome = 'allowed';

-- Anonymous access: one row. No routes: every request needs a key.
-- `version` is the config version that last changed it, as for plans and keys.
CREATE TABLE anonymous_access (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    routes TEXT NOT NULL,
    plan_id TEXT REFERENCES plans (id),
    updated_at TEXT,
    version BIGINT NOT NULL
);
INSERT INTO anonymous_access (id, routes, plan_id, updated_at, version) VALUES (1, '[]', NULL, NULL, 0);

-- The quota ledger: cost used per key, quota period and reporting Envoy, so
-- each Envoy can be told what the others used. `seq` orders changes for the
-- standings cursor: every row written gets a new value from quota_seq, and a
-- batch takes its values while holding that row, so they commit in order.
CREATE TABLE quota_counts (
    key_id TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    period_start_ms BIGINT NOT NULL,
    reporter_id TEXT NOT NULL,
    used BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (key_id, period_start_ms, reporter_id)
);
CREATE INDEX quota_counts_seq ON quota_counts (seq);

CREATE TABLE quota_seq (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO quota_seq (id, seq) VALUES (1, 0);
