-- PostgreSQL twin of migrations/sqlite/0012_activity.sql. Activity logging (issue #23): every call, text and voicemail written to the CRM once.
--
-- activity_inbox: webhook deliveries about calls and messages, stored before they are
-- acknowledged; a redelivery is recognised by its event id and by its `webhook-id`.
-- `observation` is what the event says, content already dropped unless activity.content = full.
CREATE TABLE activity_inbox (
    event_id     TEXT PRIMARY KEY NOT NULL,
    delivery_id  TEXT,
    event_type   TEXT NOT NULL,
    activity_id  TEXT NOT NULL,
    observation  TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    processed_at TEXT,
    seq          BIGINT GENERATED ALWAYS AS IDENTITY
);
CREATE UNIQUE INDEX activity_inbox_delivery ON activity_inbox (delivery_id);
CREATE INDEX activity_inbox_pending ON activity_inbox (processed_at);

-- activities: one row per call or message, the merged facts, the record it is linked to and
-- where its CRM copy stands.
-- state: pending (to write), writing (the intent is recorded and a CRM write may be in flight:
-- resolved by lookup before any second write), written, held (no record or two: retried as the
-- ledger learns records), skipped (no record or two, activity.unmatched = skip), filtered (a kind
-- not logged).
CREATE TABLE activities (
    activity_id     TEXT PRIMARY KEY NOT NULL,
    family          TEXT NOT NULL,
    occurred_at     TEXT NOT NULL,
    facts           TEXT NOT NULL,
    record_id       TEXT,
    link            TEXT,
    state           TEXT NOT NULL,
    reason          TEXT,
    crm_id          TEXT,
    -- the CRM copy in the CRM's app (activity.rest.link), for the console
    crm_link        TEXT,
    wanted_digest   TEXT,
    written_digest  TEXT,
    final           BIGINT NOT NULL DEFAULT 0,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_error      TEXT,
    -- creates whose outcome could not be settled by a lookup (a CRM without one): each may have
    -- left one duplicate in the CRM
    possible_duplicates BIGINT NOT NULL DEFAULT 0,
    first_seen_at   TEXT NOT NULL,
    delivered_at    TEXT,
    written_at      TEXT,
    updated_at      TEXT NOT NULL
);
CREATE INDEX activities_state ON activities (state);
CREATE INDEX activities_occurred ON activities (occurred_at);

-- Webhooks quo-sync registered itself (reverse.public_url): their signing keys (never logged,
-- never shown) and when they were last checked.
CREATE TABLE webhook_registrations (
    purpose         TEXT PRIMARY KEY NOT NULL,
    subscription_id TEXT NOT NULL,
    url             TEXT NOT NULL,
    events          TEXT NOT NULL,
    signing_key     TEXT NOT NULL,
    registered_at   TEXT NOT NULL,
    checked_at      TEXT NOT NULL
);

-- The activity linker keeps an index of the ledger's phone numbers, refreshed from the records
-- changed since its last look.
CREATE INDEX records_updated_at ON records (updated_at);
