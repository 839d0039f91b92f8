-- Standings only for the keys an Envoy uses (`store::usage::receipt`): the
-- `seq` a reporter's ledger row for a key and period was first written
-- with, so the receipt after an Envoy's first use of a key in a period
-- tells it what the others used of it, however long ago. Rows from before
-- are 0: no receipt window starts below it.
ALTER TABLE quota_counts ADD COLUMN first_seq BIGINT NOT NULL DEFAULT 0;
CREATE INDEX quota_counts_first_use ON quota_counts (reporter_id, first_seq);
