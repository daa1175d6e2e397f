//! Gathers what changed on the Quo side since the last cycle: pending webhook events from the
//! inbox and, when due, a scan of every contact with our `source`. Both are notices only; the
//! contact fetched from Quo is the truth.
//!
//! Echoes of our own writes are recognised without a request when the event carries the
//! `updatedAt` the ledger already stored from our write's response.
//!
//! Absence is not deletion: a linked contact missing from a scan is fetched by id, and only a
//! 404 counts as deleted. A scan whose paging goes wrong (a repeated page token, retries run out)
//! is abandoned without concluding anything, and tried again next cycle. One contact that cannot
//! be read (an undecodable body, a persistent 5xx) is set apart for that record alone.

use std::collections::{HashMap, HashSet};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::domain::{ExternalId, QuoContactId};
use crate::ledger::{Ledger, LedgerError, RecordState};
use crate::quo::client::{QuoClient, QuoError};
use crate::quo::types::Contact;

/// Why intake failed.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Quo.
    #[error(transparent)]
    Quo(#[from] QuoError),
}

impl From<sqlx::Error> for IntakeError {
    fn from(e: sqlx::Error) -> Self {
        IntakeError::Ledger(LedgerError::Query(e))
    }
}

/// Quo-side changes for one cycle.
#[derive(Debug, Default)]
pub struct QuoChanges {
    /// Managed contacts whose Quo copy changed, by external id, as fetched now.
    pub changed: HashMap<String, Contact>,
    /// Managed contacts deleted in Quo.
    pub deleted: Vec<(ExternalId, QuoContactId)>,
    /// Inbox events consumed, by external id ("" for events that need nothing).
    pub events: HashMap<String, Vec<String>>,
    /// Whether a scan ran.
    pub scanned: bool,
    /// Our contacts in Quo that the ledger does not know (see `reconcile`).
    pub orphans: u64,
    /// Linked contacts that could not be read this cycle; their records are quarantined (stage
    /// `quo`) and their events stay pending.
    pub unreadable: Vec<UnreadableContact>,
    /// Unlinked contacts of ours carrying the externalId of an unconfirmed create (found by a
    /// scan or a webhook): resolved in the settle phase (`sync::copies`).
    pub copies: Vec<UnlinkedCopy>,
    /// The scan left more linked contacts unlisted than the deletion guard allows, and noted
    /// none of them missing.
    pub mass_delete_refused: bool,
}

/// A contact Quo holds with our `source` and the externalId of a create never confirmed, which
/// the ledger does not link: most likely the contact that POST made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlinkedCopy {
    /// The record whose create it may be.
    pub external_id: ExternalId,
    /// The contact.
    pub quo_id: QuoContactId,
}

/// A linked contact Quo would not give us in readable form this cycle.
#[derive(Debug, Clone)]
pub struct UnreadableContact {
    /// The record it belongs to.
    pub external_id: ExternalId,
    /// Its Quo id.
    pub quo_id: String,
    /// Why.
    pub reason: String,
}

impl QuoChanges {
    /// Takes an unlinked-copy notice; one without a usable externalId needs nothing.
    fn note_copy(&mut self, event_id: &str, copy: Option<UnlinkedCopy>) {
        match copy {
            Some(copy) => {
                self.note_event(copy.external_id.as_str(), event_id);
                self.copies.push(copy);
            }
            None => self.note_event("", event_id),
        }
    }

    fn note_event(&mut self, external_id: &str, event_id: &str) {
        self.events
            .entry(external_id.to_string())
            .or_default()
            .push(event_id.to_string());
    }
}

