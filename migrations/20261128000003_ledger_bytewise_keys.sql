-- The ledger's key columns compare byte-wise. Event ids and model names are identifiers, never
-- sorted for people; under the database's default collation every index comparison of a
-- ledger insert was a locale comparison.
ALTER TABLE deliveries
    ALTER COLUMN event_id TYPE text COLLATE "C",
    ALTER COLUMN model TYPE text COLLATE "C";
