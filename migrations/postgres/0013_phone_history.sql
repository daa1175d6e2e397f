-- PostgreSQL twin of migrations/sqlite/0013_phone_history.sql (its comments say what each
-- column means): which CRM record held which phone number, and when, derived from every write
-- of `records` by a trigger, so it cannot drift from the snapshots.
CREATE TABLE phone_history (
    phone       TEXT NOT NULL,
    external_id TEXT NOT NULL,
    opened_at   TEXT NOT NULL,
    closed_at   TEXT,
    since_entry BIGINT NOT NULL DEFAULT 0,
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

-- The numbers a row of `records` carries: its snapshot's `phoneNumbers[].value`, none when the
-- record is deleted or has no snapshot.
CREATE FUNCTION phone_history_carried(snapshot TEXT, state TEXT) RETURNS TABLE (phone TEXT)
LANGUAGE sql IMMUTABLE AS $carried$
    SELECT DISTINCT p ->> 'value'
      FROM jsonb_array_elements(
               CASE WHEN state <> 'deleted' AND snapshot IS NOT NULL
                         AND jsonb_typeof(CAST(snapshot AS jsonb) -> 'phoneNumbers') = 'array'
                    THEN CAST(snapshot AS jsonb) -> 'phoneNumbers' ELSE '[]'::jsonb END) p
     WHERE jsonb_typeof(p -> 'value') = 'string'
$carried$;

CREATE FUNCTION phone_history_follow() RETURNS trigger LANGUAGE plpgsql AS $follow$
DECLARE
    moment   TEXT;
    entering BOOLEAN;
BEGIN
    IF TG_OP = 'DELETE' THEN
        moment := to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
        UPDATE phone_history SET closed_at = moment, changed_at = moment
         WHERE external_id = OLD.external_id AND closed_at IS NULL;
        RETURN OLD;
    END IF;
    moment := NEW.updated_at;
    IF TG_OP = 'UPDATE' AND NEW.quo_updated_at IS DISTINCT FROM OLD.quo_updated_at
       AND length(NEW.quo_updated_at) = 24 AND substr(NEW.quo_updated_at, 11, 1) = 'T'
       AND substr(NEW.quo_updated_at, 24, 1) = 'Z'
       AND NEW.quo_updated_at > OLD.updated_at AND NEW.quo_updated_at < NEW.updated_at THEN
        moment := NEW.quo_updated_at;
    END IF;
    UPDATE phone_history SET closed_at = moment, changed_at = NEW.updated_at
     WHERE external_id = NEW.external_id AND closed_at IS NULL
       AND phone NOT IN (SELECT c.phone FROM phone_history_carried(NEW.snapshot, NEW.state) c);
    entering := NOT EXISTS (SELECT 1 FROM phone_history h WHERE h.external_id = NEW.external_id);
    INSERT INTO phone_history (phone, external_id, opened_at, closed_at, since_entry, changed_at)
    SELECT c.phone, NEW.external_id, moment, NULL, CASE WHEN entering THEN 1 ELSE 0 END, NEW.updated_at
      FROM phone_history_carried(NEW.snapshot, NEW.state) c
     WHERE NOT EXISTS (SELECT 1 FROM phone_history h WHERE h.external_id = NEW.external_id
                          AND h.phone = c.phone AND h.closed_at IS NULL)
    ON CONFLICT (phone, external_id, opened_at) DO UPDATE SET closed_at = NULL, changed_at = excluded.changed_at;
    RETURN NEW;
END
$follow$;

CREATE TRIGGER phone_history_on_insert AFTER INSERT ON records
    FOR EACH ROW EXECUTE FUNCTION phone_history_follow();
CREATE TRIGGER phone_history_on_update AFTER UPDATE OF snapshot, state ON records
    FOR EACH ROW WHEN (OLD.snapshot IS DISTINCT FROM NEW.snapshot OR OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION phone_history_follow();
CREATE TRIGGER phone_history_on_delete AFTER DELETE ON records
    FOR EACH ROW EXECUTE FUNCTION phone_history_follow();

-- The records there are now: each held its numbers since before the ledger knew (`since_entry`).
INSERT INTO phone_history (phone, external_id, opened_at, closed_at, since_entry, changed_at)
SELECT DISTINCT c.phone, r.external_id, r.updated_at, CAST(NULL AS TEXT), 1, r.updated_at
  FROM records r, LATERAL phone_history_carried(r.snapshot, r.state) c;
