//! The `unconfirmed_creates` table: POSTs that may have made a contact we never linked.
//!
//! Quo has no idempotency key, so an interrupted create is resolved by looking its `externalId`
//! up before sending again. Lists can lag a write for longer than any wait, so a lookup that
//! misses is not proof: when the record is then created again (or forgotten, its CRM row gone),
//! what the earlier POST sent is kept here. A scan that later lists a contact with that
//! `externalId` the ledger does not link finds it here: it is ours, and the kept snapshot is the
//! base that tells a person's edits on it from the values we sent (`sync::copies`). There is one
//! entry per POST (two lost POSTs may have made two twins); resolving a twin removes one. An
//! entry that three complete passes in a row, all started at least ten minutes after it (past
//! any list lag), listed no contact for is ruled out.

use std::collections::HashSet;

use super::db::on_pool;
use super::{Ledger, LedgerError, now_text};
use crate::domain::{ExternalId, Snapshot};

/// Complete scans that must miss an entry before it is ruled out.
pub const PASSES_TO_RULE_OUT: i64 = 3;

/// How long after an entry is written a pass must start to count as a miss: a list may lag a
/// create by moments, not by this much, so a pass started later would have listed what the POST
/// made. Earlier passes prove nothing, however many there are.
pub const RULE_OUT_AFTER: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// How far a contact's `createdAt` may run ahead of the time an entry was written (Quo's clock
/// against ours) for that entry's POST to have made it.
pub const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// Failed attempts in a row to resolve a contact an entry may have made, after which the entry
/// ends in the quarantine instead of lingering.
pub const ATTEMPTS_TO_GIVE_UP: i64 = 3;

/// A POST whose outcome was never confirmed.
#[derive(Debug, Clone, PartialEq)]
pub struct UnconfirmedCreate {
    /// Row id.
    pub id: i64,
    /// The record it was for.
    pub external_id: String,
    /// What it sent.
    pub sent: Snapshot,
    /// When we gave up looking for it (RFC 3339).
    pub sent_at: String,
}

#[derive(sqlx::FromRow)]
struct StoredUnconfirmed {
    id: i64,
    external_id: String,
    snapshot: String,
    sent_at: String,
}

impl StoredUnconfirmed {
    fn decode(self) -> Result<UnconfirmedCreate, LedgerError> {
        let sent = serde_json::from_str(&self.snapshot).map_err(|e| LedgerError::Corrupt {
            external_id: self.external_id.clone(),
            column: "unconfirmed_creates.snapshot",
            reason: e.to_string(),
        })?;
        Ok(UnconfirmedCreate {
            id: self.id,
            external_id: self.external_id,
            sent,
            sent_at: self.sent_at,
        })
    }
}

