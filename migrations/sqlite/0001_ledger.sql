-- The ledger: quo-sync's memory of which Quo contact each CRM record became and what both sides
-- last agreed on. Losing a row here means a duplicate contact later, so every write that matters
-- is committed before the next record is touched.

CREATE TABLE records (
    external_id        TEXT PRIMARY KEY NOT NULL,
    quo_id             TEXT,
    -- pending_create: the intent to create was recorded, the outcome is not yet known
    -- synced: quo_id is the contact and snapshot is what both sides agreed
    -- unlinked: the Quo contact was deleted in Quo and we forgot it on purpose
    -- deleted: the record left the source and its Quo contact was deleted
    state              TEXT NOT NULL,
    source_fingerprint TEXT,
    snapshot           TEXT,
    snapshot_hash      TEXT,
    quo_contact        TEXT,
    quo_updated_at     TEXT,
    crm_updated_at     TEXT,
    attempts           INTEGER NOT NULL DEFAULT 0,
    last_error         TEXT,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL
);
CREATE INDEX records_quo_id ON records (quo_id);
CREATE INDEX records_state ON records (state);

CREATE TABLE runs (
    id           TEXT PRIMARY KEY NOT NULL,
    kind         TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    status       TEXT NOT NULL,
    created      INTEGER NOT NULL DEFAULT 0,
    updated      INTEGER NOT NULL DEFAULT 0,
    unchanged    INTEGER NOT NULL DEFAULT 0,
    deleted      INTEGER NOT NULL DEFAULT 0,
    quarantined  INTEGER NOT NULL DEFAULT 0,
    written_to_crm INTEGER NOT NULL DEFAULT 0,
    requests     INTEGER NOT NULL DEFAULT 0,
    rate_limited INTEGER NOT NULL DEFAULT 0,
    duration_ms  INTEGER NOT NULL DEFAULT 0,
    error        TEXT
);

-- Records that could not be synced: kept with where they came from and why, retried every cycle.
CREATE TABLE quarantine (
    -- the external id when one could be read, else "@<location>"
    key          TEXT PRIMARY KEY NOT NULL,
    external_id  TEXT,
    location     TEXT NOT NULL,
    stage        TEXT NOT NULL,  -- read | mapping | quo
    field        TEXT,
    value        TEXT,
    reason       TEXT NOT NULL,
    raw          TEXT,
    attempts     INTEGER NOT NULL DEFAULT 1,
    first_seen   TEXT NOT NULL,
    last_seen    TEXT NOT NULL,
    last_run_id  TEXT
);

-- Webhook events, written before they are acknowledged so a crash cannot lose them.
CREATE TABLE inbox (
    event_id     TEXT PRIMARY KEY NOT NULL,
    event_type   TEXT NOT NULL,
    quo_id       TEXT,
    payload      TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    processed_at TEXT,
    outcome      TEXT
);
CREATE INDEX inbox_pending ON inbox (processed_at);

CREATE TABLE conflicts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    external_id  TEXT NOT NULL,
    field        TEXT NOT NULL,
    base_value   TEXT,
    crm_value    TEXT,
    quo_value    TEXT,
    winner       TEXT NOT NULL,
    policy       TEXT NOT NULL,
    run_id       TEXT,
    at           TEXT NOT NULL
);

-- Small named values: high-water marks, last full read.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
