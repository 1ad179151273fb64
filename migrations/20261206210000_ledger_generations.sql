-- The delivery ledger in generations: a partition per generation, each with its own event-id
-- hash index, and new events always written to the newest.
--
-- With one table, every ledger insert added an entry to a random page of one hash index that
-- grows with the ledger. Once that index outgrew the server's shared buffers (about 4 million
-- events at PostgreSQL's default 128 MB), inserts read and evicted index pages, and every
-- checkpoint made each page's next change write the whole page to the WAL: the server's
-- cost per ledger row rose from about 1 µs of index work at 1 million events to nearly 3 µs
-- at 5 million. A generation's index stays small enough to stay cached while it is written
-- (the writer starts the next generation when the newest index reaches a quarter of
-- `shared_buffers`, or `state.ledger_partition_bytes`); older generations are only read.
--
-- A lookup by event id probes each generation's index, one probe per generation; the ledger
-- is pruned past its retention, and a generation emptied by pruning is dropped.
ALTER TABLE deliveries RENAME TO deliveries_g0;
ALTER TABLE deliveries_g0 ADD COLUMN generation integer NOT NULL DEFAULT 0;

CREATE TABLE deliveries (
    model        text COLLATE "C" NOT NULL,
    event_id     text COLLATE "C" NOT NULL,
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
    generation   integer NOT NULL DEFAULT 0
) PARTITION BY LIST (generation);

ALTER TABLE deliveries ATTACH PARTITION deliveries_g0 FOR VALUES IN (0);
-- Declared on the parent, made for every partition; generation 0's existing indexes match and
-- are taken as they are.
CREATE INDEX deliveries_by_event_id ON deliveries USING hash (event_id);
CREATE INDEX deliveries_changed_rows ON deliveries (model) WHERE changed_at IS NOT NULL;

-- The generations, the newest last. Writers read the newest before each write.
CREATE TABLE ledger_generations (
    generation integer PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ledger_generations (generation) VALUES (0);
