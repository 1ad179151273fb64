-- The lag (seconds since the oldest row still waiting changed) that the `run` service measured
-- first after each run finished: the dashboard draws a model's lag over its runs from it, so
-- the line outlives a restart of the service. NULL when no service measured it (`sync`, ...).
ALTER TABLE runs ADD COLUMN lag_seconds double precision;
