//! Records the filter does not admit, and records a sync mode skipped: kept in `records` with
//! the fingerprint they were judged on, so an unchanged row is recognised by its fingerprint
//! alone next cycle (the filter is not evaluated again), and a record that comes back into
//! scope still knows its contact.
//!
//! States (see [`RecordState`]): `out_of_scope` (never linked, or its contact was deleted when
//! it left), `left_scope` (it had a contact when it left: `quo_id` is kept under
//! `sync.on_leave_scope = "keep"`; under `"unlink"` it is cleared and `quo_contact` remembers
//! the contact to relink to), `skipped` (in scope, but `sync.mode = "update_only"` and no
//! contact to update).

use super::db::on_pool;
use super::records::RecordState;
use super::{Ledger, LedgerError, now_text};
use crate::domain::{ExternalId, QuoContactId};

/// What a judgement does to the record's link with its contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeLink {
    /// Leaves `quo_id` as it is (kept, or none to begin with).
    Keep,
    /// Clears `quo_id`; `quo_contact` remembers the contact to relink to.
    Unlink,
    /// Clears `quo_id`, `quo_contact` and the snapshot (the contact was deleted).
    Forget,
}

impl ScopeLink {
    fn code(self) -> i64 {
        match self {
            ScopeLink::Keep => 0,
            ScopeLink::Unlink => 1,
            ScopeLink::Forget => 2,
        }
    }
}

/// One record's judgement, to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeMark {
    /// The record.
    pub external_id: ExternalId,
    /// `OutOfScope`, `LeftScope` or `Skipped`.
    pub state: RecordState,
    /// The source fingerprint it was judged on.
    pub fingerprint: String,
    /// What happens to its link with a contact.
    pub link: ScopeLink,
}

impl Ledger {
    /// Stores judgements in one transaction. A row's Quo id stays unless `unlink` asks; a
    /// quarantine entry of the record goes (it is not synced while it stays out).
    pub async fn mark_scope(&self, marks: &[ScopeMark]) -> Result<(), LedgerError> {
        if marks.is_empty() {
            return Ok(());
        }
        let now = now_text();
        on_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            for mark in marks {
                sqlx::query(
                    "INSERT INTO records (external_id, state, source_fingerprint, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT(external_id) DO UPDATE SET state = excluded.state,
                        source_fingerprint = excluded.source_fingerprint,
                        quo_id = CASE WHEN $6 >= 1 THEN NULL ELSE records.quo_id END,
                        quo_contact = CASE WHEN $6 >= 2 THEN NULL ELSE records.quo_contact END,
                        snapshot = CASE WHEN $6 >= 2 THEN NULL ELSE records.snapshot END,
                        snapshot_hash = CASE WHEN $6 >= 2 THEN NULL ELSE records.snapshot_hash END,
                        attempts = 0, last_error = NULL, updated_at = excluded.updated_at",
                )
                .bind(mark.external_id.as_str())
                .bind(mark.state.as_str())
                .bind(&mark.fingerprint)
                .bind(&now)
                .bind(&now)
                .bind(mark.link.code())
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM quarantine WHERE key = $1")
                    .bind(mark.external_id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// A record back in scope is linked to `quo_id` again (`synced`, fingerprint cleared so
    /// the cycle compares it with the agreed snapshot and commits the new one).
    pub async fn relink(
        &self,
        external_id: &ExternalId,
        quo_id: &QuoContactId,
    ) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| {
            sqlx::query(
            "UPDATE records SET state = 'synced', quo_id = $1, source_fingerprint = NULL, updated_at = $2
             WHERE external_id = $3"
        )
        .bind(quo_id.as_str())
        .bind(now_text())
        .bind(external_id.as_str())
        .execute(p)
        .await
        .map(drop)
        })?;
        Ok(())
    }

    /// Forgets judged records that left the CRM (a complete read did not return them) and have
    /// no contact: nothing remains to remember of them.
    pub async fn forget_judged(&self, external_ids: &[ExternalId]) -> Result<(), LedgerError> {
        if external_ids.is_empty() {
            return Ok(());
        }
        on_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            for id in external_ids {
                sqlx::query(
                    "DELETE FROM records WHERE external_id = $1 AND quo_id IS NULL
                        AND state IN ('out_of_scope', 'left_scope', 'skipped')",
                )
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
