//! The `records` table: one row per CRM record.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use sqlx::Row;

use super::{Ledger, LedgerError, now_text};
use crate::domain::{ExternalId, QuoContactId, Snapshot};
use crate::quo::types::Contact;

/// Where a record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordState {
    /// The intent to create was committed; whether Quo has the contact is not yet known.
    PendingCreate,
    /// In agreement: `quo_id` and `snapshot` are current.
    Synced,
    /// Deleted in Quo and deliberately forgotten (`reverse.on_quo_delete = "unlink"`).
    Unlinked,
    /// Gone from the source; its Quo contact was deleted.
    Deleted,
}

impl RecordState {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::PendingCreate => "pending_create",
            RecordState::Synced => "synced",
            RecordState::Unlinked => "unlinked",
            RecordState::Deleted => "deleted",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "pending_create" => RecordState::PendingCreate,
            "unlinked" => RecordState::Unlinked,
            "deleted" => RecordState::Deleted,
            _ => RecordState::Synced,
        }
    }
}

/// A full ledger row.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordRow {
    /// The CRM id.
    pub external_id: ExternalId,
    /// The Quo contact, once known.
    pub quo_id: Option<QuoContactId>,
    /// Where it stands.
    pub state: RecordState,
    /// Hash of the raw mapped source values last synced.
    pub source_fingerprint: Option<String>,
    /// The last snapshot both sides agreed on.
    pub snapshot: Option<Snapshot>,
    /// The contact as Quo last returned it (item ids, unmanaged custom fields).
    pub quo_contact: Option<Contact>,
    /// Quo's `updatedAt` at the last agreement.
    pub quo_updated_at: Option<String>,
    /// The CRM's last-modified time at the last agreement.
    pub crm_updated_at: Option<String>,
    /// Failed attempts since the last success.
    pub attempts: i64,
    /// The last failure.
    pub last_error: Option<String>,
}

/// What a sync commits after Quo confirmed a write.
#[derive(Debug, Clone)]
pub struct SyncedRecord<'a> {
    /// The CRM id.
    pub external_id: &'a ExternalId,
    /// The contact's id.
    pub quo_id: &'a QuoContactId,
    /// Raw-value fingerprint of the source record, if it came from the source.
    pub source_fingerprint: Option<&'a str>,
    /// The agreed snapshot.
    pub snapshot: &'a Snapshot,
    /// The contact as Quo returned it.
    pub contact: &'a Contact,
    /// The CRM's last-modified time.
    pub crm_updated_at: Option<String>,
}

/// The compact per-record view the planner keeps in memory for a whole cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// A 64-bit digest of the stored source fingerprint (0 = none).
    pub fingerprint: u64,
    /// The row's state.
    pub state: RecordState,
    /// Whether a Quo id is stored.
    pub has_quo_id: bool,
    /// Set when the current read has seen the record.
    pub seen: bool,
}

/// The in-memory index: external id → entry. Its size is the only memory that grows with the CRM.
pub type LedgerIndex = HashMap<String, IndexEntry>;

/// The 64-bit digest stored in `IndexEntry::fingerprint`: the first 16 hex digits of a
/// fingerprint (already a SHA-256), or a hash of other text; never 0, which means "none".
pub fn fingerprint_digest(fingerprint: &str) -> u64 {
    let head = fingerprint.get(..16).unwrap_or(fingerprint);
    match u64::from_str_radix(head, 16) {
        Ok(value) if head.len() == 16 => value.max(1),
        _ => {
            let mut hasher = DefaultHasher::new();
            fingerprint.hash(&mut hasher);
            hasher.finish().max(1)
        }
    }
}

fn decode_row(row: &sqlx::sqlite::SqliteRow) -> Result<RecordRow, LedgerError> {
    let external_id: String = row.try_get("external_id")?;
    let corrupt = |column: &'static str, reason: String| LedgerError::Corrupt {
        external_id: external_id.clone(),
        column,
        reason,
    };
    let snapshot: Option<String> = row.try_get("snapshot")?;
    let snapshot = snapshot
        .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("snapshot", e.to_string())))
        .transpose()?;
    let contact: Option<String> = row.try_get("quo_contact")?;
    let quo_contact = contact
        .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("quo_contact", e.to_string())))
        .transpose()?;
    let parsed_id =
        ExternalId::parse(&external_id).map_err(|e| corrupt("external_id", e.to_string()))?;
    Ok(RecordRow {
        external_id: parsed_id,
        quo_id: row
            .try_get::<Option<String>, _>("quo_id")?
            .map(QuoContactId),
        state: RecordState::parse(row.try_get::<String, _>("state")?.as_str()),
        source_fingerprint: row.try_get("source_fingerprint")?,
        snapshot,
        quo_contact,
        quo_updated_at: row.try_get("quo_updated_at")?,
        crm_updated_at: row.try_get("crm_updated_at")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
    })
}

