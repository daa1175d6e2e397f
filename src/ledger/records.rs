//! The `records` table: one row per CRM record.

use std::hash::{DefaultHasher, Hash, Hasher};

use super::db::{Pool, on_pool};
use super::index::{IndexEntry, LedgerIndex};
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
    /// The filter does not admit it, and it has no contact (`ledger/scope.rs`).
    OutOfScope,
    /// It had a contact when the filter stopped admitting it: kept (`quo_id` set) or unlinked.
    LeftScope,
    /// In scope, but `sync.mode = "update_only"` and no contact to update.
    Skipped,
}

impl RecordState {
    /// Whether this is a scope or mode judgement (`out_of_scope`, `left_scope`, `skipped`):
    /// nothing is synced for the record while its fingerprint stays the same.
    pub fn is_judged(self) -> bool {
        matches!(
            self,
            RecordState::OutOfScope | RecordState::LeftScope | RecordState::Skipped
        )
    }

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::PendingCreate => "pending_create",
            RecordState::Synced => "synced",
            RecordState::Unlinked => "unlinked",
            RecordState::Deleted => "deleted",
            RecordState::OutOfScope => "out_of_scope",
            RecordState::LeftScope => "left_scope",
            RecordState::Skipped => "skipped",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "pending_create" => RecordState::PendingCreate,
            "unlinked" => RecordState::Unlinked,
            "deleted" => RecordState::Deleted,
            "out_of_scope" => RecordState::OutOfScope,
            "left_scope" => RecordState::LeftScope,
            "skipped" => RecordState::Skipped,
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
    /// A pending adoption: the existing contact this record is being linked to (its PATCH may
    /// have landed; a read of this id tells).
    pub adopt_quo_id: Option<String>,
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

/// A `records` row as stored (both backends decode into it), before its JSON is parsed.
#[derive(sqlx::FromRow)]
struct StoredRecord {
    external_id: String,
    quo_id: Option<String>,
    state: String,
    source_fingerprint: Option<String>,
    snapshot: Option<String>,
    quo_contact: Option<String>,
    quo_updated_at: Option<String>,
    crm_updated_at: Option<String>,
    attempts: i64,
    last_error: Option<String>,
    adopt_quo_id: Option<String>,
}

fn decode_row(row: StoredRecord) -> Result<RecordRow, LedgerError> {
    let external_id = row.external_id;
    let corrupt = |column: &'static str, reason: String| LedgerError::Corrupt {
        external_id: external_id.clone(),
        column,
        reason,
    };
    let snapshot = row
        .snapshot
        .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("snapshot", e.to_string())))
        .transpose()?;
    let quo_contact = row
        .quo_contact
        .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("quo_contact", e.to_string())))
        .transpose()?;
    let parsed_id =
        ExternalId::parse(&external_id).map_err(|e| corrupt("external_id", e.to_string()))?;
    Ok(RecordRow {
        external_id: parsed_id,
        quo_id: row.quo_id.map(QuoContactId),
        state: RecordState::parse(&row.state),
        source_fingerprint: row.source_fingerprint,
        snapshot,
        quo_contact,
        quo_updated_at: row.quo_updated_at,
        crm_updated_at: row.crm_updated_at,
        attempts: row.attempts,
        last_error: row.last_error,
        adopt_quo_id: row.adopt_quo_id,
    })
}

/// A pending row: a create's intent (`$3` NULL) or an adoption's (`$3` the contact); a row that
/// has a Quo id keeps it. The fingerprint of an earlier judgement (out of scope, skipped) is
/// dropped: the intent judges no row, and a pending record resolved by lookup must be judged
/// again on the row it then has, even if that row is the one judged before.
pub(super) const PENDING_UPSERT: &str =
    "INSERT INTO records (external_id, state, snapshot, adopt_quo_id, created_at, updated_at)
     VALUES ($1, 'pending_create', $2, $3, $4, $5)
     ON CONFLICT(external_id) DO UPDATE SET state = 'pending_create', snapshot = excluded.snapshot,
         adopt_quo_id = excluded.adopt_quo_id, source_fingerprint = NULL,
         updated_at = excluded.updated_at
     WHERE records.quo_id IS NULL";

const COLUMNS: &str = "external_id, quo_id, state, source_fingerprint, snapshot, quo_contact, quo_updated_at, crm_updated_at, attempts, last_error, adopt_quo_id";

