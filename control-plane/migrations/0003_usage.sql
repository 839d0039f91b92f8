-- What the filters report: counted once per batch (usage_batches holds every
-- batch id ever applied), per key, hour and outcome ('allowed' or a refusal
-- code). Refusals that name no key have key_id ''.
ALTER TABLE api_keys ADD COLUMN last_used_at TEXT;

CREATE TABLE usage_batches (
    id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL
);

CREATE TABLE usage_hourly (
    key_id TEXT NOT NULL,
    tenant_id TEXT,
    -- RFC 3339 UTC, the start of the hour.
    hour TEXT NOT NULL,
    outcome TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (key_id, hour, outcome)
);
CREATE INDEX usage_hourly_tenant ON usage_hourly (tenant_id, hour);
