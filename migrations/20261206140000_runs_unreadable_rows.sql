-- Rows of a model's output the keyset reader cannot see, counted once per run: a NULL cursor,
-- or a cursor but a NULL in the primary key. NULL when the run did not count them (an earlier
-- version, a retry run, a run that failed or stopped before the count).
ALTER TABLE runs ADD COLUMN rows_null_cursor bigint, ADD COLUMN rows_null_key bigint;
