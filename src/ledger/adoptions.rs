//! Day one's records of judgement: what each adoption replaced (`adoptions`, so an operator can
//! give a contact back), and an operator's answer to a held record (`match_decisions`: link it to
//! this contact, create a new one, or keep it held).

use std::collections::{BTreeMap, HashMap};

use super::db::on_pool;
use super::{Ledger, LedgerError, now_text};

/// An operator's answer to a record held before create (`quo-sync link`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchDecision {
    /// Adopt this contact for the record, whatever else it matches.
    Link(String),
    /// Create a new contact for the record, whatever it matches.
    Create,
    /// Keep the record held (a link was undone) until the operator decides.
    Hold,
}

impl MatchDecision {
    fn parts(&self) -> (&'static str, Option<&str>) {
        match self {
            MatchDecision::Link(quo_id) => ("link", Some(quo_id)),
            MatchDecision::Create => ("create", None),
            MatchDecision::Hold => ("hold", None),
        }
    }

    fn parse(decision: &str, quo_id: Option<String>) -> Option<Self> {
        match (decision, quo_id) {
            ("link", Some(quo_id)) => Some(MatchDecision::Link(quo_id)),
            ("create", _) => Some(MatchDecision::Create),
            ("hold", _) => Some(MatchDecision::Hold),
            _ => None,
        }
    }
}

/// What one adoption replaced on the contact it linked.
#[derive(Debug, Clone, PartialEq)]
pub struct Adoption {
    /// The record.
    pub external_id: String,
    /// The adopted contact.
    pub quo_id: String,
    /// The contact's `source` before (`None`: made in the Quo app).
    pub previous_source: Option<String>,
    /// The contact's `externalId` before.
    pub previous_external_id: Option<String>,
    /// The managed values the adoption replaced, by field (diff names), as Quo had them.
    pub replaced: BTreeMap<String, serde_json::Value>,
    /// The values the adoption wrote over them, by field.
    pub written: BTreeMap<String, serde_json::Value>,
    /// When.
    pub adopted_at: String,
}

/// An adoption about to be sent, as its intent is committed.
#[derive(Debug, Clone, Copy)]
pub struct AdoptionIntent<'a> {
    /// What the PATCH brings the managed fields to (the merge base if it lands unconfirmed).
    pub sent: &'a crate::domain::Snapshot,
    /// What it replaces (recorded as conflicts with policy `adopted`).
    pub adoption: &'a Adoption,
    /// The run sending it.
    pub run_id: Option<&'a str>,
}

/// An `adoptions` row as stored, before its JSON is parsed.
#[derive(sqlx::FromRow)]
struct StoredAdoption {
    external_id: String,
    quo_id: String,
    previous_source: Option<String>,
    previous_external_id: Option<String>,
    replaced: String,
    written: String,
    adopted_at: String,
}