const COLUMNS: &str = "external_id, quo_id, state, source_fingerprint, snapshot, quo_contact, quo_updated_at, crm_updated_at, attempts, last_error";

impl Ledger {
    /// Loads the compact index of every record.
    ///
    /// Rows come out of SQLite packed by `group_concat` in rowid ranges, a few thousand per
    /// result row: per-row driver overhead would otherwise dominate a million-record cycle.
    pub async fn load_index(&self) -> Result<LedgerIndex, LedgerError> {
        const CHUNK: i64 = 20_000;
        let (count, max_rowid): (i64, Option<i64>) =
            sqlx::query_as("SELECT COUNT(*), MAX(rowid) FROM records")
                .fetch_one(&self.pool)
                .await?;
        let mut index = LedgerIndex::with_capacity(count as usize);
        let Some(max_rowid) = max_rowid else {
            return Ok(index);
        };
        let mut start = 0i64;
        while start <= max_rowid {
            // Fields separated by \x1f, rows by \x1e: neither can occur in an external id
            // (CSV and JSON ids are printable text) nor in a hex fingerprint.
            let packed: Option<String> = sqlx::query_scalar(
                "SELECT group_concat(external_id || char(31) || COALESCE(substr(source_fingerprint, 1, 16), '') || char(31)
                                     || state || char(31) || (quo_id IS NOT NULL), char(30))
                 FROM records WHERE rowid >= ? AND rowid < ?",
            )
            .bind(start)
            .bind(start + CHUNK)
            .fetch_one(&self.pool)
            .await?;
            start += CHUNK;
            let Some(packed) = packed else { continue };
            for row in packed.split('\u{1e}') {
                let mut parts = row.split('\u{1f}');
                let (Some(external_id), Some(fingerprint), Some(state), Some(has_quo_id)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                index.insert(
                    external_id.to_string(),
                    IndexEntry {
                        fingerprint: if fingerprint.is_empty() {
                            0
                        } else {
                            fingerprint_digest(fingerprint)
                        },
                        state: RecordState::parse(state),
                        has_quo_id: has_quo_id == "1",
                        seen: false,
                    },
                );
            }
        }
        Ok(index)
    }

