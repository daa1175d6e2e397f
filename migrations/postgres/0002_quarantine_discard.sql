-- PostgreSQL twin of migrations/sqlite/0002_quarantine_discard.sql.
ALTER TABLE quarantine ADD COLUMN discarded_at TEXT;
