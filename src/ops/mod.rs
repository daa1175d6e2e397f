//! Operator reports read from the ledger: `status` now; `runs`, `quarantine`, `conflicts` and
//! `reconcile` build on the same queries.

use serde::Serialize;

pub mod console;
pub mod control;
pub mod doubt;
pub mod http;
pub mod link;
pub mod listener;
pub mod live;
pub mod progress;
pub mod reconcile;
pub mod summary;

use crate::ledger::{Ledger, LedgerError, QuarantineEntry, RunRow};

/// What `quo-sync status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The ledger file.
    pub ledger: String,
    /// Records by state.
    pub records: std::collections::BTreeMap<String, i64>,
    /// Records in quarantine.
    pub quarantined: usize,
    /// Of those, records held before create (stage `match`): they match contacts already in
    /// Quo and wait for `quo-sync link` or a fix in the CRM.
    pub held: i64,
    /// The oldest quarantined record.
    pub oldest_quarantined: Option<QuarantineEntry>,
    /// The last run.
    pub last_run: Option<RunRow>,
    /// The last run that failed, with its error.
    pub last_error: Option<String>,
    /// Webhook events waiting to be applied.
    pub pending_reverse_events: i64,
    /// Conflicts recorded.
    pub conflicts: i64,
    /// Creates whose answer was lost and whose contact no scan has found yet (a twin may exist
    /// until one does).
    pub unconfirmed_creates: i64,
    /// Calls, texts and voicemails logged to the CRM (all zero without `[activity]`).
    pub activity: crate::activity::status::ActivityStatus,
    /// What syncs, by the records' last judgement.
    pub scope: ScopeCounts,
    /// The pause in force (`quo-sync pause`), with who paused and until when.
    pub paused: Option<crate::ledger::Pause>,
    /// Unconfirmed creates whose contact could not be resolved, abandoned with a reason (the
    /// contact is left in Quo for an operator): the newest few, (external id, when, why).
    pub abandoned_creates: Vec<(String, String, String)>,
    /// Whether the Quo workspace is in doubt: the last read-back of linked contacts did not find
    /// most of them (a key for another workspace), so creates and deletions are held.
    pub workspace_doubted: bool,
    /// The doubt, with since when, why, what is held and what to do (`null` when none).
    pub workspace_doubt: Option<doubt::DoubtReport>,
}

/// Records by scope (`sync.filter`) and mode (`sync.mode`), as last judged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScopeCounts {
    /// Records the filter admits (every record without a filter).
    pub in_scope: i64,
    /// Records it does not, and never did while synced: never created.
    pub out_of_scope: i64,
    /// Records that had a contact when they left scope (kept, unlinked or deleted).
    pub left_scope: i64,
    /// In scope, but `sync.mode = "update_only"` and no contact to update.
    pub skipped_by_mode: i64,
}

impl ScopeCounts {
    /// From the record counts by state.
    pub fn from_states(states: &std::collections::BTreeMap<String, i64>) -> Self {
        let of = |state: &str| states.get(state).copied().unwrap_or(0);
        let out_of_scope = of("out_of_scope");
        let left_scope = of("left_scope");
        let skipped_by_mode = of("skipped");
        Self {
            in_scope: states.values().sum::<i64>() - out_of_scope - left_scope,
            out_of_scope,
            left_scope,
            skipped_by_mode,
        }
    }
}

/// Gathers the status report.
pub async fn status(ledger: &Ledger) -> Result<Status, LedgerError> {
    let records = ledger.count_by_state().await?.into_iter().collect();
    let scope = ScopeCounts::from_states(&records);
    let quarantine = ledger.quarantined().await?;
    let last_run = ledger.recent_runs(1).await?.into_iter().next();
    let last_error = ledger.last_run_error().await?;
    let conflicts = ledger.conflict_count().await?;
    let workspace_doubt = crate::reverse::doubt::load(ledger)
        .await?
        .map(doubt::DoubtReport::of);
    Ok(Status {
        ledger: ledger.path().to_string(),
        records,
        quarantined: quarantine.len(),
        held: ledger.held_count().await?,
        oldest_quarantined: quarantine.into_iter().next(),
        last_run,
        last_error,
        pending_reverse_events: ledger.inbox_depth().await?,
        conflicts,
        unconfirmed_creates: ledger.unconfirmed_count().await?,
        activity: crate::activity::status::gather(ledger).await?,
        scope,
        paused: ledger.pause_state().await?,
        abandoned_creates: ledger.unconfirmed_abandoned(5).await?,
        workspace_doubted: workspace_doubt.is_some(),
        workspace_doubt,
    })
}

/// Why an operator action on the quarantine was refused.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The key names no quarantined record.
    #[error("no quarantined record {0:?}")]
    NotQuarantined(String),
    /// The ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// `quarantine retry` (CLI and console): checks every key is quarantined, then makes the next
/// cycle re-read those records even if their CRM row looks unchanged.
pub async fn retry_quarantined(ledger: &Ledger, keys: &[String]) -> Result<(), OpsError> {
    for key in keys {
        if ledger.quarantined_one(key).await?.is_none() {
            return Err(OpsError::NotQuarantined(key.clone()));
        }
    }
    ledger.mark_for_retry(keys).await?;
    Ok(())
}

