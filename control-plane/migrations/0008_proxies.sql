-- The proxy registry: every Envoy whose leader identified itself on a sync
-- poll or a usage report, keyed by the instance id its filter drew (one per
-- Envoy process, kept across changes of leader). In the database rather
-- than in a replica's memory, so with several replicas on PostgreSQL every
-- replica sees every proxy, whichever one it polls.
CREATE TABLE proxies (
    instance_id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    cluster TEXT NOT NULL,
    build TEXT NOT NULL,
    -- The config version the proxy has applied; NULL before its first.
    applied_version BIGINT,
    first_seen_ms BIGINT NOT NULL,
    -- Written at most every few seconds while nothing changes (see
    -- control-plane/src/fleet.rs), at once when the applied version moves.
    last_seen_ms BIGINT NOT NULL
);
CREATE INDEX proxies_last_seen ON proxies (last_seen_ms);

-- When each config version was committed, so a proxy's lag reads in
-- milliseconds as well as in versions.
CREATE TABLE config_version_times (
    version BIGINT PRIMARY KEY,
    committed_ms BIGINT NOT NULL
);
