-- capi-sync's own tables. They hold row keys, event ids, hashes and reasons: never customer data.

-- Per model: the (cursor value, primary key) of the last row whose fate is settled
-- (acknowledged by Meta, found in the delivery ledger, or refused with a reason).
CREATE TABLE cursors (
    model        text PRIMARY KEY,
    cursor_value text NOT NULL,
    row_key      text[] NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    run_id       bigint
);

CREATE TABLE runs (
    id                bigserial PRIMARY KEY,
    model             text NOT NULL,
    trigger           text NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    status            text NOT NULL,
    rows_read         bigint NOT NULL DEFAULT 0,
    events_sent       bigint NOT NULL DEFAULT 0,
    rows_refused      bigint NOT NULL DEFAULT 0,
    rows_already_sent bigint NOT NULL DEFAULT 0,
    requests          bigint NOT NULL DEFAULT 0,
    retries           bigint NOT NULL DEFAULT 0,
    refused_by_reason jsonb NOT NULL DEFAULT '{}',
    dropped_by_field  jsonb NOT NULL DEFAULT '{}',
    coverage          jsonb NOT NULL DEFAULT '{}',
    error             text
);
CREATE INDEX runs_model_started ON runs (model, started_at DESC);

-- Rows we did not send, with the reason. One row per model and row key: the latest verdict.
CREATE TABLE refused_rows (
    model        text NOT NULL,
    row_key      text[] NOT NULL,
    event_id     text,
    reason       text NOT NULL,
    detail       text NOT NULL,
    meta_code    integer,
    meta_subcode integer,
    cursor_value text,
    run_id       bigint,
    refused_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, row_key)
);

-- The delivery ledger: every event Meta acknowledged, written in the transaction that moves
-- the cursor.
CREATE TABLE deliveries (
    model        text NOT NULL,
    event_id     text NOT NULL,
    row_key      text[] NOT NULL,
    event_name   text NOT NULL,
    fingerprint  text NOT NULL,
    event_time   timestamptz NOT NULL,
    delivered_at timestamptz NOT NULL DEFAULT now(),
    fbtrace_id   text,
    run_id       bigint,
    -- Set when a later read of the row maps to a different event under the same id (Meta
    -- cannot update an event, so it is not re-sent; see DECISIONS).
    changed_at   timestamptz,
    PRIMARY KEY (model, event_id)
);
CREATE INDEX deliveries_delivered_at ON deliveries (delivered_at);
