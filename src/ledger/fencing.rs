//! Fencing: a leader's ledger writes are refused by the database itself once another epoch holds
//! the lease (triggers checked inside the writing transaction), and its writes to the outside
//! world (Quo, the CRM) ask the local fence first. Apart from the lease row (`lease.rs`)
//! because it is what a lease is for, enforced per backend.

use std::sync::Arc;

use super::db::Pool;
use super::leader::LeaderLease;
use super::lease::{db_now_ms, pg_schema_transaction};
use super::{Ledger, LedgerError};

/// The SQLite form of fencing: a per-connection TEMP trigger refusing `op` on `table` unless
/// the lease row still carries `epoch` and has not expired by the database's clock. SQLite
/// serialises writers, so the check and the commit cannot be split by a takeover.
fn sqlite_fence_trigger(table: &str, op: &str, epoch: i64) -> String {
    format!(
        "CREATE TEMP TRIGGER IF NOT EXISTS fence_{table}_{lower} BEFORE {op} ON main.\"{table}\"
         WHEN NOT EXISTS (SELECT 1 FROM main.leader_lease WHERE id = 1 AND epoch = {epoch}
                          AND expires_ms > {now})
         BEGIN SELECT RAISE(ABORT, '{FENCED_MESSAGE}'); END",
        lower = op.to_ascii_lowercase(),
        now = db_now_ms(false)
    )
}

/// The PostgreSQL form of fencing: one trigger function on every ledger table that, on a
/// session which set `quo_sync.fence_epoch` (a leader's pool does, on connect), refuses the
/// statement unless the lease row still has that epoch and has not expired. It takes `FOR
/// SHARE` on the lease row, so a takeover's UPDATE waits until this transaction commits: the
/// check cannot go stale between check and commit. Sessions without the setting (standbys
/// storing webhooks, read-only commands, the lease itself) pass.
fn pg_fence_function() -> String {
    format!(
        "CREATE OR REPLACE FUNCTION quo_sync_fence() RETURNS trigger LANGUAGE plpgsql AS $fence$
         DECLARE fence TEXT := current_setting('quo_sync.fence_epoch', true);
         BEGIN
           IF fence IS NULL OR fence = '' THEN RETURN NULL; END IF;
           IF TG_TABLE_NAME = 'inbox' AND TG_OP = 'INSERT' THEN RETURN NULL; END IF;
           PERFORM 1 FROM leader_lease WHERE id = 1 AND epoch = CAST(fence AS BIGINT)
             AND expires_ms > {now} FOR SHARE;
           IF NOT FOUND THEN RAISE EXCEPTION '{FENCED_MESSAGE}'; END IF;
           RETURN NULL;
         END $fence$",
        now = db_now_ms(true)
    )
}

/// Attaches the PostgreSQL fence to `table` (idempotent).
fn pg_fence_trigger(table: &str) -> String {
    format!(
        "CREATE OR REPLACE TRIGGER quo_sync_fence BEFORE INSERT OR UPDATE OR DELETE ON \"{table}\"
         FOR EACH STATEMENT EXECUTE FUNCTION quo_sync_fence()"
    )
}

/// Tables whose writes are never fenced: the lease itself (it fences itself by its `WHERE`
/// clauses), sqlx's migration bookkeeping (migrations run only under the lease) and the CRM's
/// OAuth2 refresh token (a rotated token must be kept whoever leads; its row has its own
/// compare-and-swap, see `crm_tokens`).
const UNFENCED_TABLES: [&str; 3] = ["leader_lease", "_sqlx_migrations", "crm_oauth"];

/// The message a fenced write fails with (also matched by [`LedgerError::is_fenced`]).
pub const FENCED_MESSAGE: &str =
    "ledger write refused: this process no longer holds the writer lease";

