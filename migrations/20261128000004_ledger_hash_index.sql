-- The ledger is found by event id through a hash index instead of the (event_id, model)
-- primary key. A backfill inserts one ledger row per event with a random id: each insert
-- into the B-tree walked root to leaf comparing 32-character keys, and that walk was the
-- largest single cost of a backfill's database work (about 3.5 µs of server CPU per event on
-- a 2-core machine, against 1.3 µs for a hash bucket). Lookups only ever ask for equal ids.
--
-- Uniqueness is kept by the writers instead of the index: a run holds its model's lock,
-- sends each id at most once and only ids the ledger lacked when the chunk was read, and
-- the one write that may repeat (the cursor's transaction recording events whose early
-- write failed) deletes the ids before it inserts them.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_pkey;
CREATE INDEX deliveries_event_id ON deliveries USING hash (event_id);