impl Ledger {
    /// Loads the compact index of every record.
    ///
    /// Rows come out of the database packed many to a result row (`group_concat` /
    /// `string_agg` over key ranges of the covering index `records_index_cover`): per-row
    /// driver overhead would otherwise dominate a million-record cycle.
    pub async fn load_index(&self) -> Result<LedgerIndex, LedgerError> {
        let count: i64 = self.record_count().await?;
        let mut index = LedgerIndex::with_capacity(count as usize);
        load_index_chunks(&self.pool, &mut index).await?;
        Ok(index)
    }

    /// How many rows `records` holds.
    pub async fn record_count(&self) -> Result<i64, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM records"
        )
        .fetch_one(p)
        .await)?)
    }

    /// One record by CRM id.
    pub async fn record(&self, external_id: &ExternalId) -> Result<Option<RecordRow>, LedgerError> {
        let row: Option<StoredRecord> =
            on_pool!(&self.pool, |p| sqlx::query_as(sqlx::AssertSqlSafe(
                format!("SELECT {COLUMNS} FROM records WHERE external_id = $1")
            ))
            .bind(external_id.as_str())
            .fetch_optional(p)
            .await)?;
        row.map(decode_row).transpose()
    }

    /// One record by Quo contact id.
    pub async fn record_by_quo_id(&self, quo_id: &str) -> Result<Option<RecordRow>, LedgerError> {
        let row: Option<StoredRecord> = on_pool!(&self.pool, |p| sqlx::query_as(
            sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM records WHERE quo_id = $1"))
        )
        .bind(quo_id)
        .fetch_optional(p)
        .await)?;
        row.map(decode_row).transpose()
    }

    /// Every record in a state, in id order.
    pub async fn records_in_state(
        &self,
        state: RecordState,
    ) -> Result<Vec<RecordRow>, LedgerError> {
        let rows: Vec<StoredRecord> =
            on_pool!(&self.pool, |p| sqlx::query_as(sqlx::AssertSqlSafe(
                format!("SELECT {COLUMNS} FROM records WHERE state = $1 ORDER BY external_id")
            ))
            .bind(state.as_str())
            .fetch_all(p)
            .await)?;
        rows.into_iter().map(decode_row).collect()
    }

    /// Every record, in id order.
    pub async fn all_records(&self) -> Result<Vec<RecordRow>, LedgerError> {
        let rows: Vec<StoredRecord> =
            on_pool!(&self.pool, |p| sqlx::query_as(sqlx::AssertSqlSafe(
                format!("SELECT {COLUMNS} FROM records ORDER BY external_id")
            ))
            .fetch_all(p)
            .await)?;
        rows.into_iter().map(decode_row).collect()
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
        self.record_pending(external_id, sent, None).await
    }

    async fn record_pending(
        &self,
        external_id: &ExternalId,
        sent: Option<&Snapshot>,
        adopting: Option<&str>,
    ) -> Result<(), LedgerError> {
        let now = now_text();
        let sent = sent.map(|s| serde_json::to_string(s).expect("snapshot serialises"));
        on_pool!(&self.pool, |p| {
            sqlx::query(PENDING_UPSERT)
                .bind(external_id.as_str())
                .bind(sent)
                .bind(adopting)
                .bind(&now)
                .bind(&now)
                .execute(p)
                .await
                .map(drop)
        })?;
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
        on_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            for synced in batch {
                sqlx::query(
                    "INSERT INTO records (external_id, quo_id, state, source_fingerprint, snapshot, snapshot_hash, quo_contact,
                                          quo_updated_at, crm_updated_at, attempts, last_error, created_at, updated_at)
                     VALUES ($1, $2, 'synced', $3, $4, $5, $6, $7, $8, 0, NULL, $9, $10)
                     ON CONFLICT(external_id) DO UPDATE SET
                        quo_id = excluded.quo_id, state = 'synced',
                        source_fingerprint = COALESCE(excluded.source_fingerprint, records.source_fingerprint),
                        snapshot = excluded.snapshot, snapshot_hash = excluded.snapshot_hash,
                        quo_contact = excluded.quo_contact, quo_updated_at = excluded.quo_updated_at,
                        crm_updated_at = COALESCE(excluded.crm_updated_at, records.crm_updated_at),
                        attempts = 0, last_error = NULL, adopt_quo_id = NULL, updated_at = excluded.updated_at",
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
                sqlx::query("DELETE FROM quarantine WHERE key = $1")
                    .bind(synced.external_id.as_str())
                    .execute(&mut *tx)
                    .await?;
                // What we just wrote or read is the index's freshest copy of the contact.
                super::workspace::workspace_put_tx!(&mut *tx, synced.contact);
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Stores a new source fingerprint for a record whose snapshot did not change.
    pub async fn update_fingerprint(
        &self,
        external_id: &ExternalId,
        fingerprint: &str,
    ) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            sqlx::query(
                "UPDATE records SET source_fingerprint = $1, updated_at = $2 WHERE external_id = $3",
            )
            .bind(fingerprint)
            .bind(now_text())
            .bind(external_id.as_str())
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM quarantine WHERE key = $1")
                .bind(external_id.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Forgets the stored source fingerprint, so the next cycle maps the record and compares it
    /// with the snapshot instead of skipping it as unchanged.
    pub async fn clear_fingerprint(&self, external_id: &ExternalId) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "UPDATE records SET source_fingerprint = NULL, updated_at = $1 WHERE external_id = $2",
        )
        .bind(now_text())
        .bind(external_id.as_str())
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Stores the contact as Quo now has it (reverse path), keeping the agreed snapshot.
    pub async fn update_quo_contact(
        &self,
        external_id: &ExternalId,
        contact: &Contact,
    ) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| {
            sqlx::query("UPDATE records SET quo_contact = $1, quo_updated_at = $2, updated_at = $3 WHERE external_id = $4")
            .bind(serde_json::to_string(contact).expect("contact serialises"))
            .bind(&contact.updated_at)
            .bind(now_text())
            .bind(external_id.as_str())
            .execute(p)
            .await.map(drop)
        })?;
        Ok(())
    }

    /// Counts a failed attempt with its reason.
    pub async fn record_failure(
        &self,
        external_id: &ExternalId,
        error: &str,
    ) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| {
            sqlx::query("UPDATE records SET attempts = attempts + 1, last_error = $1, updated_at = $2 WHERE external_id = $3")
            .bind(error)
            .bind(now_text())
            .bind(external_id.as_str())
            .execute(p)
            .await.map(drop)
        })?;
        Ok(())
    }

    /// Forgets the Quo id (the contact is gone from Quo) and sets the state.
    pub async fn unlink(
        &self,
        external_id: &ExternalId,
        state: RecordState,
    ) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| {
            sqlx::query(
            "UPDATE records SET quo_id = NULL, state = $1, snapshot = NULL, snapshot_hash = NULL, quo_contact = NULL,
                    source_fingerprint = NULL, adopt_quo_id = NULL, updated_at = $2 WHERE external_id = $3",
        )
        .bind(state.as_str())
        .bind(now_text())
        .bind(external_id.as_str())
        .execute(p)
        .await.map(drop)
        })?;
        Ok(())
    }

    /// Removes a record's row entirely (its CRM record was deleted on purpose).
    pub async fn forget(&self, external_id: &ExternalId) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "DELETE FROM records WHERE external_id = $1"
        )
        .bind(external_id.as_str())
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Record counts by state.
    pub async fn count_by_state(&self) -> Result<Vec<(String, i64)>, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_as(
            "SELECT state, COUNT(*) FROM records GROUP BY state ORDER BY state"
        )
        .fetch_all(p)
        .await)?)
    }
}

