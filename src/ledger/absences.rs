//! The `source_absences` and `crm_holds` tables: what one read of the CRM cannot decide alone.
//!
//! * **Absences.** A record a complete read did not return is deleted (`sync.on_source_delete =
//!   "delete"`) only when the next complete read agrees. One read of a file caught half-written,
//!   or of a list that skipped a page, then deletes nothing; the rows here are what the last
//!   complete read missed.
//! * **Holds.** A value typed in Quo that the CRM cannot hold (an emoji for a Windows-1252 CSV
//!   file) stays in Quo, and the CRM keeps its own. While the CRM field still holds the value it
//!   kept, that value stands for Quo's, so neither is taken for an edit of the other.

use std::collections::HashSet;

use super::db::on_pool;
use super::{Ledger, LedgerError, now_text};

/// Rows per statement when many absences are written at once.
const CHUNK: usize = 500;

/// A CRM field that keeps its value while Quo keeps one the CRM cannot hold.
#[derive(Debug, Clone, PartialEq)]
pub struct CrmHold {
    /// The field (diff name: `firstName`, `custom:<key>`).
    pub field: String,
    /// What the CRM kept (JSON, as in snapshots).
    pub crm_value: serde_json::Value,
    /// What Quo keeps (JSON).
    pub quo_value: serde_json::Value,
}

impl Ledger {
    /// The records the last complete read did not return.
    pub async fn absences(&self) -> Result<HashSet<String>, LedgerError> {
        let ids: Vec<String> = on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT external_id FROM source_absences"
        )
        .fetch_all(p)
        .await)?;
        Ok(ids.into_iter().collect())
    }

    /// Records what this complete read did not return (`missing`): rows for records read again
    /// go, new ones are added (an existing row keeps its first time).
    pub async fn set_absences(&self, missing: &[String], run_id: &str) -> Result<(), LedgerError> {
        let before = self.absences().await?;
        let now: HashSet<&str> = missing.iter().map(String::as_str).collect();
        let gone: Vec<&str> = before
            .iter()
            .map(String::as_str)
            .filter(|id| !now.contains(id))
            .collect();
        let new: Vec<&str> = missing
            .iter()
            .map(String::as_str)
            .filter(|id| !before.contains(*id))
            .collect();
        if gone.is_empty() && new.is_empty() {
            return Ok(());
        }
        let at = now_text();
        on_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            for id in &gone {
                sqlx::query("DELETE FROM source_absences WHERE external_id = $1")
                    .bind(*id)
                    .execute(&mut *tx)
                    .await?;
            }
            for chunk in new.chunks(CHUNK) {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO source_absences (external_id, first_missed_at, run_id) ",
                );
                insert.push_values(chunk, |mut row, id| {
                    row.push_bind(*id).push_bind(&at).push_bind(run_id);
                });
                insert.build().execute(&mut *tx).await?;
            }
            tx.commit().await
        })?;
        Ok(())
    }

    /// The records that have holds (usually none).
    pub async fn held_records(&self) -> Result<HashSet<String>, LedgerError> {
        let ids: Vec<String> = on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT DISTINCT external_id FROM crm_holds"
        )
        .fetch_all(p)
        .await)?;
        Ok(ids.into_iter().collect())
    }

    /// One record's holds.
    pub async fn holds_for(&self, external_id: &str) -> Result<Vec<CrmHold>, LedgerError> {
        let rows: Vec<(String, String, String)> = on_pool!(&self.pool, |p| {
            sqlx::query_as(
            "SELECT field, crm_value, quo_value FROM crm_holds WHERE external_id = $1 ORDER BY field"
        )
        .bind(external_id)
        .fetch_all(p)
        .await
        })?;
        rows.into_iter()
            .map(|(field, crm, quo)| {
                let parse = |text: &str| {
                    serde_json::from_str(text).map_err(|e| LedgerError::Corrupt {
                        external_id: external_id.to_string(),
                        column: "crm_holds",
                        reason: e.to_string(),
                    })
                };
                Ok(CrmHold {
                    crm_value: parse(&crm)?,
                    quo_value: parse(&quo)?,
                    field,
                })
            })
            .collect()
    }

    /// Remembers (or replaces) a hold.
    pub async fn hold_add(
        &self,
        external_id: &str,
        hold: &CrmHold,
        reason: &str,
    ) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "INSERT INTO crm_holds (external_id, field, crm_value, quo_value, reason, at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (external_id, field) DO UPDATE SET crm_value = excluded.crm_value,
                 quo_value = excluded.quo_value, reason = excluded.reason, at = excluded.at"
        )
        .bind(external_id)
        .bind(&hold.field)
        .bind(hold.crm_value.to_string())
        .bind(hold.quo_value.to_string())
        .bind(reason)
        .bind(now_text())
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Forgets a hold (the CRM's value changed: it is an edit of its own now).
    pub async fn hold_remove(&self, external_id: &str, field: &str) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "DELETE FROM crm_holds WHERE external_id = $1 AND field = $2"
        )
        .bind(external_id)
        .bind(field)
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }
}