/// `quarantine discard` (CLI and console): hides a record from attention, with a log line that
/// says an operator did it.
pub async fn discard_quarantined(ledger: &Ledger, key: &str) -> Result<(), OpsError> {
    if !ledger.discard(key).await? {
        return Err(OpsError::NotQuarantined(key.to_string()));
    }
    tracing::warn!(event = "quarantine_discarded", key = %key, "quarantined record discarded by an operator");
    Ok(())
}

impl Status {
    /// The human table.
    pub fn render(&self) -> String {
        let mut out = format!("ledger        {}\n", self.ledger);
        let states: Vec<String> = self
            .records
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        out.push_str(&format!(
            "records       {}\n",
            if states.is_empty() {
                "none".into()
            } else {
                states.join(", ")
            }
        ));
        let s = &self.scope;
        out.push_str(&format!(
            "scope         in scope {}, out of scope {}, left scope {}, skipped by mode {}\n",
            s.in_scope, s.out_of_scope, s.left_scope, s.skipped_by_mode
        ));
        if let Some(pause) = &self.paused {
            out.push_str(&format!(
                "paused        {} (no writes to Quo or the CRM; quo-sync resume)\n",
                pause.describe()
            ));
        }
        if let Some(doubt) = &self.workspace_doubt {
            out.push_str(&doubt.render());
        }
        out.push_str(&format!("quarantined   {}\n", self.quarantined));
        if self.held > 0 {
            out.push_str(&format!(
                "held          {} (match contacts already in Quo: `quo-sync quarantine list`, resolve with `quo-sync link`)\n",
                self.held
            ));
        }
        if let Some(q) = &self.oldest_quarantined {
            out.push_str(&format!(
                "  oldest      {} ({}, since {}): {}\n",
                q.key, q.location, q.first_seen, q.reason
            ));
        }
        match &self.last_run {
            Some(r) => out.push_str(&format!(
                "last run      {} {} {} (created {}, updated {}, unchanged {}, deleted {}, quarantined {}, requests {}, 429s {}, {} ms)\n",
                r.started_at, r.kind, r.status, r.created, r.updated, r.unchanged, r.deleted, r.quarantined, r.requests, r.rate_limited, r.duration_ms
            )),
            None => out.push_str("last run      none\n"),
        }
        if let Some(e) = &self.last_error {
            out.push_str(&format!("last error    {e}\n"));
        }
        out.push_str(&format!(
            "reverse inbox {} pending\n",
            self.pending_reverse_events
        ));
        out.push_str(&format!("conflicts     {}\n", self.conflicts));
        if self.unconfirmed_creates > 0 {
            out.push_str(&format!(
                "unconfirmed creates {} (lost POST answers; resolved by the next scans)\n",
                self.unconfirmed_creates
            ));
        }
        for (external_id, at, reason) in &self.abandoned_creates {
            out.push_str(&format!(
                "abandoned create {external_id} ({at}): {reason}\n"
            ));
        }
        if !self.activity.activities.is_empty() || !self.activity.webhooks.is_empty() {
            out.push_str(&self.activity.render());
        }
        out
    }
}

/// The `runs` table.
pub fn render_runs(runs: &[crate::ledger::RunRow]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<25} {:<9} {:<12} {:>7} {:>7} {:>9} {:>7} {:>11} {:>8} {:>5} {:>9}",
        "STARTED",
        "KIND",
        "STATUS",
        "CREATED",
        "UPDATED",
        "UNCHANGED",
        "DELETED",
        "QUARANTINED",
        "REQUESTS",
        "429S",
        "MS"
    );
    for r in runs {
        let _ = writeln!(
            out,
            "{:<25} {:<9} {:<12} {:>7} {:>7} {:>9} {:>7} {:>11} {:>8} {:>5} {:>9}",
            r.started_at,
            r.kind,
            r.status,
            r.created,
            r.updated,
            r.unchanged,
            r.deleted,
            r.quarantined,
            r.requests,
            r.rate_limited,
            r.duration_ms
        );
    }
    out
}

/// The `conflicts` table.
pub fn render_conflicts(conflicts: &[crate::ledger::ConflictRow]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<25} {:<16} {:<16} {:<6} {:<8} CRM VALUE -> QUO VALUE",
        "AT", "EXTERNAL_ID", "FIELD", "WINNER", "POLICY"
    );
    for c in conflicts {
        let _ = writeln!(
            out,
            "{:<25} {:<16} {:<16} {:<6} {:<8} {} -> {}",
            c.at,
            c.external_id,
            c.field,
            c.winner,
            c.policy,
            c.crm_value.as_deref().unwrap_or_default(),
            c.quo_value.as_deref().unwrap_or_default()
        );
    }
    out
}

/// The `quarantine list` table.
pub fn render_quarantine(entries: &[crate::ledger::QuarantineEntry]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<8} {:<28} {:<14} {:<18} REASON",
        "KEY", "STAGE", "LOCATION", "FIELD", "VALUE"
    );
    for q in entries {
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<28} {:<14} {:<18} {}{}",
            q.key,
            q.stage,
            q.location,
            q.field.as_deref().unwrap_or_default(),
            q.value.as_deref().unwrap_or_default(),
            q.reason,
            if q.discarded_at.is_some() {
                " (discarded)"
            } else {
                ""
            }
        );
    }
    out
}