/// Reads pending inbox events (and runs a scan pass of `scan`'s scope when one is given, its
/// missing contacts behind `guard`) into `QuoChanges`; `on_page` hears of each page the scan
/// lists. With `index_workspace`, a contact the ledger does not link that an event names is read
/// by id into the workspace index (or out of it, on a 404), so a contact made in the Quo app is
/// known before a record that matches it is created.
pub async fn gather(
    ledger: &Ledger,
    client: &QuoClient,
    scan: Option<super::scan::Scope>,
    index_workspace: bool,
    guard: super::absence::DeleteGuard,
    on_page: impl FnMut(&super::scan::ScanProgress),
) -> Result<QuoChanges, IntakeError> {
    let mut changes = QuoChanges::default();
    if let Some(scope) = scan {
        // The pass writes its findings as notices into the inbox, read just below.
        let stop = CancellationToken::new();
        match super::scan::scan_pass(ledger, client, scope, None, &stop, guard, on_page).await {
            Ok(progress) => {
                changes.scanned = progress.complete;
                changes.orphans = progress.orphans;
                changes.mass_delete_refused = progress.missing_refused;
            }
            Err(IntakeError::Quo(e)) if !e.is_fatal() => {
                // Nothing is concluded from a partial listing; the next cycle goes on with it.
                warn!(event = "scan_failed", error = %e, "Quo scan stopped; no deletion concluded, resuming next cycle");
                metrics::counter!("quo_sync_scans_failed_total").increment(1);
            }
            Err(e) => return Err(e),
        }
    }
    let mut fetched: HashSet<String> = HashSet::new();
    let pending = ledger.inbox_pending(10_000).await?;
    // An event for a contact the ledger does not link may announce the contact of a create
    // whose answer was lost (Quo sends `contact.updated` for a created contact too).
    let unconfirmed = if pending.is_empty() {
        HashSet::new()
    } else {
        ledger.unconfirmed_external_ids().await?
    };
    for event in pending {
        let Some(quo_id) = event.quo_id.clone() else {
            changes.note_event("", &event.event_id);
            continue;
        };
        if event.event_type == super::scan::UNLINKED_COPY {
            let copy = copy_of(&event.payload, &quo_id, client.source());
            changes.note_copy(&event.event_id, copy);
            continue;
        }
        let Some(row) = ledger.record_by_quo_id(&quo_id).await? else {
            if event.event_type != "contact.deleted"
                && let Some(copy) = copy_of(&event.payload, &quo_id, client.source())
                && ours_unconfirmed(ledger, &copy, &unconfirmed).await?
            {
                changes.note_copy(&event.event_id, Some(copy));
                continue;
            }
            debug!(event = "webhook_not_ours", event_id = %event.event_id, quo_id, "event for a contact quo-sync does not manage");
            changes.note_event("", &event.event_id);
            if index_workspace && fetched.insert(quo_id.clone()) {
                index_contact(ledger, client, &quo_id).await?;
            }
            continue;
        };
        let external_id = row.external_id.to_string();
        changes.note_event(&external_id, &event.event_id);
        if fetched.contains(&quo_id) {
            continue;
        }
        if event.event_type == "contact.updated" {
            let payload: serde_json::Value =
                serde_json::from_str(&event.payload).unwrap_or_default();
            let object = payload["data"]
                .get("object")
                .or_else(|| payload["data"].get("resource"));
            let stamped = object.and_then(|o| o["updatedAt"].as_str());
            if stamped.is_some() && stamped == row.quo_updated_at.as_deref() {
                debug!(event = "webhook_echo", event_id = %event.event_id, external_id, quo_id, "our own write coming back; nothing to do");
                continue;
            }
        }
        fetched.insert(quo_id.clone());
        confirm(
            client,
            &row.external_id,
            &quo_id,
            row.quo_updated_at.as_deref(),
            &mut changes,
        )
        .await?;
    }
    Ok(changes)
}

/// Reads a contact the ledger does not link into the workspace index: stored as Quo has it now,
/// removed on a 404. A contact that cannot be read is left as the index had it (the next pass
/// reads it again); a bad key stops the cycle.
pub async fn index_contact(
    ledger: &Ledger,
    client: &QuoClient,
    quo_id: &str,
) -> Result<(), IntakeError> {
    match client.get_contact(quo_id).await {
        Ok(Some(contact)) => ledger.workspace_put(std::slice::from_ref(&contact)).await?,
        Ok(None) => ledger.workspace_remove(quo_id).await?,
        Err(e) if e.is_fatal() => return Err(e.into()),
        Err(e) => {
            warn!(event = "workspace_index_stale", quo_id, error = %e, "could not read a contact a webhook named; the next scan reads it")
        }
    }
    Ok(())
}

/// The copy an event announces: its contact carries our `source` (when the payload says) and
/// an externalId. A scan's notice has the externalId at the top; a webhook's, in its object.
fn copy_of(payload: &str, quo_id: &str, our_source: &str) -> Option<UnlinkedCopy> {
    let payload: serde_json::Value = serde_json::from_str(payload).ok()?;
    let object = payload["data"]
        .get("object")
        .or_else(|| payload["data"].get("resource"));
    if let Some(source) = object.and_then(|o| o["source"].as_str())
        && source != our_source
    {
        return None;
    }
    let external_id = payload["externalId"]
        .as_str()
        .or_else(|| object.and_then(|o| o["externalId"].as_str()))?;
    Some(UnlinkedCopy {
        external_id: ExternalId::parse(external_id).ok()?,
        quo_id: QuoContactId(quo_id.to_string()),
    })
}

/// Whether a webhook's unlinked contact may be one our lost create made: its record has an
/// unconfirmed create, or a create still pending (whose answer never came).
async fn ours_unconfirmed(
    ledger: &Ledger,
    copy: &UnlinkedCopy,
    unconfirmed: &HashSet<String>,
) -> Result<bool, IntakeError> {
    if unconfirmed.contains(copy.external_id.as_str()) {
        return Ok(true);
    }
    Ok(ledger
        .record(&copy.external_id)
        .await?
        .is_some_and(|row| row.quo_id.is_none() && row.state == RecordState::PendingCreate))
}

/// Reads one linked contact by id: deleted only on a 404; changed when its `updatedAt` moved;
/// unreadable (set apart, not fatal) on anything else but a bad key or shutdown.
async fn confirm(
    client: &QuoClient,
    external_id: &ExternalId,
    quo_id: &str,
    stored_updated_at: Option<&str>,
    changes: &mut QuoChanges,
) -> Result<(), IntakeError> {
    match client.get_contact(quo_id).await {
        Ok(None) => changes
            .deleted
            .push((external_id.clone(), QuoContactId(quo_id.to_string()))),
        Ok(Some(contact))
            if contact.updated_at.is_some()
                && contact.updated_at.as_deref() == stored_updated_at => {}
        Ok(Some(contact)) => {
            changes.changed.insert(external_id.to_string(), contact);
        }
        Err(e) if e.is_fatal() => return Err(e.into()),
        Err(e) => changes.unreadable.push(UnreadableContact {
            external_id: external_id.clone(),
            quo_id: quo_id.to_string(),
            reason: e.to_string(),
        }),
    }
    Ok(())
}
