-- PostgreSQL twin of migrations/sqlite/0010_crm_tokens_and_notices.sql.
CREATE TABLE crm_oauth (
    name           TEXT PRIMARY KEY NOT NULL,
    configured     TEXT NOT NULL DEFAULT '',
    refresh_token  TEXT,
    generation     BIGINT NOT NULL DEFAULT 0,
    claimed_by     TEXT,
    claim_until_ms BIGINT NOT NULL DEFAULT 0,
    rotated_at     TEXT
);
INSERT INTO crm_oauth (name, configured, refresh_token, generation)
SELECT 'source.rest', COALESCE(CAST(value AS JSON) ->> 'configured', ''),
       CAST(value AS JSON) ->> 'refresh_token', 1
FROM meta WHERE key = 'source.rest.oauth.refresh_token';
DELETE FROM meta WHERE key = 'source.rest.oauth.refresh_token';

CREATE TABLE crm_notices (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery     TEXT UNIQUE,
    ids          TEXT,
    received_at  TEXT NOT NULL,
    taken_at     TEXT
);
CREATE INDEX crm_notices_pending ON crm_notices (taken_at);
