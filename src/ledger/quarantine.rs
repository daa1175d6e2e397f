//! The `quarantine` table: records that could not be synced, with where they came from and why.
//!
//! Nothing is dropped silently: a bad row waits here, visible to `status`, and is retried on
//! every cycle; it leaves quarantine the moment it syncs (or its row stops failing to read).

use super::db::on_pool;
use super::{Ledger, LedgerError, now_text};

/// The stage at which a record failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineStage {
    /// The source could not read the row (bad UTF-8, column count, missing or duplicate id).
    Read,
    /// A value could not be mapped (phone, custom field type).
    Mapping,
    /// Quo refused the record (non-retryable 4xx) or retries ran out.
    Quo,
    /// `sync.filter` could not be evaluated on the record (e.g. `int()` of a word).
    Filter,
    /// Held before create: the record matches existing contacts and no one of them can be
    /// chosen without guessing (`value` lists the contact ids).
    Match,
}

impl QuarantineStage {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineStage::Read => "read",
            QuarantineStage::Mapping => "mapping",
            QuarantineStage::Quo => "quo",
            QuarantineStage::Filter => "filter",
            QuarantineStage::Match => "match",
        }
    }
}

/// One quarantined record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct QuarantineEntry {
    /// The external id, or `@<location>` for unreadable rows.
    pub key: String,
    /// The external id, when known.
    pub external_id: Option<String>,
    /// Where the row was read.
    pub location: String,
    /// `read`, `mapping`, `quo` or `match` (held before create).
    pub stage: String,
    /// The offending field, when one is to blame.
    pub field: Option<String>,
    /// The offending value.
    pub value: Option<String>,
    /// Why.
    pub reason: String,
    /// The raw row.
    pub raw: Option<String>,
    /// Cycles it has failed in.
    pub attempts: i64,
    /// First failure.
    pub first_seen: String,
    /// Latest failure.
    pub last_seen: String,
    /// The run that last saw it.
    pub last_run_id: Option<String>,
    /// When an operator discarded it (hidden from attention, still retried).
    pub discarded_at: Option<String>,
}

/// What a cycle reports when it quarantines something.
#[derive(Debug, Clone, PartialEq)]
pub struct NewQuarantine<'a> {
    /// The external id, when known.
    pub external_id: Option<&'a str>,
    /// Where the row was read.
    pub location: &'a str,
    /// The stage.
    pub stage: QuarantineStage,
    /// The offending field.
    pub field: Option<&'a str>,
    /// The offending value.
    pub value: Option<&'a str>,
    /// Why.
    pub reason: &'a str,
    /// The raw row.
    pub raw: Option<&'a str>,
}

impl Ledger {
    /// Puts a record in quarantine (or refreshes its entry), returning its key.
    pub async fn quarantine(
        &self,
        entry: NewQuarantine<'_>,
        run_id: &str,
    ) -> Result<String, LedgerError> {
        // Unreadable rows are keyed by where they are: a duplicate-id row must not share a key
        // with the healthy record that owns the id.
        let key = match (entry.stage, entry.external_id) {
            (QuarantineStage::Read, _) | (_, None) => format!("@{}", entry.location),
            (_, Some(id)) => id.to_string(),
        };
        let now = now_text();
        on_pool!(&self.pool, |p| {
            sqlx::query(
            "INSERT INTO quarantine (key, external_id, location, stage, field, value, reason, raw, attempts, first_seen, last_seen, last_run_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $10, $11)
             ON CONFLICT(key) DO UPDATE SET
                external_id = excluded.external_id, location = excluded.location, stage = excluded.stage,
                field = excluded.field, value = excluded.value, reason = excluded.reason, raw = excluded.raw,
                attempts = CASE WHEN quarantine.last_run_id IS NOT DISTINCT FROM excluded.last_run_id THEN quarantine.attempts ELSE quarantine.attempts + 1 END,
                last_seen = excluded.last_seen, last_run_id = excluded.last_run_id",
        )
        .bind(&key)
        .bind(entry.external_id)
        .bind(entry.location)
        .bind(entry.stage.as_str())
        .bind(entry.field)
        .bind(entry.value)
        .bind(entry.reason)
        .bind(entry.raw)
        .bind(&now)
        .bind(&now)
        .bind(run_id)
        .execute(p)
        .await.map(drop)
        })?;
        Ok(key)
    }