impl Ledger {
    /// A ledger on the same file whose every write is refused unless `lease` still holds the
    /// lease row with its epoch (see the module docs). Reads are unaffected.
    pub async fn fenced(&self, lease: &LeaderLease) -> Result<Ledger, LedgerError> {
        let epoch = lease.epoch();
        let setup = match &self.pool {
            Pool::Sqlite(p) => {
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                )
                .fetch_all(p)
                .await?;
                let mut triggers = Vec::new();
                for table in tables
                    .iter()
                    .filter(|t| !UNFENCED_TABLES.contains(&t.as_str()))
                {
                    for op in ["INSERT", "UPDATE", "DELETE"] {
                        // Webhook deliveries are stored by every replica (the shared inbox):
                        // only the leader's processing of them is fenced.
                        if table == "inbox" && op == "INSERT" {
                            continue;
                        }
                        triggers.push(sqlite_fence_trigger(table, op, epoch));
                    }
                }
                triggers
            }
            Pool::Postgres(p) => {
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.tables
                     WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
                )
                .fetch_all(p)
                .await?;
                // The function and triggers are schema objects: installed once per leader term
                // (idempotent), inside one transaction so no table is left half fenced.
                let mut tx = pg_schema_transaction(p).await?;
                sqlx::query(sqlx::AssertSqlSafe(pg_fence_function()))
                    .execute(&mut *tx)
                    .await?;
                for table in tables
                    .iter()
                    .filter(|t| !UNFENCED_TABLES.contains(&t.as_str()))
                {
                    sqlx::query(sqlx::AssertSqlSafe(pg_fence_trigger(table)))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                // A leader frozen inside a transaction (SIGSTOP, a VM pause) would hold its
                // FOR SHARE lock and block the takeover forever: the server ends such a session
                // after a third of the lease, releasing the lock; its transaction never commits.
                let idle_ms = (lease.lease().as_millis() / 3).max(100);
                vec![
                    format!("SET quo_sync.fence_epoch = '{epoch}'"),
                    format!("SET idle_in_transaction_session_timeout = {idle_ms}"),
                ]
            }
        };
        // Audited: built from constants, our epoch and table names from our own schema.
        let pool = self
            .options
            .pool(Some(Arc::new(setup)))
            .await
            .map_err(|source| LedgerError::Open {
                path: self.path.clone(),
                source,
            })?;
        Ok(Ledger {
            pool,
            path: self.path.clone(),
            options: self.options.clone(),
            fence: Some(lease.fence.clone()),
        })
    }

    /// For a leader's ledger: its writers' fence (hand it to the Quo client and the CRM
    /// writers): how long the lease is still ours by the local clock, and its write window;
    /// `None` on an unfenced ledger.
    pub fn write_fence(&self) -> Option<crate::quo::fence::WriteFence> {
        let fence = self.fence.clone()?;
        let window = crate::config::lease_write_window(fence.lease);
        Some(crate::quo::fence::WriteFence::new(
            Arc::new(move || fence.time_left()),
            window,
        ))
    }

    /// Fails with [`LedgerError::Fenced`] when this is a leader's ledger whose lease has run out
    /// by the local clock (or was lost). Call before a write to the outside world (Quo, CRM):
    /// the database refuses the ledger writes itself, but nothing else would stop the request.
    pub fn ensure_leader(&self) -> Result<(), LedgerError> {
        match &self.fence {
            Some(fence) if !fence.holds() => Err(LedgerError::Fenced { epoch: fence.epoch }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ledger::Candidate;

    async fn ledger(dir: &tempfile::TempDir) -> Ledger {
        Ledger::open(&dir.path().join("l.db")).await.unwrap()
    }

    #[tokio::test]
    async fn a_fenced_ledger_refuses_writes_once_another_epoch_holds() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(&dir).await;
        let a = Candidate::this_process("run");
        let lease = Duration::from_millis(400);
        let held = LeaderLease::try_acquire(&l, &a, lease).await.unwrap();
        let fenced = l.fenced(&held).await.unwrap();
        fenced.set_meta("k", "1").await.unwrap();
        // Simulate a pause: stop renewing, let it expire, let another process in.
        held.renewer.abort();
        tokio::time::sleep(lease + Duration::from_millis(50)).await;
        assert!(fenced.ensure_leader().is_err(), "local fence still holds");
        let b = Candidate::this_process("run");
        let _other = LeaderLease::try_acquire(&l, &b, lease).await.unwrap();
        let err = fenced.set_meta("k", "2").await.unwrap_err();
        assert!(err.is_fenced(), "{err}");
        assert_eq!(l.meta("k").await.unwrap().as_deref(), Some("1"));
        // Unfenced writers (the webhook inbox on any replica) still work.
        l.set_meta("k", "3").await.unwrap();
    }
}
