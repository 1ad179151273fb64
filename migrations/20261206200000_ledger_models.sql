-- The models that have written rows into the delivery ledger, marked in the transaction of
-- every ledger write. A run asks it whether its model has ever delivered (a first backfill
-- then skips the per-chunk ledger lookups) without scanning the ledger, whose only index is
-- on event ids: with millions of rows of other models, that scan took seconds at every run
-- start. Pruning leaves the mark; a marked model with no rows left only looks up in vain.
CREATE TABLE ledger_models (model text COLLATE "C" PRIMARY KEY);
INSERT INTO ledger_models SELECT DISTINCT model FROM deliveries;

-- Delivered events whose row has changed since: few, and counted per model by `status` and
-- the dashboard, which refreshes itself. Inserts (changed_at NULL) add no entry.
CREATE INDEX deliveries_changed ON deliveries (model) WHERE changed_at IS NOT NULL;
