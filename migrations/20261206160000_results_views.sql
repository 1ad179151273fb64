-- Results in SQL: stable views of what each model delivered, for data teams to query or to
-- model with dbt. They read the run history (kept for good, unlike the delivery ledger, which
-- keeps events for `state.ledger_retention`), so a day's figures do not change when the
-- ledger is pruned. Keys, names and counts only: no customer value is in any of them.
--
-- A run's figures count on the UTC day the run started. Every run counts, whatever its
-- status: a failed run's events were acknowledged by Meta before it stopped.

-- Events sent per run and event name (older runs recorded none: their events count under
-- the event name '' in `results_daily_events`).
ALTER TABLE runs ADD COLUMN events_by_name jsonb NOT NULL DEFAULT '{}';

CREATE VIEW results_daily AS
SELECT model,
       (started_at AT TIME ZONE 'UTC')::date AS day,
       count(*)::bigint AS runs,
       count(*) FILTER (WHERE status = 'failed')::bigint AS runs_failed,
       sum(rows_read)::bigint AS rows_read,
       sum(events_sent)::bigint AS events_sent,
       sum(rows_refused)::bigint AS rows_refused,
       sum(rows_already_sent)::bigint AS rows_already_sent,
       sum(requests)::bigint AS requests
FROM runs
GROUP BY model, (started_at AT TIME ZONE 'UTC')::date;
COMMENT ON VIEW results_daily IS
    'Per model and UTC day (the day each run started): runs, failed runs, rows read, events sent (acknowledged by Meta), rows refused, rows already sent, requests.';

CREATE VIEW results_daily_events AS
SELECT r.model,
       (r.started_at AT TIME ZONE 'UTC')::date AS day,
       e.key AS event_name,
       sum(e.value::bigint)::bigint AS events_sent
FROM runs r
CROSS JOIN LATERAL jsonb_each_text(
    CASE WHEN r.events_by_name = '{}'::jsonb AND r.events_sent > 0
         THEN jsonb_build_object('', r.events_sent)
         ELSE r.events_by_name END) AS e
GROUP BY r.model, (r.started_at AT TIME ZONE 'UTC')::date, e.key;
COMMENT ON VIEW results_daily_events IS
    'Per model, UTC day and event name: events sent (acknowledged by Meta). Runs recorded before event names were counted show the event name ''''.';

CREATE VIEW results_daily_refusals AS
SELECT r.model,
       (r.started_at AT TIME ZONE 'UTC')::date AS day,
       e.key AS reason,
       sum(e.value::bigint)::bigint AS rows_refused
FROM runs r
CROSS JOIN LATERAL jsonb_each_text(r.refused_by_reason) AS e
GROUP BY r.model, (r.started_at AT TIME ZONE 'UTC')::date, e.key;
COMMENT ON VIEW results_daily_refusals IS
    'Per model, UTC day and reason: rows refused (not sent; see capi-sync refused for the rows by key).';

CREATE VIEW results_daily_match_keys AS
WITH daily AS (
    SELECT model, (started_at AT TIME ZONE 'UTC')::date AS day,
           sum(events_sent)::bigint AS events_sent
    FROM runs
    GROUP BY model, (started_at AT TIME ZONE 'UTC')::date
), keyed AS (
    SELECT r.model, (r.started_at AT TIME ZONE 'UTC')::date AS day, e.key AS match_key,
           sum(e.value::bigint)::bigint AS events_with_key
    FROM runs r
    CROSS JOIN LATERAL jsonb_each_text(r.coverage) AS e
    GROUP BY r.model, (r.started_at AT TIME ZONE 'UTC')::date, e.key
)
SELECT k.model, k.day, k.match_key, k.events_with_key, d.events_sent,
       round(100.0 * k.events_with_key / NULLIF(d.events_sent, 0), 1) AS coverage_pct
FROM keyed k
JOIN daily d USING (model, day);
COMMENT ON VIEW results_daily_match_keys IS
    'Per model, UTC day and match key (em, ph, fn, ln, ct, st, zp, country, db, ge, external_id, ...): events sent carrying the key, events sent, and the share in percent.';

CREATE VIEW results_latest_runs AS
SELECT DISTINCT ON (model)
       model, id AS run_id, trigger, status, started_at, finished_at, scheduled_for,
       rows_read, events_sent, rows_refused, rows_already_sent, refused_by_reason, error
FROM runs
ORDER BY model, started_at DESC, id DESC;
COMMENT ON VIEW results_latest_runs IS
    'The latest run of each model: its status, times, counts, refusals by reason and error (errors name models, row keys and fields, never customer values).';
