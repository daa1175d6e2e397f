//! When quo-sync may act on an absence: a linked contact Quo answers 404 for, one a complete
//! scan did not list, a pending create no lookup finds.
//!
//! An absence is the weakest evidence a sync tool has, and the most expensive to act on wrongly:
//! a key for another workspace (a rotated key, an API incident, changed access) answers 404 for
//! every id and lists nothing, and every policy then does harm at scale (`unlink` stops syncing
//! everything for good, `recreate` copies the whole CRM into the wrong workspace). Two checks
//! stand between an absence and what it would do:
//!
//! - **The workspace check.** Before the first absence of a process is acted on, and again after
//!   any storm of 401/403/404 answers ([`crate::quo::client::REFUSAL_STORM`]), a sample of linked
//!   ids (not the absent ones) is read back by id. Unless at least half of them are there, the key
//!   is not shown to answer for our workspace and no absence is acted on.
//! - **The deletion guard** ([`DeleteGuard`]): the deletions one cycle (or one scan pass) would
//!   make, of every kind (contacts deleted because their record left the CRM, records unlinked,
//!   re-created or deleted in the CRM because their contact is gone, strays, forgotten pending
//!   creates), may not exceed `sync.max_delete_fraction` of the linked records; over it, none of
//!   them happens and `mass_delete_refused` is logged, until an operator passes
//!   `--allow-mass-delete`.

use std::collections::HashSet;

use tracing::{info, warn};

use crate::ledger::{Ledger, LedgerError};
use crate::quo::client::{QuoClient, QuoError};

/// Linked ids read back by the workspace check.
pub const SAMPLE: usize = 10;

/// `sync.max_delete_fraction` and `--allow-mass-delete`: how many deletions one cycle or scan
/// pass may make without an operator's consent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeleteGuard {
    /// The largest share of the linked records one cycle or pass may delete.
    pub max_fraction: f64,
    /// The operator lifted the guard for this process.
    pub allow: bool,
}

impl DeleteGuard {
    /// How many deletions out of `linked` records are allowed (at least one).
    pub fn allowed(&self, linked: usize) -> usize {
        ((linked as f64 * self.max_fraction).floor() as usize).max(1)
    }

    /// Whether `count` deletions out of `linked` may go ahead; logs `mass_delete_refused` (with
    /// `what` would be deleted) and counts it when not.
    pub fn permits(&self, what: &'static str, count: usize, linked: usize) -> bool {
        let allowed = self.allowed(linked);
        if count <= allowed || self.allow {
            return true;
        }
        warn!(
            event = "mass_delete_refused",
            what,
            would_delete = count,
            managed = linked,
            allowed,
            max_delete_fraction = self.max_fraction,
            "refusing to delete more than sync.max_delete_fraction of the managed records in one cycle; nothing was deleted (rerun with --allow-mass-delete if this is intended)"
        );
        metrics::counter!("quo_sync_mass_delete_refused_total").increment(1);
        false
    }
}

/// What the workspace check found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkspaceCheck {
    /// Linked ids read back.
    pub sampled: usize,
    /// Of those, found.
    pub found: usize,
    /// Of those, answered 404.
    pub missing: usize,
}

impl WorkspaceCheck {
    /// Whether the key is shown to answer for our workspace: nothing linked to sample, or at
    /// least half the sample read back.
    pub fn holds_ours(&self) -> bool {
        self.sampled == 0 || self.found * 2 >= self.sampled
    }
}

/// Why the workspace check could not run.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A refused key or shutdown (anything else read back counts as not found).
    #[error(transparent)]
    Quo(#[from] QuoError),
}

/// Whether absences seen through `client` may be acted on: at once when the key was checked
/// since the last storm of refusals, else after reading back a sample of linked ids (never one
/// in `absent`, the ids whose absence is in question).
pub async fn absences_trusted(
    ledger: &Ledger,
    client: &QuoClient,
    absent: &HashSet<String>,
) -> Result<bool, CheckError> {
    if client.absences_trusted() {
        return Ok(true);
    }
    let check = check_workspace(ledger, client, absent).await?;
    if check.holds_ours() {
        info!(
            event = "workspace_confirmed",
            sampled = check.sampled,
            found = check.found,
            "linked contacts read back: the key answers for the synced workspace"
        );
        confirmed(ledger, client).await?;
        return Ok(true);
    }
    warn!(
        event = "workspace_unconfirmed",
        sampled = check.sampled,
        found = check.found,
        missing = check.missing,
        "most linked contacts read back are not there: the key may point at another workspace; no absence is acted on until they are"
    );
    doubted(ledger, client, &check).await?;
    Ok(false)
}

/// After a read-back found the linked contacts: `client` trusts absences again, and the doubt
/// on record (this process's or another's) is deleted for every process (`super::doubt`).
pub async fn confirmed(ledger: &Ledger, client: &QuoClient) -> Result<(), LedgerError> {
    if let Some(doubt) = super::doubt::cleared(ledger).await? {
        info!(
            event = "workspace_doubt_cleared",
            since = %doubt.since,
            "the workspace is no longer in doubt: held creates and deletions go ahead"
        );
    }
    client.workspace_confirmed();
    Ok(())
}

/// After a read-back did not find most linked contacts: `client` holds back creates, deletions
/// and absences, and the doubt is recorded for every process and the operator
/// (`super::doubt`).
pub async fn doubted(
    ledger: &Ledger,
    client: &QuoClient,
    check: &WorkspaceCheck,
) -> Result<(), LedgerError> {
    metrics::counter!("quo_sync_workspace_unconfirmed_total").increment(1);
    client.workspace_unconfirmed();
    super::doubt::doubted(ledger, check).await
}

/// Reads back up to [`SAMPLE`] linked ids, those not in `absent` when there are any: a contact
/// genuinely deleted must not fail the check. When every linked id is absent, the absent ones
/// are read again: nothing tells a wiped workspace from another one, so that takes an
/// operator's `--allow-mass-delete`.
pub async fn check_workspace(
    ledger: &Ledger,
    client: &QuoClient,
    absent: &HashSet<String>,
) -> Result<WorkspaceCheck, CheckError> {
    let extra = absent.len().min(1_000);
    let (others, absent_too): (Vec<String>, Vec<String>) = ledger
        .sample_linked(SAMPLE + extra)
        .await?
        .into_iter()
        .partition(|id| !absent.contains(id));
    let sample: Vec<String> = if others.is_empty() {
        absent_too
    } else {
        others
    }
    .into_iter()
    .take(SAMPLE)
    .collect();
    let mut check = WorkspaceCheck {
        sampled: sample.len(),
        ..WorkspaceCheck::default()
    };
    for quo_id in &sample {
        match client.get_contact(quo_id).await {
            Ok(Some(_)) => check.found += 1,
            Ok(None) => check.missing += 1,
            Err(e) if e.is_fatal() => return Err(e.into()),
            // Unreadable (a 403, a persistent 5xx): not shown to be there.
            Err(_) => {}
        }
    }
    Ok(check)
}
