-- Match quality as Meta reports it (Dataset Quality API): one row per read of a model's
-- pixel, and one snapshot per event name Meta scored. Scores, coverage percentages and
-- identifier names only: never customer data, never Meta's prose.

-- Every read of a model's quality: `scored` (snapshots follow), `no_score` (Meta answered but
-- has no score for the model's event names yet) or `unavailable` (Meta refused or could not be
-- reached; `note` says why and what to do, `meta_code` is Meta's error code when it gave one).
CREATE TABLE quality_fetches (
    id          bigserial PRIMARY KEY,
    fetched_at  timestamptz NOT NULL DEFAULT now(),
    model       text NOT NULL,
    pixel_id    text NOT NULL,
    source      text NOT NULL CHECK (source IN ('web', 'offline')),
    status      text NOT NULL CHECK (status IN ('scored', 'no_score', 'unavailable')),
    note        text,
    meta_code   bigint
);
CREATE INDEX quality_fetches_model_fetched ON quality_fetches (model, fetched_at DESC);

-- One event name's quality at one read. `match_keys` is {identifier: coverage percent}
-- (web: match_key_feedback; offline: match_key.coverage). The offline scores are out of 10.
CREATE TABLE quality_snapshots (
    id                      bigserial PRIMARY KEY,
    fetch_id                bigint NOT NULL REFERENCES quality_fetches (id) ON DELETE CASCADE,
    fetched_at              timestamptz NOT NULL,
    model                   text NOT NULL,
    pixel_id                text NOT NULL,
    source                  text NOT NULL CHECK (source IN ('web', 'offline')),
    event_name              text NOT NULL,
    composite_score         double precision,
    match_keys              jsonb NOT NULL DEFAULT '{}',
    event_coverage_pct      double precision,
    event_coverage_goal_pct double precision,
    acr_pct                 double precision,
    upload_frequency        text,
    match_key_score         double precision,
    frequency_score         double precision,
    freshness_score         double precision
);
CREATE INDEX quality_snapshots_latest ON quality_snapshots (model, event_name, fetched_at DESC, id DESC);

-- The newest snapshot per model and event name.
CREATE VIEW results_latest_quality AS
SELECT DISTINCT ON (model, event_name)
       model, event_name, pixel_id, source, fetched_at, composite_score, match_keys,
       event_coverage_pct, event_coverage_goal_pct, acr_pct, upload_frequency,
       match_key_score, frequency_score, freshness_score
FROM quality_snapshots
ORDER BY model, event_name, fetched_at DESC, id DESC;

COMMENT ON VIEW results_latest_quality IS
'Match quality as Meta last reported it (Dataset Quality API), one row per model and event name: '
'model; event_name; pixel_id (the dataset); source (web = website events, offline = physical_store, beta); '
'fetched_at (when capi-sync read it); composite_score (out of 10: Event Match Quality for web, the composite offline score for offline); '
'match_keys (jsonb {identifier: coverage percent}); event_coverage_pct and event_coverage_goal_pct (web: share of Pixel events covered by server events over 7 days, and Meta''s target); '
'acr_pct (web: additional conversions reported thanks to the Conversions API, percent); upload_frequency (web: weekly, daily, hourly or real_time); '
'match_key_score, frequency_score, freshness_score (offline, out of 10). NULL where Meta gave no value. '
'A later read that Meta refused leaves the last scores here; quality_fetches holds every read with its note.';
