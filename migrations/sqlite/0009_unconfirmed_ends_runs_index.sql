-- An unconfirmed create whose contact cannot be resolved ends in a recorded state instead of
-- lingering (and keeping the lingering alert on) for good: `failures` counts failed attempts in
-- a row to resolve a contact it may have made (unreadable, a write about it failing); after a
-- few, or at once when the record's linked contact turns out not to be ours, the entry is
-- abandoned: `abandoned_at` and `abandoned_reason` say when and why, and it no longer counts
-- as open (the contact is left in Quo for an operator).
ALTER TABLE unconfirmed_creates ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE unconfirmed_creates ADD COLUMN abandoned_at TEXT;
ALTER TABLE unconfirmed_creates ADD COLUMN abandoned_reason TEXT;

-- `/readyz` asks for the last finished run on every probe: an index walk instead of sorting the
-- whole run history (one row per cycle, for as long as the service runs).
CREATE INDEX runs_started_at ON runs (started_at);
