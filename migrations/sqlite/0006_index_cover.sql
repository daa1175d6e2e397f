-- The index every cycle loads (external id → fingerprint head, state, linked) as one narrow
-- covering index: SQLite 3.41+ reads indexed expressions straight from the index, so a million-
-- record load walks ~40 MB instead of the whole `records` table with its snapshot JSON.
-- The expressions must stay exactly as `load_index_sqlite` writes them.
CREATE INDEX IF NOT EXISTS records_index_cover
    ON records (external_id, state, quo_id IS NOT NULL, substr(source_fingerprint, 1, 16));
