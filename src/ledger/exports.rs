//! The `crm_exports` table: contacts made in the Quo app on their way to becoming CRM records
//! (`reverse.create_in_crm`).
//!
//! A CRM create is as unforgiving as a Quo one: sent twice, it makes two records. So the intent
//! (the contact, the record id when it is known in advance, what the record will hold) is
//! committed before the create; a create whose outcome was lost is found in the CRM by the next
//! complete read (by that id, or by the Quo id the record carries in `reverse.quo_id_field`)
//! instead of being sent again.

use std::collections::HashMap;

use super::db::on_pool;
use super::{Ledger, LedgerError, now_text};
use crate::domain::Snapshot;

/// Where an export stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportState {
    /// Committed before the CRM create; its outcome is not known yet.
    Pending,
    /// The CRM has the record; the contact is not adopted yet.
    Created,
    /// Adopted: the contact is the record's.
    Done,
    /// Needs an operator (a lost create the CRM cannot be searched for).
    Held,
}

impl ExportState {
    fn as_str(self) -> &'static str {
        match self {
            ExportState::Pending => "pending",
            ExportState::Created => "created",
            ExportState::Done => "done",
            ExportState::Held => "held",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "created" => ExportState::Created,
            "done" => ExportState::Done,
            "held" => ExportState::Held,
            _ => ExportState::Pending,
        }
    }
}

/// One contact on its way to the CRM.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    /// The Quo contact.
    pub quo_id: String,
    /// The CRM id: known in advance (CSV, from `reverse.new_record_id`) or once created (REST).
    pub external_id: Option<String>,
    /// Where it stands.
    pub state: ExportState,
    /// What the record holds (the contact's managed values).
    pub snapshot: Snapshot,
    /// Why it is held.
    pub reason: Option<String>,
    /// When the intent was written (RFC 3339).
    pub created_at: String,
}

#[derive(sqlx::FromRow)]
struct StoredExport {
    quo_id: String,
    external_id: Option<String>,
    state: String,
    snapshot: String,
    reason: Option<String>,
    created_at: String,
}

impl StoredExport {
    fn decode(self) -> Result<Export, LedgerError> {
        let snapshot = serde_json::from_str(&self.snapshot).map_err(|e| LedgerError::Corrupt {
            external_id: self.quo_id.clone(),
            column: "crm_exports.snapshot",
            reason: e.to_string(),
        })?;
        Ok(Export {
            quo_id: self.quo_id,
            external_id: self.external_id,
            state: ExportState::parse(&self.state),
            snapshot,
            reason: self.reason,
            created_at: self.created_at,
        })
    }
}

impl Ledger {
    /// Every export not done yet (held ones included), by Quo id.
    pub async fn open_exports(&self) -> Result<HashMap<String, Export>, LedgerError> {
        let rows: Vec<StoredExport> = on_pool!(&self.pool, |p| sqlx::query_as(
            "SELECT quo_id, external_id, state, snapshot, reason, created_at FROM crm_exports
             WHERE state <> 'done'"
        )
        .fetch_all(p)
        .await)?;
        rows.into_iter()
            .map(|row| row.decode().map(|e| (e.quo_id.clone(), e)))
            .collect()
    }

    /// Whether contact `quo_id` was ever exported or is on its way (any state).
    pub async fn export_known(&self, quo_id: &str) -> Result<bool, LedgerError> {
        let n: i64 = on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM crm_exports WHERE quo_id = $1"
        )
        .bind(quo_id)
        .fetch_one(p)
        .await)?;
        Ok(n > 0)
    }

    /// Commits the intent to create a CRM record from contact `quo_id`, before the create.
    pub async fn export_intent(
        &self,
        quo_id: &str,
        external_id: Option<&str>,
        snapshot: &Snapshot,
    ) -> Result<(), LedgerError> {
        let now = now_text();
        on_pool!(&self.pool, |p| {
            sqlx::query(
            "INSERT INTO crm_exports (quo_id, external_id, state, snapshot, created_at, updated_at)
             VALUES ($1, $2, 'pending', $3, $4, $5)
             ON CONFLICT(quo_id) DO UPDATE SET external_id = excluded.external_id, state = 'pending',
                snapshot = excluded.snapshot, updated_at = excluded.updated_at"
        )
        .bind(quo_id)
        .bind(external_id)
        .bind(serde_json::to_string(snapshot).expect("snapshot serialises"))
        .bind(&now)
        .bind(&now)
        .execute(p)
        .await
        .map(drop)
        })?;
        Ok(())
    }

    /// Moves an export on (`reason` for a held one).
    pub async fn export_state(
        &self,
        quo_id: &str,
        state: ExportState,
        external_id: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| {
            sqlx::query(
            "UPDATE crm_exports SET state = $2, external_id = COALESCE($3, external_id), reason = $4,
                updated_at = $5 WHERE quo_id = $1"
        )
        .bind(quo_id)
        .bind(state.as_str())
        .bind(external_id)
        .bind(reason)
        .bind(now_text())
        .execute(p)
        .await
        .map(drop)
        })?;
        Ok(())
    }

    /// Drops an export whose create the CRM refused (it made nothing; the next cycle may try
    /// again).
    pub async fn export_forget(&self, quo_id: &str) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "DELETE FROM crm_exports WHERE quo_id = $1"
        )
        .bind(quo_id)
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }
}
