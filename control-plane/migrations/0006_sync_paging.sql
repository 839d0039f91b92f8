-- `GET /v1/sync` walks changed keys in (version, key_hash) order, a page at a
-- time (keyset paging): this index serves each page as one range scan. It
-- also serves every lookup by version alone, so the old index goes.
CREATE INDEX api_keys_version_hash ON api_keys (version, key_hash);
DROP INDEX api_keys_version;
