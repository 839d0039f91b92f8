-- Every change made through the admin API, written in the same transaction
-- as the change itself: a change without its audit entry cannot commit.
-- before/after are the resource's public view as JSON (never a key's or a
-- token's plaintext or hash); NULL before a creation and after a deletion.
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    -- RFC 3339 UTC with milliseconds, so entries sort by time.
    created_at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    -- The tenant the resource belongs to, so a tenant can read its own trail.
    tenant_id TEXT,
    before TEXT,
    after TEXT
);
CREATE INDEX audit_log_created ON audit_log (created_at, id);
CREATE INDEX audit_log_resource ON audit_log (resource_type, resource_id);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, created_at);
