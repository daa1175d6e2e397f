-- Creates whose outcome was never confirmed: a POST was sent (its answer lost, or the process
-- died with it in flight), the lookups by externalId that followed missed it (lists lag), and
-- the record was then created again or forgotten. Quo may hold the contact that POST made; a
-- scan that lists it resolves it against `snapshot` (what that POST sent: the base for telling
-- a person's edits on it from our values). One row per POST whose outcome is unknown; an entry
-- that three complete passes in a row, all started at least ten minutes after it, listed no
-- contact for is ruled out.
CREATE TABLE unconfirmed_creates (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    external_id  TEXT NOT NULL,
    snapshot     TEXT NOT NULL,
    sent_at      TEXT NOT NULL,
    passes       INTEGER NOT NULL DEFAULT 0,
    -- when a scan last listed a contact this entry may have made (a miss counts only in a pass
    -- that started after it)
    seen_at      TEXT
);
CREATE INDEX unconfirmed_creates_external_id ON unconfirmed_creates (external_id);
