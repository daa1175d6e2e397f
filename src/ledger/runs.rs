//! The `runs` and `conflicts` tables: what each cycle did, and every field both sides changed.

use serde::Serialize;

use super::db::on_pool;
use super::{Ledger, LedgerError, now_text};

/// Counts a cycle accumulates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    /// Contacts created (or adopted after an ambiguous create).
    pub created: u64,
    /// Contacts patched.
    pub updated: u64,
    /// Records that needed nothing.
    pub unchanged: u64,
    /// Contacts deleted because their record left the source.
    pub deleted: u64,
    /// Records quarantined this cycle.
    pub quarantined: u64,
    /// Records written back to the CRM.
    pub written_to_crm: u64,
    /// HTTP requests sent to Quo, retries included.
    pub requests: u64,
    /// 429 answers received.
    pub rate_limited: u64,
    /// Records read that `sync.filter` admits.
    pub in_scope: u64,
    /// Records read that it does not (never created; left scope included).
    pub out_of_scope: u64,
    /// Synced records that left scope this cycle (`sync.on_leave_scope`).
    pub left_scope: u64,
    /// Work `sync.mode` held back: creates under `update_only`, updates under `create_only`.
    pub skipped_by_mode: u64,
    /// Contacts already in Quo linked to their record by one PATCH (day one).
    pub adopted: u64,
    /// Records held in quarantine (stage `match`): no contact could be chosen without guessing.
    pub held: u64,
    /// Contacts made in the Quo app that became CRM records (`reverse.create_in_crm`).
    pub exported: u64,
    /// Pages of a listing of the whole workspace this cycle read (day one's match index, 50
    /// contacts a page): the listing before the first creates, and a due scan pass of the
    /// workspace, which keeps the index fresh.
    pub listing_pages: u64,
}

/// One row of `runs`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RunRow {
    /// Run id (also the `run_id` of its log lines).
    pub id: String,
    /// `once`, `run` or `reconcile`.
    pub kind: String,
    /// Start time.
    pub started_at: String,
    /// End time.
    pub finished_at: Option<String>,
    /// `running`, `ok`, `quarantined` or `failed`.
    pub status: String,
    /// Contacts created.
    pub created: i64,
    /// Contacts patched.
    pub updated: i64,
    /// Unchanged records.
    pub unchanged: i64,
    /// Contacts deleted.
    pub deleted: i64,
    /// Records quarantined.
    pub quarantined: i64,
    /// Records written to the CRM.
    pub written_to_crm: i64,
    /// Requests sent.
    pub requests: i64,
    /// 429s received.
    pub rate_limited: i64,
    /// Duration in milliseconds.
    pub duration_ms: i64,
    /// The failure, if the run failed.
    pub error: Option<String>,
    /// Existing contacts adopted.
    pub adopted: i64,
    /// Records held (stage `match`).
    pub held: i64,
    /// Contacts made in Quo that became CRM records.
    pub exported: i64,
}

/// One recorded conflict.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ConflictRow {
    /// Row id.
    pub id: i64,
    /// The record.
    pub external_id: String,
    /// The field (diff name).
    pub field: String,
    /// The agreed value before both sides changed it (JSON).
    pub base_value: Option<String>,
    /// The CRM's value (JSON).
    pub crm_value: Option<String>,
    /// Quo's value (JSON).
    pub quo_value: Option<String>,
    /// `crm` or `quo`.
    pub winner: String,
    /// The policy that decided.
    pub policy: String,
    /// The run.
    pub run_id: Option<String>,
    /// When.
    pub at: String,
}

