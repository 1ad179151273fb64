-- The schedule's fire time a service run was due at, so `status` and `history` can show how
-- late runs start when more models are due than `service.max_concurrent_runs` lets go at once.
-- NULL for runs started by hand (`sync`, `retry`, ...).
ALTER TABLE runs ADD COLUMN scheduled_for timestamptz;
