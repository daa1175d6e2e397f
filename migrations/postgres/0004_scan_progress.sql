-- PostgreSQL twin of migrations/sqlite/0004_scan_progress.sql.
ALTER TABLE records ADD COLUMN scan_seen TEXT;
