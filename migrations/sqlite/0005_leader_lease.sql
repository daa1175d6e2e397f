-- The writer lease: which process may write this ledger (one row, id = 1). quo-sync creates this
-- table itself before running migrations (the lease guards the migrations), so this file only
-- records it in the schema history; IF NOT EXISTS makes it a no-op on ledgers that have it.
CREATE TABLE IF NOT EXISTS leader_lease (
    id          INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    epoch       INTEGER NOT NULL,
    token       TEXT NOT NULL,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    command     TEXT NOT NULL,
    since_ms    INTEGER NOT NULL,
    renewed_ms  INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    host_key    TEXT NOT NULL DEFAULT ''
);
