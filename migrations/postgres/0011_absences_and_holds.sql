-- PostgreSQL twin of migrations/sqlite/0011_absences_and_holds.sql.
-- Records a complete read of the source did not return, and since when. A record is deleted
-- (sync.on_source_delete = "delete") only when the next complete read agrees: one read of a
-- file caught half-written, or a list that skipped a page, deletes nothing. A read that returns
-- the record removes its row.
CREATE TABLE source_absences (
    external_id     TEXT PRIMARY KEY,
    first_missed_at TEXT NOT NULL,
    run_id          TEXT
);
-- Values the CRM cannot hold (a character its CSV file's encoding lacks, such as an emoji in a
-- Windows-1252 file). The Quo value stays in Quo and the CRM keeps its own: while the CRM field
-- still holds `crm_value`, it stands for `quo_value` (both JSON, as in snapshots), so neither
-- side's value is taken for an edit of the other. Recorded as a conflict too.
CREATE TABLE crm_holds (
    external_id TEXT NOT NULL,
    field       TEXT NOT NULL,
    crm_value   TEXT NOT NULL,
    quo_value   TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          TEXT NOT NULL,
    PRIMARY KEY (external_id, field)
);
