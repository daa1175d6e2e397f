-- Day one in a real workspace: the people already in Quo, found before anything is created.
--
-- workspace_contacts / workspace_keys: every contact of the workspace as the last listing, scan,
-- webhook or our own write showed it, with its match keys (`p:<E.164>`, `e:<lower-cased email>`),
-- so a restart does not list 100,000 contacts again and a record is matched with one indexed
-- lookup. A contact missing from a listing stays (absence is not deletion); only a 404 removes it.
CREATE TABLE workspace_contacts (
    quo_id      TEXT PRIMARY KEY NOT NULL,
    -- NULL: made in the Quo app or by its import
    source      TEXT,
    external_id TEXT,
    -- match keys, space-separated (keys hold no spaces)
    keys        TEXT NOT NULL,
    -- the contact as last read (the base of an adoption PATCH when it was read this cycle)
    contact     TEXT NOT NULL,
    created_at  TEXT,
    updated_at  TEXT,
    -- when quo-sync last read it
    seen_at     TEXT NOT NULL
);
CREATE INDEX workspace_contacts_created ON workspace_contacts (created_at);
CREATE TABLE workspace_keys (
    key    TEXT NOT NULL,
    quo_id TEXT NOT NULL,
    PRIMARY KEY (key, quo_id)
);
CREATE INDEX workspace_keys_quo_id ON workspace_keys (quo_id);

-- An adoption in flight: the existing contact a pending record is being linked to (state stays
-- pending_create, quo_id NULL until Quo confirms the PATCH that makes the contact ours).
ALTER TABLE records ADD COLUMN adopt_quo_id TEXT;
CREATE INDEX records_adopt_quo_id ON records (adopt_quo_id);

-- What an adoption replaced, so `quo-sync link <id> --undo` can give the contact back.
CREATE TABLE adoptions (
    external_id          TEXT PRIMARY KEY NOT NULL,
    quo_id               TEXT NOT NULL,
    previous_source      TEXT,
    previous_external_id TEXT,
    -- JSON: the managed values the adoption replaced, by field, as Quo had them
    replaced             TEXT NOT NULL,
    -- JSON: the managed values the adoption wrote, by field
    written              TEXT NOT NULL,
    adopted_at           TEXT NOT NULL
);

-- An operator's answer to a held record (`quo-sync link`): link to a contact, create a new one,
-- or keep it held (after an undo).
CREATE TABLE match_decisions (
    external_id TEXT PRIMARY KEY NOT NULL,
    decision    TEXT NOT NULL,
    quo_id      TEXT,
    decided_at  TEXT NOT NULL
);

-- Contacts made in the Quo app on their way to the CRM (`reverse.create_in_crm`): the intent is
-- written before the CRM create, so an interrupted create is found in the CRM, never repeated.
-- pending: about to be created (or its answer lost); created: the CRM has the record, the contact
-- is not adopted yet; done: adopted; held: cannot be resolved without an operator.
CREATE TABLE crm_exports (
    quo_id      TEXT PRIMARY KEY NOT NULL,
    external_id TEXT,
    state       TEXT NOT NULL,
    snapshot    TEXT NOT NULL,
    reason      TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

ALTER TABLE runs ADD COLUMN adopted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN exported INTEGER NOT NULL DEFAULT 0;
