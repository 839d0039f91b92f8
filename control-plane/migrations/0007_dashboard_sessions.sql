-- Dashboard sessions, in the database so every replica knows them. The
-- cookie carries a random secret; only its SHA-256 is stored. A session
-- lives only while the token it was signed in with still works: the admin
-- token's hash must still be the server's, a tenant token must still be
-- unrevoked (checked on every request, so revoking the token ends it).
CREATE TABLE dashboard_sessions (
    -- Public: shown in the audit log as the actor's session.
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    -- Hex SHA-256 of the token signed in with.
    credential_hash TEXT NOT NULL,
    -- NULL for the admin.
    tenant_id TEXT,
    created_at TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at_ms);
