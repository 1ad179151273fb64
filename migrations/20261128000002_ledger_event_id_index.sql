-- The ledger lookup before each chunk asks for event ids. Through the (model, event_id)
-- primary key, a plan made while the ledger's statistics are stale (a backfill inserts far
-- faster than autovacuum analyzes) probes by model alone and filters every row of the
-- model; an index led by event_id leaves the planner only the direct probe.
CREATE INDEX deliveries_event_id ON deliveries (event_id);
