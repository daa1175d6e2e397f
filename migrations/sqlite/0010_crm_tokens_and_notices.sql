-- The CRM's OAuth2 refresh token, shared by every process on this ledger (the leader, standbys,
-- `plan`, `reconcile`). Vendors that rotate refresh tokens accept each one once, and some revoke
-- the whole family when a used one comes back, so one process at a time may spend the token:
-- it claims the row at its `generation` (a compare-and-swap), sends the grant, and stores the
-- rotated token with the next generation. A claim runs out at `claim_until_ms` (the database's
-- clock), so a process that died mid-refresh holds nobody up for long. `configured` is a
-- fingerprint of the configured token the stored one descends from: an operator who configures
-- a new token wins over an old rotated one. Never fenced: a rotated token must be kept whoever
-- leads.
CREATE TABLE crm_oauth (
    name           TEXT PRIMARY KEY NOT NULL,
    configured     TEXT NOT NULL DEFAULT '',
    refresh_token  TEXT,
    generation     INTEGER NOT NULL DEFAULT 0,
    claimed_by     TEXT,
    claim_until_ms INTEGER NOT NULL DEFAULT 0,
    rotated_at     TEXT
);
-- Earlier versions kept the rotated token in `meta`.
INSERT INTO crm_oauth (name, configured, refresh_token, generation)
SELECT 'source.rest', COALESCE(json_extract(value, '$.configured'), ''),
       json_extract(value, '$.refresh_token'), 1
FROM meta WHERE key = 'source.rest.oauth.refresh_token' AND json_valid(value);
DELETE FROM meta WHERE key = 'source.rest.oauth.refresh_token';

-- Signed CRM change notices (`POST /webhooks/crm`), stored before they are answered 202 by
-- whichever replica received them, and taken by the leader's next read. `ids` is the JSON array
-- of record ids the notice named, or NULL for "read the list". `delivery` identifies a delivery
-- with a signed timestamp (its digest), so a replay within the timestamp window is recognised;
-- rows are kept that long after they are taken.
CREATE TABLE crm_notices (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery     TEXT UNIQUE,
    ids          TEXT,
    received_at  TEXT NOT NULL,
    taken_at     TEXT
);
CREATE INDEX crm_notices_pending ON crm_notices (taken_at);
