-- Phone history (issue #23 follow-up): which CRM record held which phone number, and when, so a
-- call or text found by number (a lost delivery the poller reads, which carries no contact ids)
-- links to the record that held the number when it happened, not to whoever holds it now.
--
-- One row per (number, record, opening): open (`closed_at` NULL) while the record's committed
-- snapshot carries the number, closed when a committed snapshot no longer carries it, the
-- record is unlinked or marked deleted, or its row is removed. The rows are derived by the
-- triggers below on every write of `records`, whatever code path makes it, so the history
-- cannot drift from the snapshots.
--
-- `phone` is the snapshot's text (E.164 from the mapper); linking compares digits.
-- `opened_at` / `closed_at` are RFC 3339 UTC with milliseconds: Quo's own `updatedAt` of the
-- contact when the write stored a new one that lies between the row's previous write and this
-- one (the moment Quo's contact changed, on Quo's clock, like a call's `createdAt`), else the
-- commit's `updated_at` (our clock).
-- `since_entry` = 1: opened with the record's first snapshot (or by this migration): the record
-- may have held the number before the ledger knew it, so linking lets it reach back to the
-- number's previous holder letting go (see src/activity/linking.rs).
-- `external_id` = '' is a pruned stretch: before `closed_at` the number's holders are unknown.
-- `changed_at` (our clock) is when the row last changed: linking refreshes from it.
CREATE TABLE phone_history (
    phone       TEXT NOT NULL,
    external_id TEXT NOT NULL,
    opened_at   TEXT NOT NULL,
    closed_at   TEXT,
    since_entry INTEGER NOT NULL DEFAULT 0,
    changed_at  TEXT NOT NULL,
    PRIMARY KEY (phone, external_id, opened_at)
);
CREATE INDEX phone_history_open ON phone_history (external_id) WHERE closed_at IS NULL;
-- Every record's rows, open or closed: the triggers ask for them on each write of `records`
-- (whether the record is new to the history); without it that question reads the whole
-- table, and a load of n records costs n² (the primary key leads with `phone`).
CREATE INDEX phone_history_record ON phone_history (external_id);
CREATE INDEX phone_history_changed ON phone_history (changed_at);
CREATE INDEX phone_history_closed ON phone_history (closed_at) WHERE closed_at IS NOT NULL;

CREATE TRIGGER phone_history_on_insert AFTER INSERT ON records
BEGIN
    UPDATE phone_history SET closed_at = NEW.updated_at, changed_at = NEW.updated_at
     WHERE external_id = NEW.external_id AND closed_at IS NULL
       AND phone NOT IN (
           SELECT json_extract(p.value, '$.value') FROM json_each(
               CASE WHEN NEW.state <> 'deleted' AND json_valid(NEW.snapshot) THEN NEW.snapshot ELSE '{}' END,
               '$.phoneNumbers') p
            WHERE json_type(p.value, '$.value') = 'text');
    INSERT OR REPLACE INTO phone_history (phone, external_id, opened_at, closed_at, since_entry, changed_at)
    SELECT c.phone, NEW.external_id, NEW.updated_at, NULL,
           NOT EXISTS (SELECT 1 FROM phone_history h WHERE h.external_id = NEW.external_id
                          AND (h.closed_at IS NOT NULL OR h.opened_at <> NEW.updated_at)),
           NEW.updated_at
      FROM (SELECT DISTINCT json_extract(p.value, '$.value') AS phone FROM json_each(
                CASE WHEN NEW.state <> 'deleted' AND json_valid(NEW.snapshot) THEN NEW.snapshot ELSE '{}' END,
                '$.phoneNumbers') p
             WHERE json_type(p.value, '$.value') = 'text') c
     WHERE NOT EXISTS (SELECT 1 FROM phone_history h WHERE h.external_id = NEW.external_id
                          AND h.phone = c.phone AND h.closed_at IS NULL);
END;

CREATE TRIGGER phone_history_on_update AFTER UPDATE OF snapshot, state ON records
WHEN OLD.snapshot IS NOT NEW.snapshot OR OLD.state IS NOT NEW.state
BEGIN
    UPDATE phone_history SET
        closed_at = CASE WHEN NEW.quo_updated_at IS NOT OLD.quo_updated_at
                              AND length(NEW.quo_updated_at) = 24 AND substr(NEW.quo_updated_at, 11, 1) = 'T'
                              AND substr(NEW.quo_updated_at, 24, 1) = 'Z'
                              AND NEW.quo_updated_at > OLD.updated_at AND NEW.quo_updated_at < NEW.updated_at
                         THEN NEW.quo_updated_at ELSE NEW.updated_at END,
        changed_at = NEW.updated_at
     WHERE external_id = NEW.external_id AND closed_at IS NULL
       AND phone NOT IN (
           SELECT json_extract(p.value, '$.value') FROM json_each(
               CASE WHEN NEW.state <> 'deleted' AND json_valid(NEW.snapshot) THEN NEW.snapshot ELSE '{}' END,
               '$.phoneNumbers') p
            WHERE json_type(p.value, '$.value') = 'text');
    INSERT OR REPLACE INTO phone_history (phone, external_id, opened_at, closed_at, since_entry, changed_at)
    SELECT c.phone, NEW.external_id, m.moment, NULL,
           NOT EXISTS (SELECT 1 FROM phone_history h WHERE h.external_id = NEW.external_id
                          AND (h.closed_at IS NOT NULL OR h.opened_at <> m.moment)),
           NEW.updated_at
      FROM (SELECT DISTINCT json_extract(p.value, '$.value') AS phone FROM json_each(
                CASE WHEN NEW.state <> 'deleted' AND json_valid(NEW.snapshot) THEN NEW.snapshot ELSE '{}' END,
                '$.phoneNumbers') p
             WHERE json_type(p.value, '$.value') = 'text') c,
           (SELECT CASE WHEN NEW.quo_updated_at IS NOT OLD.quo_updated_at
                             AND length(NEW.quo_updated_at) = 24 AND substr(NEW.quo_updated_at, 11, 1) = 'T'
                             AND substr(NEW.quo_updated_at, 24, 1) = 'Z'
                             AND NEW.quo_updated_at > OLD.updated_at AND NEW.quo_updated_at < NEW.updated_at
                        THEN NEW.quo_updated_at ELSE NEW.updated_at END AS moment) m
     WHERE NOT EXISTS (SELECT 1 FROM phone_history h WHERE h.external_id = NEW.external_id
                          AND h.phone = c.phone AND h.closed_at IS NULL);
END;

CREATE TRIGGER phone_history_on_delete AFTER DELETE ON records
BEGIN
    UPDATE phone_history SET closed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                             changed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
     WHERE external_id = OLD.external_id AND closed_at IS NULL;
END;

-- The records there are now: each held its numbers since before the ledger knew (`since_entry`).
INSERT INTO phone_history (phone, external_id, opened_at, closed_at, since_entry, changed_at)
SELECT DISTINCT json_extract(p.value, '$.value'), r.external_id, r.updated_at, NULL, 1, r.updated_at
  FROM records r, json_each(CASE WHEN json_valid(r.snapshot) THEN r.snapshot ELSE '{}' END, '$.phoneNumbers') p
 WHERE r.state <> 'deleted' AND json_type(p.value, '$.value') = 'text';
