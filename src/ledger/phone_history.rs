//! The phone history (migration 0013): for each (number, CRM record), the stretches of time in
//! which the record held the number. Linking by number asks it who held a number when a call or
//! text happened, so a call read late (a lost delivery the poller finds, with no contact ids)
//! lands on the record that had the number then, not on whoever has it now.
//!
//! The rows are written by triggers on `records` (both backends), in the transaction that
//! commits a snapshot, unlinks, marks deleted or removes a record: every code path that changes
//! what a record carries moves the history with it, so it cannot drift. This module only reads
//! it and prunes it.

use sqlx::FromRow;

use super::db::on_pool;
use super::{Ledger, LedgerError, now_text};

/// One stretch in which a record held a number.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct PhoneHolding {
    /// The number as the snapshot carried it (E.164 from the mapper).
    pub phone: String,
    /// The CRM record; empty for a pruned stretch (who held the number before `closed_at` is
    /// no longer known).
    pub external_id: String,
    /// When the record began to hold it (RFC 3339, UTC, milliseconds).
    pub opened_at: String,
    /// When it stopped; `None` while it still holds it.
    pub closed_at: Option<String>,
    /// 1 when opened with the record's first snapshot (or by the migration, for the records
    /// there were): it may have held the number before the ledger knew the record.
    pub since_entry: i64,
    /// When the row last changed (our clock): what a refresh reads from.
    pub changed_at: String,
}

impl PhoneHolding {
    /// Whether this is a pruned stretch (holders unknown).
    pub fn is_pruned(&self) -> bool {
        self.external_id.is_empty()
    }
}

impl Ledger {
    /// Holdings changed at or after `since` (every holding with `None`).
    pub async fn phone_history_since(
        &self,
        since: Option<&str>,
    ) -> Result<Vec<PhoneHolding>, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_as(
            "SELECT phone, external_id, opened_at, closed_at, since_entry, changed_at
               FROM phone_history WHERE changed_at >= $1 ORDER BY changed_at"
        )
        .bind(since.unwrap_or(""))
        .fetch_all(p)
        .await)?)
    }

    /// Forgets the holdings that ended before `before`. Each number that loses some keeps one
    /// pruned stretch (no record) ending where the latest of them ended, so a call from before
    /// then is never linked by what is left (a later holder reaching back over the forgotten
    /// one would be a guess). Returns how many holdings were forgotten.
    pub async fn phone_history_prune(&self, before: &str) -> Result<u64, LedgerError> {
        let now = now_text();
        let pruned = on_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO phone_history (phone, external_id, opened_at, closed_at, since_entry, changed_at)
                 SELECT phone, '', '', MAX(closed_at), 0, $2 FROM phone_history
                  WHERE external_id <> '' AND closed_at IS NOT NULL AND closed_at < $1
                  GROUP BY phone
                 ON CONFLICT (phone, external_id, opened_at) DO UPDATE SET
                    closed_at = CASE WHEN excluded.closed_at > phone_history.closed_at
                                     THEN excluded.closed_at ELSE phone_history.closed_at END,
                    changed_at = excluded.changed_at",
            )
            .bind(before)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
            let gone = sqlx::query(
                "DELETE FROM phone_history
                  WHERE external_id <> '' AND closed_at IS NOT NULL AND closed_at < $1",
            )
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            gone
        });
        Ok(pruned)
    }
}
