-- The ledger is looked up by event id before each chunk. Keyed (model, event_id), a plan
-- made while the ledger's statistics are stale (a backfill inserts far faster than
-- autovacuum analyzes) probed by model alone and filtered every row of the model: seconds
-- per chunk. Keyed (event_id, model), every plan probes the ids directly.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_pkey;
ALTER TABLE deliveries ADD PRIMARY KEY (event_id, model);
-- Pruning runs hourly and can afford a scan; an index on delivered_at slowed every insert.
DROP INDEX deliveries_delivered_at;
