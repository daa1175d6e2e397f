-- The index every cycle loads, as a covering index: PostgreSQL answers the key-ordered walk of
-- `load_index_postgres` with an index-only scan instead of visiting every heap row with its
-- snapshot JSON. (PostgreSQL cannot cover from expressions, hence whole columns in INCLUDE.)
CREATE INDEX IF NOT EXISTS records_index_cover
    ON records (external_id) INCLUDE (state, quo_id, source_fingerprint);
