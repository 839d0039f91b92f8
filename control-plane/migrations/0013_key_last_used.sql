-- A key's last use, apart from the key (`store::usage`): usage ingest moves
-- it for every key a batch counts, and rewriting the key's own row for it
-- (wide, under four indexes) was most of what ingest wrote: about 20 MB a
-- batch of 10,000 keys out of 100,000 on SQLite.
CREATE TABLE key_last_used (
    key_id TEXT PRIMARY KEY REFERENCES api_keys (id),
    last_used_at TEXT NOT NULL
);
INSERT INTO key_last_used (key_id, last_used_at)
    SELECT id, last_used_at FROM api_keys WHERE last_used_at IS NOT NULL;
ALTER TABLE api_keys DROP COLUMN last_used_at;