impl Ledger {
    /// Records the start of a run.
    pub async fn start_run(&self, id: &str, kind: &str) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "INSERT INTO runs (id, kind, started_at, status) VALUES ($1, $2, $3, 'running')"
        )
        .bind(id)
        .bind(kind)
        .bind(now_text())
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Records the end of a run with its counts.
    pub async fn finish_run(
        &self,
        id: &str,
        status: &str,
        counts: &RunCounts,
        duration_ms: u64,
        error: Option<&str>,
    ) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| {
            sqlx::query(
            "UPDATE runs SET finished_at = $1, status = $2, created = $3, updated = $4, unchanged = $5, deleted = $6,
                    quarantined = $7, written_to_crm = $8, requests = $9, rate_limited = $10, duration_ms = $11, error = $12,
                    adopted = $14, held = $15, exported = $16
             WHERE id = $13",
        )
        .bind(now_text())
        .bind(status)
        .bind(counts.created as i64)
        .bind(counts.updated as i64)
        .bind(counts.unchanged as i64)
        .bind(counts.deleted as i64)
        .bind(counts.quarantined as i64)
        .bind(counts.written_to_crm as i64)
        .bind(counts.requests as i64)
        .bind(counts.rate_limited as i64)
        .bind(duration_ms as i64)
        .bind(error)
        .bind(id)
        .bind(counts.adopted as i64)
        .bind(counts.held as i64)
        .bind(counts.exported as i64)
        .execute(p)
        .await.map(drop)
        })?;
        Ok(())
    }

    /// The most recent runs, newest first.
    pub async fn recent_runs(&self, limit: i64) -> Result<Vec<RunRow>, LedgerError> {
        Ok(on_pool!(&self.pool, |p, pg| sqlx::query_as(if pg {
            "SELECT * FROM runs ORDER BY started_at DESC, seq DESC LIMIT $1"
        } else {
            "SELECT * FROM runs ORDER BY started_at DESC, rowid DESC LIMIT $1"
        })
        .bind(limit)
        .fetch_all(p)
        .await)?)
    }

    /// The most recent run that finished (any status but `running`): what readiness judges by,
    /// so a cycle in progress, or one a crash left `running`, does not hide the outcome before it.
    pub async fn last_finished_run(&self) -> Result<Option<RunRow>, LedgerError> {
        Ok(on_pool!(&self.pool, |p, pg| {
            sqlx::query_as(if pg {
            "SELECT * FROM runs WHERE status <> 'running' ORDER BY started_at DESC, seq DESC LIMIT 1"
        } else {
            "SELECT * FROM runs WHERE status <> 'running' ORDER BY started_at DESC, rowid DESC LIMIT 1"
        })
        .fetch_optional(p)
        .await
        })?)
    }

    /// Records a conflict and how it was decided.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_conflict(
        &self,
        external_id: &str,
        field: &str,
        base: &serde_json::Value,
        crm: &serde_json::Value,
        quo: &serde_json::Value,
        winner: &str,
        policy: &str,
        run_id: Option<&str>,
    ) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| {
            sqlx::query(
            "INSERT INTO conflicts (external_id, field, base_value, crm_value, quo_value, winner, policy, run_id, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(external_id)
        .bind(field)
        .bind(base.to_string())
        .bind(crm.to_string())
        .bind(quo.to_string())
        .bind(winner)
        .bind(policy)
        .bind(run_id)
        .bind(now_text())
        .execute(p)
        .await.map(drop)
        })?;
        Ok(())
    }

    /// The most recent run error, if any run failed.
    pub async fn last_run_error(&self) -> Result<Option<String>, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT error FROM runs WHERE error IS NOT NULL ORDER BY started_at DESC LIMIT 1",
        )
        .fetch_optional(p)
        .await)?)
    }

    /// How many conflicts were recorded.
    pub async fn conflict_count(&self) -> Result<i64, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM conflicts"
        )
        .fetch_one(p)
        .await)?)
    }

    /// Recorded conflicts, newest first.
    pub async fn conflicts(&self, limit: i64) -> Result<Vec<ConflictRow>, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_as(
            "SELECT * FROM conflicts ORDER BY id DESC LIMIT $1"
        )
        .bind(limit)
        .fetch_all(p)
        .await)?)
    }
}
