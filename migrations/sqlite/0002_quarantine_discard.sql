-- An operator may discard a quarantined record: it stays on file (and is still retried each
-- cycle, leaving quarantine if it ever syncs) but no longer counts as needing attention.
ALTER TABLE quarantine ADD COLUMN discarded_at TEXT;
