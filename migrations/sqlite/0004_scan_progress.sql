-- The reverse scan's progress: which scan pass last listed each linked contact. A pass that
-- completes confirms every linked contact it did not list (by id, a 404 alone means deleted);
-- a pass cut short resumes from its page token (meta) instead of starting over.
ALTER TABLE records ADD COLUMN scan_seen TEXT;
