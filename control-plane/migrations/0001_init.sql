-- Every row that the filters need carries the config version that last
-- changed it, so `GET /v1/sync?since=N` is "rows with version > N".
-- Deleted keys stay as tombstones (deleted_at set) so deltas can carry them.

CREATE TABLE config_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO config_version (id, version) VALUES (1, 0);

CREATE TABLE plans (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    limits TEXT NOT NULL,
    monthly_quota BIGINT,
    max_api_keys BIGINT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version BIGINT NOT NULL
);

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    plan_id TEXT NOT NULL REFERENCES plans (id),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    active BOOLEAN NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT,
    version BIGINT NOT NULL
);
CREATE INDEX api_keys_version ON api_keys (version);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
CREATE INDEX plans_version ON plans (version);
