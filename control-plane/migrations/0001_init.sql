-- Every row that the filters need carries the config version that last
-- changed it, so `GET /v1/sync?since=N` is "rows with version > N".
-- Deleted keys stay as tombstones (deleted_at set) so deltas can carry them.

CREATE TABLE config_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO config_version (id, version) VALUES (1, 0);

-- Plans and tenants are deleted softly too (deleted_at): keys' tombstones
-- still point at them, and names are unique only among the living.
CREATE TABLE plans (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    limits TEXT NOT NULL,
    monthly_quota BIGINT,
    max_api_keys BIGINT,
    max_users BIGINT,
    metadata TEXT NOT NULL,
    public BOOLEAN NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT,
    version BIGINT NOT NULL
);
CREATE UNIQUE INDEX plans_name ON plans (name) WHERE deleted_at IS NULL;

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    plan_id TEXT NOT NULL REFERENCES plans (id),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);
CREATE UNIQUE INDEX tenants_name ON tenants (name) WHERE deleted_at IS NULL;
CREATE INDEX tenants_plan ON tenants (plan_id);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    active BOOLEAN NOT NULL,
    -- RFC 3339 for people, Unix ms for the filters.
    expires_at TEXT,
    expires_at_ms BIGINT,
    -- JSON; NULL means "no restriction" / "the plan's".
    scopes TEXT,
    allowed_cidrs TEXT,
    limits TEXT,
    monthly_quota BIGINT,
    rotated_from TEXT REFERENCES api_keys (id),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT,
    version BIGINT NOT NULL
);
CREATE INDEX api_keys_version ON api_keys (version);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
CREATE INDEX plans_version ON plans (version);

-- Self-service tokens: a tenant's own bearer tokens, stored as SHA-256 only.
CREATE TABLE tenant_tokens (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX tenant_tokens_tenant ON tenant_tokens (tenant_id);
