-- PostgreSQL twin of migrations/sqlite/0009_unconfirmed_failures.sql.
ALTER TABLE unconfirmed_creates ADD COLUMN failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE unconfirmed_creates ADD COLUMN abandoned_at TEXT;
ALTER TABLE unconfirmed_creates ADD COLUMN abandoned_reason TEXT;
CREATE INDEX runs_started_at ON runs (started_at, seq);