/// Fields separated by \x1f, rows by \x1e: neither can occur in an external id (CSV and JSON ids
/// are printable text) nor in a hex fingerprint.
fn unpack_index(packed: &str, index: &mut LedgerIndex) {
    for row in packed.split('\u{1e}') {
        let mut parts = row.split('\u{1f}');
        let (Some(external_id), Some(fingerprint), Some(state), Some(has_quo_id)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        index.insert(
            external_id,
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

const INDEX_CHUNK: i64 = 20_000;

/// One chunk of the index walk on SQLite: the selected expressions are exactly those of
/// `records_index_cover` (migration 0006), so SQLite never touches the table rows.
const INDEX_CHUNK_SQLITE: &str =
    "SELECT group_concat(id || char(31) || COALESCE(head, '') || char(31) || state
                         || char(31) || linked, char(30)),
            MAX(id), COUNT(*)
     FROM (SELECT external_id AS id, substr(source_fingerprint, 1, 16) AS head, state,
                  quo_id IS NOT NULL AS linked
           FROM records WHERE external_id > $1 ORDER BY external_id LIMIT $2)";

/// The same on PostgreSQL, answered by an index-only scan of `records_index_cover`.
const INDEX_CHUNK_POSTGRES: &str =
    "SELECT string_agg(external_id || chr(31) || COALESCE(substr(source_fingerprint, 1, 16), '') || chr(31)
                       || state || chr(31) || CASE WHEN quo_id IS NULL THEN '0' ELSE '1' END, chr(30)),
            MAX(external_id), COUNT(*)
     FROM (SELECT external_id, source_fingerprint, state, quo_id FROM records
           WHERE external_id > $1 ORDER BY external_id LIMIT $2) chunk";

/// Walks the records in key order, `INDEX_CHUNK` packed rows per query, into `index`.
async fn load_index_chunks(pool: &Pool, index: &mut LedgerIndex) -> Result<(), sqlx::Error> {
    let mut after = String::new();
    loop {
        let (packed, last, rows): (Option<String>, Option<String>, i64) =
            on_pool!(pool, |p, pg| sqlx::query_as(if pg {
                INDEX_CHUNK_POSTGRES
            } else {
                INDEX_CHUNK_SQLITE
            })
            .bind(&after)
            .bind(INDEX_CHUNK)
            .fetch_one(p)
            .await?);
        if let Some(packed) = packed {
            unpack_index(&packed, index);
        }
        match last {
            Some(last) if rows == INDEX_CHUNK => after = last,
            _ => return Ok(()),
        }
    }
}

impl Ledger {
    /// How many records are linked to a Quo contact, synced or kept after leaving scope (what a
    /// reverse scan must see).
    pub async fn linked_count(&self) -> Result<i64, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM records
             WHERE quo_id IS NOT NULL AND state IN ('synced', 'left_scope')",
        )
        .fetch_one(p)
        .await)?)
    }

    /// Up to `n` Quo ids of linked records, drawn at random (the workspace check reads them
    /// back).
    pub async fn sample_linked(&self, n: usize) -> Result<Vec<String>, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT quo_id FROM records
             WHERE quo_id IS NOT NULL AND state IN ('synced', 'left_scope')
             ORDER BY RANDOM() LIMIT $1",
        )
        .bind(n as i64)
        .fetch_all(p)
        .await)?)
    }

    /// Reverse scan: marks the listed Quo contacts as seen by pass `scan_id` and returns, for
    /// those linked to a synced record, (quo id, the `updatedAt` last stored).
    pub async fn scan_mark_seen(
        &self,
        scan_id: &str,
        quo_ids: &[&str],
    ) -> Result<Vec<(String, Option<String>)>, LedgerError> {
        if quo_ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks = |from: usize| {
            (from..from + quo_ids.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // `state` is checked below, not in SQL: with it there, SQLite walks the `state` index,
        // i.e. every synced row, on every page of a scan.
        let select = format!(
            "SELECT quo_id, quo_updated_at, state FROM records WHERE quo_id IN ({})",
            marks(1)
        );
        // $1 is the scan id; the ids follow.
        let update = format!(
            "UPDATE records SET scan_seen = $1 WHERE quo_id IN ({})",
            marks(2)
        );
        let known = on_pool!(&self.pool, |p| {
            let query = sqlx::query_as(sqlx::AssertSqlSafe(select));
            let rows: Vec<(String, Option<String>, String)> = quo_ids
                .iter()
                .fold(query, |q, id| q.bind(*id))
                .fetch_all(p)
                .await?;
            let known: Vec<(String, Option<String>)> = rows
                .into_iter()
                .filter(|(_, _, state)| state == "synced")
                .map(|(quo_id, updated_at, _)| (quo_id, updated_at))
                .collect();
            let query = sqlx::query(sqlx::AssertSqlSafe(update)).bind(scan_id);
            quo_ids
                .iter()
                .fold(query, |q, id| q.bind(*id))
                .execute(p)
                .await?;
            known
        });
        Ok(known)
    }

    /// Reverse scan: linked contacts that pass `scan_id` did not list.
    pub async fn scan_unseen(&self, scan_id: &str) -> Result<Vec<String>, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT quo_id FROM records
             WHERE quo_id IS NOT NULL AND state IN ('synced', 'left_scope')
               AND (scan_seen IS NULL OR scan_seen != $1)",
        )
        .bind(scan_id)
        .fetch_all(p)
        .await)?)
    }
}