impl Ledger {
    /// Remembers a POST for `external_id` that sent `sent` and may have landed unseen.
    pub async fn unconfirmed_add(
        &self,
        external_id: &ExternalId,
        sent: &Snapshot,
    ) -> Result<(), LedgerError> {
        let snapshot = serde_json::to_string(sent).expect("snapshot serialises");
        on_pool!(&self.pool, |p| sqlx::query(
            "INSERT INTO unconfirmed_creates (external_id, snapshot, sent_at) VALUES ($1, $2, $3)"
        )
        .bind(external_id.as_str())
        .bind(snapshot)
        .bind(now_text())
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// A POST for `external_id` that sent `sent` may have landed unseen, and the pending create's
    /// row held it: the entry is written and the row's snapshot cleared in one transaction, so
    /// each POST is on record exactly once (a crash between the two cannot count it twice).
    pub async fn unconfirmed_from_intent(
        &self,
        external_id: &ExternalId,
        sent: &Snapshot,
    ) -> Result<(), LedgerError> {
        let snapshot = serde_json::to_string(sent).expect("snapshot serialises");
        let now = now_text();
        on_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO unconfirmed_creates (external_id, snapshot, sent_at) VALUES ($1, $2, $3)",
            )
            .bind(external_id.as_str())
            .bind(&snapshot)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE records SET snapshot = NULL, updated_at = $2
                 WHERE external_id = $1 AND quo_id IS NULL AND state = 'pending_create'",
            )
            .bind(external_id.as_str())
            .bind(&now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        })?;
        Ok(())
    }

    /// The unconfirmed creates for one record, oldest first.
    pub async fn unconfirmed_for(
        &self,
        external_id: &str,
    ) -> Result<Vec<UnconfirmedCreate>, LedgerError> {
        let rows: Vec<StoredUnconfirmed> = on_pool!(&self.pool, |p| sqlx::query_as(
            "SELECT id, external_id, snapshot, sent_at FROM unconfirmed_creates
             WHERE external_id = $1 AND abandoned_at IS NULL ORDER BY id"
        )
        .bind(external_id)
        .fetch_all(p)
        .await)?;
        rows.into_iter().map(StoredUnconfirmed::decode).collect()
    }

    /// The external ids that have unconfirmed creates (the table holds a handful at most).
    pub async fn unconfirmed_external_ids(&self) -> Result<HashSet<String>, LedgerError> {
        let ids: Vec<String> = on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT DISTINCT external_id FROM unconfirmed_creates WHERE abandoned_at IS NULL"
        )
        .fetch_all(p)
        .await)?;
        Ok(ids.into_iter().collect())
    }

    /// How many unconfirmed creates wait for a scan.
    pub async fn unconfirmed_count(&self) -> Result<i64, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM unconfirmed_creates WHERE abandoned_at IS NULL"
        )
        .fetch_one(p)
        .await)?)
    }

    /// An attempt to resolve a contact `external_id`'s entries may have made failed: counts it
    /// against them and returns the most failures in a row any of them has now.
    pub async fn unconfirmed_failed(&self, external_id: &str) -> Result<i64, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "UPDATE unconfirmed_creates SET failures = failures + 1
             WHERE external_id = $1 AND abandoned_at IS NULL RETURNING failures"
        )
        .bind(external_id)
        .fetch_all(p)
        .await)?
        .into_iter()
        .max()
        .unwrap_or(0))
    }

    /// Ends one entry without resolving its contact (left in Quo): it stays in the table with
    /// when and why, no longer open.
    pub async fn unconfirmed_abandon(&self, id: i64, reason: &str) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "UPDATE unconfirmed_creates SET abandoned_at = $2, abandoned_reason = $3 WHERE id = $1"
        )
        .bind(id)
        .bind(now_text())
        .bind(reason)
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Abandoned entries, newest first: (external id, when, why).
    pub async fn unconfirmed_abandoned(
        &self,
        limit: i64,
    ) -> Result<Vec<(String, String, String)>, LedgerError> {
        Ok(on_pool!(&self.pool, |p| {
            sqlx::query_as(
            "SELECT external_id, abandoned_at, COALESCE(abandoned_reason, '') FROM unconfirmed_creates
             WHERE abandoned_at IS NOT NULL ORDER BY abandoned_at DESC, id DESC LIMIT $1"
        )
        .bind(limit)
        .fetch_all(p)
        .await
        })?)
    }

    /// Drops one entry: its contact was found and resolved.
    pub async fn unconfirmed_remove(&self, id: i64) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "DELETE FROM unconfirmed_creates WHERE id = $1"
        )
        .bind(id)
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// A scan listed an unlinked contact that `external_id`'s entries may have made: their run of
    /// missed passes starts over, and the pass that listed it does not count as a miss.
    pub async fn unconfirmed_seen(&self, external_id: &str) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "UPDATE unconfirmed_creates SET passes = 0, seen_at = $2
             WHERE external_id = $1 AND abandoned_at IS NULL"
        )
        .bind(external_id)
        .bind(now_text())
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Counts a complete pass that started at `pass_started` against every entry written at
    /// least [`RULE_OUT_AFTER`] before it that it listed no contact for (no `unconfirmed_seen`
    /// since it started, even before a restart resumed it), and rules out those it has now
    /// missed [`PASSES_TO_RULE_OUT`] times in a row. Returns the ruled-out records.
    pub async fn unconfirmed_pass_finished(
        &self,
        pass_started: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>, LedgerError> {
        let rows: Vec<(i64, String, String, i64, Option<String>)> = on_pool!(&self.pool, |p| {
            sqlx::query_as(
                "SELECT id, external_id, sent_at, passes, seen_at FROM unconfirmed_creates
                 WHERE abandoned_at IS NULL ORDER BY id",
            )
            .fetch_all(p)
            .await
        })?;
        let at = |text: &str| chrono::DateTime::parse_from_rfc3339(text).ok();
        let mut ruled_out = Vec::new();
        for (id, external_id, sent_at, passes, seen_at) in rows {
            let seen_this_pass = seen_at
                .as_deref()
                .is_some_and(|seen| at(seen).is_none_or(|seen| seen >= pass_started));
            let long_after = at(&sent_at).is_some_and(|sent| sent + RULE_OUT_AFTER <= pass_started);
            if !long_after || seen_this_pass {
                continue;
            }
            if passes + 1 >= PASSES_TO_RULE_OUT {
                self.unconfirmed_remove(id).await?;
                ruled_out.push(external_id);
            } else {
                on_pool!(&self.pool, |p| sqlx::query(
                    "UPDATE unconfirmed_creates SET passes = passes + 1 WHERE id = $1"
                )
                .bind(id)
                .execute(p)
                .await
                .map(drop))?;
            }
        }
        Ok(ruled_out)
    }
}

/// Whether a contact created at `created_at` may have been made by the POST of one of
/// `entries`: not when it was created after every one of them was written (plus
/// [`CLOCK_SKEW`]); unknown times say yes.
pub fn made_in_time(entries: &[UnconfirmedCreate], created_at: Option<&str>) -> bool {
    let at = |text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    let Some(created) = created_at.and_then(at) else {
        return true;
    };
    entries
        .iter()
        .any(|e| at(&e.sent_at).is_none_or(|written| created <= written + CLOCK_SKEW))
}