    /// Releases one record from quarantine (it synced, or an operator discarded it).
    pub async fn release(&self, key: &str) -> Result<bool, LedgerError> {
        let done = on_pool!(&self.pool, |p| sqlx::query(
            "DELETE FROM quarantine WHERE key = $1"
        )
        .bind(key)
        .execute(p)
        .await
        .map(|d| d.rows_affected()))?;
        Ok(done > 0)
    }

    /// After a complete read: drops entries this run did not see again (the row was fixed,
    /// renamed or removed), so quarantine only ever lists what still fails.
    pub async fn release_unseen(&self, run_id: &str) -> Result<u64, LedgerError> {
        let done = on_pool!(&self.pool, |p| sqlx::query(
            "DELETE FROM quarantine WHERE last_run_id IS DISTINCT FROM $1"
        )
        .bind(run_id)
        .execute(p)
        .await
        .map(|d| d.rows_affected()))?;
        Ok(done)
    }

    /// Every quarantined record not discarded, oldest first.
    pub async fn quarantined(&self) -> Result<Vec<QuarantineEntry>, LedgerError> {
        let rows: Vec<QuarantineEntry> = on_pool!(&self.pool, |p| sqlx::query_as(
            "SELECT * FROM quarantine WHERE discarded_at IS NULL ORDER BY first_seen, key",
        )
        .fetch_all(p)
        .await)?;
        Ok(rows)
    }

    /// Records held before create (stage `match`, discarded or not): their external ids and the
    /// contact ids each was matched to.
    pub async fn held_matches(&self) -> Result<Vec<(String, Vec<String>)>, LedgerError> {
        let rows: Vec<(Option<String>, Option<String>)> =
            on_pool!(&self.pool, |p| sqlx::query_as(
                "SELECT external_id, value FROM quarantine WHERE stage = 'match'"
            )
            .fetch_all(p)
            .await)?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, value)| {
                let contacts = value
                    .unwrap_or_default()
                    .split(' ')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect();
                Some((id?, contacts))
            })
            .collect())
    }

    /// How many records are held before create (stage `match`) and not discarded.
    pub async fn held_count(&self) -> Result<i64, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM quarantine WHERE stage = 'match' AND discarded_at IS NULL"
        )
        .fetch_one(p)
        .await)?)
    }

    /// How many records are quarantined and not discarded.
    pub async fn quarantined_count(&self) -> Result<i64, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM quarantine WHERE discarded_at IS NULL"
        )
        .fetch_one(p)
        .await)?)
    }

    /// Whether run `run_id` quarantined the record (so the CRM still has it, discarded or not).
    pub async fn quarantined_in_run(
        &self,
        external_id: &str,
        run_id: &str,
    ) -> Result<bool, LedgerError> {
        let n: i64 = on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM quarantine WHERE external_id = $1 AND last_run_id = $2"
        )
        .bind(external_id)
        .bind(run_id)
        .fetch_one(p)
        .await)?;
        Ok(n > 0)
    }

    /// Every quarantined record including discarded ones, oldest first.
    pub async fn quarantined_all(&self) -> Result<Vec<QuarantineEntry>, LedgerError> {
        let rows: Vec<QuarantineEntry> = on_pool!(&self.pool, |p| sqlx::query_as(
            "SELECT * FROM quarantine ORDER BY first_seen, key"
        )
        .fetch_all(p)
        .await)?;
        Ok(rows)
    }

    /// Marks an entry discarded by an operator; `false` when there is no such entry.
    pub async fn discard(&self, key: &str) -> Result<bool, LedgerError> {
        let done = on_pool!(&self.pool, |p| sqlx::query(
            "UPDATE quarantine SET discarded_at = $1 WHERE key = $2"
        )
        .bind(now_text())
        .bind(key)
        .execute(p)
        .await
        .map(|d| d.rows_affected()))?;
        Ok(done > 0)
    }

    /// Makes the next cycle re-map and retry these records even if their CRM row is unchanged.
    pub async fn mark_for_retry(&self, keys: &[String]) -> Result<u64, LedgerError> {
        let touched = on_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            let mut touched = 0;
            for key in keys {
                touched += sqlx::query(
                    "UPDATE records SET source_fingerprint = NULL, attempts = 0 WHERE external_id = $1",
                )
                .bind(key)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await?;
            touched
        });
        Ok(touched)
    }

    /// One quarantined record.
    pub async fn quarantined_one(&self, key: &str) -> Result<Option<QuarantineEntry>, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_as(
            "SELECT * FROM quarantine WHERE key = $1"
        )
        .bind(key)
        .fetch_optional(p)
        .await)?)
    }
}