impl Ledger {
    /// Every operator decision, by external id (a small table: one row per record an operator
    /// answered, gone once it is applied).
    pub async fn match_decisions(&self) -> Result<HashMap<String, MatchDecision>, LedgerError> {
        let rows: Vec<(String, String, Option<String>)> =
            on_pool!(&self.pool, |p| sqlx::query_as(
                "SELECT external_id, decision, quo_id FROM match_decisions"
            )
            .fetch_all(p)
            .await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, decision, quo_id)| {
                Some((id, MatchDecision::parse(&decision, quo_id)?))
            })
            .collect())
    }

    /// Records an operator's decision for a record (replacing an earlier one).
    pub async fn set_match_decision(
        &self,
        external_id: &str,
        decision: &MatchDecision,
    ) -> Result<(), LedgerError> {
        let (kind, quo_id) = decision.parts();
        on_pool!(&self.pool, |p| {
            sqlx::query(
            "INSERT INTO match_decisions (external_id, decision, quo_id, decided_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT(external_id) DO UPDATE SET decision = excluded.decision, quo_id = excluded.quo_id,
                decided_at = excluded.decided_at"
        )
        .bind(external_id)
        .bind(kind)
        .bind(quo_id)
        .bind(now_text())
        .execute(p)
        .await
        .map(drop)
        })?;
        Ok(())
    }

    /// Drops a record's decision (it was applied).
    pub async fn clear_match_decision(&self, external_id: &str) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "DELETE FROM match_decisions WHERE external_id = $1"
        )
        .bind(external_id)
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Commits an adoption's intent before its PATCH is sent, in one transaction: the record's
    /// pending row naming the contact (what the PATCH sends is its snapshot), what the adoption
    /// replaces (`adoptions`, replacing an earlier unconfirmed attempt's row), and each replaced
    /// value as a conflict with policy `adopted`, recorded once however often it is retried.
    pub async fn record_adoption_intent(
        &self,
        intent: &AdoptionIntent<'_>,
    ) -> Result<(), LedgerError> {
        let adoption = intent.adoption;
        let now = now_text();
        let sent = serde_json::to_string(intent.sent).expect("snapshot serialises");
        let replaced = serde_json::to_string(&adoption.replaced).expect("values serialise");
        let written = serde_json::to_string(&adoption.written).expect("values serialise");
        on_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            sqlx::query(super::records::PENDING_UPSERT)
                .bind(&adoption.external_id)
                .bind(&sent)
                .bind(&adoption.quo_id)
                .bind(&now)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO adoptions (external_id, quo_id, previous_source, previous_external_id, replaced, written, adopted_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT(external_id) DO UPDATE SET quo_id = excluded.quo_id, previous_source = excluded.previous_source,
                    previous_external_id = excluded.previous_external_id, replaced = excluded.replaced,
                    written = excluded.written, adopted_at = excluded.adopted_at"
            )
            .bind(&adoption.external_id)
            .bind(&adoption.quo_id)
            .bind(&adoption.previous_source)
            .bind(&adoption.previous_external_id)
            .bind(&replaced)
            .bind(&written)
            .bind(&adoption.adopted_at)
            .execute(&mut *tx)
            .await?;
            for (field, quo) in &adoption.replaced {
                let crm = adoption.written.get(field).cloned().unwrap_or_default();
                sqlx::query(
                    "INSERT INTO conflicts (external_id, field, base_value, crm_value, quo_value, winner, policy, run_id, at)
                     SELECT $1, $2, 'null', $3, $4, 'crm', 'adopted', $5, $6
                     WHERE NOT EXISTS (SELECT 1 FROM conflicts WHERE external_id = $1 AND field = $2
                                       AND quo_value = $4 AND policy = 'adopted')"
                )
                .bind(&adoption.external_id)
                .bind(field)
                .bind(crm.to_string())
                .bind(quo.to_string())
                .bind(intent.run_id)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The adoption that linked a record, if its contact was adopted (not created).
    pub async fn adoption(&self, external_id: &str) -> Result<Option<Adoption>, LedgerError> {
        let row: Option<StoredAdoption> = on_pool!(&self.pool, |p| {
            sqlx::query_as(
            "SELECT external_id, quo_id, previous_source, previous_external_id, replaced, written, adopted_at
             FROM adoptions WHERE external_id = $1"
        )
        .bind(external_id)
        .fetch_optional(p)
        .await
        })?;
        let Some(row) = row else {
            return Ok(None);
        };
        let decode = |column: &'static str, text: &str| {
            serde_json::from_str(text).map_err(|e| LedgerError::Corrupt {
                external_id: row.external_id.clone(),
                column,
                reason: e.to_string(),
            })
        };
        Ok(Some(Adoption {
            replaced: decode("adoptions.replaced", &row.replaced)?,
            written: decode("adoptions.written", &row.written)?,
            external_id: row.external_id.clone(),
            quo_id: row.quo_id,
            previous_source: row.previous_source,
            previous_external_id: row.previous_external_id,
            adopted_at: row.adopted_at,
        }))
    }

    /// Forgets an adoption (undone).
    pub async fn forget_adoption(&self, external_id: &str) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "DELETE FROM adoptions WHERE external_id = $1"
        )
        .bind(external_id)
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Whether the inbox holds an unapplied event for contact `quo_id` (an edit Quo announced
    /// that a copy read earlier does not show).
    pub async fn inbox_pending_for(&self, quo_id: &str) -> Result<bool, LedgerError> {
        let n: i64 = on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM inbox WHERE quo_id = $1 AND processed_at IS NULL"
        )
        .bind(quo_id)
        .fetch_one(p)
        .await)?;
        Ok(n > 0)
    }
}
