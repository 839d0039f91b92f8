-- Quota alerts: one webhook per tenant, an outbox of events, and every
-- delivery attempt. An event is written in the transaction that counts the
-- usage crossing its threshold, at most once per key, period and threshold
-- (the unique index), and delivered by a background worker with retries.

CREATE TABLE webhooks (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants (id),
    url TEXT NOT NULL,
    -- The HMAC-SHA256 signing secret. Kept in clear: signing needs it.
    secret TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE webhook_events (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    threshold BIGINT NOT NULL,
    period_start_ms BIGINT NOT NULL,
    -- The exact JSON body that is signed and sent, every attempt the same.
    payload TEXT NOT NULL,
    -- 'pending', 'delivered' or 'failed' (out of attempts).
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    delivered_at TEXT
);
CREATE UNIQUE INDEX webhook_events_once
    ON webhook_events (key_id, period_start_ms, event_type, threshold);
CREATE INDEX webhook_events_due ON webhook_events (status, next_attempt_at_ms);
CREATE INDEX webhook_events_tenant ON webhook_events (tenant_id, created_at);

CREATE TABLE webhook_attempts (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES webhook_events (id),
    attempted_at TEXT NOT NULL,
    url TEXT NOT NULL,
    -- NULL when no HTTP answer came (refused, timed out).
    status_code BIGINT,
    error TEXT,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX webhook_attempts_event ON webhook_attempts (event_id, attempted_at);
