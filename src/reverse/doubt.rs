//! The workspace doubt, on record in the ledger.
//!
//! When a read-back of linked contacts does not find most of them (`absence::check_workspace`:
//! the key may point at another workspace), the process that read them holds back creates and
//! deletions. That judgement must outlive the process and reach every other one: a replica that
//! takes over must not start by creating into the wrong workspace, and an operator must see it
//! in `quo-sync status`, `/readyz`, `/metrics` and the console (all other processes, or other
//! replicas). So the doubt is written to the ledger's `meta` (one JSON row, [`META_KEY`]), with
//! since when, what the last read-back found and what the last cycle held back; a read-back that
//! finds the linked contacts again deletes it.

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::ledger::{Ledger, LedgerError};

use super::absence::WorkspaceCheck;

/// The `meta` key of the doubt on record.
pub const META_KEY: &str = "workspace_doubt";

/// What an operator does about a doubt (`status`, the console).
pub const NEXT_STEP: &str = "check that quo.api_key (QUO_SYNC__QUO__API_KEY) is the key of the Quo workspace that holds the synced contacts; the doubt clears by itself at the next cycle whose read-back finds them. Only if those contacts were really deleted in Quo: quo-sync once --allow-mass-delete";

/// The doubt on record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceDoubt {
    /// When a read-back first did not find most linked contacts (RFC 3339).
    pub since: String,
    /// When the last read-back ran (it did not find them either).
    pub checked_at: String,
    /// Linked contacts the last read-back asked for.
    pub sampled: usize,
    /// Of those, found.
    pub found: usize,
    /// Of those, answered 404.
    pub missing: usize,
    /// What the last cycle that ended in doubt held back.
    #[serde(default)]
    pub held: HeldWork,
    /// When that cycle ended (`None` until one has).
    #[serde(default)]
    pub held_at: Option<String>,
}

/// What one cycle held back while the workspace was in doubt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldWork {
    /// CRM records not created in Quo (`create_deferred`).
    pub creates_deferred: usize,
    /// Contacts not deleted though their record left the CRM or the filter (`delete_deferred`,
    /// `delete_unconfirmed`).
    pub deletions_held: usize,
    /// Linked contacts Quo answered 404 for whose absence was not acted on: not unlinked,
    /// re-created or deleted in the CRM (`mass_delete_refused`, reason `workspace_unconfirmed`).
    pub absences_held: usize,
}

impl HeldWork {
    /// Whether nothing was held.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl WorkspaceDoubt {
    /// Why, in numbers: `10 of 10 linked contacts read back answered 404`.
    pub fn reason(&self) -> String {
        let mut text = format!(
            "{} of {} linked contacts read back answered 404",
            self.missing, self.sampled
        );
        let unreadable = self.sampled.saturating_sub(self.found + self.missing);
        if unreadable > 0 {
            text.push_str(&format!(", {unreadable} could not be read"));
        }
        if self.found > 0 {
            text.push_str(&format!(", {} found", self.found));
        }
        text
    }

    /// What is held, in words: `creates deferred 1, deletions held 1, absences held 20`.
    pub fn held_words(&self) -> String {
        let h = &self.held;
        format!(
            "creates deferred {}, deletions held {}, absences held {} (contacts answering 404 not unlinked, re-created or deleted in the CRM)",
            h.creates_deferred, h.deletions_held, h.absences_held
        )
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The doubt on record, if any (an unreadable row still counts as a doubt: it was written as
/// one, and only a read-back that finds the contacts deletes it).
pub async fn load(ledger: &Ledger) -> Result<Option<WorkspaceDoubt>, LedgerError> {
    Ok(ledger
        .meta(META_KEY)
        .await?
        .map(|text| serde_json::from_str(&text).unwrap_or_default()))
}

/// Records a read-back that did not find most linked contacts (keeping since when the doubt
/// holds and what the last cycle held).
pub async fn doubted(ledger: &Ledger, check: &WorkspaceCheck) -> Result<(), LedgerError> {
    let at = now();
    let mut doubt = load(ledger).await?.unwrap_or_else(|| WorkspaceDoubt {
        since: at.clone(),
        ..WorkspaceDoubt::default()
    });
    if doubt.since.is_empty() {
        doubt.since = at.clone();
    }
    doubt.checked_at = at;
    doubt.sampled = check.sampled;
    doubt.found = check.found;
    doubt.missing = check.missing;
    store(ledger, &doubt).await
}

/// Records what a cycle that ended in doubt held back (a doubt must be on record: a cycle
/// whose process holds it in memory only, as after a failed write, records it anew).
pub async fn held(ledger: &Ledger, held: HeldWork) -> Result<(), LedgerError> {
    let at = now();
    let mut doubt = load(ledger).await?.unwrap_or_else(|| WorkspaceDoubt {
        since: at.clone(),
        checked_at: at.clone(),
        ..WorkspaceDoubt::default()
    });
    doubt.held = held;
    doubt.held_at = Some(at);
    store(ledger, &doubt).await
}

/// Deletes the doubt on record after a read-back found the linked contacts; the doubt that was
/// on record, if any.
pub async fn cleared(ledger: &Ledger) -> Result<Option<WorkspaceDoubt>, LedgerError> {
    let Some(doubt) = load(ledger).await? else {
        return Ok(None);
    };
    ledger.delete_meta(&[META_KEY]).await?;
    Ok(Some(doubt))
}

async fn store(ledger: &Ledger, doubt: &WorkspaceDoubt) -> Result<(), LedgerError> {
    let text = serde_json::to_string(doubt).unwrap_or_default();
    ledger.set_meta(META_KEY, &text).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_counts_what_the_read_back_found() {
        let doubt = WorkspaceDoubt {
            sampled: 10,
            missing: 8,
            found: 1,
            ..WorkspaceDoubt::default()
        };
        assert_eq!(
            doubt.reason(),
            "8 of 10 linked contacts read back answered 404, 1 could not be read, 1 found"
        );
        let all = WorkspaceDoubt {
            sampled: 14,
            missing: 14,
            ..WorkspaceDoubt::default()
        };
        assert_eq!(
            all.reason(),
            "14 of 14 linked contacts read back answered 404"
        );
    }
}
