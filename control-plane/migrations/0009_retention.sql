-- Retention (`store::retention`): batch ids are pruned by age and quota
-- ledger rows by period, a chunk at a time, each found by an index.
CREATE INDEX usage_batches_received_at ON usage_batches (received_at);
CREATE INDEX quota_counts_period ON quota_counts (period_start_ms);