    /// One record by CRM id.
    pub async fn record(&self, external_id: &ExternalId) -> Result<Option<RecordRow>, LedgerError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM records WHERE external_id = ?"
        )))
        .bind(external_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode_row).transpose()
    }

    /// One record by Quo contact id.
    pub async fn record_by_quo_id(&self, quo_id: &str) -> Result<Option<RecordRow>, LedgerError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM records WHERE quo_id = ?"
        )))
        .bind(quo_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode_row).transpose()
    }

    /// Every record in a state, in id order.
    pub async fn records_in_state(
        &self,
        state: RecordState,
    ) -> Result<Vec<RecordRow>, LedgerError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM records WHERE state = ? ORDER BY external_id"
        )))
        .bind(state.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_row).collect()
    }

    /// Every record, in id order.
    pub async fn all_records(&self) -> Result<Vec<RecordRow>, LedgerError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM records ORDER BY external_id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_row).collect()
    }

    /// Commits the intent to create a contact for `external_id`, before the POST is sent.
    ///
    /// A row that already has a Quo id keeps it: an intent never erases a known id.
    pub async fn record_intent(&self, external_id: &ExternalId) -> Result<(), LedgerError> {
        self.record_intent_with(external_id, None).await
    }

    /// Like [`Ledger::record_intent`], remembering the snapshot the POST sends: if the create's
    /// outcome is lost and the contact is adopted later, that snapshot is the merge base, so an
    /// edit made in Quo in between is kept rather than overwritten.
    pub async fn record_intent_with(
        &self,
        external_id: &ExternalId,
        sent: Option<&Snapshot>,
    ) -> Result<(), LedgerError> {
        let now = now_text();
        let sent = sent.map(|s| serde_json::to_string(s).expect("snapshot serialises"));
        sqlx::query(
            "INSERT INTO records (external_id, state, snapshot, created_at, updated_at) VALUES (?, 'pending_create', ?, ?, ?)
             ON CONFLICT(external_id) DO UPDATE SET state = 'pending_create', snapshot = excluded.snapshot,
                 updated_at = excluded.updated_at
             WHERE records.quo_id IS NULL",
        )
        .bind(external_id.as_str())
        .bind(sent)
        .bind(&now)
        .bind(&now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Commits a confirmed write: Quo id, agreed snapshot, Quo's copy; clears failures and quarantine.
    pub async fn commit_synced(&self, synced: SyncedRecord<'_>) -> Result<(), LedgerError> {
        self.commit_synced_batch(std::slice::from_ref(&synced))
            .await
    }

    /// Commits many confirmed records in one transaction (ledger recovery, bulk imports).
    pub async fn commit_synced_batch(&self, batch: &[SyncedRecord<'_>]) -> Result<(), LedgerError> {
        let now = now_text();
        let mut tx = self.pool.begin().await?;
        for synced in batch {
            sqlx::query(
                "INSERT INTO records (external_id, quo_id, state, source_fingerprint, snapshot, snapshot_hash, quo_contact,
                                      quo_updated_at, crm_updated_at, attempts, last_error, created_at, updated_at)
                 VALUES (?, ?, 'synced', ?, ?, ?, ?, ?, ?, 0, NULL, ?, ?)
                 ON CONFLICT(external_id) DO UPDATE SET
                    quo_id = excluded.quo_id, state = 'synced',
                    source_fingerprint = COALESCE(excluded.source_fingerprint, records.source_fingerprint),
                    snapshot = excluded.snapshot, snapshot_hash = excluded.snapshot_hash,
                    quo_contact = excluded.quo_contact, quo_updated_at = excluded.quo_updated_at,
                    crm_updated_at = COALESCE(excluded.crm_updated_at, records.crm_updated_at),
                    attempts = 0, last_error = NULL, updated_at = excluded.updated_at",
            )
            .bind(synced.external_id.as_str())
            .bind(synced.quo_id.as_str())
            .bind(synced.source_fingerprint)
            .bind(serde_json::to_string(synced.snapshot).expect("snapshot serialises"))
            .bind(synced.snapshot.hash())
            .bind(serde_json::to_string(synced.contact).expect("contact serialises"))
            .bind(&synced.contact.updated_at)
            .bind(&synced.crm_updated_at)
            .bind(&now)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM quarantine WHERE key = ?")
                .bind(synced.external_id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores a new source fingerprint for a record whose snapshot did not change.
    pub async fn update_fingerprint(
        &self,
        external_id: &ExternalId,
        fingerprint: &str,
    ) -> Result<(), LedgerError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE records SET source_fingerprint = ?, updated_at = ? WHERE external_id = ?",
        )
        .bind(fingerprint)
        .bind(now_text())
        .bind(external_id.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM quarantine WHERE key = ?")
            .bind(external_id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets the stored source fingerprint, so the next cycle maps the record and compares it
    /// with the snapshot instead of skipping it as unchanged.
    pub async fn clear_fingerprint(&self, external_id: &ExternalId) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE records SET source_fingerprint = NULL, updated_at = ? WHERE external_id = ?",
        )
        .bind(now_text())
        .bind(external_id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores the contact as Quo now has it (reverse path), keeping the agreed snapshot.
    pub async fn update_quo_contact(
        &self,
        external_id: &ExternalId,
        contact: &Contact,
    ) -> Result<(), LedgerError> {
        sqlx::query("UPDATE records SET quo_contact = ?, quo_updated_at = ?, updated_at = ? WHERE external_id = ?")
            .bind(serde_json::to_string(contact).expect("contact serialises"))
            .bind(&contact.updated_at)
            .bind(now_text())
            .bind(external_id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Counts a failed attempt with its reason.
    pub async fn record_failure(
        &self,
        external_id: &ExternalId,
        error: &str,
    ) -> Result<(), LedgerError> {
        sqlx::query("UPDATE records SET attempts = attempts + 1, last_error = ?, updated_at = ? WHERE external_id = ?")
            .bind(error)
            .bind(now_text())
            .bind(external_id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets the Quo id (the contact is gone from Quo) and sets the state.
    pub async fn unlink(
        &self,
        external_id: &ExternalId,
        state: RecordState,
    ) -> Result<(), LedgerError> {
        sqlx::query(
            "UPDATE records SET quo_id = NULL, state = ?, snapshot = NULL, snapshot_hash = NULL, quo_contact = NULL,
                    source_fingerprint = NULL, updated_at = ? WHERE external_id = ?",
        )
        .bind(state.as_str())
        .bind(now_text())
        .bind(external_id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a record's row entirely (its CRM record was deleted on purpose).
    pub async fn forget(&self, external_id: &ExternalId) -> Result<(), LedgerError> {
        sqlx::query("DELETE FROM records WHERE external_id = ?")
            .bind(external_id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Record counts by state.
    pub async fn count_by_state(&self) -> Result<Vec<(String, i64)>, LedgerError> {
        Ok(
            sqlx::query_as("SELECT state, COUNT(*) FROM records GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?,
        )
    }
}
